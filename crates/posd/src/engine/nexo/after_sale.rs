//! After the sale on a nexo terminal: voids and refunds of a nexo payment
//! (a ReversalRequest of its POI transaction, whole or in part; without one,
//! an unreferenced PaymentRequest of type Refund), the reversals posd owes,
//! and end of day (ReconciliationRequest). The driver of
//! `pos_engine::nexo::AfterSale`, which decides: each operation runs under
//! its own key (its SaleTransactionID) and its own ServiceID, committed with
//! its record before the request leaves; an answer in doubt is asked about
//! by TransactionStatus for that ServiceID only, never sent again. Every run
//! holds the lane, so no payment starts on the terminal meanwhile (an owed
//! reversal run at once by the payment driver, in the payment's own hold).
//! The terminal's answers are read by the mapping in `engine/nexo.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use pos_engine::nexo::{
    self as machine, AfterSale, AfterSaleCommand, AfterSaleError, AfterSaleEvent, AfterSaleOutcome, Category, Log,
    Operation, PoiTransaction, Record, StatusAnswer,
};
use pos_engine::{Input, Status, next};
use pos_nexo::codes::{MessageCategory, ReconciliationType, ResultType, ReversalReason, TransactionType};
use pos_nexo::payment::{AmountsReq, PaymentData, PaymentRequest, PaymentTransaction, SaleData};
use pos_nexo::reconciliation::{ReconciliationRequest, ReconciliationResponse};
use pos_nexo::reversal::{OriginalPoiTransaction, ReversalRequest};
use pos_nexo::{Decimal, RequestBody, Response, ResponseBody, ServiceId, TransactionIdentification};
use pos_proto::terminal as pb;

use super::{NexoDevice, payment_answer, payment_status, reversal_answer, reversal_status, status_request};
use crate::engine::{Engine, EngineError};
use crate::nexo::terminal::NexoError;
use crate::store::{
    Data, EventKind, NewEvent, NexoReversal, PaymentRecord, RefundRecord, RefundStatus, ReversalKind, ReversalStatus,
    Settled, StoreError, Update,
};

/// What an after-sale run's records are.
enum Subject {
    /// A refund: its record takes the ServiceID and the outcome.
    Refund(RefundRecord),
    /// A reversal attempt of the payment.
    Reversal(Reversing),
}

/// A reversal attempt as the run knows it.
struct Reversing {
    kind: ReversalKind,
    /// Its SaleTransactionID.
    key: String,
    original: PoiTransaction,
    amount_minor: i64,
    /// Once committed (or as stored).
    service_id: Option<ServiceId>,
    /// Why, for the payment's transition to VOIDED.
    why: String,
}

impl Engine {
    /// What after-sale runs on a nexo terminal are run with: the payment
    /// path's status queries and backoff.
    fn after_sale_settings(&self) -> machine::Settings {
        machine::Settings {
            status_attempts: self.settings.status_attempts,
            status_backoff: self.settings.status_backoff,
        }
    }

    /// The POI transaction a nexo payment's reversal names; `None` when the
    /// terminal gave it none.
    fn poi_transaction(&self, payment_id: &str) -> Result<Option<PoiTransaction>, EngineError> {
        let result = self.store.terminal_result(payment_id)?;
        Ok(result
            .filter(|r| !r.poi_transaction_id.is_empty())
            .map(|r| PoiTransaction { transaction_id: r.poi_transaction_id, timestamp: r.poi_time_stamp }))
    }

