//! posd: the lane payment daemon.
//!
//! # Layout
//! - [`config`]: TOML configuration, overrides and the demo setup (`model`,
//!   `validate`, `check`, `overrides`, `demo`).
//! - [`store`]: SQLite, the source of truth for payments and their audit log
//!   (`schema` with the migrations in `store/sql/`, `text` (kinds and
//!   statuses kept as text), `group` (group commit),
//!   `payments`, `history`, `refunds`, `events`, `outbox`, `gateway`,
//!   `probe`, `lock`).
//! - [`engine`]: runs payments through the `pos-engine` state machine,
//!   committing each transition before acting on it (`payment`, `recovery`,
//!   `background`, `queue`, `after_sale`, `printing`, and `terminal` with
//!   `terminal/after_sale` for ZVT lanes).
//! - [`lane`]: one lane's card device (a reader over the link layer, or a
//!   payment terminal); [`zvt`]: the register side of ZVT for lanes whose
//!   payment terminal authorizes itself;
//!   [`line`]: what their device lines share (how posd reaches a device,
//!   opening the line, the reconnect backoff [`printer`] uses too).
//! - [`printer`]: a lane's receipt printer; [`receipt`]: what a receipt says.
//! - [`gateway`]: the central gateway client (sent / not sent / unknown).
//! - [`nexo`]: the register side of nexo terminals (`tls`: the terminal's
//!   identity; `line`: one HTTPS POST per request, sent / not sent / in doubt).
//! - [`api`]: the register's gRPC API (`payments`, `after_sale`, `reports`,
//!   `devices`, `request`, `errors`, `identity`, `page_token`); [`convert`]:
//!   records to protobuf.
//! - [`report`]: business-day reports; [`admin`]: backup, export and the
//!   queue check beside a live posd.
//! - [`telemetry`]: latency histograms, the offline queue's state and the
//!   snapshot [`metrics`] serves as OpenMetrics text (`metrics/http`: its
//!   bounded HTTP listener).
//! - [`clock`]: the ageing clock; [`failpoint`]: failpoints for crash tests.
//! - [`daemon`]: start-up, demo mode (cargo feature `demo`) and serving; [`listen`]: the API's
//!   listeners within their bounds (connections, handshake time, accept
//!   errors); [`uds`]: the API's Unix socket (any `:authority` accepted on
//!   it: `authority`).
//!
//! No module imports one that imports it (directly or through others):
//! [`line`] and [`telemetry`] import no other posd module.

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
pub mod line;
pub mod listen;
pub mod metrics;
pub mod nexo;
pub mod printer;
pub mod receipt;
pub mod report;
pub mod store;
pub mod telemetry;
pub mod uds;
pub mod zvt;
