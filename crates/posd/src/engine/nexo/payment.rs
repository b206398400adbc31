//! A payment on a lane's nexo terminal: the thin driver of
//! `pos_engine::nexo::NexoPayment`, which makes every decision.
//! [`Engine::drive_nexo`] performs its commands and feeds back what came of
//! each: the commits (the ServiceID with COLLECTING before the POST, the
//! answer before the register hears it), the POST (read beside the
//! register's cancel, which becomes one AbortRequest on a second
//! connection), TransactionStatus for a payment in doubt, and the reversal
//! the machine may owe: committed with the answer as a pending attempt in
//! `nexo_reversals` (kind owed) and run at once while the lane is still held
//! (`Engine::run_owed_reversal` in `after_sale`, `AfterSale::committed`); one
//! the terminal does not book there is left to the reversal worker. At
//! start-up, [`Engine::recover_on_nexo`] settles a payment in flight by
//! TransactionStatus under the ServiceID stored with it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use pos_engine::nexo::{self as machine, AfterSaleOutcome, Command, Data, Event, Log, Millis, NexoPayment, Step};
use pos_engine::{Status, Transition};
use pos_nexo::codes::MessageCategory;
use pos_nexo::payment::{AmountsReq, PaymentRequest, PaymentTransaction, SaleData};
use pos_nexo::status::{AbortRequest, MERCHANT_ABORT};
use pos_nexo::{MessageReference, ResponseBody, SaleToPoiResponse, ServiceId, TransactionIdentification};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Extras, NexoDevice, payment_answer, payment_status, status_request};
use crate::convert;
use crate::engine::Engine;
use crate::engine::payment::{register_cancel, until};
use crate::nexo::terminal::{NexoError, NexoTerminal};
use crate::store::{
    self, Durability, EventKind, EventRecord, NexoReversal, PaymentRecord, ReversalKind, ReversalStatus, StoreError,
    Update,
};

/// One exchange with the terminal in flight.
type Exchange<'a> = Pin<Box<dyn Future<Output = Result<SaleToPoiResponse, NexoError>> + Send + 'a>>;
/// The register's AbortRequest in flight (its answer only logged).
type Aborting<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub(super) fn payment_of(rec: &PaymentRecord) -> machine::Payment {
    machine::Payment {
        id: rec.id.clone(),
        status: rec.status,
        amount_minor: rec.amount_minor,
        currency: rec.currency.clone(),
        gateway_key: rec.gateway_key.clone(),
    }
}

/// ISO 8601 for `ms` since the epoch, as a SaleTransactionID's TimeStamp.
fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// The SaleTransactionID of the reversal a payment owes: its own key, not
/// the payment's.
fn owed_key(rec: &PaymentRecord) -> String {
    format!("{}-reversal", rec.gateway_key)
}

impl Engine {
    /// Runs one payment the register asked for on the lane's nexo terminal
    /// to its end (`NexoPayment::new`).
    pub(in crate::engine) async fn run_on_nexo<D: NexoDevice>(
        &self,
        device: &D,
        rec: PaymentRecord,
        cancel: &mut mpsc::Receiver<()>,
    ) {
        let id = rec.id.clone();
        let payment = NexoPayment::new(payment_of(&rec), self.nexo_settings());
        let outcome = self.drive_nexo(device, payment, rec, Some(cancel)).await;
        if let machine::Outcome::Unrecorded { error, may_be_at_gateway, .. } = outcome {
            tracing::error!(payment = %id, %error, may_be_at_gateway, "payment stopped");
        }
    }

    /// Settles, after a restart, the payment a lane's nexo terminal may have
    /// (COLLECTING, or UNKNOWN not yet left to a person: see
    /// `pos_engine::nexo::recover`), in a task that holds the lane until the
    /// terminal has told: a new payment on it meanwhile could not be told
    /// apart from the one in doubt by a person reading the terminal's journal.
    pub(in crate::engine) fn recover_on_nexo(
        self: &Arc<Self>,
        lane: &str,
        device: Arc<NexoTerminal>,
        rec: PaymentRecord,
    ) {
        self.busy.lock().unwrap().insert(lane.to_string(), rec.id.clone());
        let engine = self.clone();
        tokio::spawn(async move {
            let id = rec.id.clone();
            if let machine::Outcome::Unrecorded { error, .. } = engine.settle_on_nexo(&*device, rec).await {
                tracing::error!(payment = %id, %error, "recovery on the nexo terminal failed");
            }
        });
    }

