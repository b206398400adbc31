//! posd's configuration: a TOML file, command-line overrides, and the
//! built-in demo setup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pos_link::transport::SerialSettings;
use serde::Deserialize;

use crate::lane::ReaderLine;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the database and the lock file.
    pub state_dir: PathBuf,
    /// `HOST:PORT` or `unix:PATH`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Identifies this posd to the gateway (terminal ids are "<store_id>/<lane>").
    #[serde(default = "default_store_id")]
    pub store_id: String,
    pub gateway: GatewayConfig,
    #[serde(rename = "lane")]
    pub lanes: Vec<LaneConfig>,
    /// Offline store-and-forward: ageing and forwarding.
    #[serde(default)]
    pub offline: OfflineConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub report: ReportConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub receipt: ReceiptConfig,
    /// On stop, how long payments in progress may take to finish before those
    /// still waiting for a card are canceled and the rest parked for recovery
    /// (default 15s; keep it well below the unit's TimeoutStopSec=30s).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Span,
    /// How long a payment waits for the customer's card before it fails
    /// with `reader_timeout` (default 120s).
    #[serde(default = "default_card_timeout")]
    pub card_timeout: Span,
    /// An AUTHORIZED payment (manual capture) not captured within this is
    /// reversed at the gateway to release the customer's hold (default 2d,
    /// the schemes' usual window for in-person authorizations; "0s": never).
    #[serde(default = "default_capture_window")]
    pub capture_window: Span,
}

fn default_stop_timeout() -> Span {
    Span(crate::daemon::DEFAULT_STOP_TIMEOUT)
}

fn default_card_timeout() -> Span {
    Span(crate::daemon::DEFAULT_CARD_TIMEOUT)
}

fn default_capture_window() -> Span {
    Span(crate::daemon::DEFAULT_CAPTURE_WINDOW)
}

/// Prometheus metrics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address for `GET /metrics`, e.g. "127.0.0.1:9464"; unset: no metrics.
    pub listen: Option<String>,
}

/// Logging (RUST_LOG, when set, wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace (default info).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// The `[log] level` of a config file, read before logging starts.
pub fn log_level(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value.get("log")?.get("level")?.as_str().map(str::to_string)
}

/// Who may do what through the register API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Callers allowed to refund: "uid=N" (Unix socket peer), "cn=NAME" (the
    /// common name of a TLS client certificate) or "ip=ADDR" (plain TCP peer).
    /// Empty (the default): every caller may refund.
    #[serde(default)]
    pub refunds_allowed_from: Vec<String>,
    /// TLS for a TCP `listen` address, with required client certificates.
    #[serde(default)]
    pub tls: Option<ApiTlsConfig>,
}

/// The register API over TCP: posd's certificate, and the CA whose
/// certificates registers must present (a client without one is refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// posd's certificate chain (PEM).
    pub cert_file: FileRef,
    /// posd's private key (PEM): a secret, best given as `credential:NAME`.
    pub key_file: FileRef,
    /// The CA that signs the registers' client certificates (PEM).
    pub client_ca_file: FileRef,
}

/// A file posd reads at start: an absolute path, or `credential:NAME` for a
/// credential systemd hands the service (`LoadCredential=`), read from
/// `$CREDENTIALS_DIRECTORY/NAME`. Secrets (private keys) come only from files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct FileRef(pub String);

/// The environment variable systemd sets for a service with credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The shipped unit's `LoadCredential=posd:/etc/posd/credentials` hands posd
/// every file `F` of that directory as the credential `posd_F`.
const CREDENTIALS_SOURCE: &str = "/etc/posd/credentials";
const CREDENTIAL_PREFIX: &str = "posd_";

