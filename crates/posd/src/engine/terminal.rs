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

use std::sync::Arc;
use std::time::Duration;

use pos_engine::{Input, Status};
use pos_proto::gateway::{TerminalRecord, TerminalRecordKind};
use pos_proto::terminal as pb;
use pos_zvt::{Bmp, Bmps, Message, codes};
use tokio::sync::{mpsc, oneshot};

use super::{Engine, EngineError, StepError, step_error};
use crate::failpoint;
use crate::lane::Lane;
use crate::store::{CardInfo, NewEvent, PaymentRecord, RefundRecord, SendKind, TerminalResult, Update};
use crate::zvt::{Ending, Outcome, Verdict, ZvtEvent, ZvtTerminal, judge};

/// The terminal's last receipt number posd saw, per lane.
fn last_receipt_key(lane: &str) -> String {
    format!("zvt_last_receipt:{lane}")
}

/// The lane's last receipt number when a payment started, kept with it, so
/// every later look at the payment judges it against the same number.
fn before_key(payment: &str) -> String {
    format!("zvt_before:{payment}")
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
                    engine.note_receipt_no(terminal, self.receipt);
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
            self.note_receipt_no(&lane.id, last.as_ref().and_then(|o| o.receipt_no));
        } else {
            tracing::warn!(lane = %lane.id, ?ending, "could not learn the payment terminal's last receipt number");
        }
    }

    /// Remembers the terminal's latest receipt number — only one the
    /// terminal has confirmed, or shown when asked.
    fn note_receipt_no(&self, lane: &str, receipt: Option<u16>) {
        if let Some(r) = receipt
            && let Err(e) = self.store.set_meta(&last_receipt_key(lane), i64::from(r))
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

    /// Takes one payment on the lane's payment terminal.
    pub(super) async fn drive_terminal(
        &self,
        lane: &Lane,
        zvt: &ZvtTerminal,
        rec: PaymentRecord,
        cancel: &mut mpsc::Receiver<()>,
    ) -> Result<(), StepError> {
        let before = self.last_receipt(&lane.id)?;
        self.store.set_meta(&before_key(&rec.id), before.map_or(-1, i64::from))?;
        let mut rec = self.step(&rec, Input::StartOnTerminal, Update::default()).await?;
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
        let update = Update {
            card: card(o),
            auth_code: Some(o.auth_code.clone()),
            terminal: Some(terminal_result(o)),
            ..Update::default()
        };
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
        let mut update = Update { record: Some("sale"), ..Update::default() };
        let (receipt, terminal_offline) = match result {
            Some(o) => {
                update.card = card(o);
                update.auth_code = Some(o.auth_code.clone());
                update.terminal = Some(terminal_result(o));
                (o.receipt_no, o.offline)
            }
            None => self.store.terminal_result(&rec.id)?.map_or((None, false), |t| (t.receipt_no, t.offline)),
        };
        // The lane's last receipt moves in the same commit: a crash between
        // the two would leave later payments judged against a stale number.
        update.meta = receipt.map(|r| (last_receipt_key(&rec.terminal_id), i64::from(r)));
        if terminal_offline {
            update.event = Some(NewEvent {
                kind: "terminal_approved_offline",
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message: "the payment terminal approved offline; it forwards the payment to its acquirer later".into(),
            });
        }
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
            self.note_receipt_no(lane, last.as_ref().and_then(|o| o.receipt_no));
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
        let before = self.store.meta(&before_key(&rec.id))?.and_then(|n| u16::try_from(n).ok());
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
                self.emit("terminal_outcome_unknown", &rec.terminal_id, &rec.id, message.clone()).await;
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
            kind: "payment_resolved",
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message: format!("payment {id}: {caller} checked the payment terminal's journal: {found}{note}"),
        };
        // The transition's own audit entry names what it did; this one who.
        let audit = Some(format!("resolved by {caller} from the terminal's journal: {found}{note}"));
        let new = match receipt {
            Some(n) => {
                let booked = TerminalResult { result_code: 0, receipt_no: Some(n), ..TerminalResult::default() };
                let update = Update {
                    record: Some("sale"),
                    terminal: Some(booked),
                    event: Some(event),
                    audit,
                    ..Update::default()
                };
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
        let Some(zvt) = self.lanes.get(terminal).and_then(|l| l.zvt.clone()) else {
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
                        let _ = self.store.record_attempt(r.seq, "", false).await;
                        backoff = f.retry_first;
                    }
                    // The gateway refused the record itself: retrying cannot
                    // help, and must not hold back the records after it.
                    Err(crate::gateway::CallError::Refused(m)) => self.record_refused(&r, &m).await,
                    Err(e) => {
                        tracing::warn!(record = %r.record_key, error = %e, "recording at the gateway failed; will retry");
                        let _ = self.store.record_attempt(r.seq, &e.to_string(), false).await;
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
        let _ = self.store.record_attempt(r.seq, why, true).await;
        self.emit(
            "record_refused",
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
        let kind = match r.kind.as_str() {
            "sale" => TerminalRecordKind::Sale,
            "reversal" => TerminalRecordKind::Reversal,
            _ => TerminalRecordKind::Refund,
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

/// Holds a lane for an administrative command (refund, reversal,
/// end-of-day) so no payment starts on the terminal meanwhile.
struct LaneHold<'a> {
    engine: &'a Engine,
    terminal: String,
    what: String,
}

impl Drop for LaneHold<'_> {
    fn drop(&mut self) {
        let mut busy = self.engine.busy.lock().unwrap();
        if busy.get(&self.terminal) == Some(&self.what) {
            busy.remove(&self.terminal);
        }
    }
}

impl Engine {
    /// Takes the lane for an administrative command; checked and taken
    /// under the admission lock, as a new payment takes it.
    async fn hold_lane(&self, terminal: &str, what: &str) -> Result<(LaneHold<'_>, Arc<ZvtTerminal>), EngineError> {
        let zvt = self
            .lanes
            .get(terminal)
            .and_then(|l| l.zvt.clone())
            .ok_or_else(|| EngineError::NotFound(format!("terminal {terminal} has no payment terminal")))?;
        let _admission = self.admission[terminal].lock().await;
        let mut busy = self.busy.lock().unwrap();
        if let Some(other) = busy.get(terminal) {
            return Err(EngineError::FailedPrecondition(
                "TERMINAL_BUSY",
                format!("terminal {terminal} is busy with {other}; try again when it is done"),
            ));
        }
        busy.insert(terminal.to_string(), what.to_string());
        Ok((LaneHold { engine: self, terminal: terminal.to_string(), what: what.to_string() }, zvt))
    }

    /// A refund or reversal was stored as done, but the terminal never had
    /// the 80 00 that completes it: it may have undone it. A person checks.
    async fn confirmation_lost(&self, rec: &PaymentRecord, what: &str) -> EngineError {
        let message = format!(
            "{what} was stored as done, but the payment terminal did not get posd's confirmation and may have \
             undone it; check the terminal's journal"
        );
        self.emit("terminal_confirmation_lost", &rec.terminal_id, &rec.id, message.clone()).await;
        EngineError::Unavailable("OUTCOME_UNKNOWN", message)
    }

    /// Refunds on the payment terminal (the customer presents the card
    /// there). A succeeded refund is queued for the gateway's ledger in the
    /// same commit that settles it, before the terminal hears 80 00.
    pub(super) async fn refund_on_terminal(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
    ) -> Result<RefundRecord, EngineError> {
        let (_hold, zvt) = self.hold_lane(&rec.terminal_id, &refund.id).await?;
        self.refund_on_held_terminal(refund, rec, &zvt).await
    }

    /// [`Engine::refund_on_terminal`] on a lane the caller holds.
    async fn refund_on_held_terminal(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
        zvt: &ZvtTerminal,
    ) -> Result<RefundRecord, EngineError> {
        // Settled while this call waited for the lane: that stands.
        let refund = match self.store.refund(&refund.id)? {
            Some(r) if r.status != "pending" => return Ok(r),
            Some(r) => r,
            None => return Err(EngineError::NotFound(format!("no refund {}", refund.id))),
        };
        // Sent before: the terminal's journal settles it, never a second refund.
        if self.store.meta(&before_key(&refund.id))?.is_some() {
            return self.settle_refund_by_journal(refund, rec, zvt).await;
        }
        // Left pending by a posd from before migration 9, which kept no
        // receipt number to judge by: only a person can tell.
        if self.store.sent_before(SendKind::Refund, &refund.refund_key)? {
            let why = "posd was running it on the payment terminal when it stopped, before this version kept the \
                       terminal's receipt number to judge it by";
            return Err(self.refund_left_to_a_person(&refund, rec, why).await);
        }
        // The lane's last receipt now: what the terminal's answer about this
        // refund is judged against later, as for a payment.
        let before = self.last_receipt(&rec.terminal_id).map_err(step_error)?;
        self.store
            .set_meta(&before_key(&refund.id), before.map_or(-1, i64::from))
            .inspect_err(|e| self.note_store_error(e))?;
        let fields = [Bmp::amount(refund.amount_minor as u64), Bmp::currency(zvt.settings.currency)];
        let (mut events, _abort) = zvt.run(Message::Refund(zvt.with_password(fields.into_iter().collect()))).await;
        let mut settled: Option<RefundRecord> = None;
        let event = |kind: &'static str, message: String| NewEvent {
            kind,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message,
        };
        let mut follow = OneResult::default();
        let ending = loop {
            match follow.next(self, &rec.terminal_id, &mut events).await {
                Ok((outcome, confirm)) => {
                    failpoint::hit("zvt_refund_result");
                    let ok = outcome.approved() && outcome.amount.is_none_or(|a| a == refund.amount_minor as u64);
                    let code = outcome.result_code.unwrap_or(0xFF);
                    let text = codes::result_text(code);
                    let failure_code = format!("zvt_{code:02x}");
                    let failure = (!ok).then_some((failure_code.as_str(), text.as_str()));
                    let (kind, message) = if ok {
                        (
                            "refund_succeeded",
                            format!("refunded {} {} on the payment terminal", refund.amount_minor, refund.currency),
                        )
                    } else {
                        ("refund_failed", format!("the payment terminal refused the refund: {text}"))
                    };
                    match self.store.finish_refund(&refund.id, ok, failure, &event(kind, message), true).await {
                        Ok((stored, ev)) => {
                            if let Some(ev) = ev {
                                let _ = self.events.send(ev);
                            }
                            let _ = confirm.send(true);
                            self.record_wake.notify_one();
                            settled = Some(stored);
                        }
                        Err(e) => {
                            let _ = confirm.send(false);
                            self.note_store_error(&e);
                            return Err(e.into());
                        }
                    }
                }
                Err(ending) => break ending,
            }
        };
        if let Some(stored) = settled {
            if stored.status == "succeeded" && !follow.confirmed {
                return Err(self.confirmation_lost(rec, &format!("refund {}", stored.id)).await);
            }
            return Ok(stored);
        }
        match ending {
            Ending::Lost { message, started: true } => {
                tracing::warn!(refund = %refund.id, %message, "the line failed during a refund on the payment terminal; asking it");
                self.settle_refund_by_journal(refund, rec, zvt).await
            }
            ending => {
                let (code, text) = match ending {
                    Ending::Aborted { code, text } | Ending::Refused { code, text } => {
                        (format!("zvt_{code:02x}"), text)
                    }
                    Ending::Lost { message, .. } => ("terminal_unavailable".to_string(), message),
                    Ending::Completed { .. } => {
                        ("terminal_no_result".to_string(), "the terminal sent no result".into())
                    }
                };
                let message = format!("the payment terminal did not refund: {text}");
                let (stored, ev) = self
                    .store
                    .finish_refund(&refund.id, false, Some((&code, &text)), &event("refund_failed", message), false)
                    .await
                    .inspect_err(|e| self.note_store_error(e))?;
                if let Some(ev) = ev {
                    let _ = self.events.send(ev);
                }
                Ok(stored)
            }
        }
    }

    /// Settles a refund the terminal may have booked (the line failed after
    /// it took the refund, or posd restarted): its Repeat Receipt is judged
    /// like a payment in doubt's, against the lane's last receipt number
    /// before the refund started. Booked: succeeded, and queued for the
    /// gateway's ledger in the same commit; not booked: failed, nothing paid
    /// back; anything else stays pending for a person (`posctl resolve
    /// REFUND --receipt N | --not-booked`), alerted once. The caller holds the
    /// lane.
    async fn settle_refund_by_journal(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
        zvt: &ZvtTerminal,
    ) -> Result<RefundRecord, EngineError> {
        let before = self.store.meta(&before_key(&refund.id))?.and_then(|n| u16::try_from(n).ok());
        // The terminal's last receipt is judged against `before` only while
        // posd has seen no later one on this lane: after another payment
        // (a same-price exchange, say) its "next receipt with this amount"
        // could be that payment, not this refund.
        let verdict = if self.last_receipt(&rec.terminal_id).map_err(step_error)? == before {
            self.ask_terminal(&rec.terminal_id, zvt, refund.amount_minor, None, before).await
        } else {
            Verdict::Undetermined(format!(
                "the lane has booked other transactions since (its last receipt was {} before the refund)",
                before.map_or("unknown".into(), |n| n.to_string())
            ))
        };
        tracing::info!(refund = %refund.id, ?verdict, "payment terminal asked about a refund");
        let event = |kind: &'static str, message: String| NewEvent {
            kind,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message,
        };
        let settled = match verdict {
            Verdict::Booked(o) => {
                let receipt = o.receipt_no.map_or("?".into(), |n| n.to_string());
                let message = format!(
                    "refunded {} {} on the payment terminal (receipt {receipt}, as its Repeat Receipt shows)",
                    refund.amount_minor, refund.currency
                );
                self.store.finish_refund(&refund.id, true, None, &event("refund_succeeded", message), true).await
            }
            Verdict::NotBooked(why) => {
                let message = format!("the payment terminal did not refund: {why}");
                let failure = Some(("terminal_not_booked", why.as_str()));
                self.store.finish_refund(&refund.id, false, failure, &event("refund_failed", message), false).await
            }
            Verdict::Undetermined(why) => return Err(self.refund_left_to_a_person(&refund, rec, &why).await),
        };
        let (stored, ev) = settled.inspect_err(|e| self.note_store_error(e))?;
        if let Some(ev) = ev {
            let _ = self.events.send(ev);
        }
        self.record_wake.notify_one();
        Ok(stored)
    }

    /// A terminal refund whose outcome posd cannot learn: it stays pending
    /// (its amount reserved), alerted once, for a person to settle from the
    /// terminal's journal.
    async fn refund_left_to_a_person(&self, refund: &RefundRecord, rec: &PaymentRecord, why: &str) -> EngineError {
        let message = format!(
            "refund {} of {} on the payment terminal may or may not be booked: {why}; once its journal is \
             checked, settle it with posctl resolve {} --receipt N (booked) or --not-booked",
            refund.id, refund.amount_minor, refund.id
        );
        match self.store.has_event("terminal_refund_unknown", &rec.id, &format!("refund {} ", refund.id)) {
            Ok(true) => {}
            _ => self.emit("terminal_refund_unknown", &rec.terminal_id, &rec.id, message.clone()).await,
        }
        EngineError::Unavailable("OUTCOME_UNKNOWN", message)
    }

    /// Settles, after a restart, a refund posd was running on a payment
    /// terminal (the caller holds the lane): never sent again.
    async fn recover_refund(&self, refund: RefundRecord, rec: &PaymentRecord, zvt: &ZvtTerminal) {
        // Never reached the terminal (posd stopped first): nothing was
        // refunded, and no customer waits at the terminal to be asked for the
        // card again. (One an older posd left pending may have:
        // refund_on_held_terminal leaves it to a person.)
        let never_sent = matches!(self.store.meta(&before_key(&refund.id)), Ok(None))
            && matches!(self.store.sent_before(SendKind::Refund, &refund.refund_key), Ok(false));
        if never_sent {
            let why = "posd stopped before the refund reached the payment terminal; nothing was refunded";
            let event = NewEvent {
                kind: "refund_failed",
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message: format!("refund {} of {} failed: {why}", refund.id, refund.amount_minor),
            };
            match self.store.finish_refund(&refund.id, false, Some(("interrupted", why)), &event, false).await {
                Ok((_, Some(ev))) => drop(self.events.send(ev)),
                Ok((_, None)) => {}
                Err(e) => self.note_store_error(&e),
            }
            return;
        }
        match self.refund_on_held_terminal(refund.clone(), rec, zvt).await {
            Ok(r) => tracing::info!(refund = %r.id, status = %r.status, "refund on the payment terminal settled"),
            Err(e) => tracing::warn!(refund = %refund.id, error = %e, "refund on the payment terminal still unsettled"),
        }
    }

    /// A person checked the payment terminal's journal (or, for a refund
    /// through the gateway that cannot be asked, the gateway's records) for a
    /// refund posd left pending, and says what it shows: booked (succeeded;
    /// a terminal's refund is recorded in the chain's ledger) or not booked
    /// (failed: its amount may be refunded again). Audited with the caller.
    pub async fn resolve_refund(
        &self,
        id: &str,
        receipt: Option<u16>,
        booked: bool,
        note: &str,
        caller: &str,
    ) -> Result<RefundRecord, EngineError> {
        let refund = self.store.refund(id)?.ok_or_else(|| EngineError::NotFound(format!("no refund {id}")))?;
        let rec = self
            .store
            .get(&refund.payment_id)?
            .ok_or_else(|| EngineError::NotFound(format!("no payment {}", refund.payment_id)))?;
        // While posd itself asks (a register's call, start-up), it goes first.
        let _claim = self.claim_when_free(id).await;
        let hold = if rec.on_terminal() { Some(self.hold_lane(&rec.terminal_id, id).await?) } else { None };
        let refund = self.store.refund(id)?.ok_or_else(|| EngineError::NotFound(format!("no refund {id}")))?;
        if refund.status != "pending" {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("refund {id} is {}; only a pending refund is resolved by a person", refund.status),
            ));
        }
        if !rec.on_terminal() && !self.store.has_event("refund_outcome_unknown", &rec.id, &format!("refund {id} "))? {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!(
                    "refund {id} went to the gateway, which posd asks by itself; a person settles it only when \
                     the gateway cannot be asked (event refund_outcome_unknown)"
                ),
            ));
        }
        let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
        let found = match (booked, receipt) {
            (true, Some(n)) => format!("booked under receipt {n}"),
            (true, None) => "booked".to_string(),
            (false, _) => "not booked".to_string(),
        };
        let source = if rec.on_terminal() { "the payment terminal's journal" } else { "the gateway's records" };
        let message = format!("refund {id}: {caller} checked {source}: {found}{note}");
        let event = NewEvent {
            kind: "refund_resolved",
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message: message.clone(),
        };
        let failure = (!booked).then_some(("resolved_not_booked", message.as_str()));
        let (stored, ev) = self
            .store
            .finish_refund_audited(&refund.id, booked, failure, &event, booked && rec.on_terminal(), &message)
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        drop(hold);
        if let Some(ev) = ev {
            let _ = self.events.send(ev);
        }
        self.record_wake.notify_one();
        tracing::warn!(refund = %id, %caller, %found, "refund in doubt resolved by a person");
        Ok(stored)
    }

    /// Reverses a captured payment on its terminal (same day, before the
    /// terminal's end-of-day), by the receipt number the terminal gave it.
    pub(super) async fn reverse_on_terminal(
        &self,
        rec: PaymentRecord,
        why: String,
    ) -> Result<PaymentRecord, EngineError> {
        let (_hold, zvt) = self.hold_lane(&rec.terminal_id, &rec.id).await?;
        let refunds = self.store.refunds_of(&rec.id)?;
        if let Some(r) = refunds.iter().find(|r| r.status != "failed") {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("payment {} has refund {} ({}); a reversal would pay back twice", rec.id, r.id, r.status),
            ));
        }
        let receipt = self.store.terminal_result(&rec.id)?.and_then(|t| t.receipt_no).ok_or_else(|| {
            EngineError::FailedPrecondition(
                "NO_TERMINAL_RECEIPT",
                format!("payment {} has no terminal receipt number to reverse; refund it instead", rec.id),
            )
        })?;
        let fields = [Bmp::receipt_no(receipt)];
        let (mut events, _abort) = zvt.run(Message::Reversal(zvt.with_password(fields.into_iter().collect()))).await;
        let mut reversed: Option<PaymentRecord> = None;
        let mut refused: Option<String> = None;
        let mut follow = OneResult::default();
        let ending = loop {
            match follow.next(self, &rec.terminal_id, &mut events).await {
                Ok((outcome, confirm)) => {
                    if !outcome.approved() {
                        refused = Some(codes::result_text(outcome.result_code.unwrap_or(0xFF)));
                        let _ = confirm.send(true);
                        continue;
                    }
                    let update = Update { record: Some("reversal"), ..Update::default() };
                    match self.step(&rec, Input::TerminalReversed { reason: why.clone() }, update).await {
                        Ok(new) => {
                            let _ = confirm.send(true);
                            self.record_wake.notify_one();
                            reversed = Some(new);
                        }
                        Err(e) => {
                            let _ = confirm.send(false);
                            return Err(step_error(e));
                        }
                    }
                }
                Err(ending) => break ending,
            }
        };
        if let Some(new) = reversed {
            if !follow.confirmed {
                return Err(self.confirmation_lost(&new, &format!("the reversal of payment {}", new.id)).await);
            }
            return Ok(new);
        }
        let text = match (refused, ending) {
            (Some(text), _) => text,
            (None, Ending::Aborted { text, .. } | Ending::Refused { text, .. }) => text,
            (None, Ending::Lost { message, started: true }) => {
                return Err(EngineError::Unavailable(
                    "OUTCOME_UNKNOWN",
                    format!(
                        "the line to the payment terminal failed during the reversal ({message}); check its journal"
                    ),
                ));
            }
            (None, Ending::Lost { message, .. }) => {
                return Err(EngineError::Unavailable("TERMINAL_UNAVAILABLE", message));
            }
            (None, Ending::Completed { .. }) => "the terminal sent no result".into(),
        };
        Err(EngineError::FailedPrecondition(
            "TERMINAL_REFUSED",
            format!("the payment terminal did not reverse payment {}: {text}; refund it instead", rec.id),
        ))
    }

    /// End-of-day on the payment terminal: it settles its batch with its
    /// acquirer; posd reports the terminal's total and prints its slip.
    pub(super) async fn end_of_day_on_terminal(
        &self,
        terminal: &str,
        caller: &str,
    ) -> Result<pb::BatchSummary, EngineError> {
        let (_hold, zvt) = self.hold_lane(terminal, "end-of-day").await?;
        let lane = self.lanes.get(terminal).cloned().expect("held lanes exist");
        let (mut events, _abort) = zvt.run(Message::EndOfDay(zvt.with_password(Bmps::default()))).await;
        let mut total: Option<u64> = None;
        let mut lines: Vec<String> = Vec::new();
        let ending = loop {
            match events.recv().await {
                Some(ZvtEvent::Result { outcome, confirm }) => {
                    let _ = confirm.send(true);
                    if outcome.approved() {
                        total = outcome.amount;
                    }
                }
                Some(ZvtEvent::Receipt(l)) => lines.extend(l.iter().map(|x| pos_mask::scrub(x))),
                Some(ZvtEvent::Done(ending)) => break ending,
                Some(_) => {}
                None => break Ending::Lost { message: "the terminal task stopped".into(), started: true },
            }
        };
        match ending {
            Ending::Completed { .. } => {}
            Ending::Aborted { text, .. } | Ending::Refused { text, .. } => {
                return Err(EngineError::FailedPrecondition(
                    "TERMINAL_REFUSED",
                    format!("the payment terminal did not close its batch: {text}"),
                ));
            }
            Ending::Lost { message, .. } => {
                return Err(EngineError::Unavailable(
                    "TERMINAL_UNAVAILABLE",
                    format!("end-of-day on the payment terminal failed: {message}"),
                ));
            }
        }
        let now = crate::store::now_ms();
        let key = format!("zvt_batch_closed_at:{terminal}");
        let since = self.store.meta(&key)?.unwrap_or(0);
        let count = self
            .store
            .list(&crate::store::ListFilter {
                terminal_id: Some(terminal.to_string()),
                statuses: vec![Status::Captured],
                created_after_ms: Some(since),
                limit: 100_000,
                ..Default::default()
            })?
            .len() as u32;
        self.store.set_meta(&key, now)?;
        let batch_id = format!("zvt_{}", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes()));
        let captured = total.unwrap_or(0) as i64;
        self.emit(
            "batch_closed",
            terminal,
            "",
            format!(
                "end-of-day on the payment terminal by {caller}: {}",
                pos_engine::money::format(captured, &lane.currency)
            ),
        )
        .await;
        let summary = pb::BatchSummary {
            batch_id,
            terminal_id: terminal.to_string(),
            closed_at: Some(crate::convert::timestamp(now)),
            totals: vec![pb::BatchCurrencyTotal {
                currency: lane.currency.clone(),
                count,
                // The terminal reports its batch's net total (sales less
                // refunds), not the two apart.
                captured_minor: captured,
                refunded_minor: 0,
            }],
            offline_unsent: 0,
        };
        self.print_slip(&summary, &lines).await;
        Ok(summary)
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
