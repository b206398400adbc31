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

/// How long a graceful stop waits for payments in progress (`stop_timeout`).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a payment waits for the customer's card (`card_timeout`).
pub const DEFAULT_CARD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an AUTHORIZED payment may wait for its capture (`capture_window`).
pub const DEFAULT_CAPTURE_WINDOW: Duration = Duration::from_secs(2 * 86_400);

fn default_stop_timeout() -> Span {
    Span(DEFAULT_STOP_TIMEOUT)
}

fn default_card_timeout() -> Span {
    Span(DEFAULT_CARD_TIMEOUT)
}

fn default_capture_window() -> Span {
    Span(DEFAULT_CAPTURE_WINDOW)
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

/// Who may do what through the register API, and its bounds.
#[derive(Debug, Clone, Deserialize)]
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
    /// Connections open at once (default 256); more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection's first bytes, and its TLS handshake, must come within
    /// this long (default 10s).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Span,
    /// Requests in progress on one connection at once (default 100).
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// HTTP/2 pings on a quiet connection this often; one not answered
    /// within 20s closes it (default 30s).
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: Span,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            refunds_allowed_from: Vec::new(),
            tls: None,
            max_connections: default_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            max_streams: default_max_streams(),
            keepalive_interval: default_keepalive_interval(),
        }
    }
}

fn default_max_connections() -> usize {
    256
}

fn default_handshake_timeout() -> Span {
    Span(Duration::from_secs(10))
}

fn default_max_streams() -> u32 {
    100
}