impl FileRef {
    /// Where the file is on this machine.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if !self.well_formed() {
            anyhow::bail!("{:?} is neither an absolute path nor credential:NAME", self.0);
        }
        match self.0.strip_prefix("credential:") {
            Some(name) => {
                let dir = std::env::var_os(CREDENTIALS_DIRECTORY).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{:?} names a systemd credential, but posd was not given any (no ${CREDENTIALS_DIRECTORY}); \
                         start posd through its unit, whose LoadCredential= loads /etc/posd/credentials",
                        self.0
                    )
                })?;
                Ok(Path::new(&dir).join(name))
            }
            None => Ok(PathBuf::from(&self.0)),
        }
    }

    /// Checks the form only (absolute path or `credential:NAME`), not that the
    /// file exists: `check-config` may run outside the service.
    pub fn check_form(&self, key: &str) -> anyhow::Result<()> {
        if !self.well_formed() {
            anyhow::bail!(
                "{key}: {:?} is neither an absolute path nor credential:NAME (a file systemd's LoadCredential= hands posd)",
                self.0
            );
        }
        Ok(())
    }

    /// An absolute path, or `credential:` and a plain file name.
    fn well_formed(&self) -> bool {
        match self.0.strip_prefix("credential:") {
            Some(name) => !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            None => Path::new(&self.0).is_absolute(),
        }
    }

    /// Where `check-config`, run outside the service, finds the file: a
    /// credential `posd_F` is the file `F` of /etc/posd/credentials.
    fn installed_path(&self) -> Option<PathBuf> {
        match self.0.strip_prefix("credential:") {
            Some(name) if std::env::var_os(CREDENTIALS_DIRECTORY).is_none() => {
                name.strip_prefix(CREDENTIAL_PREFIX).map(|f| Path::new(CREDENTIALS_SOURCE).join(f))
            }
            _ => self.path().ok(),
        }
    }

    /// The file's contents, with an error that names the key and the file.
    pub fn read(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path().map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("{key}: cannot read {}: {e}", path.display()))
    }
}

/// Business days for reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// IANA time zone business days are counted in (default "UTC").
    pub time_zone: String,
    /// Local time a business day starts, HH:MM (default "00:00").
    pub cutover: String,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { time_zone: "UTC".into(), cutover: "00:00".into() }
    }
}

/// A duration written as `500ms`, `30s`, `15m`, `12h` or `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_span(&text).map(Span).map_err(serde::de::Error::custom)
    }
}

pub fn parse_span(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 30s, 15m, 12h or 30d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Alert when the oldest unsent payment is older than this (default 12h).
    pub alert_after: Span,
    /// Take no new offline payments while the oldest unsent one is older (default 24h).
    pub stop_after: Span,
    /// Expire unsent payments older than this (default 72h).
    pub expire_after: Span,
    /// Payments per forwarding call (default 200).
    pub batch_size: usize,
    /// First and longest wait between forwarding attempts after a link error.
    pub retry_first: Span,
    pub retry_max: Span,
    /// How often the gateway's reachability is checked (default 5s).
    pub health_interval: Span,
    /// How often the queue's age is checked (default 1s).
    pub ageing_interval: Span,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        let h = |n: u64| Span(Duration::from_secs(n * 3600));
        Self {
            alert_after: h(12),
            stop_after: h(24),
            expire_after: h(72),
            batch_size: 200,
            retry_first: Span(Duration::from_millis(500)),
            retry_max: Span(Duration::from_secs(30)),
            health_interval: Span(Duration::from_secs(5)),
            ageing_interval: Span(Duration::from_secs(1)),
        }
    }
}

/// Per-lane offline limits; amounts in minor units of the lane's currency.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneOfflineConfig {
    pub enabled: Option<bool>,
    pub max_payment_minor: Option<i64>,
    pub max_total_minor: Option<i64>,
    pub max_payments: Option<u32>,
    pub max_per_card: Option<u32>,
    /// Offline only if the gateway was reached within this long (default 30d).
    pub readiness: Option<Span>,
    /// Currencies allowed offline (default: the lane's currency).
    pub currencies: Option<Vec<String>>,
    /// Brands allowed offline (default: all).
    pub brands: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Caps the database at this many pages (tests use it to fill the disk).
    pub max_page_count: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub url: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long to wait for an answer once a request is sent (Stripe: 30 s).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Status queries after a lost answer before a reversal is queued.
    #[serde(default = "default_status_attempts")]
    pub status_attempts: u32,
    /// PEM file of the CA that signed a private gateway's certificate (https only);
    /// unset: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<FileRef>,
    /// posd's client certificate for a gateway that requires one (PEM; https only).
    #[serde(default)]
    pub client_cert_file: Option<FileRef>,
    /// Its private key: a secret, best given as `credential:NAME`.
    #[serde(default)]
    pub client_key_file: Option<FileRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    pub id: String,
    pub currency: String,
    pub reader: ReaderConfig,
    /// The lane's receipt printer (and the cash drawer behind it).
    #[serde(default)]
    pub printer: Option<PrinterConfig>,
    #[serde(default)]
    pub offline: LaneOfflineConfig,
}

