//! After the sale: captures and voids of authorized payments, refunds,
//! end of day, and authorizations left uncaptured past their window.

use pos_engine::{Input, Status};
use pos_proto::terminal as pb;

use super::{Bug, Engine, EngineError, human, step_error};
use crate::convert;
use crate::gateway::{CallError, RefundStatusError};
use crate::lane::CardDevice;
use crate::store::{Data, EventKind, NewEvent, PaymentRecord, RefundRecord, RefundStatus, SendKind, Update};

impl Engine {
    /// Captures an AUTHORIZED payment (0: the whole amount). The gateway
    /// call comes first: a repeat after a crash is answered from its record.
    pub async fn capture_payment(
        &self,
        id: &str,
        amount_minor: i64,
        caller: &str,
    ) -> Result<PaymentRecord, EngineError> {
        let _claim = self.claim_for_register(id)?;
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
        self.store.audit(&rec.id, &format!("capture of {amount} requested by {caller}"), self.now_ms()).await?;
        let earlier = self.store.note_send(SendKind::Capture, &rec.gateway_key, &rec.id, self.now_ms()).await?;
        let answer = self.gateway.capture(&rec.gateway_key, amount).await;
        let tx = self.answer(SendKind::Capture, &rec.gateway_key, earlier, answer).await?;
        crate::failpoint::hit("capture_after_response");
        let captured = if tx.captured_minor > 0 { tx.captured_minor } else { amount };
        let update = Update { data: Data::Captured(captured), ..Default::default() };
        self.step(&rec, Input::Capture, update).await.map_err(step_error)
    }

