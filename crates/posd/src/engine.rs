//! The payment engine at run time: admits payments, runs each in a task it
//! owns (not the gRPC call's), commits every transition before acting on it,
//! recovers after a restart, and retries reversals until acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::{Effect, Input, Recovery, Status, next};
use pos_proto::gateway::{AuthorizeRequest, Outcome, ReverseRequest, Transaction};
use pos_proto::reader::{CardResult, CollectCard, FailReason};
use pos_proto::terminal as pb;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::convert;
use crate::gateway::{AuthOutcome, Gateway};
use crate::lane::{Lane, ReaderEvent};
use crate::store::{CardInfo, PaymentRecord, Store, StoreError, Update, now_ms};

/// Errors for the register, mapped once to gRPC codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("payment storage failed: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Prefix of the terminal id sent to the gateway ("<store>/<lane>").
    pub store_id: String,
    pub demo: bool,
    /// How long the reader may take to return a card.
    pub collect_timeout: Duration,
    /// Status queries after a lost answer, before a reversal is queued.
    pub status_attempts: u32,
    pub status_backoff: Duration,
    /// First and longest wait between reversal attempts.
    pub reversal_backoff: (Duration, Duration),
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
}

struct Live {
    events: broadcast::Sender<pb::PaymentEvent>,
    cancel: mpsc::Sender<()>,
}

pub struct Engine {
    store: Arc<Store>,
    gateway: Arc<Gateway>,
    lanes: BTreeMap<String, Arc<Lane>>,
    settings: EngineSettings,
    /// Serialises admission: idempotency lookup, busy check and insert.
    admission: tokio::sync::Mutex<()>,
    live: Mutex<HashMap<String, Live>>,
    busy: Mutex<HashMap<String, String>>,
    reversals: Notify,
}

/// A register's view of a payment stream: the payment now, and what follows.
pub struct Attached {
    pub payment: PaymentRecord,
    pub events: Option<broadcast::Receiver<pb::PaymentEvent>>,
}

impl Engine {
    pub fn new(store: Arc<Store>, gateway: Arc<Gateway>, lanes: Vec<Arc<Lane>>, settings: EngineSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            gateway,
            lanes: lanes.into_iter().map(|l| (l.id.clone(), l)).collect(),
            settings,
            admission: tokio::sync::Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            reversals: Notify::new(),
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

    pub fn busy_with(&self, terminal: &str) -> Option<String> {
        self.busy.lock().unwrap().get(terminal).cloned()
    }

    fn gateway_terminal(&self, terminal: &str) -> String {
        format!("{}/{terminal}", self.settings.store_id)
    }

    /// Starts a payment, or attaches to the one under the same key.
    pub async fn take_payment(self: &Arc<Self>, req: NewPayment) -> Result<Attached, EngineError> {
        let lane = self.validate(&req)?;
        let _admission = self.admission.lock().await;
        let now = now_ms();
        let candidate = PaymentRecord {
            id: format!("pay_{}", pos_cardcrypt::crockford32(uuid::Uuid::now_v7().as_bytes())),
            idempotency_key: req.idempotency_key.clone(),
            order_reference: req.order_reference.clone(),
            terminal_id: req.terminal_id.clone(),
            amount_minor: req.amount_minor,
            currency: req.currency.clone(),
            manual_capture: req.manual_capture,
            status: Status::Created,
            gateway_key: pos_cardcrypt::crockford32(uuid::Uuid::now_v7().as_bytes()),
            card: None,
            reason_code: String::new(),
            reason_message: String::new(),
            auth_code: String::new(),
            gateway_reference: String::new(),
            demo: self.settings.demo,
            created_at_ms: now,
            updated_at_ms: now,
        };
        // A known key re-attaches (or conflicts) below, busy or not.
        if let Some(busy) = self.busy_with(&lane.id)
            && self.store.get_by_key(&req.idempotency_key)?.is_none()
        {
            return Err(EngineError::FailedPrecondition(format!(
                "terminal {} is busy with payment {busy}; wait for it to finish or cancel it",
                lane.id
            )));
        }
        match self.store.insert_or_get(&candidate)? {
            Err(existing) => {
                compare(&existing, &req)?;
                Ok(self.attach(existing))
            }
            Ok(created) => {
                let (events, _) = broadcast::channel(64);
                let (cancel, cancel_rx) = mpsc::channel(1);
                let rx = events.subscribe();
                self.live.lock().unwrap().insert(created.id.clone(), Live { events, cancel });
                self.busy.lock().unwrap().insert(created.terminal_id.clone(), created.id.clone());
                tracing::info!(payment = %created.id, terminal = %created.terminal_id, amount = created.amount_minor, currency = %created.currency, "payment created");
                let engine = self.clone();
                let lane = lane.clone();
                let rec = created.clone();
                tokio::spawn(async move { engine.run_payment(lane, rec, cancel_rx).await });
                Ok(Attached { payment: created, events: Some(rx) })
            }
        }
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
            return Err(EngineError::FailedPrecondition(format!(
                "payment {id} is {}; only a payment that is still collecting a card can be canceled",
                rec.status
            )));
        }
        let (cancel, mut events) = {
            let live = self.live.lock().unwrap();
            let l =
                live.get(id).ok_or_else(|| EngineError::FailedPrecondition(format!("payment {id} is not running")))?;
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
            s => Err(EngineError::FailedPrecondition(format!("payment {id} could not be canceled: it is {s}"))),
        }
    }

