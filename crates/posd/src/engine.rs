//! The payment engine at run time: admits payments, runs each in a task it
//! owns (not the gRPC call's), commits every transition before acting on it,
//! approves offline within limits, forwards the outbox, recovers after a
//! restart, and retries reversals until acknowledged.
//!
//! Background tasks: [`Engine::reversal_worker`], [`Engine::forwarder`],
//! [`Engine::monitor`] (gateway reachability and queue ageing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::offline::{self, AgeLevel, Entry, OfflineCandidate, QueueState};
use pos_engine::{Effect, Input, Recovery, Status, TransitionError, next};
use pos_proto::gateway::{AuthorizeRequest, ForwardResult, Outcome, ReverseRequest, Transaction};
use pos_proto::reader::{CardResult, CollectCard, FailReason};
use pos_proto::terminal as pb;
use tokio::sync::{Notify, broadcast, mpsc};

mod terminal;

use crate::clock::AgeClock;
use crate::convert;
use crate::failpoint;
use crate::gateway::{AuthOutcome, BatchOutcome, Gateway};
use crate::lane::{Lane, ReaderEvent};
use crate::store::{CardInfo, EventRecord, NewEvent, PaymentRecord, Store, StoreError, Update, now_ms};

/// Errors for the register, mapped once to gRPC codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the payment's state; the reason is a stable code.
    #[error("{1}")]
    FailedPrecondition(&'static str, String),
    /// posd or the gateway cannot serve it now; the reason is a stable code.
    #[error("{1}")]
    Unavailable(&'static str, String),
    /// The gateway did not answer in time; the outcome is unknown.
    #[error("{1}")]
    DeadlineExceeded(&'static str, String),
    #[error("payment storage failed: {0}")]
    Store(#[from] StoreError),
}

/// Why a step could not be taken.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused by the payment state machine: {0}")]
    Refused(#[from] TransitionError),
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Prefix of the terminal id sent to the gateway ("<store>/<lane>").
    pub store_id: String,
    pub demo: bool,
    /// How long the reader may take to return a card.
    pub collect_timeout: Duration,
    /// An AUTHORIZED payment not captured within this is reversed at the
    /// gateway, releasing the customer's hold; `None`: kept until captured
    /// or voided.
    pub capture_window: Option<Duration>,
    /// Status queries after a lost answer, before a reversal is queued.
    pub status_attempts: u32,
    pub status_backoff: Duration,
    /// First and longest wait between reversal attempts.
    pub reversal_backoff: (Duration, Duration),
    pub forward: ForwardSettings,
    /// Header, footer and time zone of receipts.
    pub receipt: crate::receipt::ReceiptSettings,
    /// Copies printed by themselves when a payment ends.
    pub auto_print: Vec<crate::receipt::Copy>,
}

#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub batch_size: usize,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub health_interval: Duration,
    pub ageing_interval: Duration,
    pub expire_after: Duration,
    pub alert_after: Duration,
    pub stop_after: Duration,
}

/// A payment the register asked for.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub idempotency_key: String,
    pub order_reference: String,
    pub amount_minor: i64,
    pub currency: String,
    pub terminal_id: String,
    pub manual_capture: bool,
    /// Who asked (Unix peer credentials or TCP peer), for the audit log.
    pub caller: String,
}

struct Live {
    events: broadcast::Sender<pb::PaymentEvent>,
    cancel: mpsc::Sender<()>,
    /// When the register's request arrived.
    received: std::time::Instant,
}

#[derive(Debug, Default, Clone)]
struct SyncState {
    last_error: String,
    paused: bool,
    age_level: Option<AgeLevel>,
}

/// The queue as the register sees it.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub online: bool,
    pub queue_depth: u32,
    pub quarantined: u32,
    pub totals: Vec<(String, i64)>,
    pub oldest_age: Duration,
    pub last_error: String,
    pub paused: bool,
    pub last_online_ms: Option<i64>,
}

const LAST_ONLINE: &str = "gateway_last_online_ms";
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

pub struct Engine {
    store: Arc<Store>,
    gateway: Arc<Gateway>,
    lanes: BTreeMap<String, Arc<Lane>>,
    settings: EngineSettings,
    /// Per lane, serialises admission: idempotency lookup, busy check and
    /// insert (and administrative holds of the lane). Lanes admit at once,
    /// so their inserts can share a commit; a key taken on another lane
    /// meanwhile is caught by the insert itself.
    admission: BTreeMap<String, tokio::sync::Mutex<()>>,
    /// Serialises offline decisions, so limits hold across lanes.
    offline_gate: tokio::sync::Mutex<()>,
    live: Mutex<HashMap<String, Live>>,
    /// Wakes a draining stop when the last live payment ends.
    none_live: Notify,
    busy: Mutex<HashMap<String, String>>,
    reversals: Notify,
    forward_wake: Notify,
    /// Wakes the gateway-records sender (terminal payments to record).
    record_wake: Notify,
    events: broadcast::Sender<EventRecord>,
    clock: AgeClock,
    sync: Mutex<SyncState>,
    /// Set when the database failed (a write, or a read a decision needs): new payments are refused (fail closed).
    store_failed: AtomicBool,
    /// Set when posd begins to stop: new payments are refused.
    stopping: AtomicBool,
    /// Last time (ms) the monitor loop went round; the watchdog checks it.
    heartbeat: std::sync::atomic::AtomicI64,
    latencies: crate::metrics::Latencies,
    /// When the monitor last persisted the clock and checkpointed the WAL.
    last_housekeeping: Mutex<Option<std::time::Instant>>,
}

/// A register's view of a payment stream: the payment now, and what follows.
pub struct Attached {
    pub payment: PaymentRecord,
    pub events: Option<broadcast::Receiver<pb::PaymentEvent>>,
}

