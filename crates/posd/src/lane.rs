//! One lane's card device, [`CardDevice`]: a card reader, whose link this
//! module keeps up (reconnecting after an unplug), asks for device info, and
//! whose messages it routes to the payment that is collecting; or a payment
//! terminal that authorizes by itself (ZVT, driven by [`crate::zvt`]; or
//! nexo, spoken to by [`crate::nexo`]).

use std::sync::{Arc, Mutex};

use pos_link::{LineCounters, apdu};
use pos_mask::scrub;
use pos_proto::reader::{
    self, Cancel, CardResult, CollectCard, FailReason, GetDeviceInfo, HostMessage, ReaderMessage, ShowResult, Stage,
    host_message, reader_message,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::line::{ReaderLine, ReaderState, Reconnect, open};
use crate::nexo::terminal::{NexoSettings, NexoTerminal};
use crate::store::DeviceKind;
use crate::zvt::ZvtTerminal;

/// Which card device a lane runs, and how to reach it (from the lane's
/// configuration); [`Lane::spawn`] starts it as a [`CardDevice`].
#[derive(Debug, Clone)]
pub enum CardDeviceSettings {
    /// A host-authorized card reader: posd sends its card data to the gateway.
    Reader(ReaderLine),
    /// A payment terminal that authorizes by itself (ZVT).
    Zvt(crate::zvt::ZvtSettings),
    /// A payment terminal that authorizes by itself, spoken to in nexo
    /// "Sale to POI" over HTTPS (Adyen's Terminal API, local).
    Nexo(NexoSettings),
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

type Collector = (String, mpsc::UnboundedSender<ReaderEvent>);

/// The card device a lane runs. The engine matches on it only where the
/// kinds differ (which payment driver, whose end of day), with no catch-all
/// arm, as do [`Lane`]'s methods: a new kind (the nexo terminal, issue #23)
/// is one more variant, and the compiler names every place that must learn it.
pub enum CardDevice {
    /// A host-authorized card reader: posd sends its card data to the gateway.
    Reader(Reader),
    /// A payment terminal that authorizes by itself (ZVT).
    Zvt(Arc<ZvtTerminal>),
    /// A payment terminal that authorizes by itself (nexo).
    Nexo(Arc<NexoTerminal>),
}

impl CardDevice {
    /// The kind recorded with each payment taken on the device.
    pub fn kind(&self) -> DeviceKind {
        match self {
            CardDevice::Reader(_) => DeviceKind::Reader,
            CardDevice::Zvt(_) => DeviceKind::Zvt,
            CardDevice::Nexo(_) => DeviceKind::Nexo,
        }
    }
}

/// What only a card reader has: the command channel to its task and the
/// payment its messages are routed to.
pub struct Reader {
    cmd_tx: mpsc::Sender<HostMessage>,
    collector: Arc<Mutex<Option<Collector>>>,
}

pub struct Lane {
    pub id: String,
    pub currency: String,
    /// The card device's line.
    pub line: ReaderLine,
    /// Offline approval limits of this lane.
    pub offline: pos_engine::offline::OfflinePolicy,
    /// The lane's receipt printer, when it has one.
    pub printer: Option<crate::printer::Printer>,
    /// The lane's card device.
    pub device: CardDevice,
    /// Bytes on the card device's line, both ways, over every connection.
    pub line_bytes: Arc<LineCounters>,
    /// The card device's state (connected, identity), kept by its task.
    state: Arc<Mutex<ReaderState>>,
}

impl Lane {
    /// Starts the task of the lane's card device.
    pub fn spawn(
        id: String,
        currency: String,
        device: CardDeviceSettings,
        offline: pos_engine::offline::OfflinePolicy,
        printer: Option<crate::printer::Printer>,
    ) -> Arc<Lane> {
        let state = Arc::new(Mutex::new(ReaderState::default()));
        let line_bytes = Arc::new(LineCounters::default());
        let (line, device) = match device {
            CardDeviceSettings::Reader(line) => {
                let (cmd_tx, cmd_rx) = mpsc::channel(16);
                let collector = Arc::new(Mutex::new(None));
                tokio::spawn(run(
                    id.clone(),
                    line.clone(),
                    cmd_rx,
                    collector.clone(),
                    state.clone(),
                    line_bytes.clone(),
                ));
                (line, CardDevice::Reader(Reader { cmd_tx, collector }))
            }
            CardDeviceSettings::Zvt(settings) => {
                let terminal = ZvtTerminal::spawn(id.clone(), settings.clone(), state.clone(), line_bytes.clone());
                (settings.line, CardDevice::Zvt(terminal))
            }
            CardDeviceSettings::Nexo(settings) => {
                let line = ReaderLine::Https(settings.line.url().to_string());
                (line, CardDevice::Nexo(NexoTerminal::spawn(id.clone(), settings, state.clone(), line_bytes.clone())))
            }
        };
        Arc::new(Lane { id, currency, line, offline, printer, device, line_bytes, state })
    }

    /// The lane's card device: a payment terminal that authorizes by itself,
    /// or a card reader.
    pub fn device_kind(&self) -> DeviceKind {
        self.device.kind()
    }

    /// The lane's ZVT payment terminal; `None` on any other card device.
    pub fn zvt(&self) -> Option<&Arc<ZvtTerminal>> {
        match &self.device {
            CardDevice::Zvt(terminal) => Some(terminal),
            CardDevice::Reader(_) | CardDevice::Nexo(_) => None,
        }
    }

    /// The lane's nexo payment terminal; `None` on any other card device.
    pub fn nexo(&self) -> Option<&Arc<NexoTerminal>> {
        match &self.device {
            CardDevice::Nexo(terminal) => Some(terminal),
            CardDevice::Reader(_) | CardDevice::Zvt(_) => None,
        }
    }

    /// The lane's card reader; `None` on a payment terminal, where the
    /// reader's calls below do nothing (`collect` fails): a terminal is
    /// driven, canceled and shows its result through its own session.
    fn reader(&self) -> Option<&Reader> {
        match &self.device {
            CardDevice::Reader(reader) => Some(reader),
            CardDevice::Zvt(_) | CardDevice::Nexo(_) => None,
        }
    }

    /// The card device's state, for either kind.
    pub fn reader_state(&self) -> ReaderState {
        self.state.lock().unwrap().clone()
    }

    /// The card device is not the one configured (a nexo terminal whose
    /// certificate names another POIID): shown disconnected with why, until
    /// its health check finds the lane's own device.
    pub fn mark_unavailable(&self, why: &str) {
        self.state.lock().unwrap().lose(format!("unavailable: {why}"));
    }

    /// Asks the reader for a card; the returned channel carries what follows.
    pub async fn collect(&self, req: CollectCard) -> Result<mpsc::UnboundedReceiver<ReaderEvent>, String> {
        let Some(reader) = self.reader() else {
            return Err(format!("the card device of {} is a payment terminal, not a card reader", self.id));
        };
        if !self.state.lock().unwrap().connected {
            return Err(format!("the card reader of {} is not connected ({})", self.id, self.line));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *reader.collector.lock().unwrap() = Some((req.payment_id.clone(), tx));
        reader.send(host_message::Body::CollectCard(req)).await?;
        Ok(rx)
    }

    /// Stops routing reader messages for this payment.
    pub fn release(&self, payment_id: &str) {
        if let Some(reader) = self.reader() {
            reader.release(payment_id);
        }
    }

    pub async fn cancel(&self, payment_id: &str) {
        let Some(reader) = self.reader() else { return };
        reader.release(payment_id);
        if let Err(e) = reader.send(host_message::Body::Cancel(Cancel { payment_id: payment_id.into() })).await {
            tracing::warn!(lane = %self.id, error = %e, "could not tell the reader to cancel");
        }
    }

    pub async fn show_result(&self, payment_id: &str, approved: bool, text: &str) {
        let Some(reader) = self.reader() else { return };
        let msg = ShowResult { payment_id: payment_id.into(), approved, display_text: text.into() };
        if let Err(e) = reader.send(host_message::Body::ShowResult(msg)).await {
            tracing::debug!(lane = %self.id, error = %e, "could not show the result on the reader");
        }
    }
}

impl Reader {
    fn release(&self, payment_id: &str) {
        let mut c = self.collector.lock().unwrap();
        if c.as_ref().is_some_and(|(id, _)| id == payment_id) {
            *c = None;
        }
    }

    async fn send(&self, body: host_message::Body) -> Result<(), String> {
        self.cmd_tx.send(HostMessage { body: Some(body) }).await.map_err(|_| "the reader task has stopped".to_string())
    }
}

#[cfg(test)]
impl Lane {
    /// A card-reader lane with no reader behind it, for the engine's
    /// in-process tests (which pay with a reader of their own): its reader
    /// never connects, and what is sent to it fails at once, as to a reader
    /// whose task has stopped. The printer as [`Lane::spawn`] takes it.
    pub fn without_device(id: &str, currency: &str, printer: Option<crate::printer::Printer>) -> Arc<Lane> {
        let (cmd_tx, _) = mpsc::channel(1);
        Arc::new(Lane {
            id: id.into(),
            currency: currency.into(),
            line: ReaderLine::Tcp("in-process".into()),
            offline: pos_engine::offline::OfflinePolicy::defaults_for(currency),
            printer,
            device: CardDevice::Reader(Reader { cmd_tx, collector: Arc::new(Mutex::new(None)) }),
            line_bytes: Arc::new(LineCounters::default()),
            state: Arc::new(Mutex::new(ReaderState::default())),
        })
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
                biased; // branches in a fixed order: a simulated run replays exactly
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
