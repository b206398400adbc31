//! The TOML model of `posd.toml`: its serde structs, their defaults, and
//! what settings turn into at start (a lane's reader and printer lines and
//! card device, its offline policy, the files the configuration names).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pos_link::transport::SerialSettings;
use serde::Deserialize;

use super::duration::Span;
use crate::line::ReaderLine;

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

/// Prometheus metrics (OpenMetrics 1.0.0 text, see `metrics`).
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
pub(super) const CREDENTIALS_SOURCE: &str = "/etc/posd/credentials";
pub(super) const CREDENTIAL_PREFIX: &str = "posd_";

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
    pub(super) fn well_formed(&self) -> bool {
        match self.0.strip_prefix("credential:") {
            Some(name) => !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            None => Path::new(&self.0).is_absolute(),
        }
    }

    /// Where `check-config`, run outside the service, finds the file: a
    /// credential `posd_F` is the file `F` of /etc/posd/credentials.
    pub(super) fn installed_path(&self) -> Option<PathBuf> {
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
    /// `zvt`: a payment terminal that authorizes by itself; `nexo`: one
    /// spoken to in nexo "Sale to POI" over HTTPS (Adyen's Terminal API).
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
    /// nexo: the terminal's URL, `https://HOST:8443/nexo`.
    #[serde(default)]
    pub url: Option<String>,
    /// nexo: the terminal's POIID, `<model>-<serial>` (its certificate must
    /// name `<poi_id>.test|live.terminal.adyen.com`).
    #[serde(default)]
    pub poi_id: Option<String>,
    /// nexo: the CA that signs the terminal's certificate (PEM).
    #[serde(default)]
    pub ca_file: Option<FileRef>,
    /// nexo: the shared key's identifier and version, as set up on the terminal.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub key_version: Option<u32>,
    /// nexo: the file holding the shared key's passphrase (ASCII; a secret,
    /// best given as `credential:NAME`). Absent: the unencrypted local API,
    /// for a test terminal on this machine only.
    #[serde(default)]
    pub passphrase_file: Option<FileRef>,
    /// nexo: the wait for a connection and for its TLS handshake, each (default 5s).
    #[serde(default)]
    pub connect_timeout: Option<Span>,
    /// nexo: the wait for a whole answer once a request is sent; a payment's
    /// lasts as long as the customer at the terminal (default 150s).
    #[serde(default)]
    pub answer_timeout: Option<Span>,
}

/// A nexo terminal's default `connect_timeout`.
pub const DEFAULT_NEXO_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A nexo terminal's default `answer_timeout`.
pub const DEFAULT_NEXO_ANSWER_TIMEOUT: Duration = Duration::from_secs(150);
/// The largest passphrase file posd reads.
pub(super) const MAX_PASSPHRASE_FILE: u64 = 4096;

