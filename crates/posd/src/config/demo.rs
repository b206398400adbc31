//! The built-in demo setup: the configuration `posd --demo` runs with (the
//! daemon starts the simulated reader and gateway it names).

use std::path::PathBuf;

use super::duration::Span;
use super::model::{
    Config, DEFAULT_CAPTURE_WINDOW, DEFAULT_CARD_TIMEOUT, DEFAULT_STOP_TIMEOUT, GatewayConfig, LaneConfig,
    MetricsConfig, PrinterConfig, ReaderConfig, ReceiptConfig,
};
use super::overrides::Options;

/// The configuration `posd --demo` runs with: one lane with a simulated
/// reader (or the `--reader` given) and the gateway `--gateway` names;
/// metrics only where `--metrics` asks for them.
pub(super) fn demo_config(o: &Options) -> Config {
    Config {
        state_dir: o.state_dir.clone().unwrap_or_else(|| PathBuf::from("posd-demo-state")),
        listen: o.listen.clone().unwrap_or_else(|| "127.0.0.1:50051".into()),
        store_id: "demo".into(),
        gateway: GatewayConfig {
            url: o.gateway.clone().unwrap_or_default(),
            connect_timeout_ms: 3000,
            request_timeout_ms: o.gateway_timeout_ms.unwrap_or(30_000),
            status_attempts: 3,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        },
        lanes: vec![LaneConfig {
            id: "lane-1".into(),
            currency: "EUR".into(),
            reader: ReaderConfig::from_arg(o.reader.as_deref().unwrap_or("")),
            printer: o.printer.as_deref().map(PrinterConfig::from_arg),
            offline: Default::default(),
        }],
        offline: Default::default(),
        store: Default::default(),
        report: Default::default(),
        api: Default::default(),
        log: Default::default(),
        metrics: MetricsConfig { listen: o.metrics.clone() },
        receipt: ReceiptConfig { header: vec!["posd DEMO".into()], ..Default::default() },
        stop_timeout: Span(DEFAULT_STOP_TIMEOUT),
        card_timeout: Span(DEFAULT_CARD_TIMEOUT),
        capture_window: Span(DEFAULT_CAPTURE_WINDOW),
    }
}
