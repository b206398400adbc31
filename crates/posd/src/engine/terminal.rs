//! Payments on a payment terminal that authorizes by itself (ZVT).
//!
//! The terminal decides with its own acquirer; posd records what it decided.
//! Every decision of that path is `pos_engine::terminal::TerminalPayment`'s:
//! a result (04 0F) is committed — CONFIRMING, with the terminal's receipt
//! number — before posd sends the `80 00` that completes the payment at the
//! terminal, and becomes CAPTURED once that `80 00` is out; whenever posd
//! cannot know what the terminal booked (the line failed mid-payment, posd
//! restarted), it asks the terminal (Repeat Receipt) and reports exactly
//! what the terminal shows, once — or leaves the payment UNKNOWN for a
//! person, never guessing "approved". [`Engine::drive_terminal`] is the thin
//! driver: it performs the machine's commands (commits, the terminal, the
//! register) and feeds back what came of each. The terminal is reached
//! through [`PaymentTerminal`], so the driver runs against a fake in this
//! module's tests. Approved payments are recorded in the chain's ledger
//! through the gateway-records outbox, each exactly once.
//!
//! What follows the sale on the terminal (refunds, reversals, end-of-day,
//! refunds settled by a person) is in `after_sale`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pos_engine::terminal::{
    self as machine, Asked, Asking, Command, Data, Event, Log, Millis, Repeat, Stage, StatusInfo, Step, Stored,
    TerminalPayment,
};
use pos_engine::{Input, Status, Transition};
use pos_proto::gateway::{TerminalRecord, TerminalRecordKind};
use pos_zvt::{Bmps, Message, codes};
use tokio::sync::{mpsc, oneshot};

use super::payment::{register_cancel, until};
use super::{Bug, Engine, EngineError, StepError, step_error};
use crate::convert;
use crate::failpoint;
use crate::lane::CardDevice;
use crate::store::{
    self, CardInfo, Durability, EventKind, NewEvent, PaymentRecord, RecordKind, RefundRecord, TerminalData,
    TerminalResult, Update,
};
use crate::zvt::{AbortHandle, Ending, Outcome, Verdict, ZvtEvent, ZvtTerminal, judge};

mod after_sale;

/// What a payment asks of the lane's payment terminal ([`ZvtTerminal`]'s,
/// or a fake's).
pub(super) trait PaymentTerminal: Sync {
    /// What asks the running command to abort.
    type Abort: Abort + Send + Sync;
    /// Runs a command; its course arrives on the channel and ends with
    /// [`ZvtEvent::Done`]. See [`ZvtTerminal::run`].
    fn run(&self, command: Message) -> impl Future<Output = (mpsc::UnboundedReceiver<ZvtEvent>, Self::Abort)> + Send;
    /// The payment command (06 01) for `amount_minor` in the lane's currency.
    fn payment_command(&self, amount_minor: u64) -> Message;
    /// Repeat Receipt (06 20), with the terminal's password.
    fn repeat_receipt_command(&self) -> Message;
    /// How long a Repeat Receipt may take in all.
    fn repeat_receipt_bound(&self) -> Duration;
}

/// Asks a running command to abort (06 B0); the terminal may refuse once
/// the card is being authorized.
pub(super) trait Abort {
    fn abort(&self);
}

impl Abort for AbortHandle {
    fn abort(&self) {
        AbortHandle::abort(self);
    }
}

impl PaymentTerminal for ZvtTerminal {
    type Abort = AbortHandle;

    fn run(&self, command: Message) -> impl Future<Output = (mpsc::UnboundedReceiver<ZvtEvent>, AbortHandle)> + Send {
        ZvtTerminal::run(self, command)
    }

    fn payment_command(&self, amount_minor: u64) -> Message {
        Message::authorization(amount_minor, self.settings.currency)
    }

    fn repeat_receipt_command(&self) -> Message {
        Message::RepeatReceipt(self.with_password(Bmps::default()))
    }