/// The passphrase a file holds: its text without a final line break; why
/// not, as the end of a sentence (not ASCII, empty).
pub(super) fn passphrase_text(bytes: &[u8]) -> Result<String, String> {
    if !bytes.is_ascii() {
        return Err("holds a character that is not ASCII; the terminal reads the passphrase as Latin-1 bytes, \
                    so posd takes ASCII passphrases only"
            .into());
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.chars().any(|c| c.is_ascii_control()) {
        return Err("holds a control character (a line break before its end?)".into());
    }
    Ok(text.to_string())
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
pub(super) fn default_connect_timeout_ms() -> u64 {
    3000
}
pub(super) fn default_request_timeout_ms() -> u64 {
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
    pub fn device(&self, lane: &str, currency: &str) -> anyhow::Result<crate::lane::CardDeviceSettings> {
        use crate::lane::CardDeviceSettings;
        if self.kind == "nexo" {
            return Ok(CardDeviceSettings::Nexo(self.nexo(lane)?));
        }
        let line = self.line(lane)?;
        match self.kind.as_str() {
            "reader" => {
                if self.password.is_some() || self.t3_ms.is_some() || self.t4_ms.is_some() {
                    anyhow::bail!("lane {lane}: password, t3_ms and t4_ms apply to kind = \"zvt\" only");
                }
                Ok(CardDeviceSettings::Reader(line))
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
                Ok(CardDeviceSettings::Zvt(crate::zvt::ZvtSettings {
                    line,
                    password,
                    currency: currency_number,
                    t3,
                    t4,
                    // The terminal waits T3 for our 80 00: store well within it.
                    commit_bound: t3 * 3 / 5,
                }))
            }
            other => anyhow::bail!("lane {lane}: reader kind must be \"reader\" or \"zvt\" or \"nexo\", not {other:?}"),
        }
    }

    /// A nexo lane's terminal, loaded: its CA and passphrase files read,
    /// the key derived once. At start only: check-config judges the same
    /// settings one by one without reading secrets (`validate`).
    pub fn nexo(&self, lane: &str) -> anyhow::Result<crate::nexo::terminal::NexoSettings> {
        use crate::nexo::line::{LineSettings, TerminalLine, is_loopback_host, parse_url};
        use crate::nexo::terminal::{DEFAULT_HEALTH_INTERVAL, NexoSettings, check_poi_id, sale_id};
        let missing = |k: &str| anyhow::anyhow!("lane {lane}: reader kind = \"nexo\" needs {k}");
        if self.device.is_some() || self.tcp.is_some() {
            anyhow::bail!("lane {lane}: a nexo terminal is reached at its url, not by device or tcp");
        }
        let url = self.url.clone().ok_or_else(|| missing("url"))?;
        let (host, _, _) = parse_url(&url).map_err(|e| anyhow::anyhow!("lane {lane}: reader url {e}"))?;
        let poi_id = self.poi_id.clone().ok_or_else(|| missing("poi_id"))?;
        check_poi_id(&poi_id).map_err(|why| anyhow::anyhow!("lane {lane}: reader poi_id {poi_id:?} {why}"))?;
        let ca_pem =
            self.ca_file.as_ref().ok_or_else(|| missing("ca_file"))?.read(&format!("lane {lane}: reader ca_file"))?;
        let key = match &self.passphrase_file {
            Some(file) => {
                let passphrase = passphrase_text(&file.read(&format!("lane {lane}: reader passphrase_file"))?)
                    .map_err(|why| anyhow::anyhow!("lane {lane}: reader passphrase_file {why}"))?;
                let key_id = self.key_id.as_deref().ok_or_else(|| missing("key_id with passphrase_file"))?;
                let version = self.key_version.unwrap_or(1);
                if version == 0 {
                    anyhow::bail!("lane {lane}: reader key_version is 0; key versions start at 1");
                }
                Some(
                    pos_nexo::Key::derive(&passphrase, key_id, version)
                        .map_err(|e| anyhow::anyhow!("lane {lane}: reader key: {e}"))?,
                )
            }
            None if is_loopback_host(&host) => None,
            None => anyhow::bail!(
                "lane {lane}: without passphrase_file posd would speak to the terminal at {host} unencrypted, \
                 which it does only on this machine (127.0.0.0/8, ::1, localhost)"
            ),
        };
        let line = TerminalLine::new(LineSettings {
            url,
            ca_pem,
            poi_id,
            connect_timeout: self.connect_timeout.map_or(DEFAULT_NEXO_CONNECT_TIMEOUT, |s| s.0),
            answer_timeout: self.answer_timeout.map_or(DEFAULT_NEXO_ANSWER_TIMEOUT, |s| s.0),
        })
        .map_err(|e| anyhow::anyhow!("lane {lane}: reader: {e}"))?;
        Ok(NexoSettings {
            line: std::sync::Arc::new(line),
            key,
            sale_id: sale_id(lane),
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_ids: None,
        })
    }

    /// Parses the `--reader` override: a device path, or `tcp:HOST:PORT`.
    pub fn from_arg(arg: &str) -> Self {
        let (device, tcp) = match arg.strip_prefix("tcp:") {
            Some(addr) => (None, Some(addr.into())),
            None => (Some(arg.into()), None),
        };
        Self {
            kind: default_kind(),
            device,
            tcp,
            baud: default_baud(),
            password: None,
            t3_ms: None,
            t4_ms: None,
            url: None,
            poi_id: None,
            ca_file: None,
            key_id: None,
            key_version: None,
            passphrase_file: None,
            connect_timeout: None,
            answer_timeout: None,
        }
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