fn default_keepalive_interval() -> Span {
    Span(Duration::from_secs(30))
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
    if t.starts_with('-') {
        return Err(format!("{text:?} is negative: a duration is a count of 0 or more and a unit, e.g. 30s"));
    }
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
    /// `https://HOST:PORT`, or `http://` to this machine only; the scheme is
    /// kept in lower case (`HTTPS://` is read as `https://`).
    #[serde(deserialize_with = "url_with_lowercase_scheme")]
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
    /// Reads a configuration file and validates it. The error lists every
    /// problem, each with file:line:col and its fix, as `posd check-config`
    /// does: start-up and check-config judge by the same rules.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_text(&text, path)
    }

    /// Parses and validates a configuration's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::from_text(text, Path::new("config"))
    }

    fn from_text(text: &str, path: &Path) -> anyhow::Result<Self> {
        let examined = Examined::new(text);
        let errors: Vec<String> = examined.findings.iter().filter(|f| f.error).map(|f| f.render(path)).collect();
        match examined.config {
            Some(cfg) if errors.is_empty() => Ok(cfg),
            _ => Err(error_list(errors)),
        }
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

    /// Refuses a configuration posd cannot run with, naming every problem
    /// and its fix (without places: see [`Config::load`] for those).
    pub fn validate(&self) -> anyhow::Result<()> {
        let errors: Vec<String> =
            self.problems().into_iter().map(|p| format!("{}\n  fix: {}", p.message, p.fix)).collect();
        if errors.is_empty() { Ok(()) } else { Err(error_list(errors)) }
    }

    /// Every reason this configuration cannot start posd; empty when it can.
    /// Start-up ([`Config::load`], [`Config::validate`]) and `posd
    /// check-config` both judge by this list.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.check_top(&mut p);
        self.check_lanes(&mut p);
        self.check_offline(&mut p);
        self.check_gateway(&mut p);
        self.check_api(&mut p);
        self.check_files(&mut p);
        p.0
    }

    fn check_top(&self, p: &mut Problems) {
        if self.state_dir.exists() && !self.state_dir.is_dir() {
            p.add(
                key(&["state_dir"]),
                format!("state_dir {} exists and is not a directory", self.state_dir.display()),
                "point state_dir at a directory (posd creates a missing one at start), or move the file out of the way",
            );
        }
        if self.stop_timeout.0.is_zero() {
            p.add(
                key(&["stop_timeout"]),
                "stop_timeout is 0s: payments in progress would get no time to finish when posd stops",
                "give a few seconds, e.g. \"15s\" (the default; keep it well below the unit's TimeoutStopSec=30s)",
            );
        }
        let card = self.card_timeout.0;
        if card < Duration::from_secs(1) || card > Duration::from_secs(600) {
            p.add(
                key(&["card_timeout"]),
                format!("card_timeout must be 1s to 10min (how long a payment waits for the card), not {}", show(card)),
                "give a duration from \"1s\" to \"10m\", e.g. \"120s\" (the default)",
            );
        }
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(&self.log.level)) {
            p.add(
                key(&["log", "level"]),
                format!("[log] level {:?} is not a log level", self.log.level),
                "write one of error, warn, info, debug or trace (finer filters go in RUST_LOG)",
            );
        }
        if let Some(m) = &self.metrics.listen {
            let ok = m.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if !ok {
                p.add(
                    key(&["metrics", "listen"]),
                    format!("[metrics] listen must be a loopback HOST:PORT such as 127.0.0.1:9464, not {m:?}"),
                    "give a loopback address and port, e.g. \"127.0.0.1:9464\", or remove the key for no metrics",
                );
            }
        }
        if let Err(e) = crate::report::ReportSettings::new(&self.report.time_zone, "00:00") {
            p.add(
                key(&["report", "time_zone"]),
                e.to_string(),
                "give an IANA time zone name, e.g. \"Europe/Berlin\" or \"UTC\"",
            );
        }
        if let Err(e) = crate::report::ReportSettings::new("UTC", &self.report.cutover) {
            p.add(
                key(&["report", "cutover"]),
                e.to_string(),
                "write the local time a business day starts as HH:MM, e.g. \"04:00\"",
            );
        }
    }

    fn check_lanes(&self, p: &mut Problems) {
        if self.lanes.is_empty() {
            p.add(
                key(&["lane"]),
                "no [[lane]] configured",
                "add a [[lane]] table with id, currency and reader for each checkout (see systemd/posd.toml)",
            );
        }
        let mut ids: std::collections::HashMap<&str, usize> = Default::default();
        let mut claims: Vec<Claim> = Vec::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            let name = lane_name(lane, i);
            if lane.id.is_empty() {
                p.add(
                    lane_key(i, &["id"]),
                    format!("lane {name}: id is empty"),
                    "give each lane a short unique name, e.g. \"lane-1\"",
                );
            } else if lane.id.chars().any(char::is_control) {
                p.add(
                    lane_key(i, &["id"]),
                    format!("lane {name}: id {:?} contains a control character", lane.id),
                    "write the id with letters, digits, '-' and '_', e.g. \"lane-1\"",
                );
            } else if let Some(&first) = ids.get(lane.id.as_str()) {
                p.add_with(
                    lane_key(i, &["id"]),
                    lane_key(first, &["id"]),
                    format!("lane {} is configured twice ([[lane]] #{} and #{})", lane.id, first + 1, i + 1),
                    "give each [[lane]] its own id",
                );
            } else {
                ids.insert(lane.id.as_str(), i);
            }
            let currency_ok = pos_engine::money::exponent(&lane.currency).is_some();
            if !currency_ok {
                p.add(
                    lane_key(i, &["currency"]),
                    format!("lane {name}: currency must be an ISO 4217 code such as EUR, not {:?}", lane.currency),
                    currency_fix(&lane.currency),
                );
            }
            check_lane_offline(p, i, &name, &lane.offline);
            check_reader(p, i, &name, lane, currency_ok);
            if let Some(printer) = &lane.printer {
                check_printer(p, i, &name, &lane.id, printer);
            }
            for claim in lane_claims(i, &name, lane) {
                if let Some(first) = claims.iter().find(|c| c.device == claim.device) {
                    let message = if first.lane == i {
                        format!("lane {name}: the {} and the {} are both on {}", first.role, claim.role, claim.shown)
                    } else {
                        format!(
                            "lane {name}: the {} is on {}, which lane {} already uses for its {}",
                            claim.role, claim.shown, first.name, first.role
                        )
                    };
                    p.add_with(
                        claim.key.clone(),
                        first.key.clone(),
                        message,
                        "give every reader and printer its own device: its own serial port, USB printer or HOST:PORT",
                    );
                }
                claims.push(claim);
            }
        }
    }

    fn check_offline(&self, p: &mut Problems) {
        let o = &self.offline;
        let d = OfflineConfig::default();
        let retry = "forwarding would retry without a pause after a link error";
        for (k, value, default, why) in [
            ("alert_after", o.alert_after, d.alert_after, "every offline payment would raise the age alert at once"),
            ("stop_after", o.stop_after, d.stop_after, "no payment could ever be taken offline"),
            ("expire_after", o.expire_after, d.expire_after, "offline payments would expire before they are forwarded"),
            ("retry_first", o.retry_first, d.retry_first, retry),
            ("retry_max", o.retry_max, d.retry_max, retry),
            (
                "health_interval",
                o.health_interval,
                d.health_interval,
                "the gateway's reachability cannot be checked every 0s",
            ),
            (
                "ageing_interval",
                o.ageing_interval,
                d.ageing_interval,
                "the offline queue's age cannot be checked every 0s",
            ),
        ] {
            if value.0.is_zero() {
                p.add(
                    key(&["offline", k]),
                    format!("[offline] {k} is 0s: {why}"),
                    format!("give a positive duration, e.g. \"{}\" (the default)", show(default.0)),
                );
            }
        }
        let order = "alert_after <= stop_after <= expire_after must hold: the age alert comes first, then posd stops \
                     taking offline payments, then unsent ones expire";
        if o.alert_after.0 > o.stop_after.0 {
            p.add_with(
                key(&["offline", "alert_after"]),
                key(&["offline", "stop_after"]),
                format!(
                    "[offline] alert_after ({}) is later than stop_after ({})",
                    show(o.alert_after.0),
                    show(o.stop_after.0)
                ),
                order,
            );
        }
        if o.stop_after.0 > o.expire_after.0 {
            p.add_with(
                key(&["offline", "stop_after"]),
                key(&["offline", "expire_after"]),
                format!(
                    "[offline] stop_after ({}) is later than expire_after ({})",
                    show(o.stop_after.0),
                    show(o.expire_after.0)
                ),
                order,
            );
        }
        if o.retry_first.0 > o.retry_max.0 {
            p.add_with(
                key(&["offline", "retry_first"]),
                key(&["offline", "retry_max"]),
                format!(
                    "[offline] retry_first ({}) is longer than retry_max ({})",
                    show(o.retry_first.0),
                    show(o.retry_max.0)
                ),
                "retry_first is the first wait after a link error and retry_max the longest: make retry_first at \
                 most retry_max",
            );
        }
        if o.batch_size == 0 || o.batch_size > 1000 {
            p.add(
                key(&["offline", "batch_size"]),
                format!("[offline] batch_size must be 1 to 1000, not {}", o.batch_size),
                "give how many payments one forwarding call carries, e.g. 200 (the default)",
            );
        }
    }

    fn check_gateway(&self, p: &mut Problems) {
        let g = &self.gateway;
        let https = match check_gateway_url(&g.url) {
            Ok(https) => Some(https),
            Err((why, fix)) => {
                p.add(key(&["gateway", "url"]), format!("[gateway] url {:?}: {why}", g.url), fix);
                None
            }
        };
        for (k, ms, default) in [
            ("connect_timeout_ms", g.connect_timeout_ms, default_connect_timeout_ms()),
            ("request_timeout_ms", g.request_timeout_ms, default_request_timeout_ms()),
        ] {
            if ms == 0 {
                p.add(
                    key(&["gateway", k]),
                    format!("[gateway] {k} is 0: every gateway call would time out at once"),
                    format!("give the timeout in milliseconds, e.g. {default} (the default)"),
                );
            }
        }
        if g.client_cert_file.is_some() != g.client_key_file.is_some() {
            let (set, unset) = if g.client_cert_file.is_some() {
                ("client_cert_file", "client_key_file")
            } else {
                ("client_key_file", "client_cert_file")
            };
            p.add(
                key(&["gateway", set]),
                format!("[gateway] {set} is set without {unset}: client_cert_file and client_key_file go together"),
                format!("give both or neither: add {unset}, or remove {set}"),
            );
        }
        if https == Some(false) {
            for (k, set) in [
                ("ca_file", g.ca_file.is_some()),
                ("client_cert_file", g.client_cert_file.is_some()),
                ("client_key_file", g.client_key_file.is_some()),
            ] {
                if set {
                    p.add_with(
                        key(&["gateway", k]),
                        key(&["gateway", "url"]),
                        format!("[gateway] {k} applies to an https:// url only, not to {:?}", g.url),
                        "use an https:// url, or remove the key",
                    );
                }
            }
        }
    }

    fn check_api(&self, p: &mut Problems) {
        if self.listen.starts_with("unix:") {
            if self.api.tls.is_some() {
                p.add_with(
                    key(&["api", "tls"]),
                    key(&["listen"]),
                    format!("[api.tls] applies to a TCP listen address, not {:?}", self.listen),
                    "remove [api.tls], or listen on HOST:PORT (e.g. \"0.0.0.0:50051\") for registers on other machines",
                );
            }
        } else {
            match self.listen.parse::<std::net::SocketAddr>() {
                Err(e) => p.add(
                    key(&["listen"]),
                    format!("listen {:?}: expected HOST:PORT or unix:PATH ({e})", self.listen),
                    "write unix:/run/posd/posd.sock (the default) or an IP address and port, e.g. 127.0.0.1:50051",
                ),
                Ok(addr) if self.api.tls.is_none() && !addr.ip().is_loopback() => p.add(
                    key(&["listen"]),
                    format!(
                        "listen {addr}: the register API beyond loopback needs [api.tls] (server certificate, \
                         key and the CA of the registers' client certificates), or listen on unix:PATH"
                    ),
                    "add [api.tls] (docs/tls.md shows how to issue the certificates), or listen on loopback or unix:PATH",
                ),
                Ok(_) => {}
            }
        }
        if !(1..=65_536).contains(&self.api.max_connections) {
            p.add(
                key(&["api", "max_connections"]),
                format!("[api] max_connections must be 1 to 65536, not {}", self.api.max_connections),
                "give the most connections the register API may have open at once, e.g. 256 (the default)",
            );
        }
        if self.api.max_streams == 0 {
            p.add(
                key(&["api", "max_streams"]),
                "[api] max_streams is 0: no request could ever be served",
                "give the most requests one connection may have in progress, e.g. 100 (the default)",
            );
        }
        for (name, span) in
            [("handshake_timeout", self.api.handshake_timeout), ("keepalive_interval", self.api.keepalive_interval)]
        {
            if span.0.is_zero() {
                p.add(
                    key(&["api", name]),
                    format!("[api] {name} is 0s"),
                    "give a duration such as \"10s\" (handshake_timeout) or \"30s\" (keepalive_interval)",
                );
            }
        }
        for entry in &self.api.refunds_allowed_from {
            if let Some((why, fix)) = caller_entry_problem(entry) {
                p.add(
                    key(&["api", "refunds_allowed_from"]),
                    format!("[api] refunds_allowed_from: {entry:?} {why}"),
                    fix,
                );
            }
        }
    }

    /// Each file's form; and, where the file can be read here, that it is
    /// the PEM its key needs. A file that cannot be read (a credential
    /// outside the service, say) is skipped: check-config warns about it.
    fn check_files(&self, p: &mut Problems) {
        for (label, at, file) in self.file_settings() {
            if let Err(e) = file.check_form(label) {
                p.add(
                    at,
                    e.to_string(),
                    "give an absolute path, or credential:NAME for a file systemd's LoadCredential= hands posd \
                     (the only way for secrets)",
                );
                continue;
            }
            let Some(path) = file.installed_path() else { continue };
            let private_key = label.ends_with("key_file");
            if let Some(why) = pem_problem(&path, private_key) {
                p.add(
                    at,
                    format!("{label}: {} {why}", path.display()),
                    if private_key {
                        "give the private key as unencrypted PEM (-----BEGIN PRIVATE KEY-----), e.g. converted with \
                         `openssl pkey -in KEY -out KEY.pem`"
                    } else {
                        "give the certificates as PEM (-----BEGIN CERTIFICATE-----), e.g. converted from DER with \
                         `openssl x509 -inform der -in CERT -out CERT.pem`"
                    },
                );
            }
        }
    }

    /// Every file the configuration names: its name in messages, its key and the file.
    fn file_settings(&self) -> Vec<(&'static str, Vec<Seg>, &FileRef)> {
        let g = &self.gateway;
        let mut files = Vec::new();
        for (label, name, file) in [
            ("[gateway] ca_file", "ca_file", &g.ca_file),
            ("[gateway] client_cert_file", "client_cert_file", &g.client_cert_file),
            ("[gateway] client_key_file", "client_key_file", &g.client_key_file),
        ] {
            if let Some(f) = file {
                files.push((label, key(&["gateway", name]), f));
            }
        }
        if let Some(t) = &self.api.tls {
            for (label, name, file) in [
                ("[api.tls] cert_file", "cert_file", &t.cert_file),
                ("[api.tls] key_file", "key_file", &t.key_file),
                ("[api.tls] client_ca_file", "client_ca_file", &t.client_ca_file),
            ] {
                files.push((label, key(&["api", "tls", name]), file));
            }
        }
        files
    }

    /// Every file the configuration names, with its key.
    pub fn files(&self) -> Vec<(&'static str, &FileRef)> {
        self.file_settings().into_iter().map(|(label, _, file)| (label, file)).collect()
    }
}

