//! Payments on a payment terminal that authorizes by itself (ZVT).
//!
//! The terminal decides with its own acquirer; posd records what it decided.
//! A result (04 0F) is committed — CONFIRMING, with the terminal's receipt
//! number — before posd sends the `80 00` that completes the payment at the
//! terminal, and becomes CAPTURED once that `80 00` is out. Whenever posd
//! cannot know what the terminal booked (the line failed mid-payment, posd
//! restarted), it asks the terminal (Repeat Receipt) and reports exactly
//! what the terminal shows, once — or leaves the payment UNKNOWN for a
//! person, never guessing "approved". Approved payments are recorded in the
//! chain's ledger through the gateway-records outbox, each exactly once.
//!
//! What follows the sale on the terminal (refunds, reversals, end-of-day,
//! refunds settled by a person) is in `after_sale`.

use std::sync::Arc;
use std::time::Duration;

use pos_engine::{Input, Status};
use pos_proto::gateway::{TerminalRecord, TerminalRecordKind};
use pos_proto::terminal as pb;
use pos_zvt::{Bmps, Message, codes};
use tokio::sync::{mpsc, oneshot};

use super::{Engine, EngineError, StepError, step_error};
use crate::failpoint;
use crate::lane::Lane;
use crate::store::{
    CardInfo, Data, EventKind, NewEvent, PaymentRecord, RecordKind, RefundRecord, TerminalData, TerminalResult, Update,
    now_ms,
};
use crate::zvt::{Ending, Outcome, Verdict, ZvtEvent, ZvtTerminal, judge};

mod after_sale;

/// The terminal's last receipt number posd saw, per lane.
fn last_receipt_key(lane: &str) -> String {
    format!("zvt_last_receipt:{lane}")
}