impl LaneConfig {
    /// The lane's offline policy: its overrides on the defaults, with the
    /// global ageing thresholds.
    pub fn offline_policy(&self, global: &OfflineConfig) -> pos_engine::offline::OfflinePolicy {
        let d = pos_engine::offline::OfflinePolicy::defaults_for(&self.currency);
        let o = &self.offline;
        pos_engine::offline::OfflinePolicy {
            enabled: o.enabled.unwrap_or(d.enabled),
            max_payment_minor: o.max_payment_minor.unwrap_or(d.max_payment_minor),
            max_total_minor: o.max_total_minor.unwrap_or(d.max_total_minor),
            max_payments: o.max_payments.unwrap_or(d.max_payments),
            max_per_card: o.max_per_card.unwrap_or(d.max_per_card),
            readiness: o.readiness.map(|s| s.0).unwrap_or(d.readiness),
            currencies: o.currencies.clone().unwrap_or(d.currencies),
            brands: o.brands.clone().unwrap_or(d.brands),
            alert_after: global.alert_after.0,
            stop_after: global.stop_after.0,
            expire_after: global.expire_after.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// `reader` (default): a host-authorized card reader (pos.reader.v1);
    /// `zvt`: a payment terminal that authorizes by itself.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Serial device path, e.g. /dev/pos/lane1-reader.
    pub device: Option<PathBuf>,
    /// Or a TCP address, e.g. 192.0.2.10:20007.
    pub tcp: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// ZVT: the terminal's password (6 digits; default 123456).
    #[serde(default)]
    pub password: Option<u32>,
    /// ZVT: T3, the wait for the terminal's 80 00 (default 5 s).
    #[serde(default)]
    pub t3_ms: Option<u64>,
    /// ZVT: T4, from 80 00 to the command's end, restarted by every
    /// intermediate status (default 180 s).
    #[serde(default)]
    pub t4_ms: Option<u64>,
}

fn default_kind() -> String {
    "reader".into()
}

/// A receipt printer: exactly one of `device` (serial), `usb` or `tcp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterConfig {
    /// Serial device, e.g. /dev/pos/lane1-printer.
    pub device: Option<PathBuf>,
    /// USB printer class device, e.g. /dev/usb/lp0.
    pub usb: Option<PathBuf>,
    /// Network printer, e.g. 192.0.2.20:9100.
    pub tcp: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Serial flow control: "xon-xoff" (default), "rts-cts" or "none".
    #[serde(default = "default_flow")]
    pub flow_control: String,
    /// Characters per line: 32 (58 mm paper), 42 or 48 (80 mm, default).
    #[serde(default = "default_columns")]
    pub columns: usize,
}

fn default_flow() -> String {
    "xon-xoff".into()
}
fn default_columns() -> usize {
    48
}

impl PrinterConfig {
    pub fn line(&self, lane: &str) -> anyhow::Result<crate::printer::PrinterLine> {
        use crate::printer::PrinterLine;
        use pos_link::transport::FlowControl;
        if pos_escpos::Width::from_columns(self.columns).is_none() {
            anyhow::bail!("lane {lane}: printer columns must be 32, 42 or 48, not {}", self.columns);
        }
        match (&self.device, &self.usb, &self.tcp) {
            (Some(d), None, None) => {
                let flow_control = match self.flow_control.as_str() {
                    "xon-xoff" => FlowControl::Software,
                    "rts-cts" => FlowControl::Hardware,
                    "none" => FlowControl::None,
                    other => anyhow::bail!(
                        "lane {lane}: printer flow_control must be xon-xoff, rts-cts or none, not {other:?}"
                    ),
                };
                Ok(PrinterLine::Serial(SerialSettings {
                    baud: self.baud,
                    stop_bits: 1,
                    flow_control,
                    ..SerialSettings::new(d)
                }))
            }
            (None, Some(u), None) => Ok(PrinterLine::Usb(u.clone())),
            (None, None, Some(a)) => Ok(PrinterLine::Tcp(a.clone())),
            _ => anyhow::bail!("lane {lane}: printer needs exactly one of `device` (serial), `usb` or `tcp`"),
        }
    }

