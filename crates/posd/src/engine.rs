//! The payment engine at run time: admits payments, runs each in a task it
//! owns (not the gRPC call's), commits every transition before acting on it,
//! approves offline within limits, forwards the outbox, recovers after a
//! restart, and retries reversals until acknowledged.
//!
//! Background tasks: [`Engine::reversal_worker`], [`Engine::forwarder`],
//! [`Engine::monitor`] (gateway reachability, queue ageing, capture windows).
//!
//! This file holds the engine's state, admission, cancellation and the
//! commit-then-publish step every transition goes through; the rest is in
//! its submodules: `payment` (a payment's run on a card reader, driving
//! `pos_engine::payment::ReaderPayment`, which decides), `recovery` (start-up
//! recovery and the reversal worker), `background` (the monitor loop and the
//! graceful stop), `queue` (the offline queue), `after_sale` (captures,
//! voids, refunds, end of day), `printing` (receipts and the drawer),
//! `terminal` (ZVT lanes) and `nexo` (nexo lanes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::offline::AgeLevel;
use pos_engine::{Effect, Input, Status, Transition, TransitionError, next};
use pos_proto::terminal as pb;
use tokio::sync::{Notify, broadcast, mpsc};

mod after_sale;
mod background;
mod environment;
mod nexo;
mod payment;
mod printing;
mod queue;
mod recovery;
mod terminal;
#[cfg(test)]
mod test_support;

use crate::clock::AgeClock;
use crate::convert;
use crate::gateway::Gateway;
use crate::lane::Lane;
use crate::store::{Durability, EventKind, EventRecord, Inserted, NewEvent, PaymentRecord, Store, StoreError, Update};
use crate::telemetry::{LaneSnapshot, Latencies, Snapshot};
pub use environment::{Bug, Environment, Ids, Random};

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
    /// The wall clock (the time of commits, events and capture windows),
    /// ids and planted bug ([`Environment`]).
    env: Environment,
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
    latencies: Latencies,
    /// When the monitor last persisted the clock and checkpointed the WAL.
    last_housekeeping: Mutex<Option<tokio::time::Instant>>,
}

/// A register's view of a payment stream: the payment now, and what follows.
pub struct Attached {
    pub payment: PaymentRecord,
    pub events: Option<broadcast::Receiver<pb::PaymentEvent>>,
}

impl Engine {
    pub fn new(store: Arc<Store>, gateway: Arc<Gateway>, lanes: Vec<Arc<Lane>>, settings: EngineSettings) -> Arc<Self> {
        Self::in_environment(store, gateway, lanes, settings, Environment::system())
    }