/// The log levels `[log] level` takes (in any case).
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The largest certificate or key file posd reads to check its PEM.
const MAX_PEM_FILE: u64 = 4 << 20;

/// One step of a setting's place in the file: a key, or the n-th (from 0)
/// table of an array of tables such as `[[lane]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A reason a configuration cannot start posd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting it is about (check-config points there), then any other
    /// setting involved.
    pub keys: Vec<Vec<Seg>>,
    /// What is wrong, naming the setting.
    pub message: String,
    /// How to correct it.
    pub fix: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, at: Vec<Seg>, message: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem { keys: vec![at], message: message.into(), fix: fix.into() });
    }

    /// A problem that also involves the setting `other`.
    fn add_with(&mut self, at: Vec<Seg>, other: Vec<Seg>, message: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem { keys: vec![at, other], message: message.into(), fix: fix.into() });
    }
}

/// A key path from the top of the file, e.g. `key(&["offline", "retry_max"])`.
fn key(parts: &[&'static str]) -> Vec<Seg> {
    parts.iter().copied().map(Seg::Key).collect()
}

/// A key path in the `i`-th `[[lane]]`.
fn lane_key(i: usize, parts: &[&'static str]) -> Vec<Seg> {
    let mut path = vec![Seg::Key("lane"), Seg::Index(i)];
    path.extend(parts.iter().copied().map(Seg::Key));
    path
}

/// A lane as messages name it: its id, or its place when the id is unusable.
fn lane_name(lane: &LaneConfig, i: usize) -> String {
    if lane.id.is_empty() || lane.id.chars().any(char::is_control) { format!("#{}", i + 1) } else { lane.id.clone() }
}

/// A duration as the file writes it: 0s, 500ms, 30s, 15m, 12h, 2d.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn currency_fix(code: &str) -> String {
    let upper = code.trim().to_ascii_uppercase();
    if upper != code && pos_engine::money::exponent(&upper).is_some() {
        format!("write the code in capitals: \"{upper}\"")
    } else {
        "write the three-letter code of an active ISO 4217 currency, e.g. \"EUR\", \"USD\" or \"GBP\"".into()
    }
}

fn check_lane_offline(p: &mut Problems, i: usize, name: &str, o: &LaneOfflineConfig) {
    for (k, limit) in [("max_payment_minor", o.max_payment_minor), ("max_total_minor", o.max_total_minor)] {
        if let Some(v) = limit
            && v < 0
        {
            p.add(
                lane_key(i, &["offline", k]),
                format!("lane {name}: [lane.offline] {k} is {v}; a limit cannot be negative"),
                "give the limit in minor units of the lane's currency (1000 = 10.00 EUR), 0 or more",
            );
        }
    }
    if let Some(r) = o.readiness
        && r.0.is_zero()
    {
        p.add(
            lane_key(i, &["offline", "readiness"]),
            format!("lane {name}: [lane.offline] readiness is 0s, so no payment could ever be approved offline"),
            "give how recently the gateway must have answered, e.g. \"30d\" (the default); to take no offline \
             payments set enabled = false",
        );
    }
    for c in o.currencies.iter().flatten() {
        if pos_engine::money::exponent(c).is_none() {
            p.add(
                lane_key(i, &["offline", "currencies"]),
                format!("lane {name}: [lane.offline] currencies lists {c:?}, which is not an ISO 4217 code"),
                currency_fix(c),
            );
        }
    }
}

/// The reader's settings one by one, then whatever else the lane's start
/// would refuse ([`ReaderConfig::device`]).
fn check_reader(p: &mut Problems, i: usize, name: &str, lane: &LaneConfig, currency_ok: bool) {
    let r = &lane.reader;
    let before = p.0.len();
    let at = |k: &'static str| lane_key(i, &["reader", k]);
    match (&r.device, &r.tcp) {
        (Some(_), Some(_)) => p.add(
            at("tcp"),
            format!("lane {name}: reader needs exactly one of `device` (serial) or `tcp`, not both"),
            "keep one: device for a reader on a serial port, tcp for one on the network",
        ),
        (None, None) => p.add(
            lane_key(i, &["reader"]),
            format!("lane {name}: reader needs exactly one of `device` (serial) or `tcp`"),
            "add device = \"/dev/pos/lane1-reader\" (serial) or tcp = \"HOST:PORT\"",
        ),
        _ => {}
    }
    if let Some(a) = &r.tcp
        && let Err(why) = host_port(a)
    {
        p.add(
            at("tcp"),
            format!("lane {name}: reader tcp {a:?} {why}"),
            "write the reader's address as HOST:PORT, e.g. \"192.0.2.10:20007\"",
        );
    }
    match r.kind.as_str() {
        "reader" => {
            for (k, set) in
                [("password", r.password.is_some()), ("t3_ms", r.t3_ms.is_some()), ("t4_ms", r.t4_ms.is_some())]
            {
                if set {
                    p.add(
                        at(k),
                        format!("lane {name}: reader {k} applies to kind = \"zvt\" only"),
                        "remove it, or set kind = \"zvt\" when the lane's card device is a ZVT payment terminal",
                    );
                }
            }
        }
        "zvt" => {
            if let Some(pw) = r.password
                && pos_zvt::message::password(pw).is_none()
            {
                p.add(
                    at("password"),
                    format!("lane {name}: the ZVT password {pw} has more than 6 digits"),
                    "give the terminal's password, at most 6 digits (default 123456)",
                );
            }
            let t3 = r.t3_ms.unwrap_or(5_000);
            let t4 = r.t4_ms.unwrap_or(180_000);
            if t3 == 0 {
                p.add(
                    at("t3_ms"),
                    format!("lane {name}: reader t3_ms is 0"),
                    "give T3, the wait for the terminal's acknowledgement, in milliseconds, e.g. 5000 (the default)",
                );
            }
            if t4 == 0 || t4 < t3 {
                p.add_with(
                    at("t4_ms"),
                    at("t3_ms"),
                    format!("lane {name}: reader t4_ms is {t4}; it must be positive and at least t3_ms ({t3})"),
                    "give T4, the wait for a command's end, in milliseconds, at least t3_ms, e.g. 180000 (the default)",
                );
            }
        }
        other => p.add(
            at("kind"),
            format!("lane {name}: reader kind must be \"reader\" or \"zvt\", not {other:?}"),
            "write kind = \"reader\" for a card reader posd authorizes for, or \"zvt\" for a ZVT payment terminal",
        ),
    }
    if p.0.len() == before
        && currency_ok
        && let Err(e) = r.device(&lane.id, &lane.currency)
    {
        let message = e.to_string();
        if message.contains("ISO") {
            p.add(
                lane_key(i, &["currency"]),
                message,
                "a ZVT lane needs a currency ZVT can carry, e.g. EUR, CHF, GBP or USD",
            );
        } else {
            p.add(lane_key(i, &["reader"]), message, "correct the reader's settings as the message says");
        }
    }
}

/// The printer's settings one by one, then whatever else the lane's start
/// would refuse ([`PrinterConfig::line`]).
fn check_printer(p: &mut Problems, i: usize, name: &str, id: &str, printer: &PrinterConfig) {
    let before = p.0.len();
    let at = |k: &'static str| lane_key(i, &["printer", k]);
    if pos_escpos::Width::from_columns(printer.columns).is_none() {
        p.add(
            at("columns"),
            format!("lane {name}: printer columns must be 32, 42 or 48, not {}", printer.columns),
            "give 32 for 58 mm paper, 42 or 48 for 80 mm (48 is the default)",
        );
    }
    let lines = [printer.device.is_some(), printer.usb.is_some(), printer.tcp.is_some()];
    if lines.into_iter().filter(|set| *set).count() != 1 {
        p.add(
            lane_key(i, &["printer"]),
            format!("lane {name}: printer needs exactly one of `device` (serial), `usb` or `tcp`"),
            "keep the one the printer is on: device = \"/dev/pos/lane1-printer\", usb = \"/dev/usb/lp0\" or \
             tcp = \"HOST:PORT\"",
        );
    }
    if printer.device.is_some() && !["xon-xoff", "rts-cts", "none"].contains(&printer.flow_control.as_str()) {
        p.add(
            at("flow_control"),
            format!(
                "lane {name}: printer flow_control must be xon-xoff, rts-cts or none, not {:?}",
                printer.flow_control
            ),
            "write \"xon-xoff\" (the default), \"rts-cts\" or \"none\", as the printer is set up",
        );
    }
    if let Some(a) = &printer.tcp
        && let Err(why) = host_port(a)
    {
        p.add(
            at("tcp"),
            format!("lane {name}: printer tcp {a:?} {why}"),
            "write the printer's address as HOST:PORT, e.g. \"192.0.2.20:9100\"",
        );
    }
    if p.0.len() == before
        && let Err(e) = printer.line(id)
    {
        p.add(lane_key(i, &["printer"]), e.to_string(), "correct the printer's settings as the message says");
    }
}

/// Checks a `HOST:PORT` (an IPv6 host in brackets); why not, as the end of a sentence.
fn host_port(addr: &str) -> Result<(), &'static str> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("is not HOST:PORT: the :PORT is missing");
    };
    if host.is_empty() {
        return Err("is not HOST:PORT: the host is missing");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("is not HOST:PORT: an IPv6 host goes in brackets, e.g. [2001:db8::10]:20007");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("is not HOST:PORT: the port must be 1 to 65535"),
    }
}