    /// Asks the terminal about a payment found in flight at start-up, by
    /// TransactionStatus for the ServiceID stored with it, never by a second
    /// POST (`NexoPayment::settling`).
    pub(in crate::engine) async fn settle_on_nexo<D: NexoDevice>(
        &self,
        device: &D,
        rec: PaymentRecord,
    ) -> machine::Outcome {
        tracing::info!(payment = %rec.id, status = %rec.status, "asking the nexo terminal about a payment in doubt");
        let service_id = match self.store.nexo_service(&rec.id) {
            Ok(Some((_, service_id))) => service_id,
            Ok(None) => {
                let error = "no ServiceID is stored with it; check the terminal's journal".to_string();
                return machine::Outcome::Unrecorded { stored: Some(rec.status), may_be_at_gateway: true, error };
            }
            Err(e) => {
                self.note_store_error(&e);
                let error = e.to_string();
                return machine::Outcome::Unrecorded { stored: None, may_be_at_gateway: true, error };
            }
        };
        let settling = NexoPayment::settling(payment_of(&rec), self.nexo_settings(), service_id.as_str().to_string());
        self.drive_nexo(device, settling, rec, None).await
    }

    /// Runs `payment` (stored as `rec`) to its end: performs each command
    /// and feeds back what came of it; waits only while the POST runs (its
    /// answer, the register's cancel, an AbortRequest in flight) or the
    /// machine waits out its backoff. The lane is freed when the run ends,
    /// unless the terminal may have the payment and posd could not record
    /// what came of it (then a restart settles it).
    pub(in crate::engine) async fn drive_nexo<D: NexoDevice>(
        &self,
        device: &D,
        mut payment: NexoPayment,
        rec: PaymentRecord,
        mut cancel: Option<&mut mpsc::Receiver<()>>,
    ) -> machine::Outcome {
        let mut run = NexoRun {
            engine: self,
            device,
            rec,
            post: Mutex::new(None),
            aborting: Mutex::new(None),
            extras: None,
            why: String::new(),
            held: None,
            began: Instant::now(),
        };
        let mut todo = VecDeque::from(payment.start(run.now()));
        loop {
            while let Some(command) = todo.pop_front() {
                if let Command::Done(outcome) = command {
                    if !matches!(outcome, machine::Outcome::Unrecorded { may_be_at_gateway: true, .. }) {
                        self.free_lane(&run.rec);
                    }
                    // The settled status held back while the run reversed
                    // what the terminal booked: announced with the lane free.
                    if let Some(held) = run.held.take() {
                        self.announce(&held, convert::stage(held.status), convert::status_message(&held));
                    }
                    return outcome;
                }
                if let Some(event) = run.perform(command).await {
                    todo.extend(payment.handle(event, run.now()));
                }
            }
            let deadline = payment.poll_timeout().map(|ms| run.began + Duration::from_millis(ms));
            let wake = {
                let (post, aborting) = (unshared(&mut run.post), unshared(&mut run.aborting));
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    answer = next_answer(post) => Wake::Answer(Box::new(answer)),
                    () = abort_sent(aborting) => Wake::Aborted,
                    () = register_cancel(cancel.as_deref_mut()) => Wake::Cancel,
                    () = until(deadline) => Wake::Timer,
                }
            };
            let commands = match wake {
                Wake::Answer(answer) => {
                    *unshared(&mut run.post) = None;
                    let event = run.posted(*answer);
                    payment.handle(event, run.now())
                }
                Wake::Aborted => {
                    *unshared(&mut run.aborting) = None;
                    Vec::new()
                }
                Wake::Cancel => payment.handle(Event::RegisterCancel, run.now()),
                Wake::Timer => payment.handle_timeout(run.now()),
            };
            todo.extend(commands);
        }
    }

    /// [`Engine::publish_commit`] for a commit after which the run still
    /// needs the lane (a reversal it owes): logged and its event sent now; a
    /// status the register takes as settled is returned to be announced when
    /// the run ends, once the lane is free (as [`Engine::announce`] promises:
    /// a register that starts its next payment on the final event never
    /// finds the lane busy); any other is published now.
    fn publish_held(&self, t: &Transition, new: &PaymentRecord, event: Option<EventRecord>) -> Option<PaymentRecord> {
        tracing::info!(payment = %new.id, from = %t.from, to = %t.to, cause = %t.cause, "payment transition");
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        if new.status.is_settled_for_register() {
            return Some(new.clone());
        }
        self.publish(new, convert::stage(new.status), convert::status_message(new));
        None
    }

    /// The lane's terminal is not the one configured: the lane shows it
    /// unavailable (status, metrics) until its health check finds it again.
    pub(super) fn lane_unavailable(&self, lane: &str, message: &str) {
        tracing::error!(%lane, error = %message, "the nexo terminal is not the lane's; lane unavailable");
        if let Some(l) = self.lanes.get(lane) {
            l.mark_unavailable(message);
        }
    }
}