    /// Parses `--printer`: a serial device path, `usb:PATH` or `tcp:HOST:PORT`.
    pub fn from_arg(arg: &str) -> Self {
        let mut c = PrinterConfig {
            device: None,
            usb: None,
            tcp: None,
            baud: default_baud(),
            flow_control: default_flow(),
            columns: default_columns(),
        };
        if let Some(a) = arg.strip_prefix("tcp:") {
            c.tcp = Some(a.into());
        } else if let Some(p) = arg.strip_prefix("usb:") {
            c.usb = Some(p.into());
        } else {
            c.device = Some(arg.into());
        }
        c
    }

    /// The device file, for check-config (none for TCP).
    pub fn path(&self) -> Option<&Path> {
        self.device.as_deref().or(self.usb.as_deref())
    }
}

/// What every receipt says around the payment, and when posd prints by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptConfig {
    /// Lines at the top; the first prints large (the store's name).
    pub header: Vec<String>,
    /// Lines at the bottom.
    pub footer: Vec<String>,
    /// Copies printed by themselves when a payment ends (approved or
    /// declined): "customer", "merchant"; empty: only on request.
    pub auto_print: Vec<crate::receipt::Copy>,
}

impl Default for ReceiptConfig {
    fn default() -> Self {
        Self {
            header: vec!["posd".into()],
            footer: vec!["Thank you".into()],
            auto_print: vec![crate::receipt::Copy::Customer],
        }
    }
}

fn default_listen() -> String {
    "unix:/run/posd/posd.sock".into()
}
fn default_store_id() -> String {
    "posd".into()
}
fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_status_attempts() -> u32 {
    3
}
fn default_baud() -> u32 {
    9600
}

impl ReaderConfig {
    pub fn line(&self, lane: &str) -> anyhow::Result<ReaderLine> {
        match (&self.device, &self.tcp) {
            // ZVT lines run 8N2 (PA00P016); the native reader 8N1.
            (Some(d), None) => Ok(ReaderLine::Serial(SerialSettings {
                baud: self.baud,
                stop_bits: if self.kind == "zvt" { 2 } else { 1 },
                ..SerialSettings::new(d)
            })),
            (None, Some(a)) => Ok(ReaderLine::Tcp(a.clone())),
            _ => anyhow::bail!("lane {lane}: reader needs exactly one of `device` (serial) or `tcp`"),
        }
    }

    /// The lane's card device, checked.
    pub fn device(&self, lane: &str, currency: &str) -> anyhow::Result<crate::lane::CardDevice> {
        use crate::lane::CardDevice;
        let line = self.line(lane)?;
        match self.kind.as_str() {
            "reader" => {
                if self.password.is_some() || self.t3_ms.is_some() || self.t4_ms.is_some() {
                    anyhow::bail!("lane {lane}: password, t3_ms and t4_ms apply to kind = \"zvt\" only");
                }
                Ok(CardDevice::Reader(line))
            }
            "zvt" => {
                let password = pos_zvt::message::password(self.password.unwrap_or(123_456))
                    .ok_or_else(|| anyhow::anyhow!("lane {lane}: the ZVT password has at most 6 digits"))?;
                let currency_number = pos_engine::money::numeric(currency).ok_or_else(|| {
                    anyhow::anyhow!("lane {lane}: posd does not know the ISO 4217 number of {currency} for ZVT")
                })?;
                // ZVT's Registration cannot tell a currency 3xx/6xx from the
                // fields that may follow it.
                if pos_zvt::Message::registration(password, 0, currency_number, &[[0x06, 0xD3]]).encode().is_err() {
                    anyhow::bail!(
                        "lane {lane}: posd cannot drive a ZVT terminal in {currency}: its ISO number \
                         {currency_number} cannot be told apart from the fields after it in ZVT's Registration"
                    );
                }
                let t3 = Duration::from_millis(self.t3_ms.unwrap_or(5_000));
                let t4 = Duration::from_millis(self.t4_ms.unwrap_or(180_000));
                if t3.is_zero() || t4 < t3 {
                    anyhow::bail!("lane {lane}: t3_ms must be positive and t4_ms at least t3_ms");
                }
                Ok(CardDevice::Zvt(crate::zvt::ZvtSettings {
                    line,
                    password,
                    currency: currency_number,
                    t3,
                    t4,
                    // The terminal waits T3 for our 80 00: store well within it.
                    commit_bound: t3 * 3 / 5,
                }))
            }
            other => anyhow::bail!("lane {lane}: reader kind must be \"reader\" or \"zvt\", not {other:?}"),
        }
    }