/// A device a lane's reader or printer is on.
struct Claim {
    /// The device, comparable: `file:` and the resolved path, or `tcp:` and the address.
    device: String,
    /// As the file writes it.
    shown: String,
    key: Vec<Seg>,
    /// "reader" or "printer".
    role: &'static str,
    /// The lane's index and name.
    lane: usize,
    name: String,
}

fn lane_claims(i: usize, name: &str, lane: &LaneConfig) -> Vec<Claim> {
    let file =
        |path: &Path| format!("file:{}", std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display());
    let tcp = |addr: &str| {
        let canonical = addr.parse::<std::net::SocketAddr>().map(|a| a.to_string());
        format!("tcp:{}", canonical.unwrap_or_else(|_| addr.to_ascii_lowercase()))
    };
    let claim = |device: String, shown: String, role: &'static str, k: &'static str| Claim {
        device,
        shown,
        key: lane_key(i, &[role, k]),
        role,
        lane: i,
        name: name.to_string(),
    };
    let mut claims = Vec::new();
    if let Some(d) = &lane.reader.device {
        claims.push(claim(file(d.as_path()), d.display().to_string(), "reader", "device"));
    }
    if let Some(a) = &lane.reader.tcp {
        claims.push(claim(tcp(a.as_str()), a.clone(), "reader", "tcp"));
    }
    if let Some(pr) = &lane.printer {
        if let Some(d) = &pr.device {
            claims.push(claim(file(d.as_path()), d.display().to_string(), "printer", "device"));
        }
        if let Some(u) = &pr.usb {
            claims.push(claim(file(u.as_path()), u.display().to_string(), "printer", "usb"));
        }
        if let Some(a) = &pr.tcp {
            claims.push(claim(tcp(a.as_str()), a.clone(), "printer", "tcp"));
        }
    }
    claims
}

/// Why an `[api] refunds_allowed_from` entry can never match a caller (the
/// end of a sentence), and the fix. posd matches callers as "uid=N",
/// "cn=NAME" and "ip=ADDR", written exactly as [`crate::api::caller`] does.
fn caller_entry_problem(entry: &str) -> Option<(String, String)> {
    let forms = "write each caller as \"uid=N\" (Unix socket peer), \"cn=NAME\" (TLS client certificate) or \
                 \"ip=ADDR\" (plain TCP peer)";
    match entry.split_once('=') {
        Some(("uid", n)) => match n.parse::<u32>() {
            Ok(uid) if uid.to_string() == n => None,
            Ok(uid) => {
                Some((format!("never matches: posd writes that user as uid={uid}"), format!("write \"uid={uid}\"")))
            }
            Err(_) => Some((
                format!("names no numeric user id ({n:?})"),
                "write the register's numeric uid, e.g. \"uid=1001\" (`id -u USER` shows it)".into(),
            )),
        },
        Some(("ip", a)) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.to_string() == a => None,
            Ok(ip) => {
                Some((format!("never matches: posd writes that address as ip={ip}"), format!("write \"ip={ip}\"")))
            }
            Err(_) => Some((
                format!("names no IP address ({a:?})"),
                "write the register's address without port or brackets, e.g. \"ip=192.0.2.31\"".into(),
            )),
        },
        Some(("cn", cn)) if !cn.is_empty() && !cn.chars().any(char::is_control) => None,
        Some(("cn", _)) => Some((
            "names no certificate".into(),
            "write the common name of the register's client certificate, e.g. \"cn=register-1\"".into(),
        )),
        _ => Some(("is not uid=N, cn=NAME or ip=ADDR".into(), forms.into())),
    }
}