impl Engine {
    pub fn new(store: Arc<Store>, gateway: Arc<Gateway>, lanes: Vec<Arc<Lane>>, settings: EngineSettings) -> Arc<Self> {
        let clock = AgeClock::start(&store);
        Arc::new(Self {
            store,
            gateway,
            admission: lanes.iter().map(|l| (l.id.clone(), tokio::sync::Mutex::new(()))).collect(),
            lanes: lanes.into_iter().map(|l| (l.id.clone(), l)).collect(),
            settings,
            offline_gate: tokio::sync::Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            none_live: Notify::new(),
            busy: Mutex::new(HashMap::new()),
            reversals: Notify::new(),
            forward_wake: Notify::new(),
            record_wake: Notify::new(),
            events: broadcast::channel(1024).0,
            clock,
            sync: Mutex::new(SyncState::default()),
            store_failed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            heartbeat: std::sync::atomic::AtomicI64::new(now_ms()),
            latencies: Default::default(),
            last_housekeeping: Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    pub fn lanes(&self) -> impl Iterator<Item = &Arc<Lane>> {
        self.lanes.values()
    }

    pub fn lane(&self, id: &str) -> Option<&Arc<Lane>> {
        self.lanes.get(id)
    }

    pub fn demo(&self) -> bool {
        self.settings.demo
    }

    pub fn latencies(&self) -> &crate::metrics::Latencies {
        &self.latencies
    }

    /// True while the main loops run and the database works: the watchdog's question.
    pub fn healthy(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        let limit = (self.settings.forward.ageing_interval.as_millis() as i64 * 3).max(10_000);
        !self.refusing_payments() && now_ms() - beat < limit
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let lanes = self.lanes.len();
        let up = self.lanes.values().filter(|l| l.reader_state().connected).count();
        let queue = self.store.queue_summary().map(|s| s.count).unwrap_or(0);
        let gateway = if self.gateway.is_online() { "online" } else { "OFFLINE" };
        let refusing = if self.refusing_payments() { "; REFUSING PAYMENTS (database)" } else { "" };
        format!("readers {up}/{lanes} connected; gateway {gateway}; {queue} offline payments queued{refusing}")
    }

    /// True while posd refuses new payments because its database failed.
    pub fn refusing_payments(&self) -> bool {
        self.store_failed.load(Ordering::SeqCst)
    }

    pub fn busy_with(&self, terminal: &str) -> Option<String> {
        self.busy.lock().unwrap().get(terminal).cloned()
    }

    /// Live register events (after those already stored).
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    fn gateway_terminal(&self, terminal: &str) -> String {
        format!("{}/{terminal}", self.settings.store_id)
    }

    fn note_store_error(&self, e: &StoreError) {
        if matches!(e, StoreError::Db(_)) && !self.store_failed.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %e, "database failed: refusing new payments until posd is restarted with a healthy database");
        }
    }

    /// Appends and publishes an event that is not part of a payment transition.
    async fn emit(&self, kind: &'static str, terminal_id: &str, payment_id: &str, message: String) {
        let e = NewEvent { kind, terminal_id: terminal_id.into(), payment_id: payment_id.into(), message };
        match self.store.append_event(&e).await {
            Ok(rec) => {
                let _ = self.events.send(rec);
            }
            Err(err) => {
                tracing::error!(error = %err, kind, "cannot record an event");
                self.note_store_error(&err);
            }
        }
    }

    /// Starts a payment, or attaches to the one under the same key. The API
    /// runs it in a task of its own, so a payment once stored always gets the
    /// task that drives it.
    pub async fn take_payment(self: &Arc<Self>, req: NewPayment) -> Result<Attached, EngineError> {
        let received = std::time::Instant::now();
        let lane = self.validate(&req)?;
        let _admission = self.admission[&lane.id].lock().await;
        if let Some(existing) = self.store.get_by_key(&req.idempotency_key)? {
            compare(&existing, &req)?;
            return Ok(self.attach(existing));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable(
                "SHUTTING_DOWN",
                "posd is stopping (a restart or shutdown of the service); take the payment again once it is back"
                    .into(),
            ));
        }
        if self.store_failed.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable(
                "DATABASE_UNAVAILABLE",
                "posd cannot write its payment database (disk full or damaged); new payments are refused. \
                 Queued payments are kept. Free space or repair, then restart posd."
                    .into(),
            ));
        }
        if let Some(busy) = self.busy_with(&lane.id) {
            return Err(EngineError::FailedPrecondition(
                "TERMINAL_BUSY",
                format!("terminal {} is busy with payment {busy}; wait for it to finish or cancel it", lane.id),
            ));
        }
        let now = now_ms();
        let candidate = PaymentRecord {
            order_reference: req.order_reference.clone(),
            manual_capture: req.manual_capture,
            demo: self.settings.demo,
            device: lane.device_kind().into(),
            ..PaymentRecord::created(
                format!("pay_{}", pos_cardcrypt::crockford32(uuid::Uuid::now_v7().as_bytes())),
                req.idempotency_key.clone(),
                gateway_key(),
                req.terminal_id.clone(),
                req.amount_minor,
                req.currency.clone(),
                now,
            )
        };
        let created = match self.store.insert_or_get(&candidate, &req.caller).await {
            Ok(Ok(created)) => created,
            Ok(Err(existing)) => {
                compare(&existing, &req)?;
                return Ok(self.attach(existing));
            }
            Err(e) => {
                self.note_store_error(&e);
                return Err(e.into());
            }
        };
        let (events, _) = broadcast::channel(64);
        let (cancel, cancel_rx) = mpsc::channel(1);
        let rx = events.subscribe();
        self.live.lock().unwrap().insert(created.id.clone(), Live { events, cancel, received });
        self.busy.lock().unwrap().insert(created.terminal_id.clone(), created.id.clone());
        tracing::info!(payment = %created.id, terminal = %created.terminal_id, amount = created.amount_minor, currency = %created.currency, "payment created");
        let engine = self.clone();
        let lane = lane.clone();
        let rec = created.clone();
        tokio::spawn(async move { engine.run_payment(lane, rec, cancel_rx).await });
        Ok(Attached { payment: created, events: Some(rx) })
    }

    fn validate(&self, req: &NewPayment) -> Result<Arc<Lane>, EngineError> {
        let invalid = |field, message: String| Err(EngineError::InvalidArgument { field, message });
        let key_len = req.idempotency_key.chars().count();
        if key_len == 0 || key_len > 255 {
            return invalid("idempotency_key", "must be 1 to 255 characters".into());
        }
        if req.order_reference.chars().count() > 255 {
            return invalid("order_reference", "must be at most 255 characters".into());
        }
        if req.amount_minor <= 0 {
            return invalid("amount.amount_minor", format!("must be positive, not {}", req.amount_minor));
        }
        if req.amount_minor > pos_engine::money::MAX_AMOUNT_MINOR {
            return invalid(
                "amount.amount_minor",
                format!("{} is more than posd accepts ({})", req.amount_minor, pos_engine::money::MAX_AMOUNT_MINOR),
            );
        }
        if pos_engine::money::exponent(&req.currency).is_none() {
            return invalid("amount.currency", format!("{:?} is not an ISO 4217 currency code", req.currency));
        }
        let Some(lane) = self.lanes.get(&req.terminal_id) else {
            let known: Vec<&str> = self.lanes.keys().map(String::as_str).collect();
            return invalid(
                "terminal_id",
                format!("unknown terminal {:?}; this posd drives {}", req.terminal_id, known.join(", ")),
            );
        };
        if req.currency != lane.currency {
            return invalid(
                "amount.currency",
                format!("terminal {} takes {}, not {:?}", lane.id, lane.currency, req.currency),
            );
        }
        Ok(lane.clone())
    }

    /// The payment now, and its live events if it is still running.
    fn attach(&self, payment: PaymentRecord) -> Attached {
        let events = self.live.lock().unwrap().get(&payment.id).map(|l| l.events.subscribe());
        // Re-read after subscribing so no transition falls between the two.
        let payment = self.store.get(&payment.id).ok().flatten().unwrap_or(payment);
        Attached { payment, events }
    }

    /// Cancels a payment that is still collecting a card.
    pub async fn cancel_payment(&self, id: &str) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        if rec.status == Status::Canceled {
            return Ok(rec);
        }
        if !matches!(rec.status, Status::Created | Status::Collecting) {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!(
                    "payment {id} is {}; only a payment that is still collecting a card can be canceled",
                    rec.status
                ),
            ));
        }
        let (cancel, mut events) = {
            let live = self.live.lock().unwrap();
            let l = live.get(id).ok_or_else(|| {
                EngineError::FailedPrecondition("WRONG_STATE", format!("payment {id} is not running"))
            })?;
            (l.cancel.clone(), l.events.subscribe())
        };
        let _ = cancel.try_send(());
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.payment.as_ref().is_some_and(|p| p.status != pb::PaymentStatus::Collecting as i32) => {
                        break;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), wait).await;
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        match rec.status {
            Status::Canceled => Ok(rec),
            s => Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("payment {id} could not be canceled: it is {s}"),
            )),
        }
    }

    /// Commits a transition, publishes it, and performs its fire-and-forget
    /// effects. Request/response effects (collect, authorize, query) are
    /// performed by the caller, which awaits their results.
    async fn step(&self, rec: &PaymentRecord, input: Input, update: Update) -> Result<PaymentRecord, StepError> {
        let t = next(rec.status, &input)?;
        let (new, event) = self.store.apply(&rec.id, &t, update).await.inspect_err(|e| self.note_store_error(e))?;
        tracing::info!(payment = %new.id, from = %t.from, to = %t.to, cause = %t.cause, "payment transition");
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        self.announce(&new, convert::stage(new.status), convert::status_message(&new));
        for effect in &t.effects {
            match effect {
                Effect::CancelCollection => {
                    if let Some(l) = self.lanes.get(&new.terminal_id) {
                        l.cancel(&new.id).await;
                    }
                }
                Effect::ShowResult { approved } => {
                    if let Some(l) = self.lanes.get(&new.terminal_id) {
                        l.show_result(&new.id, *approved, &convert::status_message(&new)).await;
                    }
                }
                Effect::SendReversal => self.reversals.notify_one(),
                Effect::CollectCard | Effect::SendAuthorization | Effect::QueryStatus => {}
            }
        }
        Ok(new)
    }

    /// Publishes a payment's new state. When the register has its answer,
    /// the lane is freed *before* the final event goes out, so a register that
    /// starts its next payment on that event never finds the lane busy.
    fn announce(&self, rec: &PaymentRecord, stage: pb::PaymentStage, message: String) {
        let settled = rec.status.is_settled_for_register();
        if settled {
            self.free_lane(rec);
            if let Some(l) = self.live.lock().unwrap().get(&rec.id) {
                self.latencies.end_to_end.observe(l.received.elapsed());
            }
        }
        self.publish(rec, stage, message);
        if settled {
            self.end_live(&rec.id);
        }
    }

    /// Ends a payment's live stream (its task is done with the register).
    fn end_live(&self, id: &str) {
        let mut live = self.live.lock().unwrap();
        live.remove(id);
        if live.is_empty() {
            self.none_live.notify_waiters();
        }
    }

    fn publish(&self, rec: &PaymentRecord, stage: pb::PaymentStage, message: String) {
        if let Some(l) = self.live.lock().unwrap().get(&rec.id) {
            let history = if rec.status.is_settled_for_register() {
                self.store.history(&rec.id).unwrap_or_default()
            } else {
                vec![]
            };
            let _ = l.events.send(convert::payment_event(rec, stage, message, convert::payment(rec, &history)));
        }
    }

    /// The register has its answer: free the lane and end the live stream.
    fn free_lane(&self, rec: &PaymentRecord) {
        let mut busy = self.busy.lock().unwrap();
        if busy.get(&rec.terminal_id) == Some(&rec.id) {
            busy.remove(&rec.terminal_id);
        }
    }

    async fn run_payment(self: Arc<Self>, lane: Arc<Lane>, rec: PaymentRecord, mut cancel: mpsc::Receiver<()>) {
        let id = rec.id.clone();
        let Err(e) = self.drive(&lane, rec, &mut cancel).await else {
            self.auto_print(&id).await;
            return;
        };
        lane.release(&id);
        let stored = self.store.get(&id).ok().flatten();
        // A payment terminal decides by itself once it has the payment.
        let may_be_at_gateway = stored.as_ref().is_none_or(|r| {
            !matches!(r.status, Status::Created | Status::Collecting | Status::CardRead)
                || (r.on_terminal() && r.status != Status::Created)
        });
        tracing::error!(payment = %id, error = %e, may_be_at_gateway, "payment stopped");
        match stored {
            Some(rec) if !may_be_at_gateway => {
                // Nothing was sent: the register may safely try again.
                self.free_lane(&rec);
                self.publish(
                    &rec,
                    pb::PaymentStage::Failed,
                    format!("Not paid: posd could not record the payment ({e}). Nothing was charged."),
                );
                self.end_live(&id);
                lane.cancel(&id).await;
            }
            Some(rec) => {
                // The request may be at the gateway: do not let the register
                // retry as if nothing happened. The lane stays busy; a restart
                // settles the payment by status query.
                self.publish(
                    &rec,
                    pb::PaymentStage::Authorizing,
                    format!(
                        "Outcome unknown: posd could not record the gateway's answer ({e}). Do not take this payment again; check payment {id} after posd restarts."
                    ),
                );
                self.end_live(&id);
            }
            None => {
                self.end_live(&id);
            }
        }
    }

    async fn drive(&self, lane: &Lane, rec: PaymentRecord, cancel: &mut mpsc::Receiver<()>) -> Result<(), StepError> {
        if let Some(zvt) = &lane.zvt {
            return self.drive_terminal(lane, zvt, rec, cancel).await;
        }
        let rec = self.step(&rec, Input::Start, Update::default()).await?;
        let request = CollectCard {
            payment_id: rec.id.clone(),
            amount_minor: rec.amount_minor,
            currency: rec.currency.clone(),
            terminal_id: self.gateway_terminal(&rec.terminal_id),
            transaction_key: rec.gateway_key.clone(),
            cashback_minor: 0,
        };
        let mut reader = match lane.collect(request).await {
            Ok(rx) => rx,
            Err(message) => {
                self.step(&rec, Input::CollectFailed { code: "reader_unavailable".into(), message }, Update::default())
                    .await?;
                return Ok(());
            }
        };
        let deadline = tokio::time::sleep(self.settings.collect_timeout);
        tokio::pin!(deadline);
        let asked = std::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                ev = reader.recv() => match ev {
                    Some(ReaderEvent::Progress { stage, text }) => {
                        self.publish(&rec, convert::reader_stage(stage), text);
                    }
                    Some(ReaderEvent::Card(card)) => {
                        self.latencies.reader.observe(asked.elapsed());
                        break Ok(card);
                    }
                    Some(ReaderEvent::Failed { reason: FailReason::Canceled, .. }) => {
                        break Err(Input::Cancel { by: "the customer at the reader".into() });
                    }
                    Some(ReaderEvent::Failed { reason, message }) => {
                        let code = match reason {
                            FailReason::Timeout => "reader_timeout",
                            FailReason::CardError => "card_error",
                            _ => "reader_error",
                        };
                        break Err(Input::CollectFailed { code: code.into(), message });
                    }
                    Some(ReaderEvent::Disconnected(reason)) => {
                        let message = format!("the card reader disconnected: {reason}");
                        break Err(Input::CollectFailed { code: "reader_disconnected".into(), message });
                    }
                    None => {
                        let message = "the card reader stopped answering".to_string();
                        break Err(Input::CollectFailed { code: "reader_disconnected".into(), message });
                    }
                },
                Some(()) = cancel.recv() => break Err(Input::Cancel { by: "the register".into() }),
                () = &mut deadline => {
                    let message = format!("no card within {:?}", self.settings.collect_timeout);
                    break Err(Input::CollectFailed { code: "reader_timeout".into(), message });
                }
            }
        };
        match outcome {
            Ok(card) => {
                lane.release(&rec.id);
                self.authorize(rec, *card).await
            }
            Err(input) => {
                // Whatever ended the collection, the reader must stop too.
                let register_cancel = matches!(&input, Input::Cancel { by } if by == "the register");
                if !register_cancel {
                    lane.cancel(&rec.id).await;
                }
                self.step(&rec, input, Update::default()).await?;
                Ok(())
            }
        }
    }

    async fn authorize(&self, rec: PaymentRecord, card: CardResult) -> Result<(), StepError> {
        if card.encrypted_card.is_empty() {
            let input = Input::CollectFailed {
                code: "card_data_unavailable".into(),
                message: "the reader delivered no encrypted card data (keys unavailable)".into(),
            };
            self.step(&rec, input, Update::default()).await?;
            return Ok(());
        }
        let info = card_info(&card);
        let blob = card.encrypted_card.clone();
        let rec = self
            .step(&rec, Input::CardRead, Update { card: Some((info.clone(), blob.clone())), ..Default::default() })
            .await?;
        let rec = self.step(&rec, Input::Sending, Update::default()).await?;
        let request = self.authorize_request(&rec, &info, blob);
        let sent = std::time::Instant::now();
        let outcome = self.gateway.authorize(request).await;
        if !matches!(outcome, AuthOutcome::NotSent(_)) {
            self.latencies.gateway.observe(sent.elapsed());
        }
        match outcome {
            AuthOutcome::Answer(tx) => {
                failpoint::hit("online_after_response");
                if !self.apply_answer(&rec, tx).await? {
                    let input = Input::AnswerLost { message: "the gateway's answer did not settle the payment".into() };
                    let rec = self.step(&rec, input, Update::default()).await?;
                    self.settle_unknown(rec).await?;
                }
            }
            AuthOutcome::Rejected(message) => {
                let input = Input::Declined { code: "gateway_rejected".into(), message };
                self.step(&rec, input, Update::default()).await?;
            }
            AuthOutcome::NotSent(message) => self.offline_or_fail(rec, &card, message).await?,
            AuthOutcome::Unknown(message) => {
                tracing::warn!(payment = %rec.id, %message, "gateway answer lost; asking for the outcome");
                let rec = self.step(&rec, Input::AnswerLost { message }, Update::default()).await?;
                self.settle_unknown(rec).await?;
            }
        }
        Ok(())
    }

    fn authorize_request(&self, rec: &PaymentRecord, info: &CardInfo, blob: Vec<u8>) -> AuthorizeRequest {
        AuthorizeRequest {
            transaction_key: rec.gateway_key.clone(),
            terminal_id: self.gateway_terminal(&rec.terminal_id),
            amount_minor: rec.amount_minor,
            currency: rec.currency.clone(),
            encrypted_card: blob,
            masked_pan: info.masked_pan.clone(),
            brand: info.brand.clone(),
            entry_mode: convert::gateway_entry_mode(pb::EntryMode::try_from(info.entry_mode).unwrap_or_default())
                as i32,
            capture: !rec.manual_capture,
        }
    }

    /// The request never left posd: approve offline if the lane's rules allow.
    async fn offline_or_fail(&self, rec: PaymentRecord, card: &CardResult, why: String) -> Result<(), StepError> {
        let lane = self.lanes.get(&rec.terminal_id).expect("payments belong to configured lanes");
        let gate = self.offline_gate.lock().await;
        let fingerprint = crate::lane::scrub(&card.card_fingerprint);
        let now = self.clock.now_ms();
        let queue = match self.queue_state(&rec.currency, &fingerprint, now) {
            Ok(queue) => queue,
            Err(e) => {
                // Limits that cannot be checked refuse: nothing was sent, so
                // the payment fails cleanly and the lane is free again.
                drop(gate);
                tracing::error!(payment = %rec.id, error = %e, "cannot read the offline queue; offline approval refused");
                self.note_store_error(&e);
                let message = format!(
                    "The gateway cannot be reached ({why}) and posd cannot read its offline queue ({e}); \
                     nothing was charged"
                );
                let input = Input::OfflineRefused { code: "store_unavailable".into(), message };
                self.step(&rec, input, Update::default()).await?;
                return Ok(());
            }
        };
        let entry = match pb::EntryMode::try_from(convert::entry_mode(card.entry_mode) as i32) {
            Ok(pb::EntryMode::Chip) => Entry::Chip,
            Ok(pb::EntryMode::Contactless) => Entry::Contactless,
            Ok(pb::EntryMode::Swipe) => Entry::Swipe,
            Ok(pb::EntryMode::Manual) => Entry::Manual,
            _ => Entry::Unknown,
        };
        let candidate = OfflineCandidate {
            amount_minor: rec.amount_minor,
            currency: &rec.currency,
            brand: &card.brand,
            entry,
            fallback: card.fallback,
            cashback_minor: card.cashback_minor,
            refund: false,
            card_data: !card.encrypted_card.is_empty(),
            card_identified: !fingerprint.is_empty(),
        };
        match offline::eligibility(&lane.offline, &candidate, &queue) {
            Ok(()) => {
                let update = Update {
                    queued_at_ms: Some(now),
                    last_error: Some(why.clone()),
                    event: Some(NewEvent {
                        kind: "approved_offline",
                        terminal_id: rec.terminal_id.clone(),
                        payment_id: rec.id.clone(),
                        message: format!("approved offline and queued ({why})"),
                    }),
                    ..Default::default()
                };
                let t = next(rec.status, &Input::ApprovedOffline)?;
                let (new, event) =
                    self.store.apply(&rec.id, &t, update).await.inspect_err(|e| self.note_store_error(e))?;
                // The limits held for this commit; no other lane waits on reader I/O.
                drop(gate);
                failpoint::hit("offline_after_persist");
                tracing::warn!(payment = %new.id, %why, "gateway unreachable: approved offline");
                if let Some(e) = event {
                    let _ = self.events.send(e);
                }
                self.announce(&new, pb::PaymentStage::Approved, convert::status_message(&new));
                self.forward_wake.notify_one();
                lane.show_result(&new.id, true, &convert::status_message(&new)).await;
            }
            Err(refusal) => {
                drop(gate);
                let message = format!(
                    "The gateway cannot be reached ({why}) and the payment may not be taken offline: {}",
                    refusal.message
                );
                self.step(&rec, Input::OfflineRefused { code: refusal.code.into(), message }, Update::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// What the offline limits are checked against: the queue as stored.
    fn queue_state(&self, currency: &str, fingerprint: &str, now: i64) -> Result<QueueState, StoreError> {
        let summary = self.store.queue_summary()?;
        let ago = |t: i64, now: i64| Duration::from_millis((now - t).max(0) as u64);
        Ok(QueueState {
            count: summary.count,
            total_minor: summary.totals.iter().find(|(c, _)| c == currency).map_or(0, |(_, t)| *t),
            same_card: if fingerprint.is_empty() { 0 } else { self.store.queued_for_card(fingerprint)? },
            oldest_age: summary.oldest_queued_at_ms.map(|t| ago(t, now)),
            since_online: self.store.meta(LAST_ONLINE)?.map(|t| ago(t, now_ms())),
        })
    }

    /// Applies the gateway's answer for a payment in AUTHORIZING or UNKNOWN.
    /// Returns false when the answer does not settle it.
    async fn apply_answer(&self, rec: &PaymentRecord, tx: Transaction) -> Result<bool, StepError> {
        match Outcome::try_from(tx.outcome).unwrap_or(Outcome::Unspecified) {
            Outcome::Approved => {
                let update = Update {
                    auth_code: Some(tx.auth_code),
                    gateway_reference: Some(tx.gateway_reference),
                    ..Default::default()
                };
                self.step(rec, Input::Approved { captured: tx.captured }, update).await?;
                Ok(true)
            }
            Outcome::Declined => {
                let input = Input::Declined { code: tx.decline_code, message: tx.decline_message };
                self.step(rec, input, Update::default()).await?;
                Ok(true)
            }
            Outcome::Reversed | Outcome::Voided | Outcome::Unspecified => Ok(false),
        }
    }

    /// Settles a payment whose answer was lost: ask for the outcome under
    /// the same key for the whole attempt budget (a delayed request may still
    /// arrive); if it stays unknown, queue a reversal.
    async fn settle_unknown(&self, rec: PaymentRecord) -> Result<(), StepError> {
        let mut last = String::from("no status query was made");
        for attempt in 0..self.settings.status_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.settings.status_backoff * attempt).await;
            }
            match self.gateway.transaction(&rec.gateway_key).await {
                Ok(Some(tx)) => match Outcome::try_from(tx.outcome).unwrap_or(Outcome::Unspecified) {
                    Outcome::Reversed | Outcome::Voided => {
                        last = "the gateway holds the key as reversed".into();
                        break;
                    }
                    Outcome::Unspecified => last = "the gateway answered without an outcome".into(),
                    _ => {
                        self.apply_answer(&rec, tx).await?;
                        return Ok(());
                    }
                },
                Ok(None) => last = "the gateway has no record of the request (yet)".into(),
                Err(e) => last = e,
            }
        }
        self.step(&rec, Input::StillUnknown { message: last }, Update::default()).await?;
        Ok(())
    }

    /// Finishes what a previous run left: called once before serving.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let unsent = self.store.queue_summary()?.count;
        if unsent > 0 {
            tracing::warn!(unsent, "offline payments are waiting to be forwarded");
        }
        for refund in self.store.pending_refunds()? {
            if let Some(rec) = self.store.get(&refund.payment_id)? {
                if rec.on_terminal() {
                    // Asking the terminal again would take a second refund.
                    self.emit(
                        "terminal_refund_unknown",
                        &rec.terminal_id,
                        &rec.id,
                        format!(
                            "refund {} of {} was running on the payment terminal when posd stopped; \
                             check the terminal's journal before refunding again",
                            refund.id, refund.amount_minor
                        ),
                    )
                    .await;
                    continue;
                }
                let engine = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = engine.send_refund(refund, &rec).await {
                        tracing::warn!(error = %e, "a pending refund is still unsettled");
                    }
                });
            }
        }
        for rec in self.store.unfinished()? {
            if rec.on_terminal() {
                match pos_engine::recovery_on_terminal(rec.status) {
                    Recovery::Interrupt => {
                        self.step(&rec, Input::Interrupted, Update::default()).await?;
                    }
                    // Already left for a person: asking again changes nothing.
                    Recovery::AskTerminal if self.store.has_event("terminal_outcome_unknown", &rec.id, "")? => {}
                    Recovery::AskTerminal => {
                        tracing::info!(payment = %rec.id, status = %rec.status, "asking the payment terminal about a payment in doubt");
                        self.recover_on_terminal(rec);
                    }
                    _ => {}
                }
                continue;
            }
            let result = match pos_engine::recovery(rec.status) {
                Recovery::Interrupt => self.step(&rec, Input::Interrupted, Update::default()).await.map(drop),
                Recovery::QueryStatus => {
                    let rec = if rec.status == Status::Authorizing {
                        let input =
                            Input::AnswerLost { message: "posd restarted while waiting for the gateway".into() };
                        self.step(&rec, input, Update::default()).await?
                    } else {
                        rec
                    };
                    tracing::info!(payment = %rec.id, "recovering a payment with an unknown outcome");
                    let engine = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = engine.settle_unknown(rec).await {
                            tracing::error!(error = %e, "recovery failed");
                        }
                    });
                    Ok(())
                }
                Recovery::Requeue => {
                    let input = Input::ForwardRetry { message: "posd restarted during forwarding".into() };
                    self.step(&rec, input, Update::default()).await.map(drop)
                }
                Recovery::Reverse => {
                    self.reversals.notify_one();
                    Ok(())
                }
                Recovery::None | Recovery::AskTerminal => Ok(()),
            };
            result?;
        }
        Ok(())
    }

    /// Sends queued reversals until each is acknowledged. Runs for the life
    /// of the process.
    pub async fn reversal_worker(self: Arc<Self>) {
        let (first, longest) = self.settings.reversal_backoff;
        let mut backoff = first;
        loop {
            let filter = crate::store::ListFilter {
                statuses: vec![Status::ReversalPending],
                limit: 100,
                oldest_first: true,
                ..Default::default()
            };
            let mut failed = false;
            let pending = match self.store.list(&filter) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read pending reversals; will retry");
                    failed = true;
                    Vec::new()
                }
            };
            for rec in pending {
                let req = ReverseRequest {
                    transaction_key: rec.gateway_key.clone(),
                    reason: "timeout".into(),
                    amount_minor: rec.amount_minor,
                    currency: rec.currency.clone(),
                    terminal_id: self.gateway_terminal(&rec.terminal_id),
                };
                match self.gateway.reverse(req).await {
                    Ok(tx) if matches!(Outcome::try_from(tx.outcome), Ok(Outcome::Reversed | Outcome::Declined)) => {
                        if let Err(e) = self.step(&rec, Input::ReversalAcknowledged, Update::default()).await {
                            tracing::error!(payment = %rec.id, error = %e, "could not record the reversal");
                            failed = true;
                        }
                    }
                    Ok(tx) => {
                        tracing::error!(payment = %rec.id, outcome = tx.outcome, "ALERT: the gateway did not reverse the charge; will retry");
                        failed = true;
                    }
                    Err(e) => {
                        tracing::warn!(payment = %rec.id, error = %e, "reversal not acknowledged; will retry");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::select! {
                    () = self.reversals.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(longest);
            } else {
                backoff = first;
                self.reversals.notified().await;
            }
        }
    }

    /// Captures an AUTHORIZED payment (0: the whole amount). The gateway
    /// call comes first: a repeat after a crash is answered from its record.
    pub async fn capture_payment(
        &self,
        id: &str,
        amount_minor: i64,
        caller: &str,
    ) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        let amount = if amount_minor == 0 { rec.amount_minor } else { amount_minor };
        if amount < 0 || amount > rec.amount_minor {
            return Err(EngineError::InvalidArgument {
                field: "amount_minor",
                message: format!(
                    "must be 0 (everything) or 1 to the authorized {}, not {amount_minor}",
                    rec.amount_minor
                ),
            });
        }
        match rec.status {
            Status::Captured if rec.captured_minor == amount => return Ok(rec),
            Status::Authorized => {}
            Status::OfflineApproved | Status::Forwarding => {
                return Err(EngineError::FailedPrecondition(
                    "NOT_FORWARDED_YET",
                    format!(
                        "payment {id} was approved offline and is not forwarded yet; capture it once it is AUTHORIZED"
                    ),
                ));
            }
            s => {
                return Err(EngineError::FailedPrecondition(
                    "WRONG_STATE",
                    format!("payment {id} is {s}; only an AUTHORIZED payment (manual capture) can be captured"),
                ));
            }
        }
        self.store.audit(&rec.id, &format!("capture of {amount} requested by {caller}")).await?;
        let tx = self.gateway.capture(&rec.gateway_key, amount).await.map_err(call_error)?;
        let captured = if tx.captured_minor > 0 { tx.captured_minor } else { amount };
        let update = Update { captured_minor: Some(captured), ..Default::default() };
        self.step(&rec, Input::Capture, update).await.map_err(step_error)
    }

    /// Voids an AUTHORIZED payment; nothing is charged.
    pub async fn void_payment(&self, id: &str, reason: &str, caller: &str) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        match rec.status {
            Status::Voided => return Ok(rec),
            Status::Captured if rec.on_terminal() => {
                self.store.audit(&rec.id, &format!("reversal requested by {caller}")).await?;
                let why = if reason.is_empty() { "requested by the register".to_string() } else { reason.to_string() };
                return self.reverse_on_terminal(rec, why).await;
            }
            Status::Authorized => {}
            s => {
                return Err(EngineError::FailedPrecondition(
                    "WRONG_STATE",
                    format!("payment {id} is {s}; only an AUTHORIZED payment can be voided (refund a captured one)"),
                ));
            }
        }
        self.store.audit(&rec.id, &format!("void requested by {caller}")).await?;
        self.gateway.void(&rec.gateway_key).await.map_err(call_error)?;
        let why = if reason.is_empty() { "requested by the register".to_string() } else { reason.to_string() };
        self.step(&rec, Input::Void { reason: why }, Update::default()).await.map_err(step_error)
    }

    /// Puts a quarantined payment back in the offline queue: the cause was
    /// fixed at the gateway. It goes out again under the same gateway key, so
    /// it is charged at most once, and it still expires with the queue's age.
    pub async fn requeue_payment(&self, id: &str, caller: &str) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        if rec.status != Status::Quarantined {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("payment {id} is {}; only a QUARANTINED payment can be requeued", rec.status),
            ));
        }
        let update = Update {
            event: Some(NewEvent {
                kind: "requeued",
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message: format!(
                    "payment {id} ({}) was put back in the offline queue by {caller}, after {}",
                    pos_engine::money::format(rec.amount_minor, &rec.currency),
                    rec.reason_code
                ),
            }),
            ..Default::default()
        };
        let new = self.step(&rec, Input::Requeue { by: caller.to_string() }, update).await.map_err(step_error)?;
        tracing::warn!(payment = %id, %caller, "quarantined payment requeued");
        self.forward_wake.notify_one();
        Ok(new)
    }

    /// Refunds (part of) a captured payment, idempotently by the register's key.
    pub async fn refund_payment(
        &self,
        key: &str,
        payment_id: &str,
        amount_minor: i64,
        reason: &str,
        caller: &str,
    ) -> Result<crate::store::RefundRecord, EngineError> {
        use crate::store::{RefundRecord, Reservation};
        let key_len = key.chars().count();
        if key_len == 0 || key_len > 255 {
            return Err(EngineError::InvalidArgument {
                field: "idempotency_key",
                message: "must be 1 to 255 characters".into(),
            });
        }
        if amount_minor < 0 {
            return Err(EngineError::InvalidArgument {
                field: "amount_minor",
                message: format!("must be 0 (everything not refunded) or positive, not {amount_minor}"),
            });
        }
        let rec =
            self.store.get(payment_id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {payment_id}")))?;
        let refunded: i64 =
            self.store.refunds_of(payment_id)?.iter().filter(|r| r.status != "failed").map(|r| r.amount_minor).sum();
        let amount = if amount_minor == 0 { rec.captured_minor - refunded } else { amount_minor };
        let now = now_ms();
        let candidate = RefundRecord {
            id: format!("ref_{}", pos_cardcrypt::crockford32(uuid::Uuid::now_v7().as_bytes())),
            idempotency_key: key.to_string(),
            payment_id: payment_id.to_string(),
            amount_minor: amount,
            currency: rec.currency.clone(),
            refund_key: gateway_key(),
            status: "pending".into(),
            reason: reason.to_string(),
            failure_code: String::new(),
            failure_message: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        let refund = match self.store.reserve_refund(&candidate).await? {
            Reservation::Existing(r) => {
                if r.payment_id != payment_id || (amount_minor != 0 && r.amount_minor != amount_minor) {
                    return Err(EngineError::AlreadyExists(format!(
                        "refund key {key:?} was already used for refund {} ({} of payment {})",
                        r.id, r.amount_minor, r.payment_id
                    )));
                }
                if r.status != "pending" {
                    return Ok(r);
                }
                if rec.on_terminal() {
                    // Asking the terminal again could refund twice.
                    return Err(EngineError::Unavailable(
                        "OUTCOME_UNKNOWN",
                        format!(
                            "refund {} ran on the payment terminal without a known outcome; check the terminal's \
                             journal before refunding again",
                            r.id
                        ),
                    ));
                }
                r
            }
            Reservation::Created(r) => {
                self.store
                    .audit(payment_id, &format!("refund {} of {} requested by {caller}", r.id, r.amount_minor))
                    .await?;
                r
            }
            Reservation::NotCaptured(s) => {
                return Err(EngineError::FailedPrecondition(
                    "WRONG_STATE",
                    format!("payment {payment_id} is {s}; only a captured payment can be refunded"),
                ));
            }
            Reservation::Exceeds { captured, committed } => {
                return Err(EngineError::FailedPrecondition(
                    "REFUND_EXCEEDS_CAPTURE",
                    format!(
                        "refunding {amount} would exceed the captured {captured} ({committed} already refunded or pending)"
                    ),
                ));
            }
        };
        if amount <= 0 {
            return Err(EngineError::FailedPrecondition(
                "REFUND_EXCEEDS_CAPTURE",
                format!("payment {payment_id} is fully refunded"),
            ));
        }
        self.send_refund(refund, &rec).await
    }

    /// Sends a pending refund under its own key and stores the outcome.
    async fn send_refund(
        &self,
        refund: crate::store::RefundRecord,
        rec: &PaymentRecord,
    ) -> Result<crate::store::RefundRecord, EngineError> {
        if rec.on_terminal() {
            return self.refund_on_terminal(refund, rec).await;
        }
        let req = pos_proto::gateway::RefundRequest {
            refund_key: refund.refund_key.clone(),
            transaction_key: rec.gateway_key.clone(),
            amount_minor: refund.amount_minor,
            currency: refund.currency.clone(),
        };
        let event = |kind: &'static str, message: String| NewEvent {
            kind,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message,
        };
        let (succeeded, failure) = match self.gateway.refund(req).await {
            Ok(r) if r.succeeded => (true, None),
            Ok(r) => (false, Some((r.decline_code, r.decline_message))),
            Err(crate::gateway::CallError::NotSent(m)) => (
                false,
                Some((
                    "gateway_unreachable".to_string(),
                    format!("refunds need the gateway and are never taken offline: {m}"),
                )),
            ),
            Err(crate::gateway::CallError::Refused(m)) => (false, Some(("gateway_rejected".to_string(), m))),
            Err(crate::gateway::CallError::Unknown(m)) => {
                return Err(EngineError::Unavailable("OUTCOME_UNKNOWN", unknown_refund(&m, &refund.id)));
            }
            Err(crate::gateway::CallError::TimedOut(m)) => {
                return Err(EngineError::DeadlineExceeded("OUTCOME_UNKNOWN", unknown_refund(&m, &refund.id)));
            }
        };
        let (kind, message) = match &failure {
            None => ("refund_succeeded", format!("refunded {} {}", refund.amount_minor, refund.currency)),
            Some((code, m)) => ("refund_failed", format!("refund of {} failed: {code}: {m}", refund.amount_minor)),
        };
        let failure_ref = failure.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
        let (stored, ev) = self
            .store
            .finish_refund(&refund.id, succeeded, failure_ref, &event(kind, message), false)
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        let _ = self.events.send(ev);
        tracing::info!(refund = %stored.id, payment = %rec.id, status = %stored.status, "refund settled");
        Ok(stored)
    }

    /// End of day: closes the lane's batch with the gateway (or the lane's
    /// payment terminal) and records it.
    pub async fn close_batch(&self, terminal: &str, caller: &str) -> Result<pb::BatchSummary, EngineError> {
        if !self.lanes.contains_key(terminal) {
            return Err(EngineError::InvalidArgument {
                field: "terminal_id",
                message: format!("unknown terminal {terminal:?}"),
            });
        }
        if self.lanes.get(terminal).is_some_and(|l| l.zvt.is_some()) {
            return self.end_of_day_on_terminal(terminal, caller).await;
        }
        let result = self.gateway.close_batch(&self.gateway_terminal(terminal)).await.map_err(call_error)?;
        let unsent = self
            .store
            .list(&crate::store::ListFilter {
                terminal_id: Some(terminal.to_string()),
                statuses: vec![Status::OfflineApproved, Status::Forwarding, Status::Quarantined],
                limit: 100_000,
                ..Default::default()
            })?
            .len() as u32;
        let totals: Vec<pb::BatchCurrencyTotal> = result
            .totals
            .iter()
            .map(|t| pb::BatchCurrencyTotal {
                currency: t.currency.clone(),
                count: t.count,
                captured_minor: t.captured_minor,
                refunded_minor: t.refunded_minor,
            })
            .collect();
        let text: Vec<String> =
            totals.iter().map(|t| format!("{} x {} {}", t.count, t.captured_minor, t.currency)).collect();
        self.emit(
            "batch_closed",
            terminal,
            "",
            format!(
                "batch {} closed by {caller}: {}{}",
                result.batch_id,
                if text.is_empty() { "nothing to settle".to_string() } else { text.join(", ") },
                if unsent > 0 { format!("; {unsent} offline payments not yet forwarded") } else { String::new() }
            ),
        )
        .await;
        let summary = pb::BatchSummary {
            batch_id: result.batch_id,
            terminal_id: terminal.to_string(),
            closed_at: Some(convert::timestamp(now_ms())),
            totals,
            offline_unsent: unsent,
        };
        self.print_slip(&summary, &[]).await;
        Ok(summary)
    }

    /// Wakes the forwarder now ("sync now").
    pub fn sync_now(&self) {
        self.sync.lock().unwrap().paused = false;
        self.forward_wake.notify_one();
    }

    pub fn sync_report(&self) -> Result<SyncReport, StoreError> {
        let s = self.store.queue_summary()?;
        let state = self.sync.lock().unwrap().clone();
        let now = self.clock.now_ms();
        Ok(SyncReport {
            online: self.gateway.is_online(),
            queue_depth: s.count,
            quarantined: s.quarantined,
            totals: s.totals,
            oldest_age: s
                .oldest_queued_at_ms
                .map_or(Duration::ZERO, |t| Duration::from_millis((now - t).max(0) as u64)),
            last_error: if state.last_error.is_empty() { self.gateway.last_error() } else { state.last_error },
            paused: state.paused,
            last_online_ms: self.store.meta(LAST_ONLINE)?,
        })
    }

    /// Forwards the outbox: FIFO, in batches, the same key on every attempt,
    /// backoff with jitter on link errors. Runs for the life of the process.
    pub async fn forwarder(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut backoff = f.retry_first;
        let mut wait: Option<Duration> = None;
        loop {
            if let Some(d) = wait.take() {
                tokio::select! {
                    () = self.forward_wake.notified() => backoff = f.retry_first,
                    () = tokio::time::sleep(jitter(d)) => {}
                }
            }
            let batch = match self.store.outbox_batch(f.batch_size) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    wait = Some(f.retry_max);
                    continue;
                }
            };
            // Nothing is claimed while the gateway is known to be unreachable:
            // the health checks wake the forwarder when it comes back.
            if batch.is_empty() || !self.gateway.is_online() {
                tokio::select! {
                    () = self.forward_wake.notified() => {}
                    () = tokio::time::sleep(f.health_interval) => {}
                }
                continue;
            }
            match self.forward_once(batch).await {
                Ok(None) => backoff = f.retry_first,
                Ok(Some(auth)) => {
                    wait = Some(if auth { f.retry_max } else { backoff });
                    backoff = (backoff * 2).min(f.retry_max);
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarding stopped by a storage error");
                    self.requeue_stranded();
                    wait = Some(f.retry_max);
                }
            }
        }
    }

    /// One forwarding round. `Ok(Some(auth))`: the link failed (auth: credentials).
    async fn forward_once(&self, batch: Vec<(PaymentRecord, Vec<u8>)>) -> Result<Option<bool>, StepError> {
        let mut claims = Vec::with_capacity(batch.len());
        for (rec, _) in &batch {
            claims.push((rec.id.clone(), next(rec.status, &Input::ForwardSending)?, Update::default()));
        }
        let claimed: Vec<(PaymentRecord, Vec<u8>)> = self
            .store
            .apply_batch(claims)
            .inspect_err(|e| self.note_store_error(e))?
            .into_iter()
            .zip(batch)
            .filter_map(|(r, (_, blob))| r.ok().map(|(rec, _)| (rec, blob)))
            .collect();
        failpoint::hit("forward_after_claim");
        let requests = claimed
            .iter()
            .map(|(rec, blob)| self.authorize_request(rec, &rec.card.clone().unwrap_or_default(), blob.clone()))
            .collect();
        match self.gateway.forward_batch(requests).await {
            BatchOutcome::Results(results) => {
                failpoint::hit("forward_after_response");
                self.apply_forward_results(claimed, results).await?;
                let mut s = self.sync.lock().unwrap();
                s.last_error.clear();
                s.paused = false;
                Ok(None)
            }
            BatchOutcome::LinkError { message, auth } => {
                tracing::warn!(items = claimed.len(), %message, auth, "forwarding failed; payments stay queued");
                let items = claimed
                    .iter()
                    .map(|(rec, _)| {
                        let t = next(rec.status, &Input::ForwardRetry { message: message.clone() });
                        (rec.id.clone(), t, Update { last_error: Some(message.clone()), ..Default::default() })
                    })
                    .filter_map(|(id, t, u)| t.ok().map(|t| (id, t, u)))
                    .collect();
                self.store.apply_batch(items).inspect_err(|e| self.note_store_error(e))?;
                let (first_pause, new_error) = {
                    let mut s = self.sync.lock().unwrap();
                    let new_error = s.last_error != message;
                    s.last_error = message.clone();
                    let first = auth && !s.paused;
                    s.paused = auth;
                    (first, new_error)
                };
                if first_pause {
                    tracing::error!(%message, "ALERT: forwarding paused: the gateway refuses posd's credentials");
                    self.emit("forwarding_paused", "", "", format!("forwarding paused: {message}")).await;
                } else if !auth && new_error {
                    self.emit("forward_failed", "", "", format!("{} payments stay queued: {message}", claimed.len()))
                        .await;
                }
                Ok(Some(auth))
            }
        }
    }

    /// Stores a forwarding round's answers. Results are matched to payments by
    /// transaction key and checked against the local amount and currency; only
    /// an error about the item itself (malformed, account mismatch) quarantines
    /// it; anything unclear puts it back in the queue under the same key.
    async fn apply_forward_results(
        &self,
        claimed: Vec<(PaymentRecord, Vec<u8>)>,
        results: Vec<ForwardResult>,
    ) -> Result<(), StepError> {
        let mut by_key: HashMap<String, ForwardResult> =
            results.into_iter().map(|r| (r.transaction_key.clone(), r)).collect();
        let mut items = Vec::with_capacity(claimed.len());
        for (rec, _) in claimed {
            let r = by_key.remove(&rec.gateway_key).unwrap_or_default();
            let tx = match (r.transaction, r.error_code.as_str()) {
                (Some(tx), _) => Ok(tx),
                // A gateway that answers a repeated key with "conflict": the
                // charge exists, so ask for it instead of failing.
                (None, "already_exists") => match self.gateway.transaction(&rec.gateway_key).await {
                    Ok(Some(tx)) => Ok(tx),
                    Ok(None) => Err(Retry("the gateway reports a conflict but has no record".into())),
                    Err(e) => Err(Retry(format!("status query after a conflict failed: {e}"))),
                },
                (None, code @ ("invalid_argument" | "account_mismatch")) => {
                    Err(Quarantine(code.to_string(), r.error_message.clone()))
                }
                (None, "") => Err(Retry("the gateway returned no result for this payment".into())),
                (None, other) => Err(Retry(format!("gateway error {other}: {}", r.error_message))),
            };
            let tx = tx.and_then(|t| {
                if t.amount_minor != 0 && (t.amount_minor != rec.amount_minor || t.currency != rec.currency) {
                    Err(Retry(format!(
                        "the gateway's record ({} {}) does not match the payment ({} {})",
                        t.amount_minor, t.currency, rec.amount_minor, rec.currency
                    )))
                } else {
                    Ok(t)
                }
            });
            let (input, event) = match tx {
                Ok(t) => match Outcome::try_from(t.outcome).unwrap_or(Outcome::Unspecified) {
                    Outcome::Approved => (
                        Input::Approved { captured: t.captured },
                        Some(("forwarded", "forwarded; the gateway approved".to_string(), t)),
                    ),
                    Outcome::Declined => {
                        tracing::error!(payment = %rec.id, code = %t.decline_code, "ALERT: a payment approved offline was declined when forwarded");
                        (
                            Input::Declined { code: t.decline_code.clone(), message: t.decline_message.clone() },
                            Some((
                                "offline_declined",
                                format!("declined when forwarded: {} (the merchant's loss)", t.decline_code),
                                t,
                            )),
                        )
                    }
                    Outcome::Reversed | Outcome::Voided => {
                        let message = "the gateway holds this payment's key as reversed".to_string();
                        tracing::error!(payment = %rec.id, "ALERT: queued payment quarantined: {message}");
                        (
                            Input::Quarantine { code: "reversed_at_gateway".into(), message: message.clone() },
                            Some(("quarantined", format!("reversed_at_gateway: {message}"), t)),
                        )
                    }
                    Outcome::Unspecified => {
                        (Input::ForwardRetry { message: "the gateway answered without an outcome".into() }, None)
                    }
                },
                Err(Quarantine(code, message)) => {
                    tracing::error!(payment = %rec.id, %code, %message, "ALERT: queued payment quarantined");
                    (
                        Input::Quarantine { code: code.clone(), message: message.clone() },
                        Some(("quarantined", format!("{code}: {message}"), Transaction::default())),
                    )
                }
                Err(Retry(message)) => {
                    tracing::warn!(payment = %rec.id, %message, "forwarding result unclear; payment stays queued");
                    (Input::ForwardRetry { message }, None)
                }
            };
            let t = next(rec.status, &input)?;
            let update = match event {
                Some((kind, message, answer)) => Update {
                    auth_code: (!answer.auth_code.is_empty()).then_some(answer.auth_code),
                    gateway_reference: (!answer.gateway_reference.is_empty()).then_some(answer.gateway_reference),
                    event: Some(NewEvent {
                        kind,
                        terminal_id: rec.terminal_id.clone(),
                        payment_id: rec.id.clone(),
                        message,
                    }),
                    ..Default::default()
                },
                None => Update { last_error: Some(t.cause.clone()), ..Default::default() },
            };
            items.push((rec.id.clone(), t, update));
        }
        for r in self.store.apply_batch(items).inspect_err(|e| self.note_store_error(e))? {
            match r {
                Ok((rec, event)) => {
                    tracing::info!(payment = %rec.id, status = %rec.status, "forwarding result stored");
                    if let Some(e) = event {
                        let _ = self.events.send(e);
                    }
                }
                Err(e) => tracing::error!(error = %e, "forwarding result not stored"),
            }
        }
        Ok(())
    }

    /// Puts payments left in FORWARDING (a round cut short by a storage
    /// error) back in the queue; the same key makes the repeat safe.
    fn requeue_stranded(&self) {
        let filter = crate::store::ListFilter { statuses: vec![Status::Forwarding], limit: 1000, ..Default::default() };
        let Ok(stranded) = self.store.list(&filter) else { return };
        let items: Vec<_> = stranded
            .iter()
            .filter_map(|rec| {
                let t =
                    next(rec.status, &Input::ForwardRetry { message: "forwarding round interrupted".into() }).ok()?;
                Some((rec.id.clone(), t, Update::default()))
            })
            .collect();
        if !items.is_empty()
            && let Err(e) = self.store.apply_batch(items)
        {
            tracing::error!(error = %e, "cannot put interrupted payments back in the queue");
        }
    }

    /// Gateway reachability (health checks plus real calls) and queue ageing.
    pub async fn monitor(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut online = self.gateway.subscribe_online();
        let mut health = tokio::time::interval(f.health_interval);
        let mut ageing = tokio::time::interval(f.ageing_interval);
        let mut was_online: Option<bool> = None;
        let mut last_recorded = 0i64;
        let mut readers: HashMap<String, (bool, u64)> = HashMap::new();
        loop {
            tokio::select! {
                _ = health.tick() => self.gateway.probe().await,
                _ = online.changed() => {}
                _ = ageing.tick() => {
                    self.age_queue(&f).await;
                    self.expire_authorizations().await;
                    self.report_readers(&mut readers).await;
                    self.heartbeat.store(now_ms(), Ordering::Relaxed);
                    continue;
                }
            }
            let now_online = *online.borrow_and_update();
            if was_online != Some(now_online) {
                if was_online.is_some() || !now_online {
                    let (kind, text) = if now_online {
                        ("online", "the gateway is reachable")
                    } else {
                        ("offline", "the gateway cannot be reached")
                    };
                    self.emit(kind, "", "", text.into()).await;
                }
                was_online = Some(now_online);
                if now_online {
                    self.forward_wake.notify_one();
                }
            }
            if now_online && now_ms() - last_recorded > 60_000 {
                last_recorded = now_ms();
                if let Err(e) = self.store.set_meta(LAST_ONLINE, last_recorded) {
                    tracing::warn!(error = %e, "cannot record the gateway's last contact");
                }
            }
        }
    }

    /// Emits an event when a lane's reader connects or disconnects (the lane
    /// task reopens an unplugged device by itself, with backoff).
    /// Every connection and disconnection since the last look is reported,
    /// in order, however long ago it happened (a reader that came and went
    /// between two looks, or before the first).
    async fn report_readers(&self, seen: &mut HashMap<String, (bool, u64)>) {
        for lane in self.lanes.values() {
            let state = lane.reader_state();
            let (was, before) =
                seen.insert(lane.id.clone(), (state.connected, state.connections)).unwrap_or((false, 0));
            let new = state.connections.saturating_sub(before);
            let disconnected = || {
                let message = format!("card reader on {} disconnected; reopening", lane.line);
                self.emit("reader_disconnected", &lane.id, "", message)
            };
            if was && (new > 0 || !state.connected) {
                disconnected().await;
            }
            for i in 0..new {
                let message = format!("card reader {} (firmware {}) connected", state.serial, state.firmware);
                self.emit("reader_connected", &lane.id, "", message).await;
                if i + 1 < new || !state.connected {
                    disconnected().await;
                }
            }
        }
    }

    /// Reverses AUTHORIZED payments left uncaptured past the capture window:
    /// the reversal worker releases the hold at the gateway (retrying until
    /// it acknowledges), and a late capture is refused.
    async fn expire_authorizations(&self) {
        let Some(window) = self.settings.capture_window else { return };
        let cutoff = self.clock.now_ms() - window.as_millis() as i64;
        let old = match self.store.authorized_before(cutoff, 100) {
            Ok(old) => old,
            Err(e) => {
                tracing::error!(error = %e, "cannot check authorizations against the capture window");
                return;
            }
        };
        for rec in old {
            let amount = pos_engine::money::format(rec.amount_minor, &rec.currency);
            let update = Update {
                event: Some(NewEvent {
                    kind: "authorization_expired",
                    terminal_id: rec.terminal_id.clone(),
                    payment_id: rec.id.clone(),
                    message: format!(
                        "payment {} ({amount}) was not captured within the capture window ({}); it is reversed, nothing is charged",
                        rec.id,
                        human(window)
                    ),
                }),
                ..Default::default()
            };
            match self.step(&rec, Input::CaptureWindowPassed { window: human(window) }, update).await {
                Ok(_) => tracing::warn!(payment = %rec.id, %amount, "authorization not captured in time; reversing it"),
                // A capture or void got there first.
                Err(StepError::Store(StoreError::Conflict { .. })) => {}
                Err(e) => tracing::error!(payment = %rec.id, error = %e, "cannot expire an authorization"),
            }
        }
    }

    async fn age_queue(&self, f: &ForwardSettings) {
        self.clock.check();
        let now = self.clock.now_ms();
        // Expire what is too old to forward.
        match self.store.queued_before(now - f.expire_after.as_millis() as i64) {
            Ok(old) => {
                let items: Vec<_> = old
                    .iter()
                    .filter_map(|rec| {
                        let message = format!("not forwarded within {}", human(f.expire_after));
                        let t = next(rec.status, &Input::Expire { message: message.clone() }).ok()?;
                        let event = NewEvent {
                            kind: "expired",
                            terminal_id: rec.terminal_id.clone(),
                            payment_id: rec.id.clone(),
                            message,
                        };
                        Some((rec.id.clone(), t, Update { event: Some(event), ..Default::default() }))
                    })
                    .collect();
                if !items.is_empty() {
                    tracing::error!(count = items.len(), "ALERT: queued payments expired unsent");
                    match self.store.apply_batch(items) {
                        Ok(results) => {
                            for (_, e) in results.into_iter().flatten() {
                                if let Some(e) = e {
                                    let _ = self.events.send(e);
                                }
                            }
                        }
                        Err(e) => self.note_store_error(&e),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot check the queue's age"),
        }
        let Ok(summary) = self.store.queue_summary() else { return };
        let level = summary.oldest_queued_at_ms.map(|t| {
            let age = Duration::from_millis((now - t).max(0) as u64);
            let policy = offline::OfflinePolicy {
                alert_after: f.alert_after,
                stop_after: f.stop_after,
                expire_after: f.expire_after,
                ..offline::OfflinePolicy::defaults_for("")
            };
            (offline::age_level(&policy, age), age)
        });
        let previous = {
            let mut s = self.sync.lock().unwrap();
            std::mem::replace(&mut s.age_level, level.map(|(l, _)| l))
        };
        if let Some((level, age)) = level
            && previous.is_none_or(|p| level > p)
        {
            match level {
                AgeLevel::Alert => {
                    tracing::warn!(age_s = age.as_secs(), "ALERT: offline payments are waiting too long");
                    self.emit("queue_age_alert", "", "", format!("the oldest unsent payment is {} old", human(age)))
                        .await;
                }
                AgeLevel::Stop => {
                    tracing::error!(
                        age_s = age.as_secs(),
                        "ALERT: no new offline payments until the queue is forwarded"
                    );
                    self.emit(
                        "queue_age_stop",
                        "",
                        "",
                        format!("the oldest unsent payment is {} old; new offline payments are refused", human(age)),
                    )
                    .await;
                }
                AgeLevel::Fresh | AgeLevel::Expire => {}
            }
        }
        // Housekeeping with disk writes, at most once a minute: the ageing
        // clock's high-water mark, and a WAL checkpoint so the card data of
        // settled payments does not linger there.
        let due = {
            let mut last = self.last_housekeeping.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.clock.persist(&self.store);
            self.store.checkpoint();
        }
    }

    /// Follows the gateway's event stream (its webhooks), applying each
    /// event id once and re-emitting it to the register. Resumes after the
    /// last sequence seen, across reconnects and restarts.
    pub async fn gateway_events(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut backoff = f.retry_first;
        loop {
            let after = self.store.meta("gateway_event_sequence").ok().flatten().unwrap_or(0).max(0) as u64;
            let reason = match self.gateway.events(after).await {
                Err(e) => e,
                Ok(mut stream) => {
                    backoff = f.retry_first;
                    loop {
                        match stream.message().await {
                            Ok(Some(e)) => match self.store.apply_gateway_event(&e).await {
                                Ok(Some(rec)) => {
                                    tracing::info!(kind = %e.kind, event = %e.event_id, "gateway event applied");
                                    let _ = self.events.send(rec);
                                }
                                Ok(None) => {
                                    tracing::debug!(event = %e.event_id, "gateway event redelivered; already applied")
                                }
                                Err(err) => {
                                    self.note_store_error(&err);
                                    break format!("cannot store a gateway event: {err}");
                                }
                            },
                            Ok(None) => break "the gateway closed its event stream".to_string(),
                            Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                        }
                    }
                }
            };
            tracing::debug!(%reason, "gateway event stream interrupted; reconnecting");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(f.retry_max);
        }
    }

    /// The first part of a graceful stop: refuses new payments and lets those
    /// in progress finish within `bound`. Payments still waiting for a card
    /// then are canceled (nothing was charged); any still waiting for the
    /// gateway are left as they are stored, and the next start settles them
    /// by status query, as after a power cut.
    pub async fn drain(&self, bound: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        // An admission past its check of `stopping` registers its payment first.
        for admission in self.admission.values() {
            drop(admission.lock().await);
        }
        let running = |engine: &Self| engine.live.lock().unwrap().keys().cloned().collect::<Vec<_>>();
        let first = running(self);
        if first.is_empty() {
            return;
        }
        tracing::info!(payments = ?first, bound = ?bound, "stopping: waiting for payments in progress");
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the check, so the last payment's end is not missed.
            let ended = self.none_live.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if running(self).is_empty() || tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        for id in running(self) {
            let Ok(Some(rec)) = self.store.get(&id) else { continue };
            if matches!(rec.status, Status::Created | Status::Collecting) {
                tracing::warn!(payment = %id, "stopping: canceling a payment still waiting for a card");
                match self.cancel_payment(&id).await {
                    Ok(_) => self.emit(
                        "payment_canceled_on_stop",
                        &rec.terminal_id,
                        &id,
                        format!("payment {id} still waited for a card when posd stopped; it was canceled, nothing was charged"),
                    ).await,
                    Err(e) => tracing::error!(payment = %id, error = %e, "stopping: cannot cancel"),
                }
            } else {
                tracing::warn!(payment = %id, status = %rec.status, "stopping: payment parked; it is settled at the next start");
                self.emit(
                    "payment_parked_on_stop",
                    &rec.terminal_id,
                    &id,
                    format!("payment {id} was {} when posd stopped; posd settles it when it starts again", rec.status),
                )
                .await;
            }
        }
    }

    /// Prints the configured copies of a payment that ended (approved or
    /// declined) on its lane's printer. A printer fault is reported as an
    /// event and never touches the payment.
    async fn auto_print(&self, id: &str) {
        let Ok(Some(rec)) = self.store.get(id) else { return };
        let ended = rec.status.is_approved() || matches!(rec.status, Status::Declined);
        if !ended || self.lanes.get(&rec.terminal_id).is_none_or(|l| l.printer.is_none()) {
            return;
        }
        for copy in self.settings.auto_print.clone() {
            if let Err(e) = self.print_receipt(id, copy).await {
                tracing::warn!(payment = %id, copy = copy.name(), error = %e, "receipt not printed");
            }
        }
    }

    /// Prints a payment's receipt and waits for the printer's confirmation.
    /// Returns the lane and whether it was a reprint.
    pub async fn print_receipt(&self, id: &str, copy: crate::receipt::Copy) -> Result<(String, bool), EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        let printer = self.printer_of(&rec.terminal_id)?;
        let marker = format!("{} receipt", copy.name());
        let reprint = self.store.has_event("receipt_printed", id, &marker)?;
        let refunds = self.store.refunds_of(id)?;
        let lines = if rec.on_terminal() {
            self.store.terminal_result(id)?.map(|t| t.lines).unwrap_or_default()
        } else {
            vec![]
        };
        let job = crate::receipt::payment_receipt(
            &self.settings.receipt,
            printer.width,
            &rec,
            &refunds,
            copy,
            reprint,
            &lines,
        );
        match printer.print(job.into_bytes()).await {
            Ok(()) => {
                self.emit("receipt_printed", &rec.terminal_id, id, format!("{marker} printed")).await;
                Ok((rec.terminal_id, reprint))
            }
            Err(e) => {
                self.emit(
                    "receipt_failed",
                    &rec.terminal_id,
                    id,
                    format!(
                        "{marker} not printed: {e}; the payment is unchanged, print it again once the printer is ready"
                    ),
                )
                .await;
                Err(print_error(e))
            }
        }
    }

    /// Opens the lane's cash drawer.
    pub async fn open_drawer(&self, terminal: &str) -> Result<(), EngineError> {
        let printer = self.printer_of(terminal)?;
        // In real time: a drawer opens even when the printer is out of paper.
        printer.real_time(pos_escpos::cmd::drawer_pulse_now(false, 100).to_vec()).await.map_err(print_error)
    }

    /// Prints the end-of-day slip on the lane's printer, when it has one. A
    /// printer fault does not undo the end-of-day: it is reported as an
    /// event, and the batch's totals stay in the answer and the event log.
    async fn print_slip(&self, b: &pb::BatchSummary, terminal_lines: &[String]) {
        let Ok(printer) = self.printer_of(&b.terminal_id) else { return };
        let job = crate::receipt::end_of_day_slip(&self.settings.receipt, printer.width, b, terminal_lines);
        match printer.print(job.into_bytes()).await {
            Ok(()) => {
                self.emit("slip_printed", &b.terminal_id, "", format!("end-of-day slip {} printed", b.batch_id)).await
            }
            Err(e) => {
                self.emit(
                    "slip_failed",
                    &b.terminal_id,
                    "",
                    format!("end-of-day slip {} not printed: {e}; the batch is closed all the same", b.batch_id),
                )
                .await
            }
        }
    }

    fn printer_of(&self, terminal: &str) -> Result<&crate::printer::Printer, EngineError> {
        let lane =
            self.lanes.get(terminal).ok_or_else(|| EngineError::NotFound(format!("unknown terminal {terminal:?}")))?;
        lane.printer.as_ref().ok_or_else(|| {
            EngineError::FailedPrecondition("NO_PRINTER", format!("terminal {terminal} has no printer configured"))
        })
    }

    /// Reports each lane's printer changes as events: ready, fault, paper
    /// near its end, disconnected.
    pub async fn printer_events(self: Arc<Self>) {
        let mut tasks = Vec::new();
        for lane in self.lanes.values() {
            let Some(printer) = &lane.printer else { continue };
            let (engine, lane_id, mut rx) = (self.clone(), lane.id.clone(), printer.watch());
            tasks.push(tokio::spawn(async move {
                let mut last = String::new();
                loop {
                    let status = rx.borrow_and_update().clone();
                    let (kind, text) = if !status.connected {
                        ("printer_disconnected", status.describe())
                    } else if let Some(f) = status.state.fault() {
                        ("printer_fault", f.to_string())
                    } else if status.state.paper == pos_escpos::PaperLevel::NearEnd {
                        ("printer_paper_near_end", "the printer's paper is near its end; replace the roll soon".into())
                    } else {
                        ("printer_ready", "the printer is ready".into())
                    };
                    // The first state is news only if it is not "ready".
                    if kind != last && !(last.is_empty() && kind == "printer_ready") {
                        tracing::info!(lane = %lane_id, kind, detail = %text, "printer status");
                        engine.emit(kind, &lane_id, "", text).await;
                    }
                    last = kind.to_string();
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Warns about unsent payments at shutdown.
    pub async fn shutdown_warning(&self) {
        if let Ok(s) = self.store.queue_summary()
            && s.count > 0
        {
            tracing::warn!(unsent = s.count, "shutting down with offline payments not yet forwarded; they are kept");
            self.emit(
                "shutdown_with_unsent",
                "",
                "",
                format!("posd stopped with {} payments not yet forwarded", s.count),
            )
            .await;
        }
    }
}

fn print_error(e: crate::printer::PrintError) -> EngineError {
    use crate::printer::PrintError;
    match e {
        PrintError::NotConnected(_) | PrintError::Line(_) => {
            EngineError::Unavailable("PRINTER_NOT_CONNECTED", format!("{e}; the payment is unchanged"))
        }
        PrintError::Fault(_) => EngineError::FailedPrecondition(
            "PRINTER_FAULT",
            format!("{e}; the payment is unchanged: print the receipt again once the printer is ready"),
        ),
        PrintError::Timeout(_) => EngineError::DeadlineExceeded(
            "PRINTER_TIMEOUT",
            format!("{e}; the payment is unchanged: check the printer, then print again"),
        ),
    }
}

fn unknown_refund(why: &str, refund_id: &str) -> String {
    format!(
        "the refund's outcome is unknown ({why}); call again with the same idempotency key to learn it (refund {refund_id})"
    )
}

/// A new key for the gateway: a UUIDv7 in Crockford base32, ending in a
/// letter. The store keeps the payment's masked PAN right after its gateway
/// key; a key ending in digits would run into the PAN's first six digits and
/// make a digit run that looks like a card number in the database file.
fn gateway_key() -> String {
    format!("{}K", pos_cardcrypt::crockford32(uuid::Uuid::now_v7().as_bytes()))
}

fn call_error(e: crate::gateway::CallError) -> EngineError {
    match e {
        crate::gateway::CallError::NotSent(m) => EngineError::Unavailable(
            "GATEWAY_UNREACHABLE",
            format!("the gateway cannot be reached ({m}); this needs the gateway"),
        ),
        crate::gateway::CallError::Refused(m) => {
            EngineError::FailedPrecondition("GATEWAY_REFUSED", format!("the gateway refused: {m}"))
        }
        crate::gateway::CallError::Unknown(m) => EngineError::Unavailable(
            "OUTCOME_UNKNOWN",
            format!("no answer from the gateway ({m}); repeating the same request is safe"),
        ),
        crate::gateway::CallError::TimedOut(m) => EngineError::DeadlineExceeded(
            "OUTCOME_UNKNOWN",
            format!("the gateway did not answer in time ({m}); repeating the same request is safe"),
        ),
    }
}

fn step_error(e: StepError) -> EngineError {
    match e {
        StepError::Store(s) => EngineError::Store(s),
        StepError::Refused(t) => EngineError::FailedPrecondition("WRONG_STATE", t.to_string()),
    }
}

/// What to do with a forwarded payment whose answer did not settle it.
enum Unsettled {
    /// Back to the queue, to be sent again under the same key.
    Retry(String),
    /// The gateway refused the item itself: hold it for a person.
    Quarantine(String, String),
}
use Unsettled::{Quarantine, Retry};

/// Spreads retries: 80-120 % of `d`.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(std::time::Instant::now()) % 401;
    d * (800 + r as u32) / 1000
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// What the register must get when it repeats a key: the same payment, or an
/// error naming the first parameter that differs.
fn compare(existing: &PaymentRecord, req: &NewPayment) -> Result<(), EngineError> {
    let differs = if existing.amount_minor != req.amount_minor {
        Some(("amount.amount_minor", format!("{} before, {} now", existing.amount_minor, req.amount_minor)))
    } else if existing.currency != req.currency {
        Some(("amount.currency", format!("{} before, {} now", existing.currency, req.currency)))
    } else if existing.terminal_id != req.terminal_id {
        Some(("terminal_id", format!("{} before, {} now", existing.terminal_id, req.terminal_id)))
    } else if existing.order_reference != req.order_reference {
        Some(("order_reference", format!("{:?} before, {:?} now", existing.order_reference, req.order_reference)))
    } else if existing.manual_capture != req.manual_capture {
        Some(("capture_mode", "differs from the first request".to_string()))
    } else {
        None
    };
    match differs {
        None => Ok(()),
        Some((field, detail)) => Err(EngineError::AlreadyExists(format!(
            "idempotency key {:?} was already used for payment {} with a different {field} ({detail})",
            req.idempotency_key, existing.id
        ))),
    }
}

/// A masked PAN as first 6, `*`s, last 4; anything else is masked fully.
fn well_masked(masked: &str) -> String {
    let chars: Vec<char> = masked.chars().collect();
    let n = chars.len();
    let ok = (13..=19).contains(&n)
        && chars.iter().enumerate().all(|(i, c)| if i < 6 || i >= n - 4 { c.is_ascii_digit() } else { *c == '*' });
    if ok {
        return masked.to_string();
    }
    let digits: String = chars.iter().filter(|c| c.is_ascii_digit()).collect();
    tracing::error!("the reader sent a badly masked card number; masking it");
    if digits.len() >= 13 && digits.len() == n { pos_cardcrypt::mask_pan(&digits) } else { "*".repeat(n.max(4)) }
}

fn card_info(c: &CardResult) -> CardInfo {
    use crate::lane::scrub;
    CardInfo {
        masked_pan: well_masked(&c.masked_pan),
        brand: scrub(&c.brand),
        entry_mode: convert::entry_mode(c.entry_mode) as i32,
        wallet: convert::wallet(c.wallet) as i32,
        aid: scrub(&c.aid),
        application_label: scrub(&c.application_label),
        verification: convert::verification(c.verification) as i32,
        fingerprint: scrub(&c.card_fingerprint),
    }
}

#[cfg(test)]
mod tests {
    use super::well_masked;

    #[test]
    fn masked_pans_keep_first_six_and_last_four_only() {
        assert_eq!(well_masked("424242******4242"), "424242******4242");
        assert_eq!(well_masked("4242424242424242"), "424242******4242");
        assert_eq!(well_masked("4242424242******"), "****************");
        assert_eq!(well_masked("garbage"), "*******");
    }
}