    /// Parses the `--reader` override: a device path, or `tcp:HOST:PORT`.
    pub fn from_arg(arg: &str) -> Self {
        let (device, tcp) = match arg.strip_prefix("tcp:") {
            Some(addr) => (None, Some(addr.into())),
            None => (Some(arg.into()), None),
        };
        Self { kind: default_kind(), device, tcp, baud: default_baud(), password: None, t3_ms: None, t4_ms: None }
    }
}

impl GatewayConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and validates a configuration's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A warning when `capture_window` is set shorter than an hour: card
    /// schemes give days, so authorizations would be reversed very soon.
    pub fn short_capture_window(&self) -> Option<String> {
        let w = self.capture_window.0;
        (!w.is_zero() && w < Duration::from_secs(3600)).then(|| {
            format!(
                "capture_window is {w:?}: a manual-capture payment not captured that soon is reversed, \
                 while card schemes allow days"
            )
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lanes.is_empty() {
            anyhow::bail!("no [[lane]] configured");
        }
        let mut seen = std::collections::HashSet::new();
        for lane in &self.lanes {
            if !seen.insert(&lane.id) {
                anyhow::bail!("lane {} is configured twice", lane.id);
            }
            if pos_engine::money::exponent(&lane.currency).is_none() {
                anyhow::bail!(
                    "lane {}: currency must be an ISO 4217 code such as EUR, not {:?}",
                    lane.id,
                    lane.currency
                );
            }
            lane.reader.device(&lane.id, &lane.currency)?;
            if let Some(p) = &lane.printer {
                p.line(&lane.id)?;
            }
        }
        let card = self.card_timeout.0;
        if card < Duration::from_secs(1) || card > Duration::from_secs(600) {
            anyhow::bail!("card_timeout must be 1s to 10min (how long a payment waits for the card), not {card:?}");
        }
        let o = &self.offline;
        if !(o.alert_after.0 <= o.stop_after.0 && o.stop_after.0 <= o.expire_after.0) {
            anyhow::bail!("[offline]: alert_after <= stop_after <= expire_after must hold");
        }
        crate::report::ReportSettings::new(&self.report.time_zone, &self.report.cutover)?;
        if o.batch_size == 0 || o.batch_size > 1000 {
            anyhow::bail!("[offline] batch_size must be 1 to 1000, not {}", o.batch_size);
        }
        if let Some(m) = &self.metrics.listen {
            let ok = m.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if !ok {
                anyhow::bail!("[metrics] listen must be a loopback HOST:PORT such as 127.0.0.1:9464, not {m:?}");
            }
        }
        if let Some(rest) = self.gateway.url.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                anyhow::bail!("[gateway] url: plain http:// is allowed only on loopback; use https:// for {host}");
            }
        }
        for (key, file) in self.files() {
            file.check_form(key)?;
        }
        let g = &self.gateway;
        if g.client_cert_file.is_some() != g.client_key_file.is_some() {
            anyhow::bail!("[gateway] client_cert_file and client_key_file go together: give both or neither");
        }
        if (g.client_cert_file.is_some() || g.ca_file.is_some()) && !g.url.starts_with("https://") {
            anyhow::bail!("[gateway] ca_file and client certificates apply to an https:// url only");
        }
        self.check_listen()
    }

    /// The API: a Unix socket, or TCP; TCP beyond loopback needs `[api.tls]`.
    fn check_listen(&self) -> anyhow::Result<()> {
        if self.listen.starts_with("unix:") {
            if self.api.tls.is_some() {
                anyhow::bail!("[api.tls] applies to a TCP listen address, not {:?}", self.listen);
            }
            return Ok(());
        }
        let addr: std::net::SocketAddr = self
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("listen {:?}: expected HOST:PORT or unix:PATH ({e})", self.listen))?;
        if self.api.tls.is_none() && !addr.ip().is_loopback() {
            anyhow::bail!(
                "listen {addr}: the register API beyond loopback needs [api.tls] (server certificate, \
                 key and the CA of the registers' client certificates), or listen on unix:PATH"
            );
        }
        Ok(())
    }
}

