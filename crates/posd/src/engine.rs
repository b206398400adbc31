//! The payment engine at run time: admits payments, runs each in a task it
//! owns (not the gRPC call's), commits every transition before acting on it,
//! approves offline within limits, forwards the outbox, recovers after a
//! restart, and retries reversals until acknowledged.
//!
//! Background tasks: [`Engine::reversal_worker`], [`Engine::forwarder`],
//! [`Engine::monitor`] (gateway reachability, queue ageing, capture windows).
//!
//! This file holds admission, a payment's run on a card reader, recovery
//! and reversals; the rest of the engine is in its submodules: `queue` (the
//! offline queue), `after_sale` (captures, voids, refunds, end of day),
//! `printing` (receipts and the drawer) and `terminal` (ZVT lanes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::offline::{self, AgeLevel, Entry, OfflineCandidate, QueueState};
use pos_engine::{Effect, Input, Recovery, Status, Transition, TransitionError, next};
use pos_proto::gateway::{AuthorizeRequest, Outcome, ReverseRequest, Transaction};
use pos_proto::reader::{CardResult, CollectCard, FailReason};
use pos_proto::terminal as pb;
use tokio::sync::{Notify, broadcast, mpsc};

mod after_sale;
mod printing;
mod queue;
mod terminal;

use crate::clock::AgeClock;
use crate::convert;
use crate::failpoint;
use crate::gateway::{AuthOutcome, Gateway};
use crate::lane::{Lane, ReaderEvent};
use crate::store::{
    CardInfo, Durability, EventRecord, NewEvent, PaymentRecord, RefundRecord, Store, StoreError, Update, now_ms,
};

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
    /// Payments an after-sale operation (capture, void, capture-window
    /// expiry) has in hand: one at a time per payment, so an expiry never
    /// reverses a capture that is on its way to the gateway.
    in_hand: Mutex<HashSet<String>>,
    /// Notified whenever a claim on `in_hand` is released.
    released: Notify,
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
    /// Wakes [`Engine::database_recovered`] when `store_failed` is set.
    store_failure: Notify,
    /// How the database first failed: the API answers the whole episode so.
    database_failure: std::sync::OnceLock<crate::store::DatabaseFailure>,
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
            in_hand: Mutex::default(),
            released: Notify::new(),
            busy: Mutex::new(HashMap::new()),
            reversals: Notify::new(),
            forward_wake: Notify::new(),
            record_wake: Notify::new(),
            events: broadcast::channel(1024).0,
            clock,
            sync: Mutex::new(SyncState::default()),
            store_failed: AtomicBool::new(false),
            store_failure: Notify::new(),
            database_failure: std::sync::OnceLock::new(),
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

    /// True while the main loops run: the watchdog's question. A failed
    /// database is not a hang: posd keeps answering (refusing payments with
    /// the reason) and restarts itself once the database works again.
    pub fn healthy(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        let limit = (self.settings.forward.ageing_interval.as_millis() as i64 * 3).max(10_000);
        now_ms() - beat < limit
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

    /// How the database first failed, once it has (posd restarts once it works again).
    pub fn database_failure(&self) -> Option<crate::store::DatabaseFailure> {
        self.database_failure.get().copied()
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
        if matches!(e, StoreError::Db(_)) {
            // Kept before the flag is up, so every refusal finds it.
            let _ = self.database_failure.set(crate::store::DatabaseFailure::of(e));
        }
        if matches!(e, StoreError::Db(_)) && !self.store_failed.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %e, "database failed: refusing new payments until it works again");
            self.store_failure.notify_one();
        }
    }

    /// Returns once the database, having failed, works again: checked
    /// ([`Store::probe`]) after 1 s, then at doubling intervals up to 10 s.
    /// The daemon then restarts posd, so its start-up settles whatever the
    /// failure interrupted (a payment whose answer could not be stored, a
    /// refund left pending), as after a power cut. Pending until a failure.
    pub async fn database_recovered(&self) {
        const FIRST: Duration = Duration::from_secs(1);
        const MOST: Duration = Duration::from_secs(10);
        if !self.refusing_payments() {
            self.store_failure.notified().await;
        }
        let mut wait = FIRST;
        loop {
            tokio::time::sleep(wait).await;
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.probe()).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => tracing::warn!(error = %e, "the database still fails; new payments stay refused"),
                Err(e) => tracing::error!(error = %e, "the database check stopped"),
            }
            wait = (wait * 2).min(MOST);
        }
        let message = "the database works again; posd restarts to settle what the failure interrupted";
        tracing::warn!("{message}");
        self.emit("database_recovered", "", "", message.into()).await;
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
                "posd cannot use its payment database (full, locked by another program, or damaged); new \
                 payments are refused and queued payments are kept. posd checks the database every few seconds \
                 and restarts by itself once it works (free space, end the other program, or repair it)."
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
                format!("pay_{}", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes())),
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
        self.steps(rec, Durability::Synced, vec![(input, update)]).await
    }

    /// Commits several transitions of one payment in one commit (all or
    /// none), then publishes each and performs its effects as [`Self::step`]
    /// does; returns the last record.
    async fn steps(
        &self,
        rec: &PaymentRecord,
        durability: Durability,
        inputs: Vec<(Input, Update)>,
    ) -> Result<PaymentRecord, StepError> {
        let mut status = rec.status;
        let mut planned = Vec::with_capacity(inputs.len());
        for (input, update) in inputs {
            let t = next(status, &input)?;
            status = t.to;
            planned.push((t, update));
        }
        let ts: Vec<Transition> = planned.iter().map(|(t, _)| t.clone()).collect();
        let applied =
            self.store.apply_all(&rec.id, durability, planned).await.inspect_err(|e| self.note_store_error(e))?;
        let mut last = None;
        for (t, (new, event)) in ts.iter().zip(applied) {
            self.committed(t, &new, event).await;
            last = Some(new);
        }
        Ok(last.expect("at least one transition"))
    }

    /// Publishes a committed transition and performs its fire-and-forget
    /// effects.
    async fn committed(&self, t: &Transition, new: &PaymentRecord, event: Option<EventRecord>) {
        tracing::info!(payment = %new.id, from = %t.from, to = %t.to, cause = %t.cause, "payment transition");
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        self.announce(new, convert::stage(new.status), convert::status_message(new));
        for effect in &t.effects {
            match effect {
                Effect::CancelCollection => {
                    if let Some(l) = self.lanes.get(&new.terminal_id) {
                        l.cancel(&new.id).await;
                    }
                }
                Effect::ShowResult { approved } => {
                    if let Some(l) = self.lanes.get(&new.terminal_id) {
                        l.show_result(&new.id, *approved, &convert::status_message(new)).await;
                    }
                }
                Effect::SendReversal => self.reversals.notify_one(),
                Effect::CollectCard | Effect::SendAuthorization | Effect::QueryStatus => {}
            }
        }
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

    /// Takes a payment in hand for an after-sale operation; `None` while
    /// another one has it. Released when the claim is dropped.
    fn claim(&self, id: &str) -> Option<Claim<'_>> {
        self.in_hand.lock().unwrap().insert(id.to_string()).then(|| Claim { engine: self, id: id.to_string() })
    }

    /// [`Engine::claim`], waiting for whoever holds it to let go.
    async fn claim_when_free(&self, id: &str) -> Claim<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(claim) = self.claim(id) {
                return claim;
            }
            released.await;
        }
    }

    /// [`Engine::claim`] for the register: another operation holding the
    /// payment is an error to try again.
    fn claim_for_register(&self, id: &str) -> Result<Claim<'_>, EngineError> {
        self.claim(id).ok_or_else(|| {
            EngineError::Unavailable(
                "PAYMENT_BUSY",
                format!("another operation on payment {id} is in progress; try again in a moment"),
            )
        })
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
                        "Outcome unknown: posd could not record the gateway's answer ({e}). Do not take this payment again; posd settles payment {id} when it restarts, which it does by itself once its database works again."
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
        // Deferred: lost to a power cut, the payment is back at CREATED,
        // which recovery ends exactly as it ends COLLECTING (nothing sent).
        let rec = self.steps(&rec, Durability::Deferred, vec![(Input::Start, Update::default())]).await?;
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
        // Card read and authorizing in one synced commit, before the request
        // leaves (persist before act): on disk, it also makes the deferred
        // COLLECTING durable.
        let card_read = Update { card: Some((info.clone(), blob.clone())), ..Default::default() };
        let rec = self
            .steps(&rec, Durability::Synced, vec![(Input::CardRead, card_read), (Input::Sending, Update::default())])
            .await?;
        let request = self.authorize_request(&rec, &info, blob);
        let sent = std::time::Instant::now();
        let outcome = self.gateway.authorize(request).await;
        if !matches!(outcome, AuthOutcome::NotSent(_) | AuthOutcome::LocalFault(_)) {
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
            AuthOutcome::LocalFault(why) => {
                // Not the network: the gateway may be up, so no offline
                // approval; nothing was sent, so nothing is charged.
                tracing::error!(payment = %rec.id, error = %why, "payment failed: a fault on this machine, not the gateway");
                let input = Input::OfflineRefused {
                    code: "local_resource_exhausted".into(),
                    message: format!(
                        "posd could not reach out to the gateway because of a fault on the lane PC ({why}); \
                         nothing was charged; take the payment again, and if this repeats, tell store IT"
                    ),
                };
                self.step(&rec, input, Update::default()).await?;
            }
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
        let fingerprint = pos_mask::scrub(&card.card_fingerprint);
        // The reader's brand text shows up in a refusal's message.
        let brand = pos_mask::scrub(&card.brand);
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
                    "The gateway cannot be reached ({why}) and posd cannot read its offline queue (a database \
                     error; see posd's log); nothing was charged"
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
            brand: &brand,
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
        // Per lane, what its payment terminal may have booked: settled in
        // one task that holds the lane, the payment first.
        let mut on_terminal: BTreeMap<String, InDoubtOnTerminal> = BTreeMap::new();
        for refund in self.store.pending_refunds()? {
            if let Some(rec) = self.store.get(&refund.payment_id)? {
                if rec.on_terminal() {
                    // Asked, never sent again: a second refund could pay twice.
                    on_terminal.entry(rec.terminal_id.clone()).or_default().1.push((refund, rec));
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
                        let terminal = rec.terminal_id.clone();
                        on_terminal.entry(terminal).or_default().0 = Some(rec);
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
        for (terminal, (payment, refunds)) in on_terminal {
            self.recover_on_terminal(&terminal, payment, refunds);
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
                    // Why, for the gateway: an answer lost, a hold released, or
                    // an offline payment never confirmed.
                    reason: match rec.reason_code.as_str() {
                        why @ ("capture_window_passed" | "expired") => why,
                        _ => "timeout",
                    }
                    .into(),
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

    /// Gateway reachability (health checks plus real calls), queue ageing,
    /// reader events and the watchdog's heartbeat. The loop never waits for
    /// the gateway: health checks and capture windows run in tasks of their
    /// own, so a gateway that accepts and never answers (a WAN black hole)
    /// holds up neither the ageing nor the heartbeat. Those tasks never end:
    /// if one does (a panic), the loop stops beating and the watchdog
    /// restarts posd, as it would for the loop itself.
    pub async fn monitor(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut helpers = vec![tokio::spawn(self.clone().health_checks())];
        if self.settings.capture_window.is_some() {
            helpers.push(tokio::spawn(self.clone().capture_windows()));
        }
        let (refunds, period) = (self.clone(), f.ageing_interval);
        helpers.push(tokio::spawn(async move { every(period, || refunds.settle_pending_refunds()).await }));
        let mut online = self.gateway.subscribe_online();
        let mut ageing = tokio::time::interval(f.ageing_interval);
        let mut was_online: Option<bool> = None;
        let mut last_recorded = 0i64;
        let mut readers: HashMap<String, (bool, u64)> = HashMap::new();
        loop {
            tokio::select! {
                _ = online.changed() => {}
                _ = ageing.tick() => {
                    if helpers.iter().any(tokio::task::JoinHandle::is_finished) {
                        tracing::error!("a monitor task stopped; the heartbeat stops so the watchdog restarts posd");
                        return;
                    }
                    self.age_queue(&f).await;
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

    /// Asks the gateway whether it answers, every `health_interval`.
    async fn health_checks(self: Arc<Self>) {
        every(self.settings.forward.health_interval, || self.gateway.probe()).await
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
}

/// A new key for the gateway: a UUIDv7 in Crockford base32, ending in a
/// letter. The store keeps the payment's masked PAN right after its gateway
/// key; a key ending in digits would run into the PAN's first six digits and
/// make a digit run that looks like a card number in the database file.
/// Runs `work` every `period`, for good: a run that takes longer delays the
/// next, so runs never pile up.
async fn every<F: Future<Output = ()>>(period: Duration, mut work: impl FnMut() -> F) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        work().await;
    }
}

fn gateway_key() -> String {
    format!("{}K", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes()))
}

/// What a lane's payment terminal may have booked when posd stopped: its
/// payment in doubt, and its refunds in doubt with their payments.
type InDoubtOnTerminal = (Option<PaymentRecord>, Vec<(RefundRecord, PaymentRecord)>);

/// A payment in hand (see [`Engine::claim`]).
struct Claim<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.engine.in_hand.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.engine.released.notify_waiters();
    }
}

fn step_error(e: StepError) -> EngineError {
    match e {
        // Another change got there first: the register hears the state now.
        StepError::Store(StoreError::Conflict { id, actual, .. }) => {
            EngineError::FailedPrecondition("WRONG_STATE", format!("payment {id} is {actual} now"))
        }
        StepError::Store(s) => EngineError::Store(s),
        StepError::Refused(t) => EngineError::FailedPrecondition("WRONG_STATE", t.to_string()),
    }
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

/// The reader's masked PAN held to the one masking rule,
/// [`pos_mask::well_masked`] (first 6, `*`s, last 4 kept; a whole card
/// number masked so; anything else masked fully), logged as an error when
/// the reader did not mask it so itself.
fn well_masked(masked: &str) -> String {
    if !pos_mask::is_well_masked(masked) {
        tracing::error!("the reader sent a badly masked card number; masking it");
    }
    pos_mask::well_masked(masked)
}

fn card_info(c: &CardResult) -> CardInfo {
    use pos_mask::scrub;
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
        // The one rule of pos_mask, for the ZVT terminal's card numbers alike.
        assert_eq!(well_masked("4242 4242 4242 4242"), crate::zvt::safe_pan("4242 4242 4242 4242"));
        assert_eq!(well_masked("4242 4242 4242 4242"), "424242******4242");
        assert_eq!(well_masked("************4242"), crate::zvt::safe_pan("************4242"));
        assert_eq!(well_masked(""), "****");
    }
}
