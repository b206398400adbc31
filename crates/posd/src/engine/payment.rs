//! A payment's run on a lane's card device. On a card reader the engine is
//! the thin driver of `pos_engine::payment::ReaderPayment`, which makes every
//! decision (collect, authorize, offline approval or refusal, status queries
//! after a lost answer, what the register hears when a commit fails):
//! [`Engine::drive_reader`] performs the machine's commands (commits, the
//! reader, the gateway, the offline queue, the register) and feeds back what
//! came of each. The machine's `now` is milliseconds of tokio's clock since
//! the run began, so a paused clock drives its deadlines. The gateway and the
//! reader are reached through [`Authorizer`] and [`CardReader`], so the
//! driver runs against fakes in this module's tests. A payment terminal is
//! driven by `terminal` (ZVT) or `nexo`, the same way.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pos_engine::offline::{Entry, OfflinePolicy, QueueState};
use pos_engine::payment::{
    self as machine, Answer, Card, Command, Data, Event, Millis, ReaderFailure, ReaderPayment, Step,
};
use pos_engine::{Status, Transition};
use pos_proto::gateway::{AuthorizeRequest, Transaction};
use pos_proto::reader::{CardResult, CollectCard, FailReason};
use pos_proto::terminal as pb;
use tokio::sync::{MutexGuard, mpsc};

use super::{Bug, Engine, LAST_ONLINE};
use crate::convert;
use crate::failpoint;
use crate::gateway::{AuthOutcome, Gateway};
use crate::lane::{CardDevice, Lane, ReaderEvent};
use crate::store::{self, CardInfo, Durability, EventKind, EventRecord, NewEvent, PaymentRecord, StoreError, Update};

/// The gateway calls a card-reader payment makes ([`Gateway`]'s, or a fake's).
pub(super) trait Authorizer: Sync {
    /// Sends the authorization; see [`Gateway::authorize`].
    fn authorize(&self, req: AuthorizeRequest) -> impl Future<Output = AuthOutcome> + Send;
    /// The gateway's record under a key, `Ok(None)` when it has none; see
    /// [`Gateway::transaction`].
    fn transaction(&self, key: &str) -> impl Future<Output = Result<Option<Transaction>, String>> + Send;
}

impl Authorizer for Gateway {
    fn authorize(&self, req: AuthorizeRequest) -> impl Future<Output = AuthOutcome> + Send {
        Gateway::authorize(self, req)
    }

    fn transaction(&self, key: &str) -> impl Future<Output = Result<Option<Transaction>, String>> + Send {
        Gateway::transaction(self, key)
    }
}

/// What a card-reader payment asks of the lane's reader ([`Lane`]'s, or a fake's).
pub(super) trait CardReader: Sync {
    /// Asks for a card; the channel carries what follows. See [`Lane::collect`].
    fn collect(
        &self,
        req: CollectCard,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<ReaderEvent>, String>> + Send;
    /// Stops routing the reader's messages to the payment.
    fn release(&self, payment_id: &str);
    /// Tells the reader to stop collecting (it also releases it).
    fn cancel(&self, payment_id: &str) -> impl Future<Output = ()> + Send;
    fn show_result(&self, payment_id: &str, approved: bool, text: &str) -> impl Future<Output = ()> + Send;
}

impl CardReader for Lane {
    fn collect(
        &self,
        req: CollectCard,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<ReaderEvent>, String>> + Send {
        Lane::collect(self, req)
    }

    fn release(&self, payment_id: &str) {
        Lane::release(self, payment_id);
    }

    fn cancel(&self, payment_id: &str) -> impl Future<Output = ()> + Send {
        Lane::cancel(self, payment_id)
    }

    fn show_result(&self, payment_id: &str, approved: bool, text: &str) -> impl Future<Output = ()> + Send {
        Lane::show_result(self, payment_id, approved, text)
    }
}

impl Engine {
    /// Runs a payment the register asked for to its end, on the lane's card
    /// device: a payment terminal in `terminal` (ZVT) or `nexo`, a card
    /// reader here.
    pub(super) async fn run_payment(
        self: Arc<Self>,
        lane: Arc<Lane>,
        rec: PaymentRecord,
        mut cancel: mpsc::Receiver<()>,
    ) {
        match &lane.device {
            CardDevice::Zvt(zvt) => self.run_on_terminal(zvt, rec, &mut cancel).await,
            CardDevice::Nexo(nexo) => self.run_on_nexo(&**nexo, rec, &mut cancel).await,
            CardDevice::Reader(_) => {
                let id = rec.id.clone();
                let payment = ReaderPayment::new(payment_of(&rec), self.reader_settings(lane.offline.clone()));
                let outcome = self.drive_reader(&*self.gateway, Some(&*lane), payment, rec, Some(&mut cancel)).await;
                if let machine::Outcome::Unrecorded { error, may_be_at_gateway, .. } = outcome {
                    tracing::error!(payment = %id, %error, may_be_at_gateway, "payment stopped");
                }
            }
        }
    }