/// One finding of `posd check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub error: bool,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub fix: String,
}

impl Finding {
    pub fn render(&self, path: &Path) -> String {
        let at = self.at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
        let level = if self.error { "error" } else { "warning" };
        format!("{}{at}: {level}: {}\n  fix: {}", path.display(), self.message, self.fix)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where `needle` first appears in the file, as line and column.
fn find(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.find(needle).map(|o| line_col(text, o))
}

/// Validates a config file for `posd check-config`: errors (the file would
/// not start posd) and warnings (devices or files missing on this machine).
pub fn check(path: &Path) -> Vec<Finding> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding {
                error: true,
                at: None,
                message: format!("cannot read the file: {e}"),
                fix: "check the path (the default is /etc/posd/posd.toml) and that you may read it".into(),
            }];
        }
    };
    let cfg: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            let message = e.message().to_string();
            let fix = if message.contains("unknown field") {
                "remove the key or correct its spelling; systemd/posd.toml lists every key with its default"
            } else if message.contains("missing field") {
                "add the key; systemd/posd.toml shows it with an example"
            } else {
                "correct the value to the form the message names (see systemd/posd.toml)"
            };
            return vec![Finding {
                error: true,
                at: e.span().map(|s| line_col(&text, s.start)),
                message,
                fix: fix.into(),
            }];
        }
    };
    let mut findings = Vec::new();
    if let Err(e) = cfg.validate() {
        let message = e.to_string();
        let needle = ["currency", "reader", "time_zone", "cutover", "batch_size", "url", "lane"]
            .into_iter()
            .find(|k| message.contains(k))
            .unwrap_or("");
        findings.push(Finding {
            error: true,
            at: if needle.is_empty() { None } else { find(&text, needle) },
            message,
            fix: "correct the value as the message says".into(),
        });
    }
    for lane in &cfg.lanes {
        if let Some(d) = &lane.reader.device
            && !d.exists()
        {
            findings.push(Finding {
                error: false,
                at: find(&text, &d.to_string_lossy()),
                message: format!("lane {}: the reader device {} does not exist on this machine", lane.id, d.display()),
                fix: "plug the reader in, or check the udev rule that names it (systemd/60-posd.rules)".into(),
            });
        }
        if let Some(p) = lane.printer.as_ref().and_then(PrinterConfig::path)
            && !p.exists()
        {
            findings.push(Finding {
                error: false,
                at: find(&text, &p.to_string_lossy()),
                message: format!("lane {}: the printer device {} does not exist on this machine", lane.id, p.display()),
                fix: "plug the printer in, or check the udev rule that names it".into(),
            });
        }
    }
    if let Some(message) = cfg.short_capture_window() {
        findings.push(Finding {
            error: false,
            at: find(&text, "capture_window"),
            message,
            fix: "use the acquirer's capture window (for example \"2d\"), or \"0s\" to keep authorizations until \
                  captured or voided"
                .into(),
        });
    }
    findings.extend(cfg.files().into_iter().filter_map(|(key, file)| {
        let found = file.installed_path();
        let missing = match &found {
            Some(p) => !p.exists(),
            None => true,
        };
        missing.then(|| Finding {
            error: false,
            at: find(&text, &file.0),
            message: match &found {
                Some(p) => format!("{key}: {} does not exist on this machine", p.display()),
                None => format!("{key}: the credential {:?} cannot be checked outside the service", file.0),
            },
            fix: if file.0.starts_with("credential:") {
                format!(
                    "put the file in {CREDENTIALS_SOURCE} (credential:{CREDENTIAL_PREFIX}F is the file F there; \
                     mode 0600, owner root)"
                )
            } else {
                "install the file, or correct the path".into()
            },
        })
    }));
    findings
}

