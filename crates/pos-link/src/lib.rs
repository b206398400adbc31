//! Link layer between posd and a card device (payment terminal or card reader).
//!
//! The link carries APDUs (`CLASS INSTR LEN data`) in one of two ways:
//! serial framing with DLE stuffing, CRC-16/KERMIT and ACK/NAK (RS-232 and
//! USB-serial), or bare APDUs on TCP. The protocol logic never does I/O and
//! never reads a clock; tokio code drives it.
//!
//! # Layout
//! - [`frame`]: serial frame encoding and the resynchronising byte decoder.
//! - [`apdu`]: APDU length prefixes and the TCP stream splitter.
//! - [`serial`]: sans-IO serial session (ACK/NAK, T1/T2, repeats).
//! - [`tcp`]: sans-IO bare-APDU session for TCP.
//! - [`core`]: the [`LinkCore`] trait both sessions implement, events and errors.
//! - `driver` (feature `io`): the tokio task that runs a [`LinkCore`] over any byte stream.
//! - `transport` (feature `io`): serial line settings and opening serial devices.
//! - `pty` (feature `pty`): PTY pairs, for simulators and tests.
//!
//! # Features
//! Without features the crate is the sans-IO codec and sessions only (what
//! pos-zvt needs): no tokio, tokio-serial or nix in its dependency tree.
//! - `io`: the async `Link` driver and opening serial devices (tokio, tokio-serial).
//! - `pty`: PTY pairs via nix (implies `io`).

pub mod apdu;
pub mod core;
#[cfg(feature = "io")]
pub mod driver;
pub mod frame;
#[cfg(feature = "pty")]
pub mod pty;
pub mod serial;
pub mod tcp;
#[cfg(feature = "io")]
pub mod transport;

pub use crate::core::{LinkCore, LinkError, LinkEvent, MessageId};
#[cfg(feature = "io")]
pub use driver::{LineCounters, Link, LinkReceiver, LinkSender};
pub use serial::{SerialLink, SerialTiming};
pub use tcp::TcpLink;