    /// Refunds (part of) a nexo payment under the refund's own key: a
    /// Reversal of the payment's POI transaction (whole when it pays back
    /// everything at once), or an unreferenced Refund when the terminal gave
    /// the payment no POI transaction id. A refund that may have reached the
    /// terminal before is asked about by its stored ServiceID, never sent
    /// again; one settled is answered from the store.
    pub(in crate::engine) async fn refund_on_nexo<D: NexoDevice>(
        &self,
        refund: RefundRecord,
        rec: &PaymentRecord,
        device: &D,
    ) -> Result<RefundRecord, EngineError> {
        let _hold = self.hold(&rec.terminal_id, &refund.id).await?;
        // Settled while this call waited for the lane: that stands.
        let refund = match self.store.refund(&refund.id)? {
            Some(r) if r.status != RefundStatus::Pending => return Ok(r),
            Some(r) => r,
            None => return Err(EngineError::NotFound(format!("no refund {}", refund.id))),
        };
        let original = self.poi_transaction(&rec.id)?;
        let others: i64 = self
            .store
            .refunds_of(&rec.id)?
            .iter()
            .filter(|r| r.status != RefundStatus::Failed && r.id != refund.id)
            .map(|r| r.amount_minor)
            .sum();
        let (amount, captured, others) = (minor(refund.amount_minor), minor(rec.captured_minor), minor(others));
        let operation = match machine::refund(original.as_ref(), amount, captured, others) {
            Ok(operation) => operation,
            Err(e) => {
                // Nothing left posd: the amount is free again.
                let why = e.to_string();
                let event =
                    self.refund_event(rec, EventKind::RefundFailed, format!("refund {} refused: {why}", refund.id));
                let refused = Some(("refund_refused", why.as_str()));
                let settled = self.store.finish_refund(&refund.id, refused, &event, false, None, self.now_ms()).await;
                if let (_, Some(ev)) = settled.inspect_err(|e| self.note_store_error(e))? {
                    let _ = self.events.send(ev);
                }
                return Err(after_sale_error(e));
            }
        };
        let (key, settings) = (refund.refund_key.clone(), self.after_sale_settings());
        let run = match self.store.nexo_refund_service(&refund.id)? {
            Some((_, service_id)) => AfterSale::settling(operation, key, settings, service_id.to_string()),
            None => AfterSale::new(operation, key, settings),
        };
        let refund_id = refund.id.clone();
        let outcome = self.run_after_sale(device, rec, run, &mut Subject::Refund(refund)).await;
        match outcome {
            AfterSaleOutcome::Booked(_) | AfterSaleOutcome::NotBooked { .. } => {
                self.store.refund(&refund_id)?.ok_or_else(|| EngineError::NotFound(format!("no refund {refund_id}")))
            }
            AfterSaleOutcome::InDoubt { message } => Err(self.nexo_refund_in_doubt(&refund_id, rec, &message).await),
            AfterSaleOutcome::Unrecorded { error, sent } => {
                Err(unrecorded(&format!("refund {refund_id}"), &error, sent))
            }
        }
    }

    /// A refund the terminal could not tell about: it stays pending (its
    /// amount reserved, its ServiceID kept), alerted once; the register's
    /// same-key call and the reversal worker ask the terminal again.
    async fn nexo_refund_in_doubt(&self, refund_id: &str, rec: &PaymentRecord, why: &str) -> EngineError {
        let message = format!(
            "refund {refund_id} on the payment terminal may or may not be booked: {why}; it stays pending and is \
             never sent again: call again with the same idempotency key to ask the terminal"
        );
        match self.store.has_event(EventKind::TerminalRefundUnknown, &rec.id, &format!("refund {refund_id} ")) {
            Ok(true) => {}
            _ => self.emit(EventKind::TerminalRefundUnknown, &rec.terminal_id, &rec.id, message.clone()).await,
        }
        EngineError::Unavailable("OUTCOME_UNKNOWN", message)
    }