impl Config {
    /// Every file the configuration names, with its key.
    pub fn files(&self) -> Vec<(&'static str, &FileRef)> {
        let g = &self.gateway;
        let mut files: Vec<(&'static str, &FileRef)> = [
            ("[gateway] ca_file", &g.ca_file),
            ("[gateway] client_cert_file", &g.client_cert_file),
            ("[gateway] client_key_file", &g.client_key_file),
        ]
        .into_iter()
        .filter_map(|(k, f)| f.as_ref().map(|f| (k, f)))
        .collect();
        if let Some(t) = &self.api.tls {
            files.push(("[api.tls] cert_file", &t.cert_file));
            files.push(("[api.tls] key_file", &t.key_file));
            files.push(("[api.tls] client_ca_file", &t.client_ca_file));
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_unknown_keys_are_errors() {
        let text = r#"
            state_dir = "/var/lib/posd"
            listen = "unix:/run/posd/posd.sock"
            [gateway]
            url = "https://gateway.example:443"
            [[lane]]
            id = "lane-1"
            currency = "EUR"
            reader = { device = "/dev/pos/lane1-reader" }
        "#;
        let cfg: Config = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.gateway.request_timeout_ms, 30_000);
        assert_eq!(cfg.card_timeout.0, Duration::from_secs(120));
        for (timeout, ok) in [("\"3s\"", true), ("\"0s\"", false), ("\"1h\"", false)] {
            let with = format!("card_timeout = {timeout}\n{text}");
            let r = toml::from_str::<Config>(&with).unwrap().validate();
            assert_eq!(r.is_ok(), ok, "{timeout}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("card_timeout must be 1s to 10min"), "{e}");
            }
        }
        let bad = text.replace("[gateway]", "[gateway]\nretries = 5");
        let err = toml::from_str::<Config>(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `retries`"), "{err}");
    }

    #[test]
    fn a_capture_window_under_an_hour_is_a_warning_and_zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let base = "state_dir = \"/var/lib/posd\"\n[gateway]\nurl = \"https://gateway.example:443\"\n\
                    [[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = { tcp = \"127.0.0.1:1\" }\n";
        for (window, warned) in [("\"10m\"", true), ("\"2d\"", false), ("\"0s\"", false)] {
            let path = dir.path().join("posd.toml");
            std::fs::write(&path, format!("capture_window = {window}\n{base}")).unwrap();
            let findings = check(&path);
            assert!(findings.iter().all(|f| !f.error), "{window}: {findings:?}");
            let warning = findings.iter().find(|f| f.message.contains("capture_window"));
            assert_eq!(warning.is_some(), warned, "{window}: {findings:?}");
            if let Some(w) = warning {
                assert_eq!(w.at, Some((1, 1)), "points at the key");
            }
        }
        let cfg: Config = toml::from_str(base).unwrap();
        assert_eq!(cfg.capture_window.0, Duration::from_secs(2 * 86_400), "the default");
    }

    #[test]
    fn files_are_absolute_paths_or_systemd_credentials() {
        for ok in ["/etc/posd/tls/posd.pem", "credential:posd_api.key"] {
            FileRef(ok.into()).check_form("k").unwrap();
        }
        for bad in ["posd.pem", "credential:", "credential:../x", "credential:a/b", "-----BEGIN PRIVATE KEY-----"] {
            assert!(FileRef(bad.into()).check_form("k").is_err(), "{bad}");
        }
        if std::env::var_os(CREDENTIALS_DIRECTORY).is_none() {
            let installed = FileRef("credential:posd_api.key".into()).installed_path();
            assert_eq!(installed, Some(PathBuf::from("/etc/posd/credentials/api.key")));
        }
    }

    #[test]
    fn the_api_beyond_loopback_needs_tls() {
        let base = r#"
            state_dir = "/var/lib/posd"
            listen = "LISTEN"
            [gateway]
            url = "https://gateway.example:443"
            [[lane]]
            id = "lane-1"
            currency = "EUR"
            reader = { tcp = "127.0.0.1:9" }
        "#;
        let tls =
            "\n[api.tls]\ncert_file = \"/c.pem\"\nkey_file = \"credential:posd_k\"\nclient_ca_file = \"/ca.pem\"\n";
        let cfg =
            |listen: &str, extra: &str| toml::from_str::<Config>(&(base.replace("LISTEN", listen) + extra)).unwrap();
        assert!(cfg("127.0.0.1:50051", "").validate().is_ok());
        assert!(cfg("unix:/run/posd/posd.sock", "").validate().is_ok());
        let open = cfg("0.0.0.0:50051", "").validate().unwrap_err().to_string();
        assert!(open.contains("needs [api.tls]"), "{open}");
        assert!(cfg("0.0.0.0:50051", tls).validate().is_ok());
        assert!(cfg("unix:/run/posd/posd.sock", tls).validate().is_err());
    }

    #[test]
    fn spans_parse_with_units() {
        assert_eq!(parse_span("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_span("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_span("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_span("12").is_err());
        assert!(parse_span("h").is_err());
        assert!(parse_span("5 weeks").is_err());
    }

    #[test]
    fn reader_needs_exactly_one_line() {
        let r = ReaderConfig { device: Some("/dev/x".into()), tcp: Some("h:1".into()), ..ReaderConfig::from_arg("") };
        assert!(r.line("lane-1").is_err());
        assert!(matches!(ReaderConfig::from_arg("tcp:127.0.0.1:20007").line("l").unwrap(), ReaderLine::Tcp(_)));
        assert!(matches!(ReaderConfig::from_arg("/dev/ttyUSB0").line("l").unwrap(), ReaderLine::Serial(_)));
    }

    #[test]
    fn a_zvt_lane_is_checked() {
        let zvt = |extra: &str| {
            toml::from_str::<ReaderConfig>(&format!("kind = \"zvt\"\ntcp = \"127.0.0.1:20007\"\n{extra}")).unwrap()
        };
        let crate::lane::CardDevice::Zvt(s) = zvt("").device("l", "EUR").unwrap() else { panic!("not zvt") };
        assert_eq!((s.password, s.currency, s.t4), ([0x12, 0x34, 0x56], 978, Duration::from_secs(180)));
        assert!(zvt("password = 1234567").device("l", "EUR").unwrap_err().to_string().contains("6 digits"));
        assert!(zvt("").device("l", "XPF").unwrap_err().to_string().contains("ISO 4217 number"));
        for ambiguous in ["HUF", "JPY", "ISK"] {
            let e = zvt("").device("l", ambiguous).unwrap_err().to_string();
            assert!(e.contains("cannot be told apart"), "{ambiguous}: {e}");
        }
        assert!(zvt("t3_ms = 5000\nt4_ms = 100").device("l", "EUR").is_err());
        let serial = toml::from_str::<ReaderConfig>("kind = \"zvt\"\ndevice = \"/dev/ttyS0\"").unwrap();
        let crate::lane::CardDevice::Zvt(s) = serial.device("l", "EUR").unwrap() else { panic!("not zvt") };
        assert!(
            matches!(s.line, ReaderLine::Serial(ref p) if p.stop_bits == 2 && p.baud == 9600),
            "ZVT runs 8N2 at 9600"
        );
        let odd = toml::from_str::<ReaderConfig>("kind = \"chip-and-pin\"\ntcp = \"h:1\"").unwrap();
        assert!(odd.device("l", "EUR").unwrap_err().to_string().contains("\"reader\" or \"zvt\""));
        let reader = toml::from_str::<ReaderConfig>("tcp = \"h:1\"\nt4_ms = 10").unwrap();
        assert!(reader.device("l", "EUR").unwrap_err().to_string().contains("zvt"));
    }
}