/// What woke a run waiting on the POST, the register or the machine's deadline.
enum Wake {
    Answer(Box<Result<SaleToPoiResponse, NexoError>>),
    Aborted,
    Cancel,
    Timer,
}

/// The value in a `Mutex` that is never locked (see `NexoRun::post`).
fn unshared<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

async fn next_answer(post: &mut Option<Exchange<'_>>) -> Result<SaleToPoiResponse, NexoError> {
    match post {
        Some(exchange) => exchange.await,
        None => std::future::pending().await,
    }
}

async fn abort_sent(aborting: &mut Option<Aborting<'_>>) {
    match aborting {
        Some(abort) => abort.await,
        None => std::future::pending().await,
    }
}

/// One run of a payment on a nexo terminal: what the driver holds between
/// commands.
struct NexoRun<'a, D: NexoDevice> {
    engine: &'a Engine,
    device: &'a D,
    /// The payment as last committed, or as read back after a failed commit.
    rec: PaymentRecord,
    /// The POST, while it runs. In a `Mutex` only so that the run is `Sync`
    /// (its `&self` methods are awaited in a spawned task); it is reached
    /// through `get_mut`, never locked.
    post: Mutex<Option<Exchange<'a>>>,
    /// The register's AbortRequest, while it is sent (a `Mutex` as `post`).
    aborting: Mutex<Option<Aborting<'a>>>,
    /// What the store keeps of the last answer (from the POST or repeated
    /// by TransactionStatus) besides the machine's `Answer`.
    extras: Option<Extras>,
    /// Why the machine reverses what the terminal booked, for the audit log.
    why: String,
    /// A settled status committed with a reversal the run owes, announced to
    /// the register when the run ends (see [`Engine::publish_held`]).
    held: Option<PaymentRecord>,
    /// The machine's `now` counts from here.
    began: Instant,
}

