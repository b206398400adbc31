//! posd's configuration: a TOML file, command-line overrides, and the
//! built-in demo setup.
//!
//! - `model`: the serde structs of `posd.toml` and their defaults.
//! - `duration`: the one duration grammar (jiff's friendly format) and
//!   how messages write durations.
//! - `validate`: the rules a configuration must meet to start posd.
//! - `check`: reading a file by those rules, each error at its line and
//!   column (start-up and `posd check-config`), and check-config's warnings.
//! - `overrides`: the command line's [`Options`] and [`resolve`], the
//!   configuration in force; `demo`: the `--demo` setup.
//!
//! Nothing here depends on the daemon: it imports its command-line
//! [`Options`], [`resolve`] and the defaults it starts with from here.

mod check;
mod demo;
mod duration;
mod model;
mod overrides;
mod validate;

pub use check::{Finding, check};
pub use duration::{Span, parse_span};
pub use model::{
    ApiConfig, ApiTlsConfig, CREDENTIALS_DIRECTORY, Config, DEFAULT_CAPTURE_WINDOW, DEFAULT_CARD_TIMEOUT,
    DEFAULT_NEXO_ANSWER_TIMEOUT, DEFAULT_NEXO_CONNECT_TIMEOUT, DEFAULT_STOP_TIMEOUT, FileRef, GatewayConfig,
    LaneConfig, LaneOfflineConfig, LogConfig, MetricsConfig, OfflineConfig, PrinterConfig, ReaderConfig, ReceiptConfig,
    ReportConfig, StoreConfig, log_level, lowercase_scheme,
};
pub use overrides::{NO_CONFIG, Options, checked_overrides, resolve};
pub use validate::{Problem, Seg, check_gateway_url};

#[cfg(test)]
mod tests;