    /// T4, and a second.
    fn repeat_receipt_bound(&self) -> Duration {
        self.settings.t4 + Duration::from_secs(1)
    }
}

/// The terminal's last receipt number posd saw, per lane.
fn last_receipt_key(lane: &str) -> String {
    format!("zvt_last_receipt:{lane}")
}

/// The register's stage for a terminal's intermediate status.
fn stage(code: u8) -> Stage {
    match codes::progress(code) {
        codes::Progress::WaitingForCard => Stage::PresentCard,
        codes::Progress::Pin => Stage::PinEntry,
        codes::Progress::Authorizing => Stage::Authorizing,
        codes::Progress::Other => Stage::Reading,
    }
}

fn terminal_result(o: &Outcome) -> TerminalResult {
    TerminalResult {
        result_code: o.result_code.unwrap_or(0xFF),
        receipt_no: o.receipt_no,
        trace: o.trace,
        offline: o.offline,
        terminal_tid: o.terminal_tid.clone(),
        lines: vec![],
        poi_transaction_id: String::new(),
        poi_time_stamp: String::new(),
    }
}

fn card(o: &Outcome) -> Option<(CardInfo, Vec<u8>)> {
    (!o.masked_pan.is_empty()).then(|| {
        (CardInfo { masked_pan: o.masked_pan.clone(), brand: o.card_name.clone(), ..CardInfo::default() }, vec![])
    })
}

/// What a transition stores of a terminal's result: the card, the
/// authorization code and the result.
fn terminal_data(o: &Outcome) -> TerminalData {
    TerminalData { card: card(o), auth_code: Some(o.auth_code.clone()), result: terminal_result(o) }
}

/// What the machine's decisions need of a terminal's result.
fn status_info(o: &Outcome) -> StatusInfo {
    StatusInfo {
        result_code: o.result_code,
        amount_minor: o.amount,
        receipt_no: o.receipt_no,
        offline: o.offline,
        result_text: codes::result_text(o.result_code.unwrap_or(0xFF)),
    }
}

fn verdict(v: Verdict) -> machine::Verdict {
    match v {
        Verdict::Booked(o) => machine::Verdict::Booked(status_info(&o)),
        Verdict::NotBooked(why) => machine::Verdict::NotBooked(why),
        Verdict::Undetermined(why) => machine::Verdict::Undetermined(why),
    }
}

fn ending(e: Ending) -> machine::Ending {
    match e {
        Ending::Completed { terminal_id } => machine::Ending::Completed { terminal_id },
        Ending::Aborted { code, text } => machine::Ending::Aborted { code, text },
        Ending::Refused { code, text } => machine::Ending::Refused { code, text },
        Ending::Lost { message, started } => machine::Ending::Lost { message, started },
    }
}

fn payment_of(rec: &PaymentRecord) -> machine::Payment {
    machine::Payment { id: rec.id.clone(), status: rec.status, amount_minor: rec.amount_minor }
}

/// What a Repeat Receipt brought back.
struct Repeated {
    last: Option<Outcome>,
    ending: Ending,
}

/// Follows an operation that books one result (a refund, a reversal): its
/// first result goes to the caller, any later one is refused (84 66), and
/// the terminal's receipt of posd's 80 00 is noted.
#[derive(Default)]
struct OneResult {
    taken: bool,
    receipt: Option<u16>,
    /// The terminal heard posd's 80 00 for the result.
    confirmed: bool,
}