    /// Voids an AUTHORIZED payment; nothing is charged.
    pub async fn void_payment(&self, id: &str, reason: &str, caller: &str) -> Result<PaymentRecord, EngineError> {
        let _claim = self.claim_for_register(id)?;
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        match rec.status {
            Status::Voided => return Ok(rec),
            Status::Captured if rec.on_terminal() => {
                self.store.audit(&rec.id, &format!("reversal requested by {caller}"), self.now_ms()).await?;
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
        self.store.audit(&rec.id, &format!("void requested by {caller}"), self.now_ms()).await?;
        let earlier = self.store.note_send(SendKind::Void, &rec.gateway_key, &rec.id, self.now_ms()).await?;
        let answer = self.gateway.void(&rec.gateway_key).await;
        self.answer(SendKind::Void, &rec.gateway_key, earlier, answer).await?;
        let why = if reason.is_empty() { "requested by the register".to_string() } else { reason.to_string() };
        self.step(&rec, Input::Void { reason: why }, Update::default()).await.map_err(step_error)
    }

    /// Refunds (part of) a captured payment, idempotently by the register's key.
    pub async fn refund_payment(
        &self,
        key: &str,
        payment_id: &str,
        amount_minor: i64,
        reason: &str,
        caller: &str,
    ) -> Result<RefundRecord, EngineError> {
        match self.reserve_refund_for(key, payment_id, amount_minor, reason, caller).await? {
            Reserved::Settled(r) => Ok(r),
            Reserved::Send(r, rec) => self.send_refund(r, &rec).await,
        }
    }

    /// The register's refund request checked and reserved against the
    /// captured amount under its key: settled already (answered from the
    /// store), or pending, to be sent (or settled) with its payment.
    pub(super) async fn reserve_refund_for(
        &self,
        key: &str,
        payment_id: &str,
        amount_minor: i64,
        reason: &str,
        caller: &str,
    ) -> Result<Reserved, EngineError> {
        use crate::store::Reservation;
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
        let refunded: i64 = self
            .store
            .refunds_of(payment_id)?
            .iter()
            .filter(|r| r.status != RefundStatus::Failed)
            .map(|r| r.amount_minor)
            .sum();
        let amount = if amount_minor == 0 { rec.captured_minor - refunded } else { amount_minor };
        let now = self.now_ms();
        let candidate = RefundRecord {
            id: self.env.ids.make("ref_"),
            idempotency_key: key.to_string(),
            payment_id: payment_id.to_string(),
            amount_minor: amount,
            currency: rec.currency.clone(),
            refund_key: self.env.ids.gateway_key(),
            status: RefundStatus::Pending,
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
                if r.status != RefundStatus::Pending {
                    return Ok(Reserved::Settled(r));
                }
                // Pending: settled by the gateway's record or the terminal's
                // journal (never refunded a second time), see send_refund.
                r
            }
            Reservation::Created(r) => {
                let cause = format!("refund {} of {} requested by {caller}", r.id, r.amount_minor);
                self.store.audit(payment_id, &cause, self.now_ms()).await?;
                r
            }
            Reservation::NotCaptured(s) => {
                return Err(EngineError::FailedPrecondition(
                    "WRONG_STATE",
                    format!("payment {payment_id} is {s}; only a captured payment can be refunded"),
                ));
            }
            Reservation::Exceeds { captured, committed } if amount <= 0 => {
                return Err(EngineError::FailedPrecondition(
                    "REFUND_EXCEEDS_CAPTURE",
                    format!(
                        "payment {payment_id} has nothing left to refund ({committed} of the captured {captured} \
                         refunded or pending)"
                    ),
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
        Ok(Reserved::Send(refund, Box::new(rec)))
    }

    /// The register's answer for a capture's or void's gateway call. A first
    /// attempt that was not sent takes back its note: with nothing at the
    /// gateway, a later "not sent" is plain "unreachable" again.
    async fn answer<T>(
        &self,
        kind: SendKind,
        key: &str,
        earlier: bool,
        answer: Result<T, CallError>,
    ) -> Result<T, EngineError> {
        let first_not_sent = !earlier && matches!(answer, Err(CallError::NotSent(_)));
        if first_not_sent && let Err(e) = self.store.forget_send(kind, key).await {
            tracing::warn!(error = %e, "cannot take back the note of an attempt that was not sent");
        }
        if answer.is_err() && !first_not_sent {
            // In doubt: settled from the gateway's record by the background
            // if the register does not ask again.
            self.reversals.notify_one();
        }
        answer.map_err(|e| call_error(e, earlier))
    }

    /// Settles captures and voids that may have reached the gateway and that
    /// the register did not ask about again within a minute of the first
    /// attempt, after their answer was lost: the
    /// gateway's record of the charge decides (voided, or captured), as the
    /// register's next call would have. Returns false while one is still
    /// open (the gateway could not be asked, or shows nothing yet while an
    /// attempt may still arrive): the reversal worker comes back to it.
    pub(super) async fn settle_after_sale_in_doubt(&self) -> bool {
        /// How long the register has to ask again itself before the
        /// background asks the gateway.
        const GRACE_MS: i64 = 60 * 1000;
        /// How long after its first attempt a capture or void that the gateway
        /// shows no trace of is still watched for.
        const WATCH_MS: i64 = 3600 * 1000;
        let in_doubt = match self.store.after_sale_in_doubt() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the captures and voids in doubt; will retry");
                return false;
            }
        };
        let mut open = false;
        for (kind, rec, first_sent_ms) in in_doubt {
            if self.now_ms() - first_sent_ms < GRACE_MS {
                open = true;
                continue;
            }
            // The register (or another task) has the payment in hand: later.
            let Some(_claim) = self.claim(&rec.id) else {
                open = true;
                continue;
            };
            let rec = match self.store.get(&rec.id) {
                Ok(Some(r)) if r.status == Status::Authorized => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(payment = %rec.id, error = %e, "cannot read a payment in doubt; will retry");
                    open = true;
                    continue;
                }
            };
            let tx = match self.gateway.transaction(&rec.gateway_key).await {
                Ok(Some(tx)) => tx,
                Ok(None) => {
                    tracing::error!(payment = %rec.id, %kind, "ALERT: the gateway has no charge for an authorized payment");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(payment = %rec.id, %kind, error = %e, "cannot ask the gateway about a {kind} in doubt; will retry");
                    open = true;
                    continue;
                }
            };
            let settled = match pos_proto::gateway::Outcome::try_from(tx.outcome) {
                Ok(pos_proto::gateway::Outcome::Voided) => {
                    let reason = "voided at the gateway; its answer to posd was lost".to_string();
                    self.step(&rec, Input::Void { reason }, Update::default()).await
                }
                Ok(pos_proto::gateway::Outcome::Approved) if tx.captured || tx.captured_minor > 0 => {
                    let captured = if tx.captured_minor > 0 { tx.captured_minor } else { rec.amount_minor };
                    let update = Update { data: Data::Captured(captured), ..Default::default() };
                    self.step(&rec, Input::Capture, update).await
                }
                _ => {
                    // Nothing has landed; an attempt may still arrive for a while.
                    open |= self.now_ms() - first_sent_ms < WATCH_MS;
                    continue;
                }
            };
            match settled {
                Ok(now) => {
                    tracing::info!(payment = %rec.id, %kind, status = %now.status, "a {kind} in doubt settled from the gateway's record")
                }
                Err(e) => {
                    tracing::error!(payment = %rec.id, error = %e, "cannot record a {kind} in doubt; will retry");
                    open = true;
                }
            }
        }
        !open
    }

    /// Sends a pending refund under its own key and stores the outcome.
    ///
    /// Before the first attempt leaves, the store notes that the refund may
    /// reach the gateway ([`Store::note_send`](crate::store::Store::note_send)).
    /// From then on only the gateway's record under the refund key settles
    /// it: it is asked for first (`GetRefund`), and a refund it has no record
    /// of is sent again under the same key (the gateway books a key once). An
    /// attempt that is not sent, or not answered, leaves the refund pending:
    /// the register hears "outcome unknown", never "failed", and the pending
    /// amount keeps counting against what may still be refunded.
    pub(super) async fn send_refund(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
    ) -> Result<RefundRecord, EngineError> {
        if rec.on_terminal() {
            return self.refund_on_terminal(refund, rec).await;
        }
        // One settlement at a time (the register's call, start-up's, the
        // background's); the others wait for it, bounded by its gateway call.
        let _claim = self.claim_when_free(&refund.id).await;
        // Another call may have settled it while this one waited.
        let refund = match self.store.refund(&refund.id)? {
            Some(r) if r.status != RefundStatus::Pending => return Ok(r),
            Some(r) => r,
            None => return Err(EngineError::NotFound(format!("no refund {}", refund.id))),
        };
        let earlier = self
            .store
            .note_send(SendKind::Refund, &refund.refund_key, &rec.id, self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        // The simulator's planted bug forgets the earlier attempts, so that
        // a later "not sent" settles a refund that may have been sent.
        let earlier = earlier && !self.env.planted(Bug::RefundNotSentSettles);
        if earlier {
            match self.gateway.refund_status(&refund.refund_key).await {
                Ok(Some(answer)) => return self.settle_refund(&refund, rec, Ok(answer)).await,
                // The gateway has no record of it: send it again, same key.
                Ok(None) => {}
                Err(RefundStatusError::Unsupported(m)) => {
                    let message = format!(
                        "refund {} of {} may have reached the gateway, and the gateway cannot be asked about refunds \
                         ({m}); it stays pending: check the gateway's records, then settle it with posctl resolve",
                        refund.id, refund.amount_minor
                    );
                    let alerted = format!("refund {} ", refund.id);
                    if !self.store.has_event(EventKind::RefundOutcomeUnknown, &rec.id, &alerted)? {
                        tracing::error!(refund = %refund.id, payment = %rec.id, "ALERT: {message}");
                        self.emit(EventKind::RefundOutcomeUnknown, &rec.terminal_id, &rec.id, message.clone()).await;
                    }
                    return Err(EngineError::Unavailable("OUTCOME_UNKNOWN", message));
                }
                Err(RefundStatusError::Unanswered(m)) => {
                    return Err(EngineError::Unavailable("OUTCOME_UNKNOWN", unknown_refund(&m, &refund.id)));
                }
            }
        }
        let req = pos_proto::gateway::RefundRequest {
            refund_key: refund.refund_key.clone(),
            transaction_key: rec.gateway_key.clone(),
            amount_minor: refund.amount_minor,
            currency: refund.currency.clone(),
        };
        let answer = self.gateway.refund(req).await;
        crate::failpoint::hit("refund_after_response");
        let outcome = match answer {
            Ok(answer) => Ok(answer),
            // Only a refund none of whose attempts can have been sent fails.
            Err(CallError::NotSent(m)) if !earlier => Err((
                "gateway_unreachable".to_string(),
                format!("refunds need the gateway and are never taken offline: {m}"),
            )),
            Err(CallError::Refused(m)) => Err(("gateway_rejected".to_string(), m)),
            Err(CallError::NotSent(m)) => {
                let why = format!("this attempt was not sent ({m}); an earlier one may have reached the gateway");
                return Err(EngineError::Unavailable("OUTCOME_UNKNOWN", unknown_refund(&why, &refund.id)));
            }
            Err(CallError::Unknown(m)) => {
                return Err(EngineError::Unavailable("OUTCOME_UNKNOWN", unknown_refund(&m, &refund.id)));
            }
            Err(CallError::TimedOut(m)) => {
                return Err(EngineError::DeadlineExceeded("OUTCOME_UNKNOWN", unknown_refund(&m, &refund.id)));
            }
        };
        self.settle_refund(&refund, rec, outcome).await
    }

    /// Stores a refund's outcome: the gateway's answer, or why it was never sent.
    async fn settle_refund(
        &self,
        refund: &RefundRecord,
        rec: &PaymentRecord,
        outcome: Result<pos_proto::gateway::RefundResult, (String, String)>,
    ) -> Result<RefundRecord, EngineError> {
        let failure = match outcome {
            Ok(r) if r.succeeded => None,
            Ok(r) => Some((r.decline_code, r.decline_message)),
            Err(why) => Some(why),
        };
        let (kind, message) = match &failure {
            None => (EventKind::RefundSucceeded, format!("refunded {} {}", refund.amount_minor, refund.currency)),
            Some((code, m)) => {
                (EventKind::RefundFailed, format!("refund of {} failed: {code}: {m}", refund.amount_minor))
            }
        };
        let event = NewEvent { kind, terminal_id: rec.terminal_id.clone(), payment_id: rec.id.clone(), message };
        let failure_ref = failure.as_ref().map(|(c, m)| (c.as_str(), m.as_str()));
        let (stored, ev) = self
            .store
            .finish_refund(&refund.id, failure_ref, &event, false, None, self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        if let Some(ev) = ev {
            let _ = self.events.send(ev);
        }
        tracing::info!(refund = %stored.id, payment = %rec.id, status = %stored.status, "refund settled");
        Ok(stored)
    }

    /// Settles refunds left pending (an answer lost, the gateway down on a
    /// retry, a restart) by the gateway's record, without waiting for the
    /// register to call again. Runs every `ageing_interval` while the
    /// gateway answers.
    pub(super) async fn settle_pending_refunds(&self) {
        if !self.gateway.is_online() {
            return;
        }
        let pending = match self.store.pending_refunds() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending refunds");
                return;
            }
        };
        for refund in pending {
            let rec = match self.store.get(&refund.payment_id) {
                Ok(Some(rec)) if !rec.on_terminal() => rec,
                _ => continue,
            };
            // Left to a person (the gateway cannot be asked): the register's
            // same-key call or posctl resolve settles it, not this loop.
            let alerted = format!("refund {} ", refund.id);
            if self.store.has_event(EventKind::RefundOutcomeUnknown, &rec.id, &alerted).unwrap_or(true) {
                continue;
            }
            match self.send_refund(refund, &rec).await {
                Ok(r) => tracing::info!(refund = %r.id, status = %r.status, "a pending refund is settled"),
                Err(e) => tracing::debug!(error = %e, "a pending refund is still unsettled"),
            }
        }
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
        match &self.lanes[terminal].device {
            CardDevice::Zvt(_) => return self.end_of_day_on_terminal(terminal, caller).await,
            CardDevice::Nexo(nexo) => {
                let nexo = nexo.clone();
                return self.end_of_day_on_nexo(terminal, caller, &*nexo).await;
            }
            CardDevice::Reader(_) => {}
        }
        // One end of day per lane at a time; its key is committed before the
        // first attempt and reused until the gateway's answer is stored, so
        // a retry after an answer lost returns the batch already closed.
        let _claim = self.claim_when_free(&format!("close_batch:{terminal}")).await;
        let candidate = format!("close_{}", self.env.ids.gateway_key());
        let (key, earlier) = self
            .store
            .begin_close(terminal, &candidate, self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        let result = match self.gateway.close_batch(&self.gateway_terminal(terminal), &key).await {
            Ok(result) => result,
            Err(e) => {
                if !earlier && matches!(e, CallError::NotSent(_)) {
                    self.store
                        .end_close(terminal, None, self.now_ms())
                        .await
                        .inspect_err(|e| self.note_store_error(e))?;
                }
                return Err(call_error(e, earlier));
            }
        };
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
        let event = NewEvent {
            kind: EventKind::BatchClosed,
            terminal_id: terminal.to_string(),
            payment_id: String::new(),
            message: format!(
                "batch {} closed by {caller}: {}{}",
                result.batch_id,
                if text.is_empty() { "nothing to settle".to_string() } else { text.join(", ") },
                if unsent > 0 { format!("; {unsent} offline payments not yet forwarded") } else { String::new() }
            ),
        };
        // The key goes with the answer's event, in one commit.
        let ended = self.store.end_close(terminal, Some(event), self.now_ms()).await;
        if let Some(ev) = ended.inspect_err(|e| self.note_store_error(e))? {
            let _ = self.events.send(ev);
        }
        let summary = pb::BatchSummary {
            batch_id: result.batch_id,
            terminal_id: terminal.to_string(),
            closed_at: Some(convert::timestamp(self.now_ms())),
            totals,
            offline_unsent: unsent,
        };
        self.print_slip(&summary, &[]).await;
        Ok(summary)
    }

    /// Checks the capture window every `ageing_interval`.
    pub(super) async fn capture_windows(self: std::sync::Arc<Self>) {
        super::background::every(self.settings.forward.ageing_interval, || self.expire_authorizations()).await
    }

    /// Reverses AUTHORIZED payments left uncaptured past the capture window:
    /// the reversal worker releases the hold at the gateway (retrying until
    /// it acknowledges), and a late capture is refused. The gateway's record
    /// is read first: a capture that reached it while posd did not store the
    /// answer (a crash) is recorded as the capture it was, never reversed.
    /// With the gateway out of reach, nothing expires until it is back.
    pub(super) async fn expire_authorizations(&self) {
        let Some(window) = self.settings.capture_window else { return };
        // Authorization times are wall-clock times, so is the cutoff.
        let cutoff = self.now_ms() - window.as_millis() as i64;
        let old = match self.store.authorized_before(cutoff, 100) {
            Ok(old) => old,
            Err(e) => {
                tracing::error!(error = %e, "cannot check authorizations against the capture window");
                return;
            }
        };
        for listed in old {
            // A capture or void under way has the payment; it goes first.
            let Some(_claim) = self.claim(&listed.id) else {
                tracing::debug!(payment = %listed.id, "capture window passed while a capture or void has the payment; it goes first");
                continue;
            };
            let rec = match self.store.get(&listed.id) {
                Ok(Some(rec)) if rec.status == Status::Authorized => rec,
                _ => continue,
            };
            let tx = match self.gateway.transaction(&rec.gateway_key).await {
                Ok(tx) => tx,
                Err(e) => {
                    tracing::debug!(payment = %rec.id, error = %e, "capture window: the gateway cannot be asked; later");
                    return;
                }
            };
            let outcome = match tx {
                Some(tx) if tx.captured => {
                    tracing::warn!(payment = %rec.id, "the gateway holds a capture posd had not stored; recording it");
                    let captured = if tx.captured_minor > 0 { tx.captured_minor } else { rec.amount_minor };
                    let update = Update { data: Data::Captured(captured), ..Default::default() };
                    self.step(&rec, Input::Capture, update).await
                }
                _ => {
                    let amount = pos_engine::money::format(rec.amount_minor, &rec.currency);
                    let event = NewEvent {
                        kind: EventKind::AuthorizationExpired,
                        terminal_id: rec.terminal_id.clone(),
                        payment_id: rec.id.clone(),
                        message: format!(
                            "payment {} ({amount}) was not captured within the capture window ({}); it is reversed, nothing is charged",
                            rec.id,
                            human(window)
                        ),
                    };
                    tracing::warn!(payment = %rec.id, %amount, "authorization not captured in time; reversing it");
                    let update = Update { event: Some(event), ..Default::default() };
                    self.step(&rec, Input::CaptureWindowPassed { window: human(window) }, update).await
                }
            };
            if let Err(e) = outcome {
                tracing::error!(payment = %rec.id, error = %e, "cannot settle an authorization past its capture window");
            }
        }
    }
}

/// What [`Engine::reserve_refund_for`] found.
pub(super) enum Reserved {
    /// Settled under the key before: the answer stands.
    Settled(RefundRecord),
    /// Pending: to be sent (or settled) for its payment.
    Send(RefundRecord, Box<PaymentRecord>),
}

fn unknown_refund(why: &str, refund_id: &str) -> String {
    format!(
        "the refund's outcome is unknown ({why}); call again with the same idempotency key to learn it (refund {refund_id})"
    )
}

/// The register's error for a gateway call that did not succeed. With
/// `earlier`, an earlier attempt of the same operation may have reached the
/// gateway, so this one's "not sent" leaves the outcome unknown.
fn call_error(e: CallError, earlier: bool) -> EngineError {
    match e {
        CallError::NotSent(m) if earlier => EngineError::Unavailable(
            "OUTCOME_UNKNOWN",
            format!(
                "this attempt did not reach the gateway ({m}), but an earlier one may have; repeating the same \
                 request once the gateway is back is safe and tells the outcome"
            ),
        ),
        CallError::NotSent(m) => EngineError::Unavailable(
            "GATEWAY_UNREACHABLE",
            format!("the gateway cannot be reached ({m}); this needs the gateway"),
        ),
        CallError::Refused(m) => {
            EngineError::FailedPrecondition("GATEWAY_REFUSED", format!("the gateway refused: {m}"))
        }
        CallError::Unknown(m) => EngineError::Unavailable(
            "OUTCOME_UNKNOWN",
            format!("no answer from the gateway ({m}); repeating the same request is safe"),
        ),
        CallError::TimedOut(m) => EngineError::DeadlineExceeded(
            "OUTCOME_UNKNOWN",
            format!("the gateway did not answer in time ({m}); repeating the same request is safe"),
        ),
    }
}

#[cfg(test)]
mod tests;