/// Why the file at `path` is not the PEM its setting needs (a private key,
/// or certificates), as the end of a sentence; `None` when it is, or when
/// it cannot be read here.
fn pem_problem(path: &Path, private_key: bool) -> Option<String> {
    use x509_parser::pem::Pem;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some("is not a regular file".into());
    }
    if meta.len() > MAX_PEM_FILE {
        return Some(format!("has {} bytes: far too many for PEM certificates or a key", meta.len()));
    }
    let bytes = std::fs::read(path).ok()?;
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(&bytes) {
        match block {
            Ok(b) => blocks.push(b),
            Err(e) => return Some(format!("is not valid PEM ({e})")),
        }
    }
    let labels = || blocks.iter().map(|b| b.label.as_str()).collect::<Vec<_>>().join(", ");
    if private_key {
        if blocks.iter().any(|b| b.label == "ENCRYPTED PRIVATE KEY") {
            return Some("holds an encrypted private key, which posd cannot unlock".into());
        }
        let key = blocks.iter().any(|b| {
            matches!(b.label.as_str(), "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY") && !b.contents.is_empty()
        });
        if !key {
            return Some(if blocks.is_empty() {
                "is not PEM: it has no -----BEGIN PRIVATE KEY----- block".into()
            } else {
                format!("holds no private key, only PEM blocks of {}", labels())
            });
        }
    } else {
        let certs: Vec<&Pem> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
        if certs.is_empty() {
            return Some(if blocks.is_empty() {
                "is not PEM: it has no -----BEGIN CERTIFICATE----- block".into()
            } else {
                format!("holds no certificate, only PEM blocks of {}", labels())
            });
        }
        if let Some(n) = certs.iter().position(|c| c.parse_x509().is_err()) {
            return Some(format!("has a CERTIFICATE block (#{}) that is not an X.509 certificate", n + 1));
        }
    }
    None
}

/// Judges a gateway URL: `Ok(true)` for https, `Ok(false)` for plain http
/// to this machine (127.0.0.0/8, ::1, localhost); otherwise what is wrong
/// (the end of a sentence) and the fix. The scheme is read in any case; a
/// user name or password before `@` is refused (posd would connect to the
/// host after it), and so is every scheme but http and https.
pub fn check_gateway_url(url: &str) -> Result<bool, (String, String)> {
    let example = || "write it as https://HOST:PORT, e.g. https://gateway.example.net:443".to_string();
    let uri: tonic::transport::Uri = url.parse().map_err(|e| (format!("is not a URL ({e})"), example()))?;
    let Some(scheme) = uri.scheme_str().map(str::to_ascii_lowercase) else {
        return Err(("has no scheme".into(), example()));
    };
    let Some(authority) = uri.authority() else {
        return Err(("names no host".into(), example()));
    };
    if authority.as_str().contains('@') {
        return Err((
            "carries a user name or password (before '@'); posd would connect to the host after the '@'".into(),
            "remove everything from :// up to and including the '@'; posd proves itself to the gateway with \
             client_cert_file and client_key_file"
                .into(),
        ));
    }
    let hostport = authority.as_str();
    let host = match hostport.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err(("names no host".into(), example()));
    }
    match scheme.as_str() {
        "https" => Ok(true),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback());
            if loopback {
                Ok(false)
            } else {
                Err((
                    format!(
                        "plain http:// is allowed only on loopback (127.0.0.0/8, ::1, localhost), not to {host}: \
                         payments would cross the network unencrypted"
                    ),
                    format!("use https:// for {host}"),
                ))
            }
        }
        other => Err((
            format!("the scheme {other}:// is not one posd speaks"),
            "use https://HOST:PORT (plain http:// only to this machine: 127.0.0.1, ::1 or localhost)".into(),
        )),
    }
}

/// `url` with its scheme in lower case (`HTTPS://gw` is `https://gw`):
/// posd and tonic tell https by its lower-case name.
pub fn lowercase_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            format!("{}://{rest}", scheme.to_ascii_lowercase())
        }
        _ => url.to_string(),
    }
}

fn url_with_lowercase_scheme<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|url| lowercase_scheme(&url))
}

/// Command-line choices that shape the daemon.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub demo: bool,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub gateway: Option<String>,
    pub gateway_timeout_ms: Option<u64>,
    pub reader: Option<String>,
    pub printer: Option<String>,
    /// Demo reader: milliseconds until the card is presented and for the PIN.
    pub demo_reader_delay_ms: u64,
}

/// The command-line overrides checked by the rules of the settings they
/// replace, before they replace them (in demo mode no file is checked at
/// all); the `--gateway` URL comes back with its scheme in lower case.
pub fn checked_overrides(o: &Options) -> anyhow::Result<Options> {
    let mut errors = Vec::new();
    if let Some(url) = &o.gateway
        && let Err((why, fix)) = check_gateway_url(url)
    {
        errors.push(format!("--gateway {url:?}: {why}\n  fix: {fix}"));
    }
    if o.gateway_timeout_ms == Some(0) {
        errors.push(
            "--gateway-timeout-ms 0: every gateway call would time out at once\n  \
             fix: give the wait for the gateway's answer in milliseconds, e.g. 30000"
                .into(),
        );
    }
    if !errors.is_empty() {
        return Err(error_list(errors));
    }
    Ok(Options { gateway: o.gateway.as_deref().map(lowercase_scheme), ..o.clone() })
}

/// One error, or a count and the list.
fn error_list(errors: Vec<String>) -> anyhow::Error {
    match errors.len() {
        0 => anyhow::anyhow!("the configuration could not be read"),
        1 => anyhow::anyhow!("{}", errors[0]),
        n => anyhow::anyhow!("{n} errors in the configuration:\n{}", errors.join("\n")),
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

/// Line and column of a byte offset; the file's start when unknown.
fn position(text: &str, offset: Option<usize>) -> (usize, usize) {
    offset.map_or((1, 1), |o| line_col(text, o))
}

/// Where in the document `path` is: the start of its last key (or of the
/// `[[table]]` it ends at) as far as the document has it, and whether the
/// whole path is there.
fn locate(table: &toml::de::DeTable<'_>, path: &[Seg]) -> (Option<usize>, bool) {
    let Some((Seg::Key(name), rest)) = path.split_first() else {
        return (None, path.is_empty());
    };
    let Some((found, value)) = table.get_key_value(*name) else {
        return (None, false);
    };
    let (deeper, whole) = locate_in(value.get_ref(), rest);
    (deeper.or(Some(found.span().start)), whole)
}

fn locate_in(value: &toml::de::DeValue<'_>, path: &[Seg]) -> (Option<usize>, bool) {
    match (path.first(), value) {
        (None, _) => (None, true),
        (Some(Seg::Key(_)), toml::de::DeValue::Table(t)) => locate(t, path),
        (Some(Seg::Index(i)), toml::de::DeValue::Array(items)) => match items.get(*i) {
            Some(item) => {
                let (deeper, whole) = locate_in(item.get_ref(), &path[1..]);
                (deeper.or(Some(item.span().start)), whole)
            }
            None => (None, false),
        },
        _ => (None, false),
    }
}

/// Where a problem is: its first setting the document has, else as much of
/// its own setting's path as the document has (a default judged: the table
/// it would be in).
fn place(document: &toml::de::DeTable<'_>, text: &str, keys: &[Vec<Seg>]) -> (usize, usize) {
    let whole = keys.iter().map(|k| locate(document, k)).find(|(_, whole)| *whole).and_then(|(at, _)| at);
    position(text, whole.or_else(|| keys.first().and_then(|k| locate(document, k).0)))
}

/// Sets aside the setting at byte `at` (the innermost key there, or the
/// scalar or array value there) so the rest can be read; its key, or `None`
/// when no single setting is there (a table missing a key, say).
fn remove_setting_at(table: &mut toml::de::DeTable<'_>, at: usize) -> Option<String> {
    use toml::de::DeValue;
    let mut here = None;
    for (k, value) in table.iter_mut() {
        let container = match value.get_mut() {
            DeValue::Table(inner) => {
                if let Some(removed) = remove_setting_at(inner, at) {
                    return Some(removed);
                }
                true
            }
            DeValue::Array(items) if items.iter().any(|item| matches!(item.get_ref(), DeValue::Table(_))) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(inner) = item.get_mut()
                        && let Some(removed) = remove_setting_at(inner, at)
                    {
                        return Some(removed);
                    }
                }
                true
            }
            _ => false,
        };
        if k.span().contains(&at) || (!container && value.span().contains(&at)) {
            here = Some(k.get_ref().to_string());
            break;
        }
    }
    let name = here?;
    table.remove(name.as_str());
    Some(name)
}