impl OneResult {
    /// The operation's result (answer it on the sender: true once it is
    /// stored), or how the operation ended.
    async fn next(
        &mut self,
        engine: &Engine,
        terminal: &str,
        events: &mut mpsc::UnboundedReceiver<ZvtEvent>,
    ) -> Result<(Outcome, oneshot::Sender<bool>), Ending> {
        loop {
            match events.recv().await {
                Some(ZvtEvent::Result { outcome, confirm }) if !self.taken => {
                    self.taken = true;
                    self.receipt = outcome.receipt_no;
                    return Ok((outcome, confirm));
                }
                Some(ZvtEvent::Result { confirm, .. }) => {
                    let _ = confirm.send(false);
                }
                Some(ZvtEvent::Confirmed) => {
                    self.confirmed = true;
                    engine.note_receipt_no(terminal, self.receipt).await;
                }
                Some(ZvtEvent::Done(ending)) => return Err(ending),
                Some(_) => {}
                None => return Err(Ending::Lost { message: "the terminal task stopped".into(), started: true }),
            }
        }
    }
}

impl Engine {
    fn last_receipt(&self, lane: &str) -> Result<Option<u16>, StepError> {
        Ok(self.store.meta(&last_receipt_key(lane))?.and_then(|n| u16::try_from(n).ok()))
    }

    /// Remembers the terminal's latest receipt number — only one the
    /// terminal has confirmed, or shown when asked.
    async fn note_receipt_no(&self, lane: &str, receipt: Option<u16>) {
        if let Some(r) = receipt
            && let Err(e) = self.store.set_meta(&last_receipt_key(lane), i64::from(r)).await
        {
            tracing::warn!(%lane, error = %e, "cannot remember the terminal's receipt number");
        }
    }

    fn terminal_settings(&self) -> machine::Settings {
        machine::Settings {
            status_attempts: self.settings.status_attempts,
            status_backoff: self.settings.status_backoff,
        }
    }

    /// Runs one payment the register asked for on the lane's payment
    /// terminal to its end (`TerminalPayment::new`).
    pub(super) async fn run_on_terminal(&self, zvt: &ZvtTerminal, rec: PaymentRecord, cancel: &mut mpsc::Receiver<()>) {
        let id = rec.id.clone();
        let payment = TerminalPayment::new(payment_of(&rec), self.terminal_settings());
        let outcome = self.drive_terminal(zvt, payment, rec, Some(cancel)).await;
        if let machine::Outcome::Unrecorded { error, may_be_at_gateway, .. } = outcome {
            tracing::error!(payment = %id, %error, may_be_at_gateway, "payment stopped");
        }
    }

