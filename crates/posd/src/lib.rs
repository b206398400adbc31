//! posd: the lane payment daemon.
//!
//! # Layout
//! - [`config`]: TOML configuration, overrides and the demo setup.
//! - [`store`]: SQLite, the source of truth for payments and their audit log.
//! - [`engine`]: runs payments through the `pos-engine` state machine,
//!   committing each transition before acting on it; recovery; reversals.
//! - [`lane`]: one lane's card reader over the link layer; [`zvt`]: the
//!   register side of ZVT for lanes whose payment terminal authorizes itself.
//! - [`gateway`]: the central gateway client (sent / not sent / unknown).
//! - [`api`]: the register's gRPC API; [`convert`]: records to protobuf.
//! - [`metrics`]: the OpenMetrics page and its bounded HTTP listener.
//! - [`daemon`]: start-up, demo mode and serving; [`listen`]: the API's
//!   listeners within their bounds (connections, handshake time, accept
//!   errors); [`uds`]: the API's Unix socket (any `:authority` accepted on it).

pub mod admin;
pub mod api;
pub mod clock;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod engine;
pub mod failpoint;
pub mod gateway;
pub mod lane;
pub mod listen;
pub mod metrics;
pub mod printer;
pub mod receipt;
pub mod report;
pub mod store;
pub mod uds;
pub mod zvt;