    /// Commits a transition, publishes it, and performs its fire-and-forget
    /// effects. Request/response effects (collect, authorize, query) are
    /// performed by the caller, which awaits their results.
    async fn step(&self, rec: &PaymentRecord, input: Input, update: Update) -> Result<PaymentRecord, StoreError> {
        let t = next(rec.status, &input).map_err(|e| {
            tracing::error!(payment = %rec.id, error = %e, "invalid transition");
            StoreError::Conflict { id: rec.id.clone(), expected: rec.status, actual: rec.status }
        })?;
        let new = self.store.apply(&rec.id, &t, update)?;
        tracing::info!(payment = %new.id, from = %t.from, to = %t.to, cause = %t.cause, "payment transition");
        self.publish(&new, convert::stage(new.status), convert::status_message(&new));
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
        if new.status.is_settled_for_register() {
            self.settle(&new);
        }
        Ok(new)
    }

    fn publish(&self, rec: &PaymentRecord, stage: pb::PaymentStage, message: String) {
        if let Some(l) = self.live.lock().unwrap().get(&rec.id) {
            let history = if rec.status.is_settled_for_register() {
                self.store.history(&rec.id).unwrap_or_default()
            } else {
                vec![]
            };
            let _ = l.events.send(pb::PaymentEvent {
                payment_id: rec.id.clone(),
                stage: stage as i32,
                message,
                payment: Some(convert::payment(rec, &history)),
                at: Some(convert::timestamp(now_ms())),
            });
        }
    }

    /// The register has its answer: free the lane and end the live stream.
    fn settle(&self, rec: &PaymentRecord) {
        self.live.lock().unwrap().remove(&rec.id);
        let mut busy = self.busy.lock().unwrap();
        if busy.get(&rec.terminal_id) == Some(&rec.id) {
            busy.remove(&rec.terminal_id);
        }
    }

    async fn run_payment(self: Arc<Self>, lane: Arc<Lane>, rec: PaymentRecord, mut cancel: mpsc::Receiver<()>) {
        let id = rec.id.clone();
        if let Err(e) = self.drive(&lane, rec, &mut cancel).await {
            // Storage failed: fail closed. Nothing more is done for this
            // payment until a restart recovers it from what was committed.
            tracing::error!(payment = %id, error = %e, "payment stopped: storage failure");
            lane.release(&id);
            if let Ok(Some(rec)) = self.store.get(&id) {
                self.publish(&rec, pb::PaymentStage::Failed, format!("Payment storage failed: {e}"));
                self.settle(&rec);
            } else {
                self.live.lock().unwrap().remove(&id);
                self.busy.lock().unwrap().retain(|_, p| *p != id);
            }
        }
    }

    async fn drive(&self, lane: &Lane, rec: PaymentRecord, cancel: &mut mpsc::Receiver<()>) -> Result<(), StoreError> {
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
        let card = loop {
            tokio::select! {
                ev = reader.recv() => match ev {
                    Some(ReaderEvent::Progress { stage, text }) => {
                        self.publish(&rec, convert::reader_stage(stage), text);
                    }
                    Some(ReaderEvent::Card(card)) => break card,
                    Some(ReaderEvent::Failed { reason: FailReason::Canceled, .. }) => {
                        lane.release(&rec.id);
                        self.step(&rec, Input::Cancel { by: "the customer at the reader".into() }, Update::default()).await?;
                        return Ok(());
                    }
                    Some(ReaderEvent::Failed { reason, message }) => {
                        lane.release(&rec.id);
                        let code = match reason {
                            FailReason::Timeout => "reader_timeout",
                            FailReason::CardError => "card_error",
                            _ => "reader_error",
                        };
                        self.step(&rec, Input::CollectFailed { code: code.into(), message }, Update::default()).await?;
                        return Ok(());
                    }
                    Some(ReaderEvent::Disconnected(reason)) => {
                        let message = format!("the card reader disconnected: {reason}");
                        self.step(&rec, Input::CollectFailed { code: "reader_disconnected".into(), message }, Update::default()).await?;
                        return Ok(());
                    }
                    None => {
                        let message = "the card reader stopped answering".to_string();
                        self.step(&rec, Input::CollectFailed { code: "reader_disconnected".into(), message }, Update::default()).await?;
                        return Ok(());
                    }
                },
                Some(()) = cancel.recv() => {
                    self.step(&rec, Input::Cancel { by: "the register".into() }, Update::default()).await?;
                    return Ok(());
                }
                () = &mut deadline => {
                    lane.cancel(&rec.id).await;
                    let message = format!("no card within {:?}", self.settings.collect_timeout);
                    self.step(&rec, Input::CollectFailed { code: "reader_timeout".into(), message }, Update::default()).await?;
                    return Ok(());
                }
            }
        };
        lane.release(&rec.id);
        self.authorize(rec, *card).await
    }