    /// Voids (reverses in full) a captured nexo payment. A void that may
    /// have reached the terminal is asked about by its ServiceID; a payment
    /// voided already is answered from the store.
    pub(in crate::engine) async fn void_on_nexo<D: NexoDevice>(
        &self,
        id: &str,
        why: String,
        device: &D,
    ) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        let _hold = self.hold(&rec.terminal_id, id).await?;
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        match rec.status {
            Status::Voided => return Ok(rec),
            Status::Captured => {}
            s => {
                return Err(EngineError::FailedPrecondition(
                    "WRONG_STATE",
                    format!("payment {id} is {s}; only a captured payment is reversed on the payment terminal"),
                ));
            }
        }
        let settings = self.after_sale_settings();
        let pending = self.store.reversals_of(id)?.into_iter().rev().find(|r| r.status == ReversalStatus::Pending);
        let (run, mut subject) = match pending {
            Some(p) => self.settling_reversal(p, why, settings),
            None => {
                let refunded: i64 = self
                    .store
                    .refunds_of(id)?
                    .iter()
                    .filter(|r| r.status != RefundStatus::Failed)
                    .map(|r| r.amount_minor)
                    .sum();
                let original = self.poi_transaction(id)?;
                let operation = machine::void(original.as_ref(), minor(refunded)).map_err(after_sale_error)?;
                let Operation::Reversal { original, .. } = &operation else {
                    unreachable!("a void is a reversal");
                };
                let subject = Reversing {
                    kind: ReversalKind::Void,
                    key: self.env.ids.gateway_key(),
                    original: original.clone(),
                    amount_minor: rec.captured_minor,
                    service_id: None,
                    why,
                };
                (AfterSale::new(operation, subject.key.clone(), settings), Subject::Reversal(subject))
            }
        };
        match self.run_after_sale(device, &rec, run, &mut subject).await {
            AfterSaleOutcome::Booked(_) => {
                self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))
            }
            AfterSaleOutcome::NotBooked { code, message } if code == "terminal_unavailable" => {
                Err(EngineError::Unavailable("TERMINAL_UNAVAILABLE", message))
            }
            AfterSaleOutcome::NotBooked { message, .. } => Err(EngineError::FailedPrecondition(
                "TERMINAL_REFUSED",
                format!("the payment terminal did not reverse payment {id}: {message}; refund it instead"),
            )),
            AfterSaleOutcome::InDoubt { message } => Err(EngineError::Unavailable(
                "OUTCOME_UNKNOWN",
                format!(
                    "the void of payment {id} may or may not be booked ({message}); it is never sent again: void it \
                     again to ask the payment terminal"
                ),
            )),
            AfterSaleOutcome::Unrecorded { error, sent } => {
                Err(unrecorded(&format!("the void of payment {id}"), &error, sent))
            }
        }
    }

    /// A stored reversal attempt that may be at the terminal: asked about.
    fn settling_reversal(&self, r: NexoReversal, why: String, settings: machine::Settings) -> (AfterSale, Subject) {
        let original = PoiTransaction { transaction_id: r.poi_transaction_id, timestamp: r.poi_time_stamp };
        let operation = Operation::Reversal { original: original.clone(), reversed_minor: None };
        let run = AfterSale::settling(operation, r.sale_transaction_id.clone(), settings, r.service_id.to_string());
        let subject = Reversing {
            kind: r.kind,
            key: r.sale_transaction_id,
            original,
            amount_minor: r.amount_minor,
            service_id: Some(r.service_id),
            why,
        };
        (run, Subject::Reversal(subject))
    }

    /// Runs at once the reversal posd owes that the payment driver committed
    /// with the terminal's answer (`Data::NexoResult`, a pending attempt of
    /// kind owed), under its ServiceID and key, never sent before
    /// (`AfterSale::committed`), in the payment's hold of the lane. Booked:
    /// the attempt booked, and a CAPTURED payment VOIDED in the same commit;
    /// otherwise the attempt is left to the reversal worker's nexo pass.
    pub(super) async fn run_owed_reversal<D: NexoDevice>(
        &self,
        device: &D,
        rec: &PaymentRecord,
        owed: NexoReversal,
        why: String,
        settings: machine::Settings,
    ) -> AfterSaleOutcome {
        let original = PoiTransaction { transaction_id: owed.poi_transaction_id, timestamp: owed.poi_time_stamp };
        let operation = Operation::Reversal { original: original.clone(), reversed_minor: None };
        let run =
            AfterSale::committed(operation, owed.sale_transaction_id.clone(), settings, owed.service_id.to_string());
        let subject = Reversing {
            kind: owed.kind,
            key: owed.sale_transaction_id,
            original,
            amount_minor: owed.amount_minor,
            service_id: Some(owed.service_id),
            why,
        };
        self.run_after_sale(device, rec, run, &mut Subject::Reversal(subject)).await
    }

    /// Settles what is open on a nexo lane (the reversal worker's pass):
    /// reversal attempts and refunds that may be at the terminal are asked
    /// about by their ServiceIDs; a reversal posd owes whose last attempt
    /// was not booked is made again under a new ServiceID. Returns false
    /// when something is left for a later pass.
    pub(in crate::engine) async fn settle_nexo_lane<D: NexoDevice>(&self, lane: &str, device: &D) -> bool {
        let mut done = true;
        let open = match self.store.open_reversals(device.sale_id()) {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(%lane, error = %e, "cannot read the nexo reversals to run; will retry");
                return false;
            }
        };
        for reversal in open {
            match self.run_open_reversal(lane, reversal, device).await {
                Ok(true) => {}
                Ok(false) => done = false,
                Err(e) => {
                    tracing::warn!(%lane, error = %e, "a nexo reversal is still open; will retry");
                    done = false;
                }
            }
        }
        let refunds = match self.store.pending_nexo_refunds(device.sale_id()) {
            Ok(refunds) => refunds,
            Err(e) => {
                tracing::error!(%lane, error = %e, "cannot read the nexo refunds in doubt; will retry");
                return false;
            }
        };
        for id in refunds {
            match self.settle_nexo_refund(&id, device).await {
                Ok(r) => tracing::info!(refund = %r.id, status = %r.status, "a nexo refund in doubt is settled"),
                Err(e) => {
                    tracing::debug!(refund = %id, error = %e, "a nexo refund in doubt is still unsettled");
                    done = false;
                }
            }
        }
        done
    }

    /// Asks the terminal about a refund that may be booked there.
    async fn settle_nexo_refund<D: NexoDevice>(&self, id: &str, device: &D) -> Result<RefundRecord, EngineError> {
        let refund = self.store.refund(id)?.ok_or_else(|| EngineError::NotFound(format!("no refund {id}")))?;
        let rec = self.store.get(&refund.payment_id)?;
        let rec = rec.ok_or_else(|| EngineError::NotFound(format!("no payment {}", refund.payment_id)))?;
        self.refund_on_nexo(refund, &rec, device).await
    }

    /// A refund of a nexo payment found pending at start-up: one that never
    /// went to the terminal (no ServiceID committed, so no request left posd)
    /// failed as interrupted, its amount free again; one that may have is
    /// left to the reversal worker's nexo pass, which asks the terminal.
    pub(in crate::engine) async fn recover_nexo_refund(&self, refund: &RefundRecord, rec: &PaymentRecord) {
        match self.store.nexo_refund_service(&refund.id) {
            Ok(None) => {}
            Ok(Some(_)) => {
                self.reversals.notify_one();
                return;
            }
            Err(e) => {
                tracing::error!(refund = %refund.id, error = %e, "cannot read a nexo refund's ServiceID");
                return;
            }
        }
        let why = "posd stopped before the refund reached the payment terminal; nothing was refunded";
        let message = format!("refund {} of {} failed: {why}", refund.id, refund.amount_minor);
        let event = self.refund_event(rec, EventKind::RefundFailed, message);
        let failure = Some(("interrupted", why));
        match self.store.finish_refund(&refund.id, failure, &event, false, None, self.now_ms()).await {
            Ok((_, Some(ev))) => drop(self.events.send(ev)),
            Ok((_, None)) => {}
            Err(e) => self.note_store_error(&e),
        }
    }

    /// Runs one open reversal: true once it is closed (booked, or a void
    /// settled either way).
    async fn run_open_reversal<D: NexoDevice>(
        &self,
        lane: &str,
        reversal: NexoReversal,
        device: &D,
    ) -> Result<bool, EngineError> {
        let id = reversal.payment_id.clone();
        let _hold = self.hold(lane, &id).await?;
        // Settled by another run while this one waited for the lane.
        let Some(now) = self.store.reversal(&reversal.sale_id, &reversal.service_id)? else {
            return Ok(true);
        };
        let open = self.store.open_reversals(device.sale_id())?;
        if !open.iter().any(|r| r.sale_id == now.sale_id && r.service_id == now.service_id) {
            return Ok(true);
        }
        let rec = self.store.get(&id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        let why = match now.kind {
            ReversalKind::Void => "requested by the register".to_string(),
            ReversalKind::Owed => "the payment terminal booked what posd does not accept".to_string(),
        };
        let settings = self.after_sale_settings();
        let kind = now.kind;
        if now.status == ReversalStatus::Pending {
            let (run, mut subject) = self.settling_reversal(now.clone(), why.clone(), settings.clone());
            match self.run_after_sale(device, &rec, run, &mut subject).await {
                AfterSaleOutcome::Booked(_) => return Ok(true),
                // A void the terminal did not book is the register's to ask for again.
                AfterSaleOutcome::NotBooked { .. } if kind == ReversalKind::Void => return Ok(true),
                AfterSaleOutcome::NotBooked { .. } => {}
                AfterSaleOutcome::InDoubt { message } => {
                    tracing::warn!(payment = %id, %message, "a nexo reversal is still in doubt; will ask again");
                    return Ok(false);
                }
                AfterSaleOutcome::Unrecorded { error, .. } => {
                    tracing::error!(payment = %id, %error, "a nexo reversal could not be recorded");
                    return Ok(false);
                }
            }
        }
        if kind != ReversalKind::Owed {
            return Ok(true);
        }
        // Owed and not booked: made again, under a new ServiceID and key.
        let original = PoiTransaction { transaction_id: now.poi_transaction_id, timestamp: now.poi_time_stamp };
        let operation = Operation::Reversal { original: original.clone(), reversed_minor: None };
        let key = self.env.ids.gateway_key();
        let run = AfterSale::new(operation, key.clone(), settings);
        let mut subject =
            Subject::Reversal(Reversing { kind, key, original, amount_minor: now.amount_minor, service_id: None, why });
        match self.run_after_sale(device, &rec, run, &mut subject).await {
            AfterSaleOutcome::Booked(_) => Ok(true),
            outcome => {
                tracing::warn!(payment = %id, ?outcome, "a reversal posd owes is not booked yet; will retry");
                Ok(false)
            }
        }
    }

    /// Drives one [`AfterSale`]: its commands performed in order, a command
    /// with an answer awaited and its answer fed at once, its backoff waited
    /// out on tokio's clock.
    async fn run_after_sale<D: NexoDevice>(
        &self,
        device: &D,
        rec: &PaymentRecord,
        mut run: AfterSale,
        subject: &mut Subject,
    ) -> AfterSaleOutcome {
        let start = tokio::time::Instant::now();
        let now = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut todo: VecDeque<AfterSaleCommand> = run.start(now()).into();
        loop {
            while let Some(command) = todo.pop_front() {
                let event = match command {
                    AfterSaleCommand::Done(outcome) => return outcome,
                    AfterSaleCommand::NextServiceId => Some(match self.store.next_service_id(device.sale_id()) {
                        Ok(id) => AfterSaleEvent::ServiceId(id.to_string()),
                        Err(e) => {
                            self.note_store_error(&e);
                            AfterSaleEvent::StoreFailed { error: e.to_string() }
                        }
                    }),
                    AfterSaleCommand::Persist { record, .. } => {
                        Some(match self.persist_after_sale(device.sale_id(), rec, subject, record).await {
                            Ok(()) => AfterSaleEvent::Committed,
                            Err(e) => {
                                self.note_store_error(&e);
                                AfterSaleEvent::StoreFailed { error: e.to_string() }
                            }
                        })
                    }
                    AfterSaleCommand::Send { service_id, sale_transaction_id, operation } => {
                        Some(self.send_operation(device, &service_id, &sale_transaction_id, &operation, rec).await)
                    }
                    AfterSaleCommand::AskStatus { service_id, category } => Some(AfterSaleEvent::Status(
                        self.ask_status(device, &service_id, category, &rec.currency).await,
                    )),
                    AfterSaleCommand::LaneUnavailable { message } => {
                        self.lane_unavailable(&rec.terminal_id, &message);
                        None
                    }
                    AfterSaleCommand::Log(Log::InDoubt { message }) => {
                        tracing::warn!(payment = %rec.id, %message, "nexo outcome in doubt; asking the terminal");
                        None
                    }
                    AfterSaleCommand::Log(Log::Reversing { why }) => {
                        tracing::warn!(payment = %rec.id, %why, "reversing what the nexo terminal booked");
                        None
                    }
                };
                if let Some(event) = event {
                    todo.extend(run.handle(event, now()));
                }
            }
            let Some(deadline) = run.poll_timeout() else {
                // The machine waits for nothing and is not done: it cannot go on.
                let error = "the after-sale run stopped without an outcome".to_string();
                return AfterSaleOutcome::Unrecorded { error, sent: true };
            };
            tokio::time::sleep_until(start + Duration::from_millis(deadline)).await;
            todo.extend(run.handle_timeout(now()));
        }
    }

    /// Commits what the run records, for its subject.
    async fn persist_after_sale(
        &self,
        sale_id: &str,
        rec: &PaymentRecord,
        subject: &mut Subject,
        record: Record,
    ) -> Result<(), StoreError> {
        let at = self.now_ms();
        match (subject, record) {
            (Subject::Refund(refund), Record::Started { service_id }) => {
                let service_id = parse_service_id(&service_id)?;
                self.store.start_nexo_refund(&refund.id, sale_id, &service_id).await
            }
            (Subject::Refund(refund), Record::Booked(answer)) => {
                if let Some(booked) =
                    answer.authorized_minor.filter(|a| i64::try_from(*a).ok() != Some(refund.amount_minor))
                {
                    tracing::warn!(refund = %refund.id, asked = refund.amount_minor, booked, "the nexo terminal booked another amount for a refund");
                }
                let message = format!(
                    "refunded {} on the payment terminal",
                    pos_engine::money::format(refund.amount_minor, &refund.currency)
                );
                let event = self.refund_event(rec, EventKind::RefundSucceeded, message);
                let (_, ev) = self.store.finish_refund(&refund.id, None, &event, true, None, at).await?;
                if let Some(ev) = ev {
                    let _ = self.events.send(ev);
                }
                self.record_wake.notify_one();
                Ok(())
            }
            (Subject::Refund(refund), Record::NotBooked { code, message }) => {
                let text = format!("refund {} of {} failed: {code}: {message}", refund.id, refund.amount_minor);
                let event = self.refund_event(rec, EventKind::RefundFailed, text);
                let failure = Some((code.as_str(), message.as_str()));
                let (_, ev) = self.store.finish_refund(&refund.id, failure, &event, false, None, at).await?;
                if let Some(ev) = ev {
                    let _ = self.events.send(ev);
                }
                Ok(())
            }
            (Subject::Reversal(r), Record::Started { service_id }) => {
                let service_id = parse_service_id(&service_id)?;
                let attempt = NexoReversal {
                    sale_id: sale_id.to_string(),
                    service_id: service_id.clone(),
                    payment_id: rec.id.clone(),
                    kind: r.kind,
                    sale_transaction_id: r.key.clone(),
                    poi_transaction_id: r.original.transaction_id.clone(),
                    poi_time_stamp: r.original.timestamp.clone(),
                    amount_minor: r.amount_minor,
                    status: ReversalStatus::Pending,
                    message: String::new(),
                    created_at_ms: at,
                    updated_at_ms: at,
                };
                self.store.start_reversal(&attempt).await?;
                r.service_id = Some(service_id);
                Ok(())
            }
            (Subject::Reversal(r), Record::Booked(_)) => {
                let service_id = r.service_id.clone().ok_or_else(|| no_service_id(&rec.id))?;
                // The payment is VOIDED with it, in the same commit, if it is CAPTURED.
                let stored = self.store.get(&rec.id)?.map_or(rec.status, |p| p.status);
                let payment = if stored == Status::Captured {
                    let transition = next(stored, &Input::TerminalReversed { reason: r.why.clone() })
                        .map_err(|e| StoreError::Unusable(e.to_string()))?;
                    Some((transition, Update { data: Data::Reversed, ..Update::default() }))
                } else {
                    None
                };
                let transition = payment.as_ref().map(|(t, _)| t.clone());
                let message = "reversed at the payment terminal".to_string();
                let settled = Settled { booked: true, message, event: None, payment };
                let done = self.store.settle_reversal(sale_id, &service_id, settled, at).await?;
                if let (Some(t), Some((new, event))) = (transition, done.applied) {
                    self.publish_commit(&t, &new, event);
                    self.record_wake.notify_one();
                }
                Ok(())
            }
            (Subject::Reversal(r), Record::NotBooked { code, message }) => {
                let service_id = r.service_id.clone().ok_or_else(|| no_service_id(&rec.id))?;
                tracing::warn!(payment = %rec.id, %code, %message, "the nexo terminal did not book a reversal");
                let settled =
                    Settled { booked: false, message: format!("{code}: {message}"), event: None, payment: None };
                self.store.settle_reversal(sale_id, &service_id, settled, at).await.map(drop)
            }
        }
    }

    fn refund_event(&self, rec: &PaymentRecord, kind: EventKind, message: String) -> NewEvent {
        NewEvent { kind, terminal_id: rec.terminal_id.clone(), payment_id: rec.id.clone(), message }
    }

    /// POSTs a void or refund and maps what came back.
    async fn send_operation<D: NexoDevice>(
        &self,
        device: &D,
        service_id: &str,
        key: &str,
        operation: &Operation,
        rec: &PaymentRecord,
    ) -> AfterSaleEvent {
        let not_sent = |message: String| AfterSaleEvent::NotSent { message, identity: false };
        let Ok(service_id) = ServiceId::parse(service_id) else {
            return not_sent(format!("the ServiceID {service_id:?} is not valid"));
        };
        let currency = rec.currency.as_str();
        let sale_data = SaleData {
            sale_transaction_id: TransactionIdentification {
                transaction_id: key.to_string(),
                time_stamp: self.iso_now(),
            },
            ..SaleData::default()
        };
        let body: RequestBody = match operation {
            Operation::Reversal { original, reversed_minor } => {
                let reversed_amount = match reversed_minor.map(|m| decimal(m, currency)).transpose() {
                    Ok(amount) => amount,
                    Err(e) => return not_sent(e),
                };
                let request = ReversalRequest {
                    original_poi_transaction: OriginalPoiTransaction {
                        sale_id: None,
                        poi_id: None,
                        poi_transaction_id: TransactionIdentification {
                            transaction_id: original.transaction_id.clone(),
                            time_stamp: original.timestamp.clone(),
                        },
                    },
                    reversal_reason: ReversalReason::MerchantCancel,
                    reversed_amount,
                    sale_data: Some(sale_data),
                };
                request.into()
            }
            Operation::Refund { amount_minor } => {
                let amounts_req = match i64::try_from(*amount_minor)
                    .map_err(|e| e.to_string())
                    .and_then(|a| AmountsReq::new(currency, a).map_err(|e| e.to_string()))
                {
                    Ok(amounts) => amounts,
                    Err(e) => return not_sent(format!("the amount cannot be written: {e}")),
                };
                let request = PaymentRequest {
                    sale_data,
                    payment_transaction: PaymentTransaction { amounts_req },
                    payment_data: Some(PaymentData { payment_type: Some(pos_nexo::codes::PaymentType::Refund) }),
                };
                request.into()
            }
        };
        let answer = match device.exchange(&service_id, body).await {
            Ok(response) => response.body,
            Err(NexoError::Identity(message)) => return AfterSaleEvent::NotSent { message, identity: true },
            Err(NexoError::NotSent(message) | NexoError::Refused(message)) => return not_sent(message),
            Err(NexoError::InDoubt(message)) => return AfterSaleEvent::InDoubt { message },
        };
        match (operation, &answer) {
            (Operation::Reversal { .. }, ResponseBody::Reversal(r)) => {
                AfterSaleEvent::Answered(reversal_answer(r, currency))
            }
            (Operation::Refund { .. }, ResponseBody::Payment(p)) => {
                AfterSaleEvent::Answered(payment_answer(p, currency))
            }
            _ => AfterSaleEvent::InDoubt {
                message: format!("the terminal's answer cannot be used: it answered with {}", body_name(&answer)),
            },
        }
    }

    /// Asks the terminal by TransactionStatus about the request of
    /// `category` under `service_id` (the question under a ServiceID of its
    /// own, reserved in a commit first).
    async fn ask_status<D: NexoDevice>(
        &self,
        device: &D,
        service_id: &str,
        category: Category,
        currency: &str,
    ) -> StatusAnswer {
        let own = match self.store.reserve_service_id(device.sale_id()).await {
            Ok(id) => id,
            Err(e) => {
                self.note_store_error(&e);
                return StatusAnswer::Unanswered { message: format!("posd could not reserve a ServiceID: {e}") };
            }
        };
        let (category, read_as_reversal) = match category {
            Category::Payment => (MessageCategory::Payment, false),
            Category::Reversal => (MessageCategory::Reversal, true),
        };
        let answer = device.exchange(&own, status_request(service_id, device.sale_id(), category)).await;
        if read_as_reversal { reversal_status(answer, currency) } else { payment_status(answer, currency).0 }
    }

    /// Now on the wall clock, as nexo writes time stamps (ISO 8601, UTC).
    fn iso_now(&self) -> String {
        jiff::Timestamp::from_millisecond(self.now_ms()).map(|t| t.to_string()).unwrap_or_default()
    }

    /// End of day on a nexo terminal (ReconciliationRequest,
    /// SaleReconciliation): it closes its period and answers its totals per
    /// brand, which posd reports per currency and prints per brand on the
    /// lane's printer.
    pub(in crate::engine) async fn end_of_day_on_nexo<D: NexoDevice>(
        &self,
        terminal: &str,
        caller: &str,
        device: &D,
    ) -> Result<pb::BatchSummary, EngineError> {
        let _hold = self.hold(terminal, "end-of-day").await?;
        let currency = self.lanes.get(terminal).map(|l| l.currency.clone()).unwrap_or_default();
        let service_id =
            self.store.reserve_service_id(device.sale_id()).await.inspect_err(|e| self.note_store_error(e))?;
        let request = ReconciliationRequest {
            reconciliation_type: ReconciliationType::SaleReconciliation,
            poi_reconciliation_id: None,
        };
        let response = device.exchange(&service_id, request.into()).await.map_err(|e| match e {
            NexoError::InDoubt(m) => EngineError::Unavailable(
                "OUTCOME_UNKNOWN",
                format!("the payment terminal's end of day was not answered ({m}); ask for it again"),
            ),
            e => EngineError::Unavailable(
                "TERMINAL_UNAVAILABLE",
                format!("end of day on the payment terminal failed: {e}"),
            ),
        })?;
        let ResponseBody::Reconciliation(reconciliation) = &response.body else {
            return Err(EngineError::Unavailable(
                "TERMINAL_UNAVAILABLE",
                format!("the payment terminal answered the end of day with {}", body_name(&response.body)),
            ));
        };
        if reconciliation.response.result != ResultType::Success {
            return Err(EngineError::FailedPrecondition(
                "TERMINAL_REFUSED",
                format!("the payment terminal did not close its period: {}", said(&reconciliation.response)),
            ));
        }
        let (totals, lines) = reconciliation_totals(reconciliation, &currency).map_err(|e| {
            EngineError::Unavailable(
                "TERMINAL_UNAVAILABLE",
                format!("the payment terminal's totals cannot be read: {e}"),
            )
        })?;
        let now = self.now_ms();
        let batch_id = match &reconciliation.poi_reconciliation_id {
            Some(id) if !id.is_empty() => format!("nexo_{}", pos_mask::scrub(id)),
            _ => self.env.ids.make("nexo_"),
        };
        let text: Vec<String> = totals
            .iter()
            .map(|t| pos_engine::money::format(t.captured_minor - t.refunded_minor, &t.currency))
            .collect();
        let shown = if text.is_empty() { "nothing to settle".to_string() } else { text.join(", ") };
        self.emit(
            EventKind::BatchClosed,
            terminal,
            "",
            format!("end of day on the payment terminal by {caller}: {shown}"),
        )
        .await;
        let summary = pb::BatchSummary {
            batch_id,
            terminal_id: terminal.to_string(),
            closed_at: Some(crate::convert::timestamp(now)),
            totals,
            offline_unsent: 0,
        };
        self.print_slip(&summary, &lines).await;
        Ok(summary)
    }
}