    /// Runs `payment` (stored as `rec`) to its end: performs each command
    /// and feeds back what came of it; waits only while the machine waits on
    /// the terminal, the register's cancel or its own deadline (the backoff
    /// between two Repeat Receipts). As before the machine, nothing from the
    /// terminal or the register is read while a commit is in flight.
    async fn drive_terminal<T: PaymentTerminal>(
        &self,
        terminal: &T,
        mut payment: TerminalPayment,
        rec: PaymentRecord,
        mut cancel: Option<&mut mpsc::Receiver<()>>,
    ) -> machine::Outcome {
        let mut run = TerminalRun {
            engine: self,
            terminal,
            rec,
            events: None,
            abort: None,
            confirm: None,
            result: None,
            repeated: None,
            began: tokio::time::Instant::now(),
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
                let events = &mut run.events;
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    event = next_terminal_event(events) => Wake::Terminal(event),
                    () = register_cancel(cancel.as_deref_mut()) => Wake::Cancel,
                    () = until(deadline) => Wake::Timer,
                }
            };
            let commands = match wake {
                Wake::Terminal(event) => match run.terminal_event(event).await {
                    Some(event) => payment.handle(event, run.now()),
                    None => Vec::new(),
                },
                Wake::Cancel => payment.handle(Event::RegisterCancel, run.now()),
                Wake::Timer => payment.handle_timeout(run.now()),
            };
            todo.extend(commands);
        }
    }

    async fn keep_lines(&self, rec: &PaymentRecord, lines: &[String]) {
        // Scrubbed where they were read (zvt.rs); again here, where they are
        // stored joined by newlines, so no line can ever hold one.
        let lines: Vec<String> = lines.iter().map(|l| pos_mask::scrub(l)).collect();
        if let Err(e) = self.store.append_receipt_lines(&rec.id, &lines).await {
            tracing::warn!(payment = %rec.id, error = %e, "cannot keep the terminal's receipt lines");
        }
    }

    /// What the terminal's Repeat Receipt says of an operation of `amount`
    /// in doubt (a refund), judged against its stored receipt or the lane's
    /// last one before it ([`judge`]); asked again, with backoff, while the
    /// terminal cannot be reached ([`Asking`], as a payment in doubt is).
    async fn ask_terminal(
        &self,
        lane: &str,
        zvt: &ZvtTerminal,
        amount: i64,
        stored: Option<u16>,
        before: Option<u16>,
    ) -> machine::Verdict {
        let mut asking = Asking::new(self.settings.status_attempts);
        loop {
            let (answer, last) = repeat_and_judge(zvt, amount as u64, stored, before).await;
            match asking.answer(answer) {
                Asked::Answered(verdict) => {
                    // The terminal's own last receipt: what later payments compare with.
                    self.note_receipt_no(lane, last.as_ref().and_then(|o| o.receipt_no)).await;
                    return verdict;
                }
                Asked::Unreachable(verdict) => return verdict,
                Asked::Again => tokio::time::sleep(self.settings.status_backoff).await,
            }
        }
    }

    /// A person checked the payment terminal's journal for a payment posd
    /// left UNKNOWN and says what it shows: booked under `receipt` (CAPTURED,
    /// recorded in the chain's ledger like any terminal payment) or not
    /// booked (FAILED, nothing charged). The lane's last receipt number is
    /// left alone: later payments may have moved it on since.
    pub async fn resolve_payment(
        &self,
        id: &str,
        receipt: Option<u16>,
        note: &str,
        caller: &str,
    ) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        if self.busy_with(&rec.terminal_id).as_deref() == Some(id) {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!(
                    "posd is still asking the payment terminal about payment {id}; wait for its answer \
                     (or the terminal_outcome_unknown event)"
                ),
            ));
        }
        if !rec.on_terminal() || rec.status != Status::Unknown {
            let why = if rec.on_terminal() {
                format!("payment {id} is {}", rec.status)
            } else {
                format!("payment {id} was taken on a card reader; posd settles it with the gateway by itself")
            };
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("{why}; only an UNKNOWN payment on a payment terminal is resolved by a person"),
            ));
        }
        let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
        let found = match receipt {
            Some(n) => format!("booked under receipt {n}"),
            None => "not booked".to_string(),
        };
        let event = NewEvent {
            kind: EventKind::PaymentResolved,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message: format!("payment {id}: {caller} checked the payment terminal's journal: {found}{note}"),
        };
        // The transition's own audit entry names what it did; this one who.
        let audit = Some(format!("resolved by {caller} from the terminal's journal: {found}{note}"));
        let new = match receipt {
            Some(n) => {
                let booked = TerminalResult { result_code: 0, receipt_no: Some(n), ..TerminalResult::default() };
                let result = Some(TerminalData { card: None, auth_code: None, result: booked });
                let data = store::Data::Booked { result, last_receipt: None };
                let update = Update { data, event: Some(event), audit };
                let new = self.step(&rec, Input::TerminalConfirmed, update).await.map_err(step_error)?;
                self.record_wake.notify_one();
                new
            }
            None => {
                let message = format!("not in the payment terminal's journal, as {caller} checked{note}");
                let update = Update { event: Some(event), audit, ..Update::default() };
                self.step(&rec, Input::TerminalNotBooked { message }, update).await.map_err(step_error)?
            }
        };
        tracing::warn!(payment = %id, %caller, %found, "payment in doubt resolved by a person");
        Ok(new)
    }

    /// Settles, after a restart, what a lane's payment terminal may have
    /// booked: its payment in doubt (`TerminalPayment::settling`, under the
    /// same driver), then its refunds in doubt, in one task. The lane takes
    /// no new payment until the terminal has answered: a new transaction
    /// would hide the ones in doubt (and move the receipt number they are
    /// judged against).
    pub(super) fn recover_on_terminal(
        self: &Arc<Self>,
        terminal: &str,
        payment: Option<PaymentRecord>,
        refunds: Vec<(RefundRecord, PaymentRecord)>,
    ) {
        let zvt = match self.lanes.get(terminal).map(|l| &l.device) {
            Some(CardDevice::Zvt(zvt)) => zvt.clone(),
            Some(CardDevice::Nexo(nexo)) => {
                if let Some(rec) = payment {
                    self.recover_on_nexo(terminal, nexo.clone(), rec);
                }
                if !refunds.is_empty() {
                    // A nexo payment's refunds never come here (`recover_nexo_refund`
                    // and the reversal worker settle them): these were taken on
                    // another kind of terminal than the lane has now.
                    tracing::error!(%terminal, "refunds in doubt taken on another kind of terminal: left as stored");
                }
                return;
            }
            Some(CardDevice::Reader(_)) | None => {
                tracing::error!(%terminal, "payments or refunds in doubt on a lane that has no payment terminal now");
                return;
            }
        };
        let Some(what) = payment.as_ref().map(|p| p.id.clone()).or_else(|| refunds.first().map(|r| r.0.id.clone()))
        else {
            return;
        };
        self.busy.lock().unwrap().insert(terminal.to_string(), what.clone());
        let engine = self.clone();
        let terminal = terminal.to_string();
        tokio::spawn(async move {
            if let Some(rec) = payment {
                let id = rec.id.clone();
                let settling = TerminalPayment::settling(payment_of(&rec), engine.terminal_settings());
                let outcome = engine.drive_terminal(&*zvt, settling, rec, None).await;
                if let machine::Outcome::Unrecorded { error, .. } = outcome {
                    tracing::error!(payment = %id, %error, "recovery on the payment terminal failed");
                }
            }
            for (refund, rec) in refunds {
                // Settling the payment may have freed the lane: hold it again
                // unless a new payment got it first (then a refund is judged
                // undetermined rather than against that payment's receipt).
                engine.busy.lock().unwrap().entry(terminal.clone()).or_insert_with(|| what.clone());
                engine.recover_refund(refund, &rec, &zvt).await;
            }
            let mut busy = engine.busy.lock().unwrap();
            if busy.get(&terminal) == Some(&what) {
                busy.remove(&terminal);
            }
        });
    }

    /// Sends the gateway-records outbox, oldest first, each record once
    /// (the record key makes a repeat harmless). Runs for the life of the
    /// process.
    pub async fn record_forwarder(self: Arc<Self>) {
        let f = &self.settings.forward;
        let mut backoff = f.retry_first;
        loop {
            let pending = match self.store.pending_records(50) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the gateway records");
                    vec![]
                }
            };
            if pending.is_empty() {
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    () = self.record_wake.notified() => {}
                    () = tokio::time::sleep(f.retry_max) => {}
                }
                continue;
            }
            let mut failed = false;
            for r in pending {
                let request = match self.terminal_record(&r) {
                    Ok(req) => req,
                    Err(e) => {
                        self.record_refused(&r, &format!("cannot build it: {e}")).await;
                        continue;
                    }
                };
                match self.gateway.record_terminal(request).await {
                    Ok(duplicate) => {
                        tracing::info!(record = %r.record_key, duplicate, "terminal payment recorded at the gateway");
                        let _ = self.store.record_attempt(r.seq, "", false, self.now_ms()).await;
                        backoff = f.retry_first;
                    }
                    // The gateway refused the record itself: retrying cannot
                    // help, and must not hold back the records after it.
                    Err(crate::gateway::CallError::Refused(m)) => self.record_refused(&r, &m).await,
                    Err(e) => {
                        tracing::warn!(record = %r.record_key, error = %e, "recording at the gateway failed; will retry");
                        let _ = self.store.record_attempt(r.seq, &e.to_string(), false, self.now_ms()).await;
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    () = self.record_wake.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(f.retry_max);
            }
        }
    }

    async fn record_refused(&self, r: &crate::store::GatewayRecord, why: &str) {
        tracing::error!(record = %r.record_key, %why, "a terminal payment's record was refused; a person must look");
        let _ = self.store.record_attempt(r.seq, why, true, self.now_ms()).await;
        self.emit(
            EventKind::RecordRefused,
            "",
            &r.payment_id,
            format!("the gateway's ledger refused record {} ({why}); it is kept for a person", r.record_key),
        )
        .await;
    }

    fn terminal_record(&self, r: &crate::store::GatewayRecord) -> Result<TerminalRecord, StepError> {
        let p =
            self.store.get(&r.payment_id)?.ok_or_else(|| crate::store::StoreError::NotFound(r.payment_id.clone()))?;
        let t = self.store.terminal_result(&r.payment_id)?.unwrap_or_default();
        let kind = match r.kind {
            RecordKind::Sale => TerminalRecordKind::Sale,
            RecordKind::Reversal => TerminalRecordKind::Reversal,
            RecordKind::Refund => TerminalRecordKind::Refund,
        };
        let card = p.card.clone().unwrap_or_default();
        Ok(TerminalRecord {
            record_key: r.record_key.clone(),
            transaction_key: p.gateway_key.clone(),
            terminal_id: self.gateway_terminal(&p.terminal_id),
            kind: kind as i32,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            masked_pan: card.masked_pan,
            brand: card.brand,
            auth_code: p.auth_code.clone(),
            terminal_receipt_no: t.receipt_no.map_or(0, u32::from),
            terminal_trace: t.trace.unwrap_or(0),
            terminal_offline: t.offline,
            occurred_at_ms: r.created_at_ms,
        })
    }
}

