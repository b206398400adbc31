//! The tokio task that runs a [`LinkCore`] over any byte stream.
//!
//! The task owns the stream: it reads, writes whatever the session wants to
//! send (never blocking reads on a slow writer, so both directions flow at
//! once), and fires the session's timers. Callers talk to it through a
//! [`LinkSender`] (send an APDU, wait until it is delivered) and a
//! [`LinkReceiver`] (APDUs from the peer).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::core::{LinkCore, LinkError, LinkEvent, MessageId};

type Reply = oneshot::Sender<Result<(), LinkError>>;

struct SendRequest {
    apdu: Vec<u8>,
    reply: Reply,
}

/// Sends APDUs over a running link. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LinkSender {
    tx: mpsc::Sender<SendRequest>,
}

impl LinkSender {
    /// Sends one APDU and waits until the peer accepted it (serial: ACK;
    /// TCP: written) or the link gave up on it.
    pub async fn send(&self, apdu: Vec<u8>) -> Result<(), LinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(SendRequest { apdu, reply }).await.map_err(|_| LinkError::Closed)?;
        rx.await.unwrap_or(Err(LinkError::Closed))
    }
}

/// APDUs received from the peer, in order.
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::UnboundedReceiver<Result<Vec<u8>, LinkError>>,
}

impl LinkReceiver {
    /// The next APDU. After the link ends this returns the reason once, then
    /// [`LinkError::Closed`].
    pub async fn recv(&mut self) -> Result<Vec<u8>, LinkError> {
        self.rx.recv().await.unwrap_or(Err(LinkError::Closed))
    }
}

/// Bytes that crossed a line, both ways, counted since the counters were
/// made. One set can outlive many links (a device that reconnects).
#[derive(Debug, Default)]
pub struct LineCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl LineCounters {
    /// Bytes written to the line (frames, stuffing, ACKs and NAKs).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the line.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Counts bytes moved by a caller that drives its line itself (posd's
    /// nexo terminal: its requests' and answers' bodies).
    pub fn count(&self, sent: u64, received: u64) {
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }
}

/// A running link: both halves of the caller's side.
#[derive(Debug)]
pub struct Link {
    pub sender: LinkSender,
    pub receiver: LinkReceiver,
}

impl Link {
    /// Spawns the driver task for `core` over `io`. The task ends when the
    /// stream ends or fails, or when every sender and the receiver are dropped.
    pub fn spawn<Io, C>(io: Io, core: C) -> Link
    where
        Io: AsyncRead + AsyncWrite + Send + 'static,
        C: LinkCore + Send + 'static,
    {
        Self::spawn_counted(io, core, Arc::default())
    }

    /// [`Link::spawn`], adding the bytes it moves to `counters`.
    pub fn spawn_counted<Io, C>(io: Io, core: C, counters: Arc<LineCounters>) -> Link
    where
        Io: AsyncRead + AsyncWrite + Send + 'static,
        C: LinkCore + Send + 'static,
    {
        let (tx, cmd_rx) = mpsc::channel(32);
        let (rx_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(io, core, cmd_rx, rx_tx, counters));
        Link { sender: LinkSender { tx }, receiver: LinkReceiver { rx } }
    }

    pub async fn send(&self, apdu: Vec<u8>) -> Result<(), LinkError> {
        self.sender.send(apdu).await
    }

    pub async fn recv(&mut self) -> Result<Vec<u8>, LinkError> {
        self.receiver.recv().await
    }
}

async fn run<Io, C>(
    io: Io,
    mut core: C,
    mut cmd_rx: mpsc::Receiver<SendRequest>,
    rx_tx: mpsc::UnboundedSender<Result<Vec<u8>, LinkError>>,
    counters: Arc<LineCounters>,
) where
    Io: AsyncRead + AsyncWrite + Send + 'static,
    C: LinkCore + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut pending: HashMap<MessageId, Reply> = HashMap::new();
    let mut next_id: MessageId = 0;
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut senders_open = true;
    // Bytes queued for writing and bytes written, counted since the start:
    // a received APDU is handed up only once the bytes queued before it
    // (its ACK) are written.
    let mut queued_total: u64 = 0;
    let mut written_total: u64 = 0;
    let mut held: std::collections::VecDeque<(u64, Vec<u8>)> = std::collections::VecDeque::new();

    let end = loop {
        while let Some(bytes) = core.poll_transmit() {
            queued_total += bytes.len() as u64;
            out.extend_from_slice(&bytes);
        }
        while let Some(event) = core.poll_event() {
            match event {
                LinkEvent::Received(apdu) => held.push_back((queued_total, apdu)),
                LinkEvent::Delivered(id) => {
                    if let Some(reply) = pending.remove(&id) {
                        let _ = reply.send(Ok(()));
                    }
                }
                LinkEvent::Failed { id, error } => {
                    tracing::warn!(%error, "link: frame not delivered");
                    if let Some(reply) = pending.remove(&id) {
                        let _ = reply.send(Err(error));
                    }
                }
                LinkEvent::Repeated { id, cause } => tracing::debug!(id, %cause, "link: repeating frame"),
                LinkEvent::Rejected(reason) => tracing::debug!(%reason, "link: dropped a bad frame"),
            }
        }
        while held.front().is_some_and(|(mark, _)| *mark <= written_total) {
            let (_, apdu) = held.pop_front().expect("checked above");
            // The receiver may be gone (a caller that only sends); keep ACKing.
            let _ = rx_tx.send(Ok(apdu));
        }
        if let Some(e) = core.fatal_error() {
            break e;
        }
        if !senders_open && rx_tx.is_closed() && pending.is_empty() && out.is_empty() {
            break LinkError::Closed;
        }
        let deadline = core.poll_timeout();
        let sleep_until = deadline.unwrap_or_else(|| now() + Duration::from_secs(3600));
        tokio::select! {
            // Bytes that already arrived are read before any timer fires, so a
            // slow task does not turn a good frame into a T1 or T2 error.
            biased;
            read = rd.read(&mut buf) => match read {
                Ok(0) => break LinkError::Closed,
                Ok(n) => {
                    counters.received.fetch_add(n as u64, Ordering::Relaxed);
                    core.handle_input(&buf[..n], now());
                }
                Err(e) => break e.into(),
            },
            cmd = cmd_rx.recv(), if senders_open => match cmd {
                Some(SendRequest { apdu, reply }) => {
                    next_id += 1;
                    match core.send(next_id, apdu, now()) {
                        Ok(()) => { pending.insert(next_id, reply); }
                        Err(e) => { let _ = reply.send(Err(e)); }
                    }
                }
                None => senders_open = false,
            },
            written = wr.write(&out), if !out.is_empty() => match written {
                Ok(0) => break LinkError::Closed,
                Ok(n) => {
                    out.drain(..n);
                    written_total += n as u64;
                    counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                    if out.is_empty() && let Err(e) = wr.flush().await {
                        break e.into();
                    }
                }
                Err(e) => break e.into(),
            },
            _ = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                core.handle_timeout(now());
            }
        }
    };
    tracing::debug!(reason = %end, "link: driver stopped");
    for (_, reply) in pending {
        let _ = reply.send(Err(end.clone()));
    }
    let _ = rx_tx.send(Err(end));
}

/// Now on tokio's clock (the system's, or a test's paused one), as the
/// link's timers count time: T1/T2 deadlines are slept on with tokio, so
/// they must be read from the same clock.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
