//! One lane's card reader: keeps the link up (reconnecting after an unplug),
//! asks for device info, and routes the reader's messages to the payment that
//! is collecting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_link::transport::{SerialSettings, open_serial};
use pos_link::{LineCounters, Link, SerialLink, SerialTiming, TcpLink, apdu};
use pos_mask::scrub;
use pos_proto::reader::{
    self, Cancel, CardResult, CollectCard, FailReason, GetDeviceInfo, HostMessage, ReaderMessage, ShowResult, Stage,
    host_message, reader_message,
};
use prost::Message;
use tokio::sync::mpsc;

/// How posd reaches a reader.
#[derive(Debug, Clone)]
pub enum ReaderLine {
    Serial(SerialSettings),
    Tcp(String),
}

impl std::fmt::Display for ReaderLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReaderLine::Serial(s) => write!(f, "serial {} @ {} baud", s.path.display(), s.baud),
            ReaderLine::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// A lane's card device.
#[derive(Debug, Clone)]
pub enum CardDevice {
    /// A host-authorized card reader: posd sends its card data to the gateway.
    Reader(ReaderLine),
    /// A payment terminal that authorizes by itself (ZVT).
    Zvt(crate::zvt::ZvtSettings),
}

/// What the collecting payment hears from the reader. The reader's own
/// texts in it (progress, failure) are scrubbed ([`pos_mask::scrub`]).
#[derive(Debug)]
pub enum ReaderEvent {
    Progress { stage: Stage, text: String },
    Card(Box<CardResult>),
    Failed { reason: FailReason, message: String },
    Disconnected(String),
}

#[derive(Debug, Clone, Default)]
pub struct ReaderState {
    pub connected: bool,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub healthy: bool,
    pub detail: String,
    /// Times the device connected since posd started: a disconnect and
    /// reconnect between two looks still shows.
    pub connections: u64,
}

impl ReaderState {
    /// The device identified itself (a repeated identification is not a new connection).
    pub fn connect(&mut self, identified: ReaderState) {
        let connections = self.connections + u64::from(!self.connected);
        *self = ReaderState { connected: true, connections, ..identified };
    }

    /// The line went down, or never came up.
    pub fn lose(&mut self, detail: String) {
        *self = ReaderState { detail, connections: self.connections, ..ReaderState::default() };
    }
}

type Collector = (String, mpsc::UnboundedSender<ReaderEvent>);

pub struct Lane {
    pub id: String,
    pub currency: String,
    pub line: ReaderLine,
    /// Offline approval limits of this lane.
    pub offline: pos_engine::offline::OfflinePolicy,
    /// The lane's receipt printer, when it has one.
    pub printer: Option<crate::printer::Printer>,
    /// The payment terminal, when the lane's card device is one (ZVT).
    pub zvt: Option<Arc<crate::zvt::ZvtTerminal>>,
    /// Bytes on the card device's line, both ways, over every connection.
    pub line_bytes: Arc<LineCounters>,
    cmd_tx: mpsc::Sender<HostMessage>,
    collector: Arc<Mutex<Option<Collector>>>,
    state: Arc<Mutex<ReaderState>>,
}

impl Lane {
    /// Starts the lane's reader task.
    pub fn spawn(
        id: String,
        currency: String,
        device: CardDevice,
        offline: pos_engine::offline::OfflinePolicy,
        printer: Option<crate::printer::Printer>,
    ) -> Arc<Lane> {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let state = Arc::new(Mutex::new(ReaderState::default()));
        let line_bytes = Arc::new(LineCounters::default());
        let (line, zvt) = match device {
            CardDevice::Reader(line) => (line, None),
            CardDevice::Zvt(settings) => {
                let terminal =
                    crate::zvt::ZvtTerminal::spawn(id.clone(), settings.clone(), state.clone(), line_bytes.clone());
                (settings.line, Some(terminal))
            }
        };
        let lane = Arc::new(Lane {
            id,
            currency,
            line,
            offline,
            printer,
            zvt,
            line_bytes,
            cmd_tx,
            collector: Arc::new(Mutex::new(None)),
            state,
        });
        if lane.zvt.is_none() {
            tokio::spawn(run(
                lane.id.clone(),
                lane.line.clone(),
                cmd_rx,
                lane.collector.clone(),
                lane.state.clone(),
                lane.line_bytes.clone(),
            ));
        }
        lane
    }

