//! After the sale on a payment terminal (ZVT): refunds (the customer
//! presents the card at the terminal), reversals of captured payments,
//! end-of-day, refunds in doubt settled by the terminal's journal or by a
//! person, each run while the lane is held so no payment starts meanwhile.

use std::sync::Arc;

use pos_engine::terminal::Verdict;
use pos_engine::{Input, Status};
use pos_proto::terminal as pb;
use pos_zvt::{Bmp, Bmps, Message, codes};

use super::OneResult;
use crate::engine::{Engine, EngineError, step_error};
use crate::failpoint;
use crate::lane::CardDevice;
use crate::store::{Data, EventKind, NewEvent, PaymentRecord, RefundRecord, RefundStatus, SendKind, Update};
use crate::zvt::{Ending, ZvtEvent, ZvtTerminal};

/// Holds a lane for an administrative command (refund, reversal,
/// end-of-day) so no payment starts on the terminal meanwhile.
pub(in crate::engine) struct LaneHold<'a> {
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
        let no_terminal = || EngineError::NotFound(format!("terminal {terminal} has no payment terminal"));
        let zvt = match &self.lanes.get(terminal).ok_or_else(no_terminal)?.device {
            CardDevice::Zvt(zvt) => zvt.clone(),
            CardDevice::Nexo(_) | CardDevice::Reader(_) => return Err(no_terminal()),
        };
        Ok((self.hold(terminal, what).await?, zvt))
    }

    /// Takes the lane for `what`, whatever its card device; checked and
    /// taken under the admission lock, as a new payment takes it.
    pub(in crate::engine) async fn hold(&self, terminal: &str, what: &str) -> Result<LaneHold<'_>, EngineError> {
        let Some(admission) = self.admission.get(terminal) else {
            return Err(EngineError::NotFound(format!("unknown terminal {terminal:?}")));
        };
        let _admission = admission.lock().await;
        let mut busy = self.busy.lock().unwrap();
        if let Some(other) = busy.get(terminal) {
            return Err(EngineError::FailedPrecondition(
                "TERMINAL_BUSY",
                format!("terminal {terminal} is busy with {other}; try again when it is done"),
            ));
        }
        busy.insert(terminal.to_string(), what.to_string());
        Ok(LaneHold { engine: self, terminal: terminal.to_string(), what: what.to_string() })
    }

    /// A refund or reversal was stored as done, but the terminal never had
    /// the 80 00 that completes it: it may have undone it. A person checks.
    async fn confirmation_lost(&self, rec: &PaymentRecord, what: &str) -> EngineError {
        let message = format!(
            "{what} was stored as done, but the payment terminal did not get posd's confirmation and may have \
             undone it; check the terminal's journal"
        );
        self.emit(EventKind::TerminalConfirmationLost, &rec.terminal_id, &rec.id, message.clone()).await;
        EngineError::Unavailable("OUTCOME_UNKNOWN", message)
    }

    /// Refunds on the payment terminal (the customer presents the card
    /// there). A succeeded refund is queued for the gateway's ledger in the
    /// same commit that settles it, before the terminal hears 80 00.
    pub(in crate::engine) async fn refund_on_terminal(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
    ) -> Result<RefundRecord, EngineError> {
        if let Some(nexo) = self.lanes.get(&rec.terminal_id).and_then(|l| l.nexo()).cloned() {
            return self.refund_on_nexo(refund, rec, &*nexo).await;
        }
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
            Some(r) if r.status != RefundStatus::Pending => return Ok(r),
            Some(r) => r,
            None => return Err(EngineError::NotFound(format!("no refund {}", refund.id))),
        };
        // Sent before: the terminal's journal settles it, never a second refund.
        if self.store.refund_receipt_before(&refund.id)?.is_some() {
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
            .set_refund_receipt_before(&refund.id, before.map_or(-1, i64::from))
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        let fields = [Bmp::amount(refund.amount_minor as u64), Bmp::currency(zvt.settings.currency)];
        let (mut events, _abort) = zvt.run(Message::Refund(zvt.with_password(fields.into_iter().collect()))).await;
        let mut settled: Option<RefundRecord> = None;
        let event = |kind: EventKind, message: String| NewEvent {
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
                            EventKind::RefundSucceeded,
                            format!("refunded {} {} on the payment terminal", refund.amount_minor, refund.currency),
                        )
                    } else {
                        (EventKind::RefundFailed, format!("the payment terminal refused the refund: {text}"))
                    };
                    let (refund_event, now) = (event(kind, message), self.now_ms());
                    match self.store.finish_refund(&refund.id, failure, &refund_event, true, None, now).await {
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
            if stored.status == RefundStatus::Succeeded && !follow.confirmed {
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
                let failed = event(EventKind::RefundFailed, format!("the payment terminal did not refund: {text}"));
                let (stored, ev) = self
                    .store
                    .finish_refund(&refund.id, Some((&code, &text)), &failed, false, None, self.now_ms())
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
        let before = self.store.refund_receipt_before(&refund.id)?.and_then(|n| u16::try_from(n).ok());
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
        let event = |kind: EventKind, message: String| NewEvent {
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
                let succeeded = event(EventKind::RefundSucceeded, message);
                self.store.finish_refund(&refund.id, None, &succeeded, true, None, self.now_ms()).await
            }
            Verdict::NotBooked(why) => {
                let message = format!("the payment terminal did not refund: {why}");
                let failure = Some(("terminal_not_booked", why.as_str()));
                let failed = event(EventKind::RefundFailed, message);
                self.store.finish_refund(&refund.id, failure, &failed, false, None, self.now_ms()).await
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
        match self.store.has_event(EventKind::TerminalRefundUnknown, &rec.id, &format!("refund {} ", refund.id)) {
            Ok(true) => {}
            _ => self.emit(EventKind::TerminalRefundUnknown, &rec.terminal_id, &rec.id, message.clone()).await,
        }
        EngineError::Unavailable("OUTCOME_UNKNOWN", message)
    }

    /// Settles, after a restart, a refund posd was running on a payment
    /// terminal (the caller holds the lane): never sent again.
    pub(super) async fn recover_refund(&self, refund: RefundRecord, rec: &PaymentRecord, zvt: &ZvtTerminal) {
        // Never reached the terminal (posd stopped first): nothing was
        // refunded, and no customer waits at the terminal to be asked for the
        // card again. (One an older posd left pending may have:
        // refund_on_held_terminal leaves it to a person.)
        let never_sent = matches!(self.store.refund_receipt_before(&refund.id), Ok(None))
            && matches!(self.store.sent_before(SendKind::Refund, &refund.refund_key), Ok(false));
        if never_sent {
            let why = "posd stopped before the refund reached the payment terminal; nothing was refunded";
            let event = NewEvent {
                kind: EventKind::RefundFailed,
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message: format!("refund {} of {} failed: {why}", refund.id, refund.amount_minor),
            };
            let failure = Some(("interrupted", why));
            match self.store.finish_refund(&refund.id, failure, &event, false, None, self.now_ms()).await {
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
        let hold = if rec.on_terminal() { Some(self.hold(&rec.terminal_id, id).await?) } else { None };
        let refund = self.store.refund(id)?.ok_or_else(|| EngineError::NotFound(format!("no refund {id}")))?;
        if refund.status != RefundStatus::Pending {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("refund {id} is {}; only a pending refund is resolved by a person", refund.status),
            ));
        }
        if !rec.on_terminal()
            && !self.store.has_event(EventKind::RefundOutcomeUnknown, &rec.id, &format!("refund {id} "))?
        {
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
            kind: EventKind::RefundResolved,
            terminal_id: rec.terminal_id.clone(),
            payment_id: rec.id.clone(),
            message: message.clone(),
        };
        let failure = (!booked).then_some(("resolved_not_booked", message.as_str()));
        // A refund booked on the terminal is recorded for the gateway's ledger.
        let record = booked && rec.on_terminal();
        let (stored, ev) = self
            .store
            .finish_refund(&refund.id, failure, &event, record, Some(message.as_str()), self.now_ms())
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
    pub(in crate::engine) async fn reverse_on_terminal(
        &self,
        rec: PaymentRecord,
        why: String,
    ) -> Result<PaymentRecord, EngineError> {
        if let Some(nexo) = self.lanes.get(&rec.terminal_id).and_then(|l| l.nexo()).cloned() {
            return self.void_on_nexo(&rec.id, why, &*nexo).await;
        }
        let (_hold, zvt) = self.hold_lane(&rec.terminal_id, &rec.id).await?;
        let refunds = self.store.refunds_of(&rec.id)?;
        if let Some(r) = refunds.iter().find(|r| r.status != RefundStatus::Failed) {
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
                    let update = Update { data: Data::Reversed, ..Update::default() };
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
    pub(in crate::engine) async fn end_of_day_on_terminal(
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
        let now = self.now_ms();
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
        self.store.set_meta(&key, now).await?;
        let batch_id = self.env.ids.make("zvt_");
        let captured = total.unwrap_or(0) as i64;
        self.emit(
            EventKind::BatchClosed,
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