    /// Settles a card-reader payment found UNKNOWN at start-up by status
    /// query (`ReaderPayment::settling`); nobody follows it live.
    pub(super) async fn settle(&self, rec: PaymentRecord) {
        let lane = self.lanes.get(&rec.terminal_id).map(|l| &**l);
        let offline = lane.map_or_else(|| OfflinePolicy::defaults_for(&rec.currency), |l| l.offline.clone());
        let payment = ReaderPayment::settling(payment_of(&rec), self.reader_settings(offline));
        let outcome = self.drive_reader(&*self.gateway, lane, payment, rec, None).await;
        if let machine::Outcome::Unrecorded { error, .. } = outcome {
            tracing::error!(%error, "recovery failed");
        }
    }

    pub(super) fn reader_settings(&self, offline: OfflinePolicy) -> machine::Settings {
        machine::Settings {
            collect_timeout: self.settings.collect_timeout,
            status_attempts: self.settings.status_attempts,
            status_backoff: self.settings.status_backoff,
            offline,
        }
    }

    /// Runs `payment` (stored as `rec`) to its end: performs each command
    /// and feeds back what came of it; waits only while the machine waits on
    /// the reader, the register's cancel or its own deadline. As before the
    /// machine, the register's cancel is not read while a commit or a
    /// gateway call is in flight. Returns how the run ended.
    pub(super) async fn drive_reader<G: Authorizer, R: CardReader>(
        &self,
        gateway: &G,
        reader: Option<&R>,
        mut payment: ReaderPayment,
        rec: PaymentRecord,
        mut cancel: Option<&mut mpsc::Receiver<()>>,
    ) -> machine::Outcome {
        let mut run = Run {
            engine: self,
            gateway,
            reader,
            rec,
            card: None,
            collected: None,
            gate: None,
            held: None,
            began: tokio::time::Instant::now(),
            asked: std::time::Instant::now(),
        };
        let mut todo = VecDeque::from(payment.start(run.now()));
        loop {
            while let Some(command) = todo.pop_front() {
                if let Command::Done(outcome) = command {
                    return outcome;
                }
                if let Some(event) = run.perform(command).await {
                    todo.extend(payment.handle(event, run.now()));
                }
            }
            let deadline = payment.poll_timeout().map(|ms| run.began + Duration::from_millis(ms));
            let wake = {
                let collected = &mut run.collected;
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    event = next_reader_event(collected) => Wake::Reader(event),
                    () = register_cancel(cancel.as_deref_mut()) => Wake::Cancel,
                    () = until(deadline) => Wake::Timer,
                }
            };
            let commands = match wake {
                Wake::Reader(event) => {
                    let event = run.reader_event(event);
                    payment.handle(event, run.now())
                }
                Wake::Cancel => payment.handle(Event::RegisterCancel, run.now()),
                Wake::Timer => payment.handle_timeout(run.now()),
            };
            todo.extend(commands);
        }
    }

    /// [`Engine::publish_commit`] for an offline approval: the failpoint
    /// comes before the register hears "approved".
    fn approved_offline(&self, new: &PaymentRecord, event: Option<EventRecord>, why: &str) {
        failpoint::hit("offline_after_persist");
        tracing::warn!(payment = %new.id, %why, "gateway unreachable: approved offline");
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        self.announce(new, pb::PaymentStage::Approved, convert::status_message(new));
    }