    /// `zvt` for a payment terminal that authorizes by itself, else `reader`.
    pub fn device_kind(&self) -> &'static str {
        if self.zvt.is_some() { crate::store::DEVICE_ZVT } else { "reader" }
    }

    pub fn reader_state(&self) -> ReaderState {
        self.state.lock().unwrap().clone()
    }

    /// Asks the reader for a card; the returned channel carries what follows.
    pub async fn collect(&self, req: CollectCard) -> Result<mpsc::UnboundedReceiver<ReaderEvent>, String> {
        if !self.state.lock().unwrap().connected {
            return Err(format!("the card reader of {} is not connected ({})", self.id, self.line));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *self.collector.lock().unwrap() = Some((req.payment_id.clone(), tx));
        self.send(host_message::Body::CollectCard(req)).await?;
        Ok(rx)
    }

    /// Stops routing reader messages for this payment.
    pub fn release(&self, payment_id: &str) {
        let mut c = self.collector.lock().unwrap();
        if c.as_ref().is_some_and(|(id, _)| id == payment_id) {
            *c = None;
        }
    }

    pub async fn cancel(&self, payment_id: &str) {
        self.release(payment_id);
        if let Err(e) = self.send(host_message::Body::Cancel(Cancel { payment_id: payment_id.into() })).await {
            tracing::warn!(lane = %self.id, error = %e, "could not tell the reader to cancel");
        }
    }

    pub async fn show_result(&self, payment_id: &str, approved: bool, text: &str) {
        let msg = ShowResult { payment_id: payment_id.into(), approved, display_text: text.into() };
        if let Err(e) = self.send(host_message::Body::ShowResult(msg)).await {
            tracing::debug!(lane = %self.id, error = %e, "could not show the result on the reader");
        }
    }

    async fn send(&self, body: host_message::Body) -> Result<(), String> {
        self.cmd_tx.send(HostMessage { body: Some(body) }).await.map_err(|_| "the reader task has stopped".to_string())
    }
}

/// Opens a card device's line (the native reader's or a ZVT terminal's:
/// both use the same framing).
pub(crate) async fn open(line: &ReaderLine, counters: &Arc<LineCounters>) -> Result<Link, String> {
    match line {
        ReaderLine::Serial(s) => {
            let port = open_serial(s).map_err(|e| e.to_string())?;
            Ok(Link::spawn_counted(port, SerialLink::new(SerialTiming::default()), counters.clone()))
        }
        ReaderLine::Tcp(addr) => {
            let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))?
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Ok(Link::spawn_counted(stream, TcpLink::new(), counters.clone()))
        }
    }
}

fn encode(msg: HostMessage) -> Vec<u8> {
    apdu::build(reader::APDU_CLASS, reader::INSTR_HOST, &msg.encode_to_vec()).expect("host messages are small")
}

fn decode(bytes: &[u8]) -> Option<reader_message::Body> {
    let (h, data) = apdu::parse(bytes).ok()?;
    if h.class != reader::APDU_CLASS || h.instr != reader::INSTR_READER {
        return None;
    }
    ReaderMessage::decode(data).ok()?.body
}

async fn run(
    lane: String,
    line: ReaderLine,
    mut cmd_rx: mpsc::Receiver<HostMessage>,
    collector: Arc<Mutex<Option<Collector>>>,
    state: Arc<Mutex<ReaderState>>,
    line_bytes: Arc<LineCounters>,
) {
    let mut reconnect = Reconnect::default();
    let mut last_error = String::new();
    loop {
        let mut link = match open(&line, &line_bytes).await {
            Ok(link) => link,
            Err(e) => {
                if e != last_error {
                    tracing::warn!(%lane, error = %e, "card reader unavailable; retrying");
                    last_error = e.clone();
                }
                // Commands meant for a reader that is not there are void; a
                // payment waiting for one hears that the reader is gone.
                while cmd_rx.try_recv().is_ok() {}
                if let Some((_, tx)) = collector.lock().unwrap().take() {
                    let _ = tx.send(ReaderEvent::Disconnected(e.clone()));
                }
                reconnect.wait().await;
                continue;
            }
        };
        reconnect.opened();
        last_error.clear();
        tracing::info!(%lane, %line, "card reader link open; asking it to identify");
        // The reader counts as connected once it has identified itself. A
        // collection left over from before (a posd restart) is canceled first.
        let mut pending: std::collections::VecDeque<Vec<u8>> = [
            host_message::Body::Cancel(Cancel { payment_id: String::new() }),
            host_message::Body::GetDeviceInfo(GetDeviceInfo {}),
        ]
        .into_iter()
        .map(|b| encode(HostMessage { body: Some(b) }))
        .collect();
        let reason = loop {
            if let Some(apdu) = pending.pop_front() {
                if let Err(e) = link.send(apdu).await {
                    break e.to_string();
                }
                continue;
            }
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(m) => pending.push_back(encode(m)),
                    None => return,
                },
                got = link.recv() => match got {
                    Ok(bytes) => route(&lane, &bytes, &collector, &state),
                    Err(e) => break e.to_string(),
                },
            }
        };
        tracing::warn!(%lane, %reason, "card reader link down");
        state.lock().unwrap().lose(reason.clone());
        if let Some((_, tx)) = collector.lock().unwrap().take() {
            let _ = tx.send(ReaderEvent::Disconnected(reason));
        }
        // A line that opens and dies at once (a PTY whose other end is gone,
        // a port that accepts and closes) must not make posd spin.
        reconnect.wait().await;
    }
}

