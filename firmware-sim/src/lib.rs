//! Simulated lane devices: the far end of every serial or TCP line posd drives.
//!
//! # Layout
//! - [`reader`]: a host-authorized card reader speaking `pos.reader.v1` over
//!   the link layer; presents a configurable test card after configurable
//!   human delays and encrypts the card data like a real P2PE reader.

//! - [`printer`]: an ESC/POS receipt printer with status replies, a receive
//!   buffer with XON/XOFF, run-time faults, and [`paper`], which renders each
//!   job to text and PNG.
//! - [`zvt`]: a ZVT payment terminal that authorizes by itself, with
//!   scenarios (approve, decline, cancel, offline, busy, slow, disconnect,
//!   initialisation required), line faults, a journal and a batch.
//! - [`nexo`]: a nexo (Adyen Terminal API) terminal over HTTPS, encrypted
//!   or in clear, with scenarios, a journal answering TransactionStatus,
//!   reversals and reconciliation totals.
//! - [`lane`]: one lane in a box (card device and printer), driven by
//!   [`scenario`] files and a technician's commands.
//! - [`line`]: faults armed on a device's line (dropped ACK, bad CRC,
//!   silence) and [`transcript`], the record of every frame for support.

pub mod control;
pub mod lane;
pub mod line;
pub mod nexo;
pub mod paper;
pub mod printer;
pub mod reader;
pub mod scenario;
pub mod transcript;
pub mod zvt;