fn serde_fix(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; systemd/posd.toml lists every key with its default"
    } else if message.contains("missing field") {
        "add the key; systemd/posd.toml shows it with an example"
    } else if message.contains("invalid value: integer `-") {
        "a count or limit cannot be negative: give 0 or more"
    } else if message.contains("invalid type") {
        "write the value in the form the message names: text in double quotes, numbers and true or false without"
    } else {
        "correct the value to the form the message names (see systemd/posd.toml)"
    }
}

/// A configuration's text examined: the configuration when it could be
/// built, and every error in it, each at its line and column.
struct Examined<'t> {
    /// The parsed document, to locate settings in.
    document: toml::Spanned<toml::de::DeTable<'t>>,
    config: Option<Config>,
    findings: Vec<Finding>,
}

impl<'t> Examined<'t> {
    /// Syntax errors (all of them, and nothing else: the document is
    /// incomplete); else errors of form (a key unknown or missing, a value
    /// of the wrong type), each setting at fault set aside to read on; then,
    /// once a configuration could be built, [`Config::problems`].
    fn new(text: &'t str) -> Self {
        let (document, syntax) = toml::de::DeTable::parse_recoverable(text);
        let mut findings = Vec::new();
        if !syntax.is_empty() {
            for e in &syntax {
                findings.push(Finding {
                    error: true,
                    at: Some(position(text, e.span().map(|s| s.start))),
                    message: e.message().to_string(),
                    fix: "correct the TOML here: text in double quotes, one key = value per line, tables as [name] \
                          (see systemd/posd.toml)"
                        .into(),
                });
            }
            return Self { document, config: None, findings };
        }
        let mut repaired = document.clone();
        let mut removed: Vec<String> = Vec::new();
        let mut config = None;
        for _ in 0..64 {
            let e = match Config::deserialize(toml::de::Deserializer::from(repaired.clone())) {
                Ok(cfg) => {
                    config = Some(cfg);
                    break;
                }
                Err(e) => e,
            };
            let message = e.message().to_string();
            let start = e.span().map(|s| s.start);
            let missing = message.starts_with("missing field");
            // A key set aside below for its own error is missing next: not a second error.
            if !(missing && removed.iter().any(|k| message.contains(&format!("`{k}`")))) {
                let fix = serde_fix(&message).to_string();
                findings.push(Finding { error: true, at: Some(position(text, start)), message, fix });
            }
            match start.filter(|_| !missing).and_then(|at| remove_setting_at(repaired.get_mut(), at)) {
                Some(k) => removed.push(k),
                None => break,
            }
        }
        if let Some(cfg) = &config {
            for problem in cfg.problems() {
                // A setting set aside above was read as its default: judging
                // it, or another setting against it, would mislead.
                let set_aside =
                    problem.keys.iter().any(|k| locate(document.get_ref(), k).1 && !locate(repaired.get_ref(), k).1);
                if !set_aside {
                    let at = place(document.get_ref(), text, &problem.keys);
                    findings.push(Finding { error: true, at: Some(at), message: problem.message, fix: problem.fix });
                }
            }
        }
        Self { document, config, findings }
    }
}