/// When to open a device line again: after 200 ms, doubling up to 5 s
/// while opening fails or links die young, and from 200 ms again once a link
/// has stayed up for 10 s.
pub(crate) struct Reconnect {
    delay: Duration,
    opened: Option<tokio::time::Instant>,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(5);
    const STABLE: Duration = Duration::from_secs(10);

    /// A link is open (its life is measured from now).
    pub(crate) fn opened(&mut self) {
        self.opened = Some(tokio::time::Instant::now());
    }

    /// How long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        if self.opened.take().is_some_and(|at| at.elapsed() >= Self::STABLE) {
            self.delay = Self::FIRST;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::LONGEST);
        delay
    }

    /// Waits before the next attempt.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { delay: Self::FIRST, opened: None }
    }
}

fn route(lane: &str, bytes: &[u8], collector: &Mutex<Option<Collector>>, state: &Mutex<ReaderState>) {
    let Some(body) = decode(bytes) else {
        tracing::warn!(%lane, len = bytes.len(), "ignoring an APDU that is not a reader message");
        return;
    };
    let (payment_id, event) = match body {
        reader_message::Body::DeviceInfo(d) => {
            // Scrubbed before anything is logged or kept: a reader's strings
            // are its own, card numbers and line breaks included.
            let identified = ReaderState {
                serial: scrub(&d.serial),
                model: scrub(&d.model),
                firmware: scrub(&d.firmware_version),
                healthy: d.healthy,
                detail: scrub(&d.health_detail),
                ..ReaderState::default()
            };
            tracing::info!(%lane, serial = %identified.serial, firmware = %identified.firmware, healthy = d.healthy, "card reader identified");
            state.lock().unwrap().connect(identified);
            return;
        }
        reader_message::Body::Progress(p) => {
            let stage = Stage::try_from(p.stage).unwrap_or(Stage::Unspecified);
            (p.payment_id, ReaderEvent::Progress { stage, text: scrub(&p.display_text) })
        }
        reader_message::Body::CardResult(c) => (c.payment_id.clone(), ReaderEvent::Card(Box::new(c))),
        reader_message::Body::CollectFailed(f) => (
            f.payment_id,
            ReaderEvent::Failed {
                reason: FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified),
                message: scrub(&f.message),
            },
        ),
    };
    let c = collector.lock().unwrap();
    match c.as_ref() {
        Some((id, tx)) if *id == payment_id => {
            let _ = tx.send(event);
        }
        _ => {
            let payment_id = scrub(&payment_id);
            tracing::debug!(%lane, %payment_id, "reader message for a payment that is no longer collecting");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Reconnect;

    /// The delays `wait` takes, on tokio's paused clock.
    async fn waits(r: &mut Reconnect, n: usize, up_for: Duration) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            r.opened();
            tokio::time::sleep(up_for).await;
            let t = tokio::time::Instant::now();
            r.wait().await;
            out.push(t.elapsed().as_millis() as u64);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn links_that_die_young_back_off_and_a_stable_one_starts_over() {
        let mut r = Reconnect::default();
        assert_eq!(waits(&mut r, 7, Duration::ZERO).await, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(waits(&mut r, 2, Duration::from_secs(10)).await, [200, 200], "after 10 s up");
        assert_eq!(waits(&mut r, 3, Duration::from_secs(9)).await, [400, 800, 1600], "9 s is young");
    }
}
