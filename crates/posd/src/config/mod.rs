//! posd's configuration: a TOML file, command-line overrides, and the
//! built-in demo setup.
//!
//! - `model`: the serde structs of `posd.toml` and their defaults.
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
mod model;
mod overrides;
mod validate;

pub use check::{Finding, check};
pub use model::{
    ApiConfig, ApiTlsConfig, CREDENTIALS_DIRECTORY, Config, DEFAULT_CAPTURE_WINDOW, DEFAULT_CARD_TIMEOUT,
    DEFAULT_STOP_TIMEOUT, FileRef, GatewayConfig, LaneConfig, LaneOfflineConfig, LogConfig, MetricsConfig,
    OfflineConfig, PrinterConfig, ReaderConfig, ReceiptConfig, ReportConfig, Span, StoreConfig, log_level,
    lowercase_scheme, parse_span,
};
pub use overrides::{NO_CONFIG, Options, checked_overrides, resolve};
pub use validate::{Problem, Seg, check_gateway_url};

#[cfg(test)]
mod tests;