/// Validates a config file for `posd check-config`: every error (the file
/// would not start posd; the same rules posd starts by) and warnings
/// (devices or files missing on this machine, files it cannot read here),
/// each with line and column, in the order of the file.
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
    let examined = Examined::new(&text);
    let mut findings = examined.findings;
    let Some(cfg) = examined.config else { return findings };
    let document = examined.document.get_ref();
    let at = |k: Vec<Seg>| Some(place(document, &text, &[k]));
    for (i, lane) in cfg.lanes.iter().enumerate() {
        if let Some(d) = &lane.reader.device
            && !d.exists()
        {
            findings.push(Finding {
                error: false,
                at: at(lane_key(i, &["reader", "device"])),
                message: format!("lane {}: the reader device {} does not exist on this machine", lane.id, d.display()),
                fix: "plug the reader in, or check the udev rule that names it (systemd/60-posd.rules)".into(),
            });
        }
        if let Some(printer) = &lane.printer
            && let Some(p) = printer.path()
            && !p.exists()
        {
            let k = if printer.device.is_some() { "device" } else { "usb" };
            findings.push(Finding {
                error: false,
                at: at(lane_key(i, &["printer", k])),
                message: format!("lane {}: the printer device {} does not exist on this machine", lane.id, p.display()),
                fix: "plug the printer in, or check the udev rule that names it".into(),
            });
        }
    }
    if let Some(message) = cfg.short_capture_window() {
        findings.push(Finding {
            error: false,
            at: at(key(&["capture_window"])),
            message,
            fix: "use the acquirer's capture window (for example \"2d\"), or \"0s\" to keep authorizations until \
                  captured or voided"
                .into(),
        });
    }
    for (label, k, file) in cfg.file_settings() {
        if !file.well_formed() {
            continue; // an error above
        }
        let credential_fix = || {
            if file.0.starts_with("credential:") {
                format!(
                    "put the file in {CREDENTIALS_SOURCE} (credential:{CREDENTIAL_PREFIX}F is the file F there; \
                     mode 0600, owner root)"
                )
            } else {
                "install the file, or correct the path".into()
            }
        };
        let (message, fix) = match file.installed_path() {
            None => (
                format!("{label}: the credential {:?} cannot be checked outside the service", file.0),
                credential_fix(),
            ),
            Some(p) if !p.exists() => {
                (format!("{label}: {} does not exist on this machine", p.display()), credential_fix())
            }
            Some(p) => match std::fs::File::open(&p) {
                Ok(_) => continue,
                Err(e) => (
                    format!("{label}: cannot read {} here ({e}), so its PEM was not checked", p.display()),
                    "run posd check-config as root to check it".into(),
                ),
            },
        };
        findings.push(Finding { error: false, at: at(k), message, fix });
    }
    findings.sort_by_key(|f| f.at);
    findings
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

    /// A configuration posd starts with; the tests below break it one way
    /// at a time. Lines: 1 state_dir, 2 [gateway], 3 url, 4 [[lane]], 5 id,
    /// 6 currency, 7 reader.
    const BASE: &str = "state_dir = \"/nonexistent/posd-config-test\"\n\
                        [gateway]\n\
                        url = \"https://gateway.example:443\"\n\
                        [[lane]]\n\
                        id = \"lane-1\"\n\
                        currency = \"EUR\"\n\
                        reader = { tcp = \"127.0.0.1:20007\" }\n";

    /// The errors check-config and start-up report for `text`: line, column, message.
    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        Examined::new(text)
            .findings
            .into_iter()
            .filter(|f| f.error)
            .map(|f| {
                let (line, col) = f.at.expect("every error has a place");
                (line, col, f.message)
            })
            .collect()
    }

    /// Asserts an error on `line` whose message contains `needle`.
    #[track_caller]
    fn assert_error(text: &str, line: usize, needle: &str) {
        let errors = errors(text);
        assert!(
            errors.iter().any(|(l, _, m)| *l == line && m.contains(needle)),
            "expected {needle:?} on line {line}, got {errors:#?}\nin:\n{text}"
        );
    }

    #[track_caller]
    fn assert_no_errors(text: &str) {
        let errors = errors(text);
        assert!(errors.is_empty(), "{errors:#?}\nin:\n{text}");
    }

    #[test]
    fn the_base_configuration_has_no_errors() {
        assert_no_errors(BASE);
        Config::parse(BASE).unwrap();
    }

    #[test]
    fn the_gateway_url_is_https_or_plain_http_to_this_machine() {
        let with = |url: &str| BASE.replace("https://gateway.example:443", url);
        for (url, needle) in [
            ("HTTP://192.0.2.10:80", "plain http:// is allowed only on loopback"),
            ("http://192.0.2.10", "not to 192.0.2.10"),
            ("http://localhost.example.net", "plain http://"),
            ("http://127.0.0.1:1@192.0.2.10", "user name or password"),
            ("https://user:secret@gateway.example", "user name or password"),
            ("ftp://192.0.2.10", "ftp:// is not one posd speaks"),
            ("FTP://192.0.2.10", "ftp:// is not one posd speaks"),
            ("gateway.example:443", "[gateway] url"),
            ("", "[gateway] url"),
        ] {
            assert_error(&with(url), 3, needle);
            let e = toml::from_str::<Config>(&with(url)).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains("[gateway] url"), "{url}: {e}");
        }
        for ok in [
            "https://gateway.example",
            "HTTPS://gateway.example:443",
            "http://127.0.0.1:7000",
            "http://127.10.0.1",
            "HTTP://LOCALHOST:7000",
            "http://[::1]:7000",
        ] {
            assert_no_errors(&with(ok));
        }
        let cfg = Config::parse(&with("HTTPS://Gateway.example:443")).unwrap();
        assert_eq!(cfg.gateway.url, "https://Gateway.example:443", "the scheme is read in lower case");
        assert_eq!(check_gateway_url("Https://gw"), Ok(true));
        assert_eq!(check_gateway_url("http://localhost:1"), Ok(false));
    }

    #[test]
    fn the_command_line_gateway_is_checked_too_in_demo_mode() {
        use crate::daemon::{Options, resolve};
        let demo = |url: &str| Options { demo: true, gateway: Some(url.into()), ..Default::default() };
        for bad in ["HTTP://192.0.2.10:80", "http://127.0.0.1:1@192.0.2.10", "ftp://192.0.2.10"] {
            let e = resolve(&demo(bad)).unwrap_err().to_string();
            assert!(e.contains("--gateway"), "{bad}: {e}");
        }
        assert_eq!(resolve(&demo("HTTPS://gateway.example")).unwrap().gateway.url, "https://gateway.example");
        assert_eq!(resolve(&demo("http://127.0.0.1:7000")).unwrap().gateway.url, "http://127.0.0.1:7000");
        let zero = Options { demo: true, gateway_timeout_ms: Some(0), ..Default::default() };
        assert!(resolve(&zero).unwrap_err().to_string().contains("--gateway-timeout-ms"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.toml");
        std::fs::write(&path, BASE).unwrap();
        let file = |url: &str| Options { config: Some(path.clone()), gateway: Some(url.into()), ..Default::default() };
        let e = resolve(&file("http://192.0.2.10")).unwrap_err().to_string();
        assert!(e.contains("--gateway") && e.contains("plain http://"), "{e}");
        assert_eq!(resolve(&file("http://[::1]:7000")).unwrap().gateway.url, "http://[::1]:7000");
    }

    #[test]
    fn zero_or_negative_durations_and_timeouts_are_refused() {
        for (setting, needle) in [
            ("health_interval = \"0s\"", "[offline] health_interval is 0s"),
            ("ageing_interval = \"0ms\"", "[offline] ageing_interval is 0s"),
            ("retry_first = \"0s\"", "[offline] retry_first is 0s"),
            ("retry_max = \"0s\"", "[offline] retry_max is 0s"),
            ("alert_after = \"0s\"", "[offline] alert_after is 0s"),
            ("stop_after = \"0h\"", "[offline] stop_after is 0s"),
            ("expire_after = \"0d\"", "[offline] expire_after is 0s"),
            ("health_interval = \"-5s\"", "is negative"),
            ("batch_size = -1", "invalid value"),
        ] {
            assert_error(&format!("{BASE}[offline]\n{setting}\n"), 9, needle);
        }
        assert_error(&format!("stop_timeout = \"0s\"\n{BASE}"), 1, "stop_timeout is 0s");
        assert_error(&format!("card_timeout = \"0s\"\n{BASE}"), 1, "card_timeout must be 1s to 10min");
        assert_no_errors(&format!("capture_window = \"0s\"\n{BASE}"));
        let gateway = BASE.replace("[gateway]\n", "[gateway]\nrequest_timeout_ms = 0\nconnect_timeout_ms = 0\n");
        assert_error(&gateway, 3, "[gateway] request_timeout_ms is 0");
        assert_error(&gateway, 4, "[gateway] connect_timeout_ms is 0");
        let negative = BASE.replace("[gateway]\n", "[gateway]\nrequest_timeout_ms = -1\n");
        assert_error(&negative, 3, "invalid value");
        assert_error(&format!("{BASE}[lane.offline]\nreadiness = \"0s\"\n"), 9, "readiness is 0s");
        let zvt = |timers: &str| {
            BASE.replace(
                "reader = { tcp = \"127.0.0.1:20007\" }",
                &format!("reader = {{ kind = \"zvt\", tcp = \"127.0.0.1:20007\"{timers} }}"),
            )
        };
        assert_no_errors(&zvt(""));
        assert_error(&zvt(", t3_ms = 0"), 7, "t3_ms is 0");
        assert_error(&zvt(", t4_ms = 0"), 7, "t4_ms is 0");
        // A zero interval panics tokio's interval: posd must not start with one.
        let e = Config::parse(&format!("{BASE}[offline]\nhealth_interval = \"0s\"\n")).unwrap_err().to_string();
        assert!(e.contains("config:9:1: error: [offline] health_interval is 0s"), "{e}");
    }

    #[test]
    fn two_lanes_on_one_device_are_refused() {
        let second =
            |reader: &str| format!("{BASE}[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\nreader = {{ {reader} }}\n");
        assert_no_errors(&second("tcp = \"127.0.0.1:20008\""));
        assert_error(&second("tcp = \"127.0.0.1:20007\""), 11, "which lane lane-1 already uses for its reader");
        let serial = |base: &str| base.replace("tcp = \"127.0.0.1:20007\"", "device = \"/dev/pos/reader\"");
        assert_error(&serial(&second("device = \"/dev/pos/reader\"")), 11, "already uses");
        let printers = |a: &str, b: &str| {
            format!(
                "{BASE}printer = {{ {a} }}\n[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\n\
                 reader = {{ tcp = \"127.0.0.1:20008\" }}\nprinter = {{ {b} }}\n"
            )
        };
        assert_no_errors(&printers("tcp = \"192.0.2.20:9100\"", "tcp = \"192.0.2.21:9100\""));
        assert_error(&printers("tcp = \"192.0.2.20:9100\"", "tcp = \"192.0.2.20:9100\""), 13, "lane lane-1");
        assert_error(&printers("usb = \"/dev/usb/lp0\"", "usb = \"/dev/usb/lp0\""), 13, "already uses");
        assert_error(&printers("device = \"/dev/pos/p\"", "device = \"/dev/pos/p\""), 13, "for its printer");
        // One lane's printer on its own reader's line.
        let same = format!("{BASE}printer = {{ tcp = \"127.0.0.1:20007\" }}\n");
        assert_error(&same, 8, "the reader and the printer are both on 127.0.0.1:20007");
    }

    #[test]
    fn tls_files_must_be_pem_when_they_can_be_read() {
        // Lines: 9 [api.tls], 10 cert_file, 11 key_file, 12 client_ca_file.
        fn text(cert: &Path, key: &Path, ca: &Path) -> String {
            format!(
                "listen = \"0.0.0.0:50051\"\n{BASE}[api.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\
                 client_ca_file = {ca:?}\n"
            )
        }
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let der = file("cert.der", b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00\xff".as_slice());
        let bad_cert = file("bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".as_slice());
        let key = file("key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".as_slice());
        let locked = file(
            "locked.pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".as_slice(),
        );
        let all_bad = text(&der, &bad_cert, &key);
        assert_error(&all_bad, 10, "is not PEM: it has no -----BEGIN CERTIFICATE----- block");
        assert_error(&all_bad, 11, "holds no private key, only PEM blocks of CERTIFICATE");
        assert_error(&all_bad, 12, "holds no certificate, only PEM blocks of PRIVATE KEY");
        let locked_key = text(&bad_cert, &locked, &bad_cert);
        assert_error(&locked_key, 10, "not an X.509 certificate");
        assert_error(&locked_key, 11, "encrypted private key");
        let gateway = BASE.replace("[gateway]\n", &format!("[gateway]\nca_file = {der:?}\n"));
        assert_error(&gateway, 3, "[gateway] ca_file");
        // A file or credential not readable here is left to start-up (check-config warns).
        let absent = text(Path::new("/nonexistent/c.pem"), Path::new("credential:posd_absent.key"), &bad_cert);
        let errs = errors(&absent);
        assert!(!errs.is_empty() && errs.iter().all(|(line, _, _)| *line == 12), "only client_ca_file: {errs:#?}");
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        std::fs::write(&path, b"").unwrap();
        let text = BASE.replace("/nonexistent/posd-config-test", &path.to_string_lossy());
        assert_error(&text, 1, "exists and is not a directory");
        assert_no_errors(&BASE.replace("/nonexistent/posd-config-test", &dir.path().to_string_lossy()));
    }

    #[test]
    fn lane_ids_are_non_empty_without_control_characters_and_unique() {
        assert_error(&BASE.replace("id = \"lane-1\"", "id = \"\""), 5, "id is empty");
        assert_error(&BASE.replace("id = \"lane-1\"", "id = \"lane\\u0007\""), 5, "contains a control character");
        let twice =
            format!("{BASE}[[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = {{ tcp = \"127.0.0.1:9\" }}\n");
        assert_error(&twice, 9, "lane lane-1 is configured twice");
    }

    #[test]
    fn log_levels_are_the_five_known_ones() {
        assert_error(&format!("{BASE}[log]\nlevel = \"verbose\"\n"), 9, "[log] level \"verbose\" is not a log level");
        assert_error(&format!("{BASE}[log]\nlevel = \"posd=debug\"\n"), 9, "is not a log level");
        assert_no_errors(&format!("{BASE}[log]\nlevel = \"debug\"\n"));
        assert_no_errors(&format!("{BASE}[log]\nlevel = \"WARN\"\n"));
    }

    #[test]
    fn offline_limits_and_counts_are_not_negative() {
        let text = format!("{BASE}[lane.offline]\nmax_payment_minor = -1\nmax_total_minor = -500\n");
        assert_error(&text, 9, "max_payment_minor is -1; a limit cannot be negative");
        assert_error(&text, 10, "max_total_minor is -500");
        assert_error(&format!("{BASE}[lane.offline]\nmax_payments = -3\n"), 9, "invalid value: integer `-3`");
        assert_error(&format!("{BASE}[lane.offline]\nmax_per_card = -1\n"), 9, "invalid value");
        assert_no_errors(&format!("{BASE}[lane.offline]\nmax_payment_minor = 0\nmax_total_minor = 0\n"));
    }

    #[test]
    fn currencies_are_active_iso_4217_codes() {
        assert_error(&BASE.replace("\"EUR\"", "\"EURO\""), 6, "currency must be an ISO 4217 code");
        let lower = errors(&BASE.replace("\"EUR\"", "\"eur\""));
        assert_eq!(lower.len(), 1, "{lower:#?}");
        let finding = Examined::new(&BASE.replace("\"EUR\"", "\"eur\"")).findings.remove(0);
        assert!(finding.fix.contains("\"EUR\""), "{finding:?}");
        assert_error(&format!("{BASE}[lane.offline]\ncurrencies = [\"EUR\", \"XYZ\"]\n"), 9, "\"XYZ\"");
        assert_no_errors(&BASE.replace("\"EUR\"", "\"JPY\""));
    }

    #[test]
    fn retry_first_is_at_most_retry_max() {
        let text = format!("{BASE}[offline]\nretry_first = \"1m\"\nretry_max = \"30s\"\n");
        assert_error(&text, 9, "[offline] retry_first (1m) is longer than retry_max (30s)");
        // Against the default retry_max (30s), it points at the key the file has.
        assert_error(&format!("{BASE}[offline]\nretry_first = \"31s\"\n"), 9, "longer than retry_max");
        assert_no_errors(&format!("{BASE}[offline]\nretry_first = \"30s\"\nretry_max = \"30s\"\n"));
        let order = format!("{BASE}[offline]\nalert_after = \"2d\"\n");
        assert_error(&order, 9, "alert_after (2d) is later than stop_after (1d)");
    }

    #[test]
    fn refunds_allowed_from_entries_are_callers_posd_can_match() {
        let text = format!(
            "{BASE}[api]\nrefunds_allowed_from = [\"uid=1001\", \"cn=register-1\", \"ip=192.0.2.31\", \"ip=::1\", \
             \"uid=abc\", \"uid=01\", \"ip=999.1.1.1\", \"ip=2001:DB8::1\", \"cn=\", \"user=1\", \"\"]\n"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 7, "{errs:#?}");
        assert!(errs.iter().all(|(line, _, _)| *line == 9), "{errs:#?}");
        for needle in [
            "\"uid=abc\" names no numeric user id",
            "\"uid=01\" never matches: posd writes that user as uid=1",
            "\"ip=999.1.1.1\" names no IP address",
            "\"ip=2001:DB8::1\" never matches: posd writes that address as ip=2001:db8::1",
            "\"cn=\" names no certificate",
            "\"user=1\" is not uid=N, cn=NAME or ip=ADDR",
            "\"\" is not uid=N, cn=NAME or ip=ADDR",
        ] {
            assert!(errs.iter().any(|(_, _, m)| m.contains(needle)), "{needle}: {errs:#?}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once_each_at_its_place() {
        // Semantic errors in four places.
        let text = format!(
            "{}[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\nreader = {{ tcp = \"127.0.0.1:20007\" }}\n\
             [offline]\nhealth_interval = \"0s\"\nretry_first = \"1m\"\n[log]\nlevel = \"loud\"\n",
            BASE.replace("https://gateway.example:443", "HTTP://192.0.2.10:80")
        );
        let errs = errors(&text);
        let want = [
            (3, 1, "plain http://"),
            (11, 12, "already uses"),
            (13, 1, "health_interval is 0s"),
            (14, 1, "retry_first (1m) is longer"),
            (16, 1, "not a log level"),
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (line, col, needle) in want {
            assert!(errs.iter().any(|(l, c, m)| (*l, *c) == (line, col) && m.contains(needle)), "{needle}: {errs:#?}");
        }
        // The start-up refuses with the same list.
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("5 errors in the configuration:"), "{e}");
        let e = toml::from_str::<Config>(&text).unwrap().validate().unwrap_err().to_string();
        assert!(e.starts_with("5 errors in the configuration:") && e.contains("fix: "), "{e}");

        // Errors of form too: each bad key is set aside and the rest read on,
        // semantic errors included.
        let text = format!(
            "card_timeout = 5\n{}[offline]\nbatch_size = -1\nhealth_interval = \"0s\"\n",
            BASE.replace("[gateway]\n", "[gateway]\nretries = 3\n")
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert_error(&text, 1, "invalid type");
        assert_error(&text, 4, "unknown field `retries`");
        assert_error(&text, 11, "invalid value: integer `-1`");
        assert_error(&text, 12, "health_interval is 0s");
        // A required key of the wrong type is one error, not also "missing".
        let errs = errors(&BASE.replace("\"https://gateway.example:443\"", "5"));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].2.contains("invalid type"), "{errs:#?}");
        // TOML syntax errors: all of them.
        let errs = errors(&format!("{BASE}[offline]\nretry_first = \"1s\nretry_max = 3s\n"));
        assert!(errs.iter().any(|(l, _, _)| *l == 9) && errs.iter().any(|(l, _, _)| *l == 10), "{errs:#?}");
    }
}