    /// [`Engine::new`] in the given environment (the engine's tests and the
    /// simulator: a clock that follows tokio's paused one, counted ids).
    pub fn in_environment(
        store: Arc<Store>,
        gateway: Arc<Gateway>,
        lanes: Vec<Arc<Lane>>,
        settings: EngineSettings,
        env: Environment,
    ) -> Arc<Self> {
        let wall = env.wall;
        if env.planted(Bug::SynchronousNormal) {
            store.plant_synchronous_normal();
        }
        let clock = AgeClock::start(&store, wall);
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
            env,
            clock,
            sync: Mutex::new(SyncState::default()),
            store_failed: AtomicBool::new(false),
            store_failure: Notify::new(),
            database_failure: std::sync::OnceLock::new(),
            stopping: AtomicBool::new(false),
            heartbeat: std::sync::atomic::AtomicI64::new(wall.now_ms()),
            latencies: Default::default(),
            last_housekeeping: Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
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

    /// Milliseconds since the Unix epoch on the engine's wall clock: the
    /// time of its commits and events, and what capture windows count on.
    fn now_ms(&self) -> i64 {
        self.env.wall.now_ms()
    }

    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// What the metrics page shows, read now.
    pub fn telemetry(&self) -> Snapshot {
        let payments_by_status = self.store.count_by_status().unwrap_or_default();
        let (store_writes, store_commits) = self.store.write_counts();
        let lanes = self
            .lanes
            .values()
            .map(|lane| {
                let printer = lane.printer.as_ref().map(|p| p.status()).unwrap_or_default();
                LaneSnapshot {
                    id: lane.id.clone(),
                    reader_connected: lane.reader_state().connected,
                    printer_connected: printer.connected,
                    printer_ready: printer.connected && printer.state.ready(),
                    line_bytes_sent: lane.line_bytes.sent(),
                    line_bytes_received: lane.line_bytes.received(),
                }
            })
            .collect();
        Snapshot {
            payments_by_status,
            payment_writes: self.store.payment_writes(),
            store_writes,
            store_commits,
            unsynced_commits: self.store.unsynced_commits(),
            sync: self.sync_report().ok(),
            refusing_payments: self.refusing_payments(),
            gateway_local_faults: self.gateway.local_faults(),
            lanes,
            reader_latency: self.latencies.reader.snapshot(),
            gateway_latency: self.latencies.gateway.snapshot(),
            payment_latency: self.latencies.end_to_end.snapshot(),
        }
    }

    /// True while the main loops run: the watchdog's question. A failed
    /// database is not a hang: posd keeps answering (refusing payments with
    /// the reason) and restarts itself once the database works again.
    pub fn healthy(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        let limit = (self.settings.forward.ageing_interval.as_millis() as i64 * 3).max(10_000);
        self.now_ms() - beat < limit
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
            let (store, now) = (self.store.clone(), self.now_ms());
            match self.env.blocking(move || store.probe(now)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => tracing::warn!(error = %e, "the database still fails; new payments stay refused"),
                Err(e) => tracing::error!(error = %e, "the database check stopped"),
            }
            wait = (wait * 2).min(MOST);
        }
        let message = "the database works again; posd restarts to settle what the failure interrupted";
        tracing::warn!("{message}");
        self.emit(EventKind::DatabaseRecovered, "", "", message.into()).await;
    }

    /// Appends and publishes an event that is not part of a payment transition.
    async fn emit(&self, kind: EventKind, terminal_id: &str, payment_id: &str, message: String) {
        let e = NewEvent { kind, terminal_id: terminal_id.into(), payment_id: payment_id.into(), message };
        match self.store.append_event(&e, self.now_ms()).await {
            Ok(rec) => {
                let _ = self.events.send(rec);
            }
            Err(err) => {
                tracing::error!(error = %err, %kind, "cannot record an event");
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
        let now = self.now_ms();
        let candidate = PaymentRecord {
            order_reference: req.order_reference.clone(),
            manual_capture: req.manual_capture,
            demo: self.settings.demo,
            device: lane.device_kind(),
            ..PaymentRecord::created(
                self.env.ids.make("pay_"),
                req.idempotency_key.clone(),
                self.env.ids.gateway_key(),
                req.terminal_id.clone(),
                req.amount_minor,
                req.currency.clone(),
                now,
            )
        };
        let created = match self.store.insert_or_get(&candidate, &req.caller).await {
            Ok(Inserted::New(created)) => created,
            Ok(Inserted::Existing(existing)) => {
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
        let applied = self
            .store
            .apply_all(&rec.id, durability, planned, self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?;
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
        self.publish_commit(t, new, event);
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

    /// Logs a committed transition, sends its register event and announces
    /// the payment's new status (no effects: the caller performs them).
    fn publish_commit(&self, t: &Transition, new: &PaymentRecord, event: Option<EventRecord>) {
        tracing::info!(payment = %new.id, from = %t.from, to = %t.to, cause = %t.cause, "payment transition");
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        self.announce(new, convert::stage(new.status), convert::status_message(new));
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
}

/// A new key for the gateway, as posd makes one ([`Ids::gateway_key`]).
#[cfg(test)]
fn gateway_key() -> String {
    Ids::Uuid.gateway_key()
}

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