/// What woke a run waiting on the terminal, the register or the machine's deadline.
enum Wake {
    Terminal(Option<ZvtEvent>),
    Cancel,
    Timer,
}

/// One run of a payment on a payment terminal: what the driver holds
/// between commands.
struct TerminalRun<'a, T: PaymentTerminal> {
    engine: &'a Engine,
    terminal: &'a T,
    /// The payment as last committed, or as read back after a failed commit.
    rec: PaymentRecord,
    /// The payment command's course, until it ends.
    events: Option<mpsc::UnboundedReceiver<ZvtEvent>>,
    abort: Option<T::Abort>,
    /// The answer to the terminal's last result, until the machine gives it.
    confirm: Option<oneshot::Sender<bool>>,
    /// The terminal's last result in the payment command: what
    /// `Data::Result` stores.
    result: Option<Outcome>,
    /// The last result a Repeat Receipt brought back: what
    /// `Data::Booked { with_result: true, .. }` stores.
    repeated: Option<Outcome>,
    /// The machine's `now` counts from here.
    began: tokio::time::Instant,
}

impl<T: PaymentTerminal> TerminalRun<'_, T> {
    fn now(&self) -> Millis {
        Millis::try_from(self.began.elapsed().as_millis()).unwrap_or(Millis::MAX)
    }

    /// Carries out one command; returns what came of it when the machine waits for that.
    async fn perform(&mut self, command: Command) -> Option<Event> {
        let engine = self.engine;
        match command {
            Command::Persist { steps, durability } => return Some(self.persist(steps, durability).await),
            Command::ReadLastReceipt => {
                return Some(match engine.last_receipt(&self.rec.terminal_id) {
                    Ok(receipt) => Event::LastReceipt(receipt),
                    Err(e) => self.store_failed(e.to_string()),
                });
            }
            Command::ReadStored => return Some(self.read_stored()),
            Command::AskTerminal { amount_minor, stored, before } => {
                let (answer, last) = repeat_and_judge(self.terminal, amount_minor, stored, before).await;
                let last_receipt = last.as_ref().and_then(|o| o.receipt_no);
                self.repeated = last;
                return Some(Event::Repeated { answer, last_receipt });
            }
            Command::RunPayment { amount_minor } => {
                let (events, abort) = self.terminal.run(self.terminal.payment_command(amount_minor)).await;
                self.events = Some(events);
                self.abort = Some(abort);
            }
            Command::Confirm(stored) => {
                if stored {
                    failpoint::hit("zvt_result_stored");
                }
                // If the terminal gave up waiting, it heard 84 66 already
                // (a `Refused` follows).
                if let Some(confirm) = self.confirm.take() {
                    let _ = confirm.send(stored);
                }
            }
            Command::Abort => {
                if let Some(abort) = &self.abort {
                    abort.abort();
                }
            }
            Command::NoteReceipt(receipt) => engine.note_receipt_no(&self.rec.terminal_id, Some(receipt)).await,
            Command::WakeRecorder => engine.record_wake.notify_one(),
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

    /// Commits the steps in one commit, then publishes each as
    /// [`Engine::publish_commit`] does.
    async fn persist(&mut self, steps: Vec<Step<Data>>, durability: machine::Durability) -> Event {
        let durability = match durability {
            machine::Durability::Synced => Durability::Synced,
            machine::Durability::Deferred => Durability::Deferred,
        };
        let planned: Vec<(Transition, Update)> =
            steps.into_iter().map(|Step { transition, data }| (transition, self.update(data))).collect();
        let transitions: Vec<Transition> = planned.iter().map(|(t, _)| t.clone()).collect();
        let engine = self.engine;
        match engine.store.apply_all(&self.rec.id, durability, planned, engine.now_ms()).await {
            Ok(applied) => {
                for (t, (new, event)) in transitions.iter().zip(applied) {
                    engine.publish_commit(t, &new, event);
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

    /// What a step stores besides its transition.
    fn update(&self, data: Data) -> Update {
        let rec = &self.rec;
        let data = match data {
            Data::None => store::Data::None,
            Data::Start { receipt_before } => {
                store::Data::TerminalStart { receipt_before: receipt_before.map_or(-1, i64::from) }
            }
            Data::Result => self.result.as_ref().map_or(store::Data::None, |o| store::Data::Terminal(terminal_data(o))),
            Data::Booked { with_result, last_receipt, event } => {
                let result = if with_result { self.repeated.as_ref().map(terminal_data) } else { None };
                // The lane's last receipt moves in the same commit: a crash
                // between the two would leave later payments judged against
                // a stale number.
                let last_receipt = last_receipt.map(|r| (last_receipt_key(&rec.terminal_id), i64::from(r)));
                let event = event.map(|message| NewEvent {
                    kind: EventKind::TerminalApprovedOffline,
                    terminal_id: rec.terminal_id.clone(),
                    payment_id: rec.id.clone(),
                    message,
                });
                return Update { data: store::Data::Booked { result, last_receipt }, event, ..Update::default() };
            }
        };
        Update { data, ..Update::default() }
    }

    /// What is stored with the payment: its result and the lane's last
    /// receipt number when it started.
    fn read_stored(&mut self) -> Event {
        let engine = self.engine;
        let result = match engine.store.terminal_result(&self.rec.id) {
            Ok(result) => result,
            Err(e) => return self.store_failed(e.to_string()),
        };
        let before = match engine.store.payment_receipt_before(&self.rec.id) {
            Ok(before) => before,
            Err(e) => return self.store_failed(e.to_string()),
        };
        let result =
            result.map(|t| Stored { receipt_no: t.receipt_no, approved: t.result_code == 0, offline: t.offline });
        Event::Stored { result, receipt_before: before.and_then(|n| u16::try_from(n).ok()) }
    }

    /// What the terminal said, for the machine; `None` when the machine need
    /// not hear it (receipt lines are kept with the payment here). A closed
    /// channel is a lost line.
    async fn terminal_event(&mut self, event: Option<ZvtEvent>) -> Option<Event> {
        let event = event.unwrap_or_else(|| {
            ZvtEvent::Done(Ending::Lost { message: "the terminal task stopped".into(), started: true })
        });
        Some(match event {
            ZvtEvent::Progress { code, text } => Event::Progress { stage: stage(code), text },
            ZvtEvent::Result { outcome, confirm } => {
                let info = status_info(&outcome);
                if self.engine.env.planted(Bug::ZvtConfirmBeforeStore) {
                    // The simulator's planted bug: 80 00 before the result is
                    // stored (the store's write comes after the terminal had
                    // time to hear it).
                    let _ = confirm.send(true);
                    for _ in 0..64 {
                        tokio::task::yield_now().await;
                    }
                } else {
                    self.confirm = Some(confirm);
                }
                self.result = Some(outcome);
                Event::Result(info)
            }
            ZvtEvent::Confirmed => Event::Confirmed,
            ZvtEvent::Refused => Event::Refused,
            ZvtEvent::Receipt(lines) => {
                self.engine.keep_lines(&self.rec, &lines).await;
                return None;
            }
            ZvtEvent::Done(end) => {
                self.events = None;
                Event::Ended(ending(end))
            }
        })
    }

    fn log(&self, log: Log) {
        let rec = &self.rec;
        match log {
            Log::RefusingResult { why } => {
                tracing::error!(payment = %rec.id, %why, "refusing the payment terminal's result");
            }
            Log::InDoubt { message } => {
                tracing::warn!(payment = %rec.id, %message, "payment terminal outcome in doubt; asking the terminal");
            }
            Log::Asked { verdict } => tracing::info!(payment = %rec.id, ?verdict, "payment terminal asked"),
            Log::ReceiptNumberUnknown { why } => tracing::warn!(
                lane = %rec.terminal_id, %why, "could not learn the payment terminal's last receipt number"
            ),
        }
    }
}

async fn next_terminal_event(events: &mut Option<mpsc::UnboundedReceiver<ZvtEvent>>) -> Option<ZvtEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs Repeat Receipt and judges the terminal's last receipt against an
/// operation of `amount` ([`judge`]); returns the answer and that receipt's
/// result.
async fn repeat_and_judge<T: PaymentTerminal>(
    terminal: &T,
    amount: u64,
    stored: Option<u16>,
    before: Option<u16>,
) -> (Repeat, Option<Outcome>) {
    let Repeated { last, ending } = repeat_receipt(terminal).await;
    let answer = match ending {
        Ending::Completed { .. } => Repeat::Judged(verdict(judge(amount, stored, before, last.as_ref()))),
        Ending::Aborted { code, text } | Ending::Refused { code, text } => Repeat::Declined { code, text },
        Ending::Lost { message, .. } => Repeat::Lost { message },
    };
    (answer, last)
}

/// Runs Repeat Receipt and keeps the terminal's last result.
async fn repeat_receipt<T: PaymentTerminal>(terminal: &T) -> Repeated {
    let (mut events, _abort) = terminal.run(terminal.repeat_receipt_command()).await;
    let mut last = None;
    let deadline = tokio::time::Instant::now() + terminal.repeat_receipt_bound();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ZvtEvent::Result { outcome, confirm })) => {
                // A repeat changes nothing at the terminal: confirm at once.
                let _ = confirm.send(true);
                last = Some(outcome);
            }
            Ok(Some(ZvtEvent::Done(ending))) => return Repeated { last, ending },
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                let message = "the payment terminal did not finish Repeat Receipt".to_string();
                return Repeated { last, ending: Ending::Lost { message, started: true } };
            }
        }
    }
}

#[cfg(test)]
mod tests;
