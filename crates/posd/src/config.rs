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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    pub id: String,
    pub currency: String,
    pub reader: ReaderConfig,
    /// Receipt printer device (printing arrives with the ESC/POS work).
    #[serde(default)]
    pub printer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// Serial device path, e.g. /dev/pos/lane1-reader.
    pub device: Option<PathBuf>,
    /// Or a TCP address, e.g. 192.0.2.10:20007.
    pub tcp: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
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
            (Some(d), None) => Ok(ReaderLine::Serial(SerialSettings { baud: self.baud, ..SerialSettings::new(d) })),
            (None, Some(a)) => Ok(ReaderLine::Tcp(a.clone())),
            _ => anyhow::bail!("lane {lane}: reader needs exactly one of `device` (serial) or `tcp`"),
        }
    }

    /// Parses the `--reader` override: a device path, or `tcp:HOST:PORT`.
    pub fn from_arg(arg: &str) -> Self {
        match arg.strip_prefix("tcp:") {
            Some(addr) => Self { device: None, tcp: Some(addr.into()), baud: default_baud() },
            None => Self { device: Some(arg.into()), tcp: None, baud: default_baud() },
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

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
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
            if lane.currency.len() != 3 || !lane.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                anyhow::bail!(
                    "lane {}: currency must be an ISO 4217 code such as EUR, not {:?}",
                    lane.id,
                    lane.currency
                );
            }
            lane.reader.line(&lane.id)?;
        }
        Ok(())
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
        let bad = text.replace("[gateway]", "[gateway]\nretries = 5");
        let err = toml::from_str::<Config>(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `retries`"), "{err}");
    }

    #[test]
    fn reader_needs_exactly_one_line() {
        let r = ReaderConfig { device: Some("/dev/x".into()), tcp: Some("h:1".into()), baud: 9600 };
        assert!(r.line("lane-1").is_err());
        assert!(matches!(ReaderConfig::from_arg("tcp:127.0.0.1:20007").line("l").unwrap(), ReaderLine::Tcp(_)));
        assert!(matches!(ReaderConfig::from_arg("/dev/ttyUSB0").line("l").unwrap(), ReaderLine::Serial(_)));
    }
}