/// Totals per currency for the register, and a line per brand and
/// transaction type for the slip: sales (Debit) less their reversals
/// (ReverseDebit) are captured, refunds (Credit) less theirs refunded.
fn reconciliation_totals(
    r: &ReconciliationResponse,
    lane_currency: &str,
) -> Result<(Vec<pb::BatchCurrencyTotal>, Vec<String>), String> {
    let mut totals: Vec<pb::BatchCurrencyTotal> = Vec::new();
    let mut lines = Vec::new();
    for group in &r.transaction_totals {
        let currency = group.payment_currency.clone().unwrap_or_else(|| lane_currency.to_string());
        let brand = pos_mask::scrub(group.card_brand.as_deref().unwrap_or("card"));
        let index = match totals.iter().position(|t| t.currency == currency) {
            Some(i) => i,
            None => {
                totals.push(pb::BatchCurrencyTotal { currency: currency.clone(), ..Default::default() });
                totals.len() - 1
            }
        };
        let total = &mut totals[index];
        for p in &group.payment_totals {
            let amount = p.transaction_amount.to_minor(&currency).map_err(|e| e.to_string())?;
            let count = u32::try_from(p.transaction_count).unwrap_or(u32::MAX);
            match p.transaction_type {
                TransactionType::Debit => {
                    total.captured_minor += amount;
                    total.count = total.count.saturating_add(count);
                }
                TransactionType::ReverseDebit => {
                    total.captured_minor -= amount;
                    total.count = total.count.saturating_sub(count);
                }
                TransactionType::Credit => total.refunded_minor += amount,
                TransactionType::ReverseCredit => total.refunded_minor -= amount,
                TransactionType::Declined | TransactionType::Failed | TransactionType::Other(_) => {}
            }
            lines.push(format!(
                "{brand} {} {count}x {}",
                p.transaction_type,
                pos_engine::money::format(amount, &currency)
            ));
        }
    }
    Ok((totals, lines))
}

