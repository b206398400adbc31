//! What every link session (serial or TCP) offers its driver.

use std::time::Instant;

use crate::apdu::ApduError;
use crate::frame::FrameError;

/// Identifies one outgoing APDU, chosen by the caller of [`LinkCore::send`].
pub type MessageId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer did not accept a frame after the first send and all repeats.
    #[error("transmission error: no ACK after {attempts} attempts (last: {last_cause})")]
    Transmission { attempts: u8, last_cause: RetryCause },
    #[error("invalid APDU: {0}")]
    Apdu(#[from] ApduError),
    #[error("link I/O error: {0}")]
    Io(String),
    #[error("link closed by the peer")]
    Closed,
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e.to_string())
    }
}

/// Why a frame had to be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    Nak,
    AckTimeout,
}

impl std::fmt::Display for RetryCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RetryCause::Nak => "NAK",
            RetryCause::AckTimeout => "ACK timeout (T2)",
        })
    }
}

/// Something the session reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// An APDU from the peer (already ACKed on serial links).
    Received(Vec<u8>),
    /// The peer accepted the APDU sent under this id.
    Delivered(MessageId),
    /// The APDU sent under this id could not be delivered.
    Failed { id: MessageId, error: LinkError },
    /// A frame was sent again after a NAK or a T2 timeout.
    Repeated { id: MessageId, cause: RetryCause },
    /// An incoming frame was dropped (and NAKed, on serial links).
    Rejected(FrameError),
}

/// A sans-IO link session: bytes and instants in; bytes, events and a deadline out.
///
/// The driver loop: feed bytes with [`handle_input`](Self::handle_input), call
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
/// passes, write everything [`poll_transmit`](Self::poll_transmit) returns (in
/// order, whole), and act on [`poll_event`](Self::poll_event).
pub trait LinkCore {
    /// Queues an APDU for sending. Its fate comes back as `Delivered` or `Failed`.
    fn send(&mut self, id: MessageId, apdu: Vec<u8>, now: Instant) -> Result<(), LinkError>;
    /// Bytes read from the peer.
    fn handle_input(&mut self, bytes: &[u8], now: Instant);
    /// Called at or after the instant returned by `poll_timeout`.
    fn handle_timeout(&mut self, now: Instant);
    /// The next buffer to write.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// The next event for the caller.
    fn poll_event(&mut self) -> Option<LinkEvent>;
    /// When `handle_timeout` must be called next, if a timer runs.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A fatal protocol error that ends the session (e.g. an unframeable TCP stream).
    fn fatal_error(&self) -> Option<LinkError> {
        None
    }
}