    pub(super) fn authorize_request(&self, rec: &PaymentRecord, info: &CardInfo, blob: Vec<u8>) -> AuthorizeRequest {
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

    /// What the offline limits are checked against: the queue as stored.
    fn queue_state(&self, currency: &str, fingerprint: &str, now: i64) -> Result<QueueState, StoreError> {
        let summary = self.store.queue_summary()?;
        let ago = |t: i64, now: i64| Duration::from_millis((now - t).max(0) as u64);
        Ok(QueueState {
            count: summary.count,
            total_minor: summary.totals.iter().find(|(c, _)| c == currency).map_or(0, |(_, t)| *t),
            same_card: if fingerprint.is_empty() { 0 } else { self.store.queued_for_card(fingerprint)? },
            oldest_age: summary.oldest_queued_at_ms.map(|t| ago(t, now)),
            since_online: self.store.meta(LAST_ONLINE)?.map(|t| ago(t, self.now_ms())),
        })
    }
}

/// What woke a run waiting on the reader, the register or the machine's deadline.
enum Wake {
    Reader(Option<ReaderEvent>),
    Cancel,
    Timer,
}

/// One run of a card-reader payment: what the driver holds between commands.
struct Run<'a, G, R> {
    engine: &'a Engine,
    gateway: &'a G,
    /// `None` only when settling a payment whose lane is no longer configured.
    reader: Option<&'a R>,
    /// The payment as last committed, or as read back after a failed commit.
    rec: PaymentRecord,
    /// The card read: its details as stored, and its encrypted data, until
    /// the authorization takes them.
    card: Option<(CardInfo, Vec<u8>)>,
    /// The reader's messages while it collects for this payment.
    collected: Option<mpsc::UnboundedReceiver<ReaderEvent>>,
    /// The offline gate, from `ReadOfflineQueue` to `ReleaseOfflineGate`.
    gate: Option<MutexGuard<'a, ()>>,
    /// The simulator's planted bug: the commit to AUTHORIZING, held back
    /// until the authorization has been sent.
    held: Option<(Vec<Step>, machine::Durability)>,
    /// The machine's `now` counts from here.
    began: tokio::time::Instant,
    /// When the reader took the request: the reader latency's start.
    asked: std::time::Instant,
}

impl<G: Authorizer, R: CardReader> Run<'_, G, R> {
    fn now(&self) -> Millis {
        Millis::try_from(self.began.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    /// Carries out one command; returns what came of it when the machine waits for that.
    async fn perform(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Persist { steps, durability }
                if self.engine.env.planted(Bug::AuthorizingAfterSend)
                    && steps.iter().any(|s| s.transition.to == Status::Authorizing) =>
            {
                self.held = Some((steps, durability));
                return Some(Event::Committed);
            }
            Command::Persist { steps, durability } => return Some(self.persist(steps, durability).await),
            Command::CollectCard => return Some(self.collect().await),
            Command::SendAuthorization { gateway_key, capture } => {
                let answer = self.authorize(gateway_key, capture).await;
                if let Some((steps, durability)) = self.held.take() {
                    self.persist(steps, durability).await;
                }
                return Some(answer);
            }
            Command::ReadOfflineQueue { currency, fingerprint } => {
                return Some(self.read_queue(&currency, &fingerprint).await);
            }
            Command::QueryStatus { gateway_key } => return Some(self.query(&gateway_key).await),
            Command::ReleaseReader => {
                self.collected = None;
                if let Some(reader) = self.reader {
                    reader.release(&self.rec.id);
                }
            }
            Command::CancelReader => {
                self.collected = None;
                if let Some(reader) = self.reader {
                    reader.cancel(&self.rec.id).await;
                }
            }
            Command::ShowResult { approved } => {
                if let Some(reader) = self.reader {
                    reader.show_result(&self.rec.id, approved, &convert::status_message(&self.rec)).await;
                }
            }
            Command::ReleaseOfflineGate => drop(self.gate.take()),
            Command::WakeForwarder => self.engine.forward_wake.notify_one(),
            Command::NotifyReversal => self.engine.reversals.notify_one(),
            Command::Publish { stage, message } => {
                self.engine.publish(&self.rec, convert::payment_stage(stage), message);
            }
            Command::FreeLane => self.engine.free_lane(&self.rec),
            Command::EndStream => self.engine.end_live(&self.rec.id),
            Command::AutoPrint => self.engine.auto_print(&self.rec.id).await,
            // The driver's loop ends the run on it.
            Command::Done(_) => {}
        }
        None
    }

    /// Commits the steps in one commit, then publishes each as
    /// [`Engine::publish_commit`] does; its effects come as commands.
    async fn persist(&mut self, steps: Vec<Step>, durability: machine::Durability) -> Event {
        let durability = match durability {
            machine::Durability::Synced => Durability::Synced,
            machine::Durability::Deferred => Durability::Deferred,
        };
        // Why nothing was sent, for an offline approval's log.
        let mut why = String::new();
        let mut planned = Vec::with_capacity(steps.len());
        for Step { transition, data } in steps {
            if let Data::Queued { last_error, .. } = &data {
                why.clone_from(last_error);
            }
            planned.push((transition, self.update(data)));
        }
        let transitions: Vec<Transition> = planned.iter().map(|(t, _)| t.clone()).collect();
        let engine = self.engine;
        match engine.store.apply_all(&self.rec.id, durability, planned, engine.now_ms()).await {
            Ok(applied) => {
                for (t, (new, event)) in transitions.iter().zip(applied) {
                    if t.to == Status::OfflineApproved {
                        engine.approved_offline(&new, event, &why);
                    } else {
                        engine.publish_commit(t, &new, event);
                    }
                    self.rec = new;
                }
                Event::Committed
            }
            Err(e) => {
                engine.note_store_error(&e);
                let stored = engine.store.get(&self.rec.id).ok().flatten();
                let status = stored.as_ref().map(|r| r.status);
                if let Some(stored) = stored {
                    self.rec = stored;
                }
                Event::CommitFailed { error: e.to_string(), stored: status }
            }
        }
    }

    /// What a step stores besides its transition.
    fn update(&self, data: Data) -> Update {
        match data {
            Data::None => Update::default(),
            Data::Card => {
                let card = self.card.clone();
                let data = card.map_or(store::Data::None, |(card, encrypted)| store::Data::Card(card, encrypted));
                Update { data, ..Default::default() }
            }
            Data::Approval { auth_code, gateway_reference } => {
                let (auth_code, gateway_reference) = (Some(auth_code), Some(gateway_reference));
                Update { data: store::Data::GatewayAnswer { auth_code, gateway_reference }, ..Default::default() }
            }
            Data::Queued { queued_at_ms, last_error, event } => Update {
                data: store::Data::Queued { queued_at_ms, last_error },
                event: Some(NewEvent {
                    kind: EventKind::ApprovedOffline,
                    terminal_id: self.rec.terminal_id.clone(),
                    payment_id: self.rec.id.clone(),
                    message: event,
                }),
                ..Default::default()
            },
        }
    }

    async fn collect(&mut self) -> Event {
        let Some(reader) = self.reader else {
            return Event::ReaderUnavailable { message: "the lane has no card reader".into() };
        };
        let rec = &self.rec;
        let request = CollectCard {
            payment_id: rec.id.clone(),
            amount_minor: rec.amount_minor,
            currency: rec.currency.clone(),
            terminal_id: self.engine.gateway_terminal(&rec.terminal_id),
            transaction_key: rec.gateway_key.clone(),
            cashback_minor: 0,
        };
        match reader.collect(request).await {
            Ok(collected) => {
                self.collected = Some(collected);
                self.asked = std::time::Instant::now();
                Event::ReaderCollecting
            }
            Err(message) => Event::ReaderUnavailable { message },
        }
    }

    /// What the reader said, for the machine; `None`: its channel closed.
    fn reader_event(&mut self, event: Option<ReaderEvent>) -> Event {
        match event {
            Some(ReaderEvent::Progress { stage, text }) => {
                Event::ReaderProgress { stage: convert::reader_stage(stage), text }
            }
            Some(ReaderEvent::Card(card)) => {
                self.engine.latencies.reader.observe(self.asked.elapsed());
                let card = *card;
                let read = card_read(&card);
                // A card without encrypted data is never stored or sent.
                if read.has_blob {
                    self.card = Some((card_info(&card), card.encrypted_card));
                }
                Event::CardRead(read)
            }
            Some(ReaderEvent::Failed { reason, message }) => {
                let reason = match reason {
                    FailReason::Canceled => ReaderFailure::Canceled,
                    FailReason::Timeout => ReaderFailure::Timeout,
                    FailReason::CardError => ReaderFailure::CardError,
                    _ => ReaderFailure::Other,
                };
                Event::ReaderFailed { reason, message }
            }
            Some(ReaderEvent::Disconnected(reason)) => Event::ReaderDisconnected { reason },
            None => {
                self.collected = None;
                Event::ReaderGone
            }
        }
    }

    async fn authorize(&mut self, gateway_key: String, capture: bool) -> Event {
        let Some((info, blob)) = self.card.take() else {
            // The machine authorizes only a card stored with its data; should
            // that ever not hold, nothing is sent and nothing is charged.
            return Event::GatewayLocalFault { message: "no card data to send (posd's fault)".into() };
        };
        // Under the key and with the capture the machine sends it with.
        let request = AuthorizeRequest {
            transaction_key: gateway_key,
            capture,
            ..self.engine.authorize_request(&self.rec, &info, blob)
        };
        let sent = std::time::Instant::now();
        let outcome = self.gateway.authorize(request).await;
        if !matches!(outcome, AuthOutcome::NotSent(_) | AuthOutcome::LocalFault(_)) {
            self.engine.latencies.gateway.observe(sent.elapsed());
        }
        match outcome {
            AuthOutcome::Answer(tx) => {
                failpoint::hit("online_after_response");
                Event::GatewayAnswer(answer(tx))
            }
            AuthOutcome::Rejected(message) => Event::GatewayRejected { message },
            AuthOutcome::NotSent(message) => Event::GatewayNotSent { message },
            AuthOutcome::LocalFault(message) => {
                tracing::error!(payment = %self.rec.id, error = %message, "payment failed: a fault on this machine, not the gateway");
                Event::GatewayLocalFault { message }
            }
            AuthOutcome::Unknown(message) => {
                tracing::warn!(payment = %self.rec.id, %message, "gateway answer lost; asking for the outcome");
                Event::GatewayUnknown { message }
            }
        }
    }

    /// Takes the offline gate (held until `ReleaseOfflineGate`) and reads the
    /// queue the offline limits are checked against.
    async fn read_queue(&mut self, currency: &str, fingerprint: &str) -> Event {
        let engine = self.engine;
        self.gate = Some(engine.offline_gate.lock().await);
        let now = engine.clock.now_ms();
        let queue = engine.queue_state(currency, fingerprint, now);
        if engine.env.planted(Bug::OfflineCountedAfterApproval) {
            // The simulator's planted bug: the gate opens before the approval
            // it guards is stored.
            self.gate = None;
        }
        match queue {
            Ok(queue) => Event::OfflineQueue { queue, queued_at_ms: now },
            Err(e) => {
                tracing::error!(payment = %self.rec.id, error = %e, "cannot read the offline queue; offline approval refused");
                engine.note_store_error(&e);
                Event::OfflineQueueUnreadable
            }
        }
    }

    async fn query(&self, key: &str) -> Event {
        match self.gateway.transaction(key).await {
            Ok(Some(tx)) => Event::StatusAnswer(answer(tx)),
            Ok(None) => Event::StatusNoRecord,
            Err(message) => Event::StatusFailed { message },
        }
    }
}

async fn next_reader_event(collected: &mut Option<mpsc::UnboundedReceiver<ReaderEvent>>) -> Option<ReaderEvent> {
    match collected {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Returns when the register asks to cancel; never once its channel closed.
pub(super) async fn register_cancel(cancel: Option<&mut mpsc::Receiver<()>>) {
    if let Some(rx) = cancel
        && rx.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// Returns at the deadline; never without one.
pub(super) async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) fn payment_of(rec: &PaymentRecord) -> machine::Payment {
    machine::Payment {
        id: rec.id.clone(),
        status: rec.status,
        amount_minor: rec.amount_minor,
        currency: rec.currency.clone(),
        manual_capture: rec.manual_capture,
        gateway_key: rec.gateway_key.clone(),
    }
}

/// The gateway's record of the payment, as the machine reads it.
fn answer(tx: Transaction) -> Answer {
    use pos_proto::gateway::Outcome;
    match Outcome::try_from(tx.outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Approved => {
            Answer::Approved { captured: tx.captured, auth_code: tx.auth_code, gateway_reference: tx.gateway_reference }
        }
        Outcome::Declined => Answer::Declined { code: tx.decline_code, message: tx.decline_message },
        Outcome::Reversed | Outcome::Voided => Answer::Reversed,
        Outcome::Unspecified => Answer::NoOutcome,
    }
}

/// What the machine's decisions need of the card read; the reader's texts scrubbed.
fn card_read(c: &CardResult) -> Card {
    let entry = match convert::entry_mode(c.entry_mode) {
        pb::EntryMode::Chip => Entry::Chip,
        pb::EntryMode::Contactless => Entry::Contactless,
        pb::EntryMode::Swipe => Entry::Swipe,
        pb::EntryMode::Manual => Entry::Manual,
        pb::EntryMode::Unspecified => Entry::Unknown,
    };
    Card {
        has_blob: !c.encrypted_card.is_empty(),
        // The reader's brand text shows up in a refusal's message.
        brand: pos_mask::scrub(&c.brand),
        fingerprint: pos_mask::scrub(&c.card_fingerprint),
        entry,
        fallback: c.fallback,
        cashback_minor: c.cashback_minor,
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
mod tests;