/// A non-negative amount in minor units as the machine counts it.
fn minor(amount: i64) -> u64 {
    u64::try_from(amount).unwrap_or_default()
}

fn decimal(minor_units: u64, currency: &str) -> Result<Decimal, String> {
    let units = i64::try_from(minor_units).map_err(|e| e.to_string())?;
    Decimal::from_minor(units, currency).map_err(|e| format!("the amount cannot be written: {e}"))
}

fn parse_service_id(text: &str) -> Result<ServiceId, StoreError> {
    ServiceId::parse(text).map_err(|_| StoreError::Corrupt(text.to_string()))
}

fn no_service_id(payment_id: &str) -> StoreError {
    StoreError::Unusable(format!("a reversal of payment {payment_id} has no ServiceID recorded"))
}

/// A `Response` as the register is shown it: its condition and the
/// terminal's text (`engine/nexo.rs`'s reading of it).
fn said(response: &Response) -> String {
    let condition = response.error_condition.as_ref().map_or("no ErrorCondition", |c| c.as_str());
    let text = super::message(response);
    if text.is_empty() { condition.to_string() } else { format!("{condition}: {text}") }
}

fn body_name(body: &ResponseBody) -> String {
    match body {
        ResponseBody::Payment(_) => "a PaymentResponse".into(),
        ResponseBody::TransactionStatus(_) => "a TransactionStatusResponse".into(),
        ResponseBody::Reversal(_) => "a ReversalResponse".into(),
        ResponseBody::Diagnosis(_) => "a DiagnosisResponse".into(),
        ResponseBody::Reconciliation(_) => "a ReconciliationResponse".into(),
        ResponseBody::Other(name) => format!("{:?}", pos_mask::scrub(name)),
    }
}

