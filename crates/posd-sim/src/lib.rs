//! The deterministic simulation of posd (issue #25): one seed is one
//! simulated store day, run in one thread under tokio's paused clock, with
//! every source of non-determinism drawn from the seed. See `simulate --help`
//! and docs/reliability.md.

pub mod check;
pub mod gateway;
pub mod line;
pub mod logscan;
pub mod nexo;
pub mod plan;
pub mod reader;
pub mod trace;
pub mod vfs;
pub mod world;
pub mod zvt;

pub use world::{Options, Outcome, run};