    async fn authorize(&self, rec: PaymentRecord, card: CardResult) -> Result<(), StoreError> {
        if card.encrypted_card.is_empty() {
            let input = Input::CollectFailed {
                code: "reader_error".into(),
                message: "the reader returned no card data".into(),
            };
            self.step(&rec, input, Update::default()).await?;
            return Ok(());
        }
        let info = card_info(&card);
        let blob = card.encrypted_card;
        let rec = self
            .step(&rec, Input::CardRead, Update { card: Some((info.clone(), blob.clone())), ..Default::default() })
            .await?;
        let rec = self.step(&rec, Input::Sending, Update::default()).await?;
        let request = AuthorizeRequest {
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
        };
        match self.gateway.authorize(request).await {
            AuthOutcome::Answer(tx) => {
                self.apply_answer(&rec, tx).await?;
            }
            AuthOutcome::Rejected(message) => {
                let input = Input::Declined { code: "gateway_rejected".into(), message };
                self.step(&rec, input, Update::default()).await?;
            }
            AuthOutcome::NotSent(message) => {
                self.step(&rec, Input::NotSent { message }, Update::default()).await?;
            }
            AuthOutcome::Unknown(message) => {
                tracing::warn!(payment = %rec.id, %message, "gateway answer lost; asking for the outcome");
                let rec = self.step(&rec, Input::AnswerLost { message }, Update::default()).await?;
                self.settle_unknown(rec).await?;
            }
        }
        Ok(())
    }

    /// Applies the gateway's answer for a payment in AUTHORIZING or UNKNOWN.
    /// Returns false when the answer does not settle it.
    async fn apply_answer(&self, rec: &PaymentRecord, tx: Transaction) -> Result<bool, StoreError> {
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
            Outcome::Reversed | Outcome::Unspecified => Ok(false),
        }
    }

    /// Settles a payment whose answer was lost: ask for the outcome under
    /// the same key; if it stays unknown, queue a reversal.
    async fn settle_unknown(&self, rec: PaymentRecord) -> Result<(), StoreError> {
        let mut last = String::from("no attempt made");
        for attempt in 0..self.settings.status_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.settings.status_backoff * attempt).await;
            }
            match self.gateway.transaction(&rec.gateway_key).await {
                Ok(Some(tx)) => {
                    if self.apply_answer(&rec, tx).await? {
                        return Ok(());
                    }
                    last = "the gateway holds the key as reversed".into();
                    break;
                }
                Ok(None) => {
                    last = "the gateway has no record of the request".into();
                    break;
                }
                Err(e) => last = e,
            }
        }
        self.step(&rec, Input::StillUnknown { message: last }, Update::default()).await?;
        Ok(())
    }

    /// Finishes what a previous run left: called once before serving.
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        for rec in self.store.unfinished()? {
            match pos_engine::recovery(rec.status) {
                Recovery::Interrupt => {
                    self.step(&rec, Input::Interrupted, Update::default()).await?;
                }
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
                }
                Recovery::Reverse => self.reversals.notify_one(),
                Recovery::None => {}
            }
        }
        Ok(())
    }

    /// Sends queued reversals until each is acknowledged. Runs for the life
    /// of the process.
    pub async fn reversal_worker(self: Arc<Self>) {
        let (first, longest) = self.settings.reversal_backoff;
        let mut backoff = first;
        loop {
            let pending = self
                .store
                .list(&crate::store::ListFilter {
                    statuses: vec![Status::ReversalPending],
                    limit: 100,
                    ..Default::default()
                })
                .unwrap_or_default();
            let mut failed = false;
            for rec in pending {
                let req = ReverseRequest {
                    transaction_key: rec.gateway_key.clone(),
                    reason: "timeout".into(),
                    amount_minor: rec.amount_minor,
                    currency: rec.currency.clone(),
                    terminal_id: self.gateway_terminal(&rec.terminal_id),
                };
                match self.gateway.reverse(req).await {
                    Ok(_) => {
                        if let Err(e) = self.step(&rec, Input::ReversalAcknowledged, Update::default()).await {
                            tracing::error!(payment = %rec.id, error = %e, "could not record the reversal");
                            failed = true;
                        }
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

fn card_info(c: &CardResult) -> CardInfo {
    // Defence in depth: a reader that sent more than first 6 / last 4 digits
    // is masked here, before anything is stored or shown.
    let digits = c.masked_pan.chars().filter(char::is_ascii_digit).count();
    let masked_pan = if digits > 10 {
        tracing::error!("the reader sent an unmasked card number; masking it");
        pos_cardcrypt::mask_pan(&c.masked_pan)
    } else {
        c.masked_pan.clone()
    };
    CardInfo {
        masked_pan,
        brand: c.brand.clone(),
        entry_mode: convert::entry_mode(c.entry_mode) as i32,
        wallet: convert::wallet(c.wallet) as i32,
        aid: c.aid.clone(),
        application_label: c.application_label.clone(),
        verification: convert::verification(c.verification) as i32,
        fingerprint: c.card_fingerprint.clone(),
    }
}