/// The register's error for a void's or refund's decision.
fn after_sale_error(e: AfterSaleError) -> EngineError {
    match e {
        AfterSaleError::NoPoiTransaction => EngineError::FailedPrecondition("NO_TERMINAL_RECEIPT", e.to_string()),
        AfterSaleError::AlreadyRefunded { .. } => EngineError::FailedPrecondition("WRONG_STATE", e.to_string()),
        AfterSaleError::ExceedsCapture { .. } => {
            EngineError::FailedPrecondition("REFUND_EXCEEDS_CAPTURE", e.to_string())
        }
        AfterSaleError::NothingToRefund => {
            EngineError::InvalidArgument { field: "amount_minor", message: e.to_string() }
        }
    }
}

/// The register's error when a commit or read of an after-sale run failed.
fn unrecorded(what: &str, error: &str, sent: bool) -> EngineError {
    if sent {
        EngineError::Unavailable(
            "OUTCOME_UNKNOWN",
            format!(
                "posd could not record {what} ({error}); it may be at the payment terminal and is settled by its \
                 ServiceID, never sent again: ask again once posd's database works"
            ),
        )
    } else {
        EngineError::Unavailable(
            "DATABASE_UNAVAILABLE",
            format!("posd could not record {what} ({error}); nothing was sent to the payment terminal"),
        )
    }
}

#[cfg(test)]
mod tests;