/// The register's stage for a terminal's intermediate status.
fn stage(code: u8) -> pb::PaymentStage {
    match codes::progress(code) {
        codes::Progress::WaitingForCard => pb::PaymentStage::PresentCard,
        codes::Progress::Pin => pb::PaymentStage::PinEntry,
        codes::Progress::Authorizing => pb::PaymentStage::Authorizing,
        codes::Progress::Other => pb::PaymentStage::Reading,
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

    /// Asks the terminal for its last receipt (Repeat Receipt) only to learn
    /// its number.
    async fn resync_receipt(&self, lane: &Lane, zvt: &ZvtTerminal) {
        let Repeated { last, ending } = repeat_receipt(zvt).await;
        if matches!(ending, Ending::Completed { .. }) {
            self.note_receipt_no(&lane.id, last.as_ref().and_then(|o| o.receipt_no)).await;
        } else {
            tracing::warn!(lane = %lane.id, ?ending, "could not learn the payment terminal's last receipt number");
        }
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

    /// Why posd must not let the terminal book this result, if it must not:
    /// no result code, another amount than asked, or a second, different
    /// result for a payment that already has one.
    fn unacceptable(&self, rec: &PaymentRecord, o: &Outcome) -> Option<String> {
        if o.result_code.is_none() {
            return Some("the result carries no result code".into());
        }
        if o.approved() && o.amount.is_some_and(|a| a != rec.amount_minor as u64) {
            return Some(format!("the terminal approved {:?} instead of {}", o.amount, rec.amount_minor));
        }
        if rec.status != Status::Collecting {
            let stored = self.store.terminal_result(&rec.id).ok().flatten();
            let same = stored.is_some_and(|t| t.receipt_no == o.receipt_no && (t.result_code == 0) == o.approved());
            if !same {
                return Some(format!("a second, different result for a payment that is {}", rec.status));
            }
        }
        None
    }

    /// Runs one payment on the lane's payment terminal to its end: prints
    /// what is printed by itself, or, when a step could not be recorded,
    /// tells the register what it may do.
    pub(super) async fn run_on_terminal(
        &self,
        lane: &Lane,
        zvt: &ZvtTerminal,
        rec: PaymentRecord,
        cancel: &mut mpsc::Receiver<()>,
    ) {
        let id = rec.id.clone();
        let Err(e) = self.drive_terminal(lane, zvt, rec, cancel).await else {
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

    /// Takes one payment on the lane's payment terminal.
    async fn drive_terminal(
        &self,
        lane: &Lane,
        zvt: &ZvtTerminal,
        rec: PaymentRecord,
        cancel: &mut mpsc::Receiver<()>,
    ) -> Result<(), StepError> {
        // Kept with the payment in the commit that starts it on the terminal.
        let before = self.last_receipt(&lane.id)?;
        let receipt_before = before.map_or(-1, i64::from);
        let start = Update { data: Data::TerminalStart { receipt_before }, ..Update::default() };
        let mut rec = self.step(&rec, Input::StartOnTerminal, start).await?;
        let command = Message::authorization(rec.amount_minor as u64, zvt.settings.currency);
        let (mut events, abort) = zvt.run(command).await;
        let mut register_cancel = false;
        // A result posd answered with 84 66: the terminal reverses it.
        let mut refused: Option<String> = None;
        // The stored result posd could not confirm in time (84 66 went out).
        let mut refused_late = false;
        let ending = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break Ending::Lost { message: "the terminal task stopped".into(), started: true },
                    Some(ZvtEvent::Progress { code, text }) => self.publish(&rec, stage(code), text),
                    Some(ZvtEvent::Result { outcome, confirm }) => {
                        if let Some(why) = self.unacceptable(&rec, &outcome) {
                            // "Goods not issued": the terminal reverses it.
                            tracing::error!(payment = %rec.id, %why, "refusing the payment terminal's result");
                            let _ = confirm.send(false);
                            refused.get_or_insert(why);
                            continue;
                        }
                        match self.store_result(&rec, &outcome).await {
                            Ok(new) => {
                                rec = new;
                                failpoint::hit("zvt_result_stored");
                                // If the driver gave up waiting, the terminal heard
                                // 84 66; the payment then stays in doubt below.
                                let _ = confirm.send(true);
                            }
                            Err(e) => {
                                // Not stored: the terminal hears "goods not issued" and reverses.
                                let _ = confirm.send(false);
                                return Err(e);
                            }
                        }
                    }
                    Some(ZvtEvent::Confirmed) if rec.status == Status::Confirming => {
                        rec = self.confirm(&rec, None).await?;
                    }
                    Some(ZvtEvent::Confirmed) => {}
                    Some(ZvtEvent::Refused) => refused_late = rec.status == Status::Confirming,
                    Some(ZvtEvent::Receipt(lines)) => self.keep_lines(&rec, &lines).await,
                    Some(ZvtEvent::Done(ending)) => break ending,
                },
                Some(()) = cancel.recv(), if rec.status == Status::Collecting && !register_cancel => {
                    register_cancel = true;
                    abort.abort();
                }
            }
        };
        // The terminal reverses what posd refused, under receipt numbers
        // posd did not see: learn its last one again before the lane is free.
        if refused.is_some() || refused_late {
            self.resync_receipt(lane, zvt).await;
        }
        match (rec.status, ending) {
            (Status::Confirming, _) if refused_late => {
                let message = "posd could not confirm the payment terminal's approval in time and told it not to \
                               book it; the terminal reverses it. Nothing was charged."
                    .to_string();
                self.step(&rec, Input::TerminalRefused { message }, Update::default()).await?;
            }
            (Status::Collecting, _) if refused.is_some() => {
                let message = format!(
                    "posd refused the payment terminal's result ({}); the terminal reverses it. Nothing was charged.",
                    refused.unwrap_or_default()
                );
                let input = Input::CollectFailed { code: "terminal_result_refused".into(), message };
                self.step(&rec, input, Update::default()).await?;
            }
            (Status::Collecting, Ending::Aborted { code: 0x6C, .. }) => {
                let by = if register_cancel { "the register" } else { "the customer at the payment terminal" };
                self.step(&rec, Input::Cancel { by: by.into() }, Update::default()).await?;
            }
            (Status::Collecting, Ending::Aborted { code, text } | Ending::Refused { code, text }) => {
                let (code, message) = match code {
                    codes::INITIALISATION_REQUIRED => (
                        "terminal_not_initialised".to_string(),
                        format!(
                            "The payment terminal must be initialised before it takes payments ({text}); \
                             a technician runs its initialisation, then take the payment again. Nothing was charged."
                        ),
                    ),
                    0xA0 | 0x9C => (
                        "terminal_busy".to_string(),
                        format!("The payment terminal is busy ({text}); take the payment again. Nothing was charged."),
                    ),
                    _ => (
                        format!("terminal_{code:02x}"),
                        format!("The payment terminal ended the payment: {text}. Nothing was charged."),
                    ),
                };
                self.step(&rec, Input::CollectFailed { code, message }, Update::default()).await?;
            }
            (Status::Collecting, Ending::Lost { message, started: false }) => {
                let message =
                    format!("The payment terminal did not take the payment ({message}). Nothing was charged.");
                let input = Input::CollectFailed { code: "terminal_unavailable".into(), message };
                self.step(&rec, input, Update::default()).await?;
            }
            // The terminal may have booked it: ask, never guess.
            (Status::Collecting | Status::Confirming, ending) => {
                let message = match ending {
                    Ending::Lost { message, .. } => message,
                    other => format!("the terminal ended without a result ({other:?})"),
                };
                tracing::warn!(payment = %rec.id, %message, "payment terminal outcome in doubt; asking the terminal");
                let rec = self.step(&rec, Input::TerminalLost { message }, Update::default()).await?;
                self.resolve_on_terminal(lane, zvt, rec).await?;
            }
            // Settled (captured, declined) before the command ended.
            _ => {}
        }
        Ok(())
    }

    /// Commits a terminal's result, before posd confirms it to the terminal.
    async fn store_result(&self, rec: &PaymentRecord, o: &Outcome) -> Result<PaymentRecord, StepError> {
        if rec.status != Status::Collecting {
            // A second result for the same command (a repeat): nothing new to store.
            return Ok(rec.clone());
        }
        let update = Update { data: Data::Terminal(terminal_data(o)), ..Update::default() };
        let code = o.result_code.unwrap_or(0xFF);
        let input = if o.approved() {
            Input::TerminalApproved
        } else {
            Input::TerminalDeclined { code: format!("zvt_{code:02x}"), message: codes::result_text(code) }
        };
        self.step(rec, input, update).await
    }

    /// The terminal booked the payment: CAPTURED, with its record for the
    /// gateway in the same commit. `result` is stored too when posd learns
    /// it only now (asked after a lost line).
    async fn confirm(&self, rec: &PaymentRecord, result: Option<&Outcome>) -> Result<PaymentRecord, StepError> {
        let (result, receipt, terminal_offline) = match result {
            Some(o) => (Some(terminal_data(o)), o.receipt_no, o.offline),
            None => {
                let stored = self.store.terminal_result(&rec.id)?;
                let (receipt, offline) = stored.map_or((None, false), |t| (t.receipt_no, t.offline));
                (None, receipt, offline)
            }
        };
        // The lane's last receipt moves in the same commit: a crash between
        // the two would leave later payments judged against a stale number.
        let last_receipt = receipt.map(|r| (last_receipt_key(&rec.terminal_id), i64::from(r)));
        let event = terminal_offline.then(|| NewEvent {
            kind: EventKind::TerminalApprovedOffline,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message: "the payment terminal approved offline; it forwards the payment to its acquirer later".into(),
        });
        let update = Update { data: Data::Booked { result, last_receipt }, event, ..Update::default() };
        let new = self.step(rec, Input::TerminalConfirmed, update).await?;
        self.record_wake.notify_one();
        Ok(new)
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
    /// in doubt, judged against its stored receipt or the lane's last one
    /// before it ([`judge`]); asked again, with backoff, while the terminal
    /// cannot be reached.
    async fn ask_terminal(
        &self,
        lane: &str,
        zvt: &ZvtTerminal,
        amount: i64,
        stored: Option<u16>,
        before: Option<u16>,
    ) -> Verdict {
        let mut verdict = Verdict::Undetermined("the payment terminal could not be asked".into());
        for attempt in 0..self.settings.status_attempts.max(1) * 4 {
            if attempt > 0 {
                tokio::time::sleep(self.settings.status_backoff).await;
            }
            let Repeated { last, ending } = repeat_receipt(zvt).await;
            verdict = match ending {
                Ending::Completed { .. } => judge(amount as u64, stored, before, last.as_ref()),
                Ending::Aborted { code, text } | Ending::Refused { code, text } => Verdict::Undetermined(format!(
                    "the payment terminal cannot repeat its last receipt ({code:02X} {text}); check its journal"
                )),
                // Not reachable (yet): try again.
                Ending::Lost { message, .. } => {
                    verdict = Verdict::Undetermined(format!("the payment terminal could not be asked: {message}"));
                    continue;
                }
            };
            // The terminal's own last receipt: what later payments compare with.
            self.note_receipt_no(lane, last.as_ref().and_then(|o| o.receipt_no)).await;
            break;
        }
        verdict
    }

    /// Asks the terminal what it booked for a payment in doubt and settles
    /// the payment by its answer, judged against the receipt number stored
    /// with the payment (its result's, or the lane's last one when it
    /// started): the same every time posd asks.
    pub(super) async fn resolve_on_terminal(
        &self,
        lane: &Lane,
        zvt: &ZvtTerminal,
        rec: PaymentRecord,
    ) -> Result<(), StepError> {
        self.publish(&rec, pb::PaymentStage::Authorizing, "Checking with the payment terminal what it booked".into());
        let stored = self.store.terminal_result(&rec.id)?.and_then(|t| t.receipt_no);
        let before = self.store.payment_receipt_before(&rec.id)?.and_then(|n| u16::try_from(n).ok());
        let verdict = self.ask_terminal(&lane.id, zvt, rec.amount_minor, stored, before).await;
        tracing::info!(payment = %rec.id, ?verdict, "payment terminal asked");
        match verdict {
            Verdict::Booked(o) => {
                self.confirm(&rec, (rec.status == Status::Unknown).then_some(&o)).await?;
            }
            Verdict::NotBooked(message) => {
                self.step(&rec, Input::TerminalNotBooked { message }, Update::default()).await?;
            }
            Verdict::Undetermined(message) => {
                let rec = if rec.status == Status::Confirming {
                    self.step(&rec, Input::TerminalLost { message: message.clone() }, Update::default()).await?
                } else {
                    rec
                };
                // The payment stays UNKNOWN for a person; the register hears
                // why and the lane is free for the next customer.
                self.emit(EventKind::TerminalOutcomeUnknown, &rec.terminal_id, &rec.id, message.clone()).await;
                self.free_lane(&rec);
                self.publish(
                    &rec,
                    pb::PaymentStage::Authorizing,
                    format!("Outcome unknown: {message}. Do not take this payment again before checking."),
                );
                self.end_live(&rec.id);
            }
        }
        Ok(())
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
                let update = Update { data: Data::Booked { result, last_receipt: None }, event: Some(event), audit };
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
    /// booked: its payment in doubt, then its refunds in doubt, in one task.
    /// The lane takes no new payment until the terminal has answered: a new
    /// transaction would hide the ones in doubt (and move the receipt number
    /// they are judged against).
    pub(super) fn recover_on_terminal(
        self: &Arc<Self>,
        terminal: &str,
        payment: Option<PaymentRecord>,
        refunds: Vec<(RefundRecord, PaymentRecord)>,
    ) {
        let Some(zvt) = self.lanes.get(terminal).and_then(|l| l.zvt().cloned()) else {
            tracing::error!(%terminal, "payments or refunds in doubt on a lane that has no payment terminal now");
            return;
        };
        let lane = self.lanes[terminal].clone();
        let Some(what) = payment.as_ref().map(|p| p.id.clone()).or_else(|| refunds.first().map(|r| r.0.id.clone()))
        else {
            return;
        };
        self.busy.lock().unwrap().insert(terminal.to_string(), what.clone());
        let engine = self.clone();
        let terminal = terminal.to_string();
        tokio::spawn(async move {
            if let Some(rec) = payment {
                let result = async {
                    let rec = if rec.status == Status::Collecting {
                        let message = "posd restarted while the payment terminal had the payment".to_string();
                        engine.step(&rec, Input::TerminalLost { message }, Update::default()).await?
                    } else {
                        rec.clone()
                    };
                    engine.resolve_on_terminal(&lane, &zvt, rec).await
                }
                .await;
                if let Err(e) = result {
                    tracing::error!(payment = %rec.id, error = %e, "recovery on the payment terminal failed");
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
                        let _ = self.store.record_attempt(r.seq, "", false, now_ms()).await;
                        backoff = f.retry_first;
                    }
                    // The gateway refused the record itself: retrying cannot
                    // help, and must not hold back the records after it.
                    Err(crate::gateway::CallError::Refused(m)) => self.record_refused(&r, &m).await,
                    Err(e) => {
                        tracing::warn!(record = %r.record_key, error = %e, "recording at the gateway failed; will retry");
                        let _ = self.store.record_attempt(r.seq, &e.to_string(), false, now_ms()).await;
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::select! {
                    () = self.record_wake.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(f.retry_max);
            }
        }
    }

    async fn record_refused(&self, r: &crate::store::GatewayRecord, why: &str) {
        tracing::error!(record = %r.record_key, %why, "a terminal payment's record was refused; a person must look");
        let _ = self.store.record_attempt(r.seq, why, true, now_ms()).await;
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

/// Runs Repeat Receipt and keeps the terminal's last result.
async fn repeat_receipt(zvt: &ZvtTerminal) -> Repeated {
    let (mut events, _abort) = zvt.run(Message::RepeatReceipt(zvt.with_password(Bmps::default()))).await;
    let mut last = None;
    let deadline = tokio::time::Instant::now() + zvt.settings.t4 + Duration::from_secs(1);
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
