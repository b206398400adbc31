//! The deterministic simulation of posd (issue #25): one seed is one
//! simulated store day, run in one thread under tokio's paused clock, with
//! every source of non-determinism drawn from the seed.

pub mod vfs;
