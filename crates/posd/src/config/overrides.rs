//! The command line's part of the configuration: [`Options`], the
//! overrides checked by the rules of the settings they replace, and
//! [`resolve`], the configuration in force (a file, or the demo setup, and
//! the overrides).

use std::path::PathBuf;

use super::demo::demo_config;
use super::model::{Config, PrinterConfig, ReaderConfig, lowercase_scheme};
use super::validate::{check_gateway_url, error_list, is_loopback_addr};

/// Command-line choices that shape the daemon.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub demo: bool,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// `--metrics HOST:PORT`: serve `GET /metrics` there (`[metrics] listen`).
    pub metrics: Option<String>,
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
    if let Some(m) = &o.metrics
        && !is_loopback_addr(m)
    {
        errors.push(format!(
            "--metrics {m:?}: metrics are served on a loopback HOST:PORT only\n  \
             fix: give a loopback address and port, e.g. 127.0.0.1:9464"
        ));
    }
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

/// What posd says when it is given neither `--config` nor `--demo` (a
/// posd built without the cargo feature `demo` has no demo mode to offer).
pub const NO_CONFIG: &str = if cfg!(feature = "demo") {
    "posd: no configuration given.\n\
    For a store lane:   posd --config /etc/posd/posd.toml\n\
    To try posd with a simulated card reader and gateway:   posd --demo\n\
    (posd never falls back to demo mode by itself, so a misconfigured lane cannot approve against a simulator.)"
} else {
    "posd: no configuration given.\n\
    For a store lane:   posd --config /etc/posd/posd.toml\n\
    (This posd was built without the cargo feature `demo`, so it has no demo mode.)"
};

/// The configuration in force: the file (or demo defaults) plus overrides.
pub fn resolve(o: &Options) -> anyhow::Result<Config> {
    // --gateway and --gateway-timeout-ms by the rules of the settings they replace.
    let checked = checked_overrides(o)?;
    let o = &checked;
    let mut cfg = match (&o.config, o.demo) {
        (Some(_), true) => anyhow::bail!("--demo and --config exclude each other"),
        (None, false) => anyhow::bail!("{NO_CONFIG}"),
        (None, true) => return Ok(demo_config(o)),
        (Some(path), false) => Config::load(path)?,
    };
    if let Some(d) = &o.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(l) = &o.listen {
        cfg.listen = l.clone();
    }
    if let Some(m) = &o.metrics {
        cfg.metrics.listen = Some(m.clone());
    }
    if let Some(g) = &o.gateway {
        cfg.gateway.url = g.clone();
    }
    if let Some(t) = o.gateway_timeout_ms {
        cfg.gateway.request_timeout_ms = t;
    }
    if o.reader.is_some() || o.printer.is_some() {
        if cfg.lanes.len() != 1 {
            anyhow::bail!("--reader and --printer apply to a single lane; the config has {}", cfg.lanes.len());
        }
        if let Some(r) = &o.reader {
            cfg.lanes[0].reader = ReaderConfig::from_arg(r);
        }
        if let Some(p) = &o.printer {
            cfg.lanes[0].printer = Some(PrinterConfig::from_arg(p));
        }
    }
    cfg.validate()?;
    Ok(cfg)
}