impl<'a, D: NexoDevice> NexoRun<'a, D> {
    fn now(&self) -> Millis {
        Millis::try_from(self.began.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    /// Carries out one command; returns what came of it when the machine waits for that.
    async fn perform(&mut self, command: Command) -> Option<Event> {
        let engine = self.engine;
        match command {
            Command::NextServiceId => {
                return Some(match engine.store.next_service_id(self.device.sale_id()) {
                    Ok(id) => Event::ServiceId(id.as_str().to_string()),
                    Err(e) => {
                        engine.note_store_error(&e);
                        self.store_failed(e.to_string())
                    }
                });
            }
            Command::Persist { steps, durability } => return Some(self.persist(steps, durability).await),
            Command::Post { service_id, sale_transaction_id, amount_minor, currency } => {
                return self.post(&service_id, &sale_transaction_id, amount_minor, &currency);
            }
            Command::Abort { service_id } => self.abort(&service_id),
            Command::AskStatus { service_id } => {
                let answer = self.ask_status(&service_id, MessageCategory::Payment).await;
                let (status, extras) = payment_status(answer, &self.rec.currency);
                if extras.is_some() {
                    self.extras = extras;
                }
                return Some(Event::Status(status));
            }
            Command::Reverse { service_id, amount_minor, .. } => self.reverse(&service_id, amount_minor).await,
            Command::WakeRecorder => engine.record_wake.notify_one(),
            Command::LaneUnavailable { message } => engine.lane_unavailable(&self.rec.terminal_id, &message),
            Command::OutcomeUnknown { message } => {
                engine.emit(EventKind::TerminalOutcomeUnknown, &self.rec.terminal_id, &self.rec.id, message).await;
            }
            Command::Publish { stage, message } => engine.publish(&self.rec, convert::payment_stage(stage), message),
            Command::FreeLane => engine.free_lane(&self.rec),
            Command::EndStream => engine.end_live(&self.rec.id),
            Command::AutoPrint => engine.auto_print(&self.rec.id).await,
            Command::Log(log) => self.log(log),
            // The driver's loop ends the run on it.
            Command::Done(_) => {}
        }
        None
    }

    /// Starts the POST of the PaymentRequest; its answer is awaited beside
    /// the register's cancel. A request that cannot be made is not sent.
    fn post(&mut self, service_id: &str, key: &str, amount_minor: u64, currency: &str) -> Option<Event> {
        let not_sent = |message: String| Some(Event::NotSent { message, identity: false });
        let id = match ServiceId::parse(service_id) {
            Ok(id) => id,
            Err(e) => return not_sent(format!("the ServiceID {service_id:?} cannot be sent: {e}")),
        };
        let amounts_req = match i64::try_from(amount_minor)
            .map_err(|e| e.to_string())
            .and_then(|amount| AmountsReq::new(currency, amount).map_err(|e| e.to_string()))
        {
            Ok(amounts) => amounts,
            Err(e) => return not_sent(format!("the amount cannot be written for the terminal: {e}")),
        };
        let sale_data = SaleData { sale_transaction_id: self.sale_transaction(key), ..SaleData::default() };
        let request =
            PaymentRequest { sale_data, payment_transaction: PaymentTransaction { amounts_req }, payment_data: None };
        let device = self.device;
        *unshared(&mut self.post) = Some(Box::pin(async move { device.exchange(&id, request.into()).await }));
        None
    }

    /// posd's id of a request (its SaleTransactionID): `key`, and now.
    fn sale_transaction(&self, key: &str) -> TransactionIdentification {
        TransactionIdentification { transaction_id: key.to_string(), time_stamp: iso(self.engine.now_ms()) }
    }

    /// What the POST brought, for the machine.
    fn posted(&mut self, answer: Result<SaleToPoiResponse, NexoError>) -> Event {
        match answer {
            Ok(response) => match &response.body {
                ResponseBody::Payment(p) => {
                    self.extras = Some(Extras::of_payment(p));
                    Event::Answered(payment_answer(p, &self.rec.currency))
                }
                _ => Event::InDoubt { message: "the terminal answered the PaymentRequest with another message".into() },
            },
            Err(NexoError::NotSent(message)) => Event::NotSent { message, identity: false },
            Err(NexoError::Identity(message)) => Event::NotSent { message, identity: true },
            Err(e @ NexoError::Refused(_)) => Event::NotSent { message: e.to_string(), identity: false },
            Err(NexoError::InDoubt(message)) => Event::InDoubt { message },
        }
    }

    /// Sends the register's cancel as an AbortRequest (MerchantAbort) for
    /// the payment's request, under a ServiceID of its own, beside the POST.
    fn abort(&mut self, service_id: &str) {
        let (engine, device) = (self.engine, self.device);
        let payment = self.rec.id.clone();
        let reference = MessageReference {
            message_category: Some(MessageCategory::Payment),
            service_id: Some(service_id.to_string()),
            sale_id: Some(device.sale_id().to_string()),
            ..MessageReference::default()
        };
        *unshared(&mut self.aborting) = Some(Box::pin(async move {
            let id = match engine.store.reserve_service_id(device.sale_id()).await {
                Ok(id) => id,
                Err(e) => {
                    engine.note_store_error(&e);
                    tracing::error!(%payment, error = %e, "no ServiceID for the AbortRequest; not sent");
                    return;
                }
            };
            let body = AbortRequest { message_reference: reference, abort_reason: MERCHANT_ABORT.to_string() };
            match device.exchange(&id, body.into()).await {
                Ok(_) => tracing::info!(%payment, "the nexo terminal was asked to abort the payment"),
                // An AbortRequest has no answer of its own: the POST ends Aborted.
                Err(e) => tracing::info!(%payment, answer = %e, "the nexo terminal was asked to abort the payment"),
            }
        }));
    }

    /// A TransactionStatusRequest about the request of `category` under
    /// `service_id`, sent under a ServiceID of its own.
    async fn ask_status(&self, service_id: &str, category: MessageCategory) -> Result<SaleToPoiResponse, NexoError> {
        let engine = self.engine;
        let sale_id = self.device.sale_id();
        let id = engine.store.reserve_service_id(sale_id).await.map_err(|e| {
            engine.note_store_error(&e);
            NexoError::NotSent(format!("no ServiceID for the TransactionStatusRequest: {e}"))
        })?;
        self.device.exchange(&id, status_request(service_id, sale_id, category)).await
    }

    /// Commits the steps in one commit, then publishes each (holding the
    /// lane when the commit owes a reversal, which runs next).
    async fn persist(&mut self, steps: Vec<Step<Data>>, durability: machine::Durability) -> Event {
        let durability = match durability {
            machine::Durability::Synced => Durability::Synced,
            machine::Durability::Deferred => Durability::Deferred,
        };
        let planned: Result<Vec<(Transition, Update)>, StoreError> = steps
            .into_iter()
            .map(|Step { transition, data }| -> Result<(Transition, Update), StoreError> {
                let update = self.update(&transition, data)?;
                Ok((transition, update))
            })
            .collect();
        let planned = match planned {
            Ok(planned) => planned,
            Err(e) => return self.store_failed(e.to_string()),
        };
        let owes = planned.iter().any(|(_, u)| matches!(&u.data, store::Data::NexoResult { owed: Some(_), .. }));
        let transitions: Vec<Transition> = planned.iter().map(|(t, _)| t.clone()).collect();
        let engine = self.engine;
        match engine.store.apply_all(&self.rec.id, durability, planned, engine.now_ms()).await {
            Ok(applied) => {
                for (t, (new, event)) in transitions.iter().zip(applied) {
                    if owes {
                        if let Some(settled) = engine.publish_held(t, &new, event) {
                            self.held = Some(settled);
                        }
                    } else {
                        engine.publish_commit(t, &new, event);
                    }
                    self.rec = new;
                }
                Event::Committed
            }
            Err(e) => {
                engine.note_store_error(&e);
                self.store_failed(e.to_string())
            }
        }
    }

    /// A store operation failed: the payment as it is stored now.
    fn store_failed(&mut self, error: String) -> Event {
        let stored = self.engine.store.get(&self.rec.id).ok().flatten();
        let status = stored.as_ref().map(|r| r.status);
        if let Some(stored) = stored {
            self.rec = stored;
        }
        Event::StoreFailed { error, stored: status }
    }

    /// What a step stores besides its transition. A step into CAPTURED
    /// queues the payment's record for the gateway's ledger; a result that
    /// owes a reversal writes its pending attempt (kind owed, under the
    /// ServiceID the machine read, taken from the lane's counter in the same
    /// commit; the time stamps are the commit's).
    fn update(&self, t: &Transition, data: Data) -> Result<Update, StoreError> {
        let book = t.to == Status::Captured;
        let data = match data {
            Data::None if book => store::Data::Booked { result: None, last_receipt: None },
            Data::None => store::Data::None,
            Data::Start { service_id } => {
                store::Data::NexoStart { sale_id: self.device.sale_id().to_string(), service_id: Some(service_id) }
            }
            Data::Result { answer, reversal } => {
                let owed = match reversal {
                    Some(service_id) => {
                        let service_id = ServiceId::parse(&service_id).map_err(|_| StoreError::Corrupt(service_id))?;
                        let poi = answer.poi_transaction.clone().unwrap_or_default();
                        let booked = answer.authorized_minor.and_then(|m| i64::try_from(m).ok());
                        Some(NexoReversal {
                            sale_id: self.device.sale_id().to_string(),
                            service_id,
                            payment_id: self.rec.id.clone(),
                            kind: ReversalKind::Owed,
                            sale_transaction_id: owed_key(&self.rec),
                            poi_transaction_id: poi.transaction_id,
                            poi_time_stamp: poi.timestamp,
                            amount_minor: booked.unwrap_or(self.rec.amount_minor),
                            status: ReversalStatus::Pending,
                            message: String::new(),
                            created_at_ms: 0,
                            updated_at_ms: 0,
                        })
                    }
                    None => None,
                };
                store::Data::NexoResult { result: super::terminal_data(&answer, self.extras.as_ref()), book, owed }
            }
        };
        Ok(Update { data, ..Update::default() })
    }

    fn log(&mut self, log: Log) {
        let id = &self.rec.id;
        match log {
            Log::InDoubt { message } => {
                tracing::warn!(payment = %id, %message, "nexo outcome in doubt; asking the terminal");
            }
            Log::Reversing { why } => {
                tracing::warn!(payment = %id, %why, "reversing what the nexo terminal booked");
                self.why = why;
            }
        }
    }

    /// Runs the reversal the last commit stored as owed (its pending
    /// attempt under `service_id`) to its end, in the lane's hold
    /// (`Engine::run_owed_reversal`): booked, the attempt is booked and a
    /// CAPTURED payment VOIDED in one commit; not booked, in doubt or not
    /// recorded, the attempt is left to the reversal worker, woken for it.
    async fn reverse(&mut self, service_id: &str, amount_minor: u64) {
        let engine = self.engine;
        let id = self.rec.id.clone();
        let stored = match ServiceId::parse(service_id) {
            Ok(service_id) => engine.store.reversal(self.device.sale_id(), &service_id).map_err(|e| {
                engine.note_store_error(&e);
                e.to_string()
            }),
            Err(_) => Err(format!("the ServiceID {service_id:?} is not valid")),
        };
        let owed = match stored {
            Ok(Some(owed)) => owed,
            Ok(None) => {
                tracing::error!(payment = %id, %service_id, "the owed reversal is not stored; left to the worker");
                engine.reversals.notify_one();
                return;
            }
            Err(error) => {
                tracing::error!(payment = %id, %error, "the owed reversal cannot be read; left to the reversal worker");
                engine.reversals.notify_one();
                return;
            }
        };
        let why = if self.why.is_empty() { "owed by posd".to_string() } else { self.why.clone() };
        let outcome = engine.run_owed_reversal(self.device, &self.rec, owed, why, engine.nexo_settings()).await;
        match outcome {
            AfterSaleOutcome::Booked(_) => {
                tracing::info!(payment = %id, amount = amount_minor, "the nexo terminal reversed what it booked");
                return;
            }
            AfterSaleOutcome::NotBooked { code, message } => tracing::error!(
                payment = %id, %code, %message, "the nexo terminal did not reverse what it booked; left owed"
            ),
            AfterSaleOutcome::InDoubt { message } => {
                tracing::error!(payment = %id, %message, "the owed reversal is in doubt; left owed");
            }
            AfterSaleOutcome::Unrecorded { error, sent } => {
                tracing::error!(payment = %id, %error, sent, "what came of the owed reversal is not recorded");
            }
        }
        // The worker's nexo pass asks about it or sends it again, once the
        // lane is free.
        engine.reversals.notify_one();
    }
}
