//! Payments: taking one (its stream of events), reading and listing them,
//! canceling one still collecting a card, and settling a payment in doubt by
//! what the terminal's journal shows.

use pos_proto::terminal as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::errors::invalid;
use super::identity::caller;
use super::request::{RequestText, quote, time_filter};
use super::{EventStream, TerminalApi, event_now, page_token};
use crate::convert;
use crate::engine::{EngineError, NewPayment};
use crate::store::ListFilter;

impl TerminalApi {
    pub(super) async fn take_payment(
        &self,
        request: Request<pb::TakePaymentRequest>,
    ) -> Result<Response<EventStream>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        let amount = r.amount.ok_or_else(|| invalid("amount", "required"))?;
        let manual_capture = match pb::CaptureMode::try_from(r.capture_mode) {
            Ok(pb::CaptureMode::Unspecified | pb::CaptureMode::Automatic) => false,
            Ok(pb::CaptureMode::Manual) => true,
            Err(_) => return Err(invalid("capture_mode", format!("unknown value {}", r.capture_mode))),
        };
        let new = NewPayment {
            idempotency_key: r.idempotency_key,
            order_reference: r.order_reference,
            amount_minor: amount.amount_minor,
            currency: amount.currency,
            terminal_id: r.terminal_id,
            manual_capture,
            caller: who.description,
        };
        let attached = self.to_the_end(|engine| async move { engine.take_payment(new).await }).await?;
        let first = event_now(&self.engine, &attached.payment)?;
        let (tx, rx) = mpsc::channel(16);
        let engine = self.engine.clone();
        let id = attached.payment.id.clone();
        let done = is_final_stage(first.stage);
        let status_of = |ev: &pb::PaymentEvent| ev.payment.as_ref().map(|p| p.status);
        let mut shown = status_of(&first);
        let _ = tx.send(Ok(first)).await;
        if let (false, Some(mut events)) = (done, attached.events) {
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(ev) => {
                            let last = is_final_stage(ev.stage);
                            shown = status_of(&ev);
                            if tx.send(Ok(ev)).await.is_err() || last {
                                return;
                            }
                        }
                        // Events skipped: the one that explains the end may be among them.
                        Err(broadcast::error::RecvError::Lagged(_)) => shown = None,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
                // The stream closed without a final event (a storage failure):
                // send the payment as stored, unless the last event (none
                // skipped) showed it so already; its message says why the
                // stream ends.
                if let Ok(Some(rec)) = engine.store().get(&id) {
                    let now = event_now(&engine, &rec);
                    if !now.as_ref().is_ok_and(|ev| status_of(ev) == shown) {
                        let _ = tx.send(now).await;
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    pub(super) async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let id = &request.get_ref().payment_id;
        let rec = self
            .engine
            .store()
            .get(id)
            .map_err(self.db())?
            .ok_or_else(|| Status::from(EngineError::NotFound(format!("no payment {}", quote(id)))))?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    pub(super) async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let limit = match r.page_size {
            0 => 50,
            n if n > 500 => return Err(invalid("page_size", "at most 500")),
            n => n as usize,
        };
        let mut statuses = Vec::new();
        for s in &r.statuses {
            let st = pb::PaymentStatus::try_from(*s)
                .ok()
                .and_then(convert::status_from_proto)
                .ok_or_else(|| invalid("statuses", format!("unknown status {s}")))?;
            statuses.push(st);
        }
        let after = if r.page_token.is_empty() {
            None
        } else {
            let position = page_token::read(&r.page_token).ok_or_else(|| {
                invalid(
                    "page_token",
                    format!(
                        "{} is not a token this posd issued (altered, or issued before posd restarted); \
                         start again from the first page",
                        quote(&r.page_token)
                    ),
                )
            })?;
            Some(position)
        };
        let filter = ListFilter {
            created_after_ms: time_filter("created_after", r.created_after.as_ref())?,
            created_before_ms: time_filter("created_before", r.created_before.as_ref())?,
            terminal_id: (!r.terminal_id.is_empty()).then_some(r.terminal_id),
            statuses,
            after,
            limit: limit + 1,
            oldest_first: false,
        };
        let mut rows = self.engine.store().list(&filter).map_err(self.db())?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|p| page_token::issue(p.created_at_ms, &p.id)).unwrap_or_default()
        } else {
            String::new()
        };
        // Without history (GetPayment has it), but with the refunds: a
        // listed payment shows what was paid back of it.
        let store = self.engine.store();
        let mut payments = Vec::with_capacity(rows.len());
        for p in &rows {
            let refunds = store.refunds_of(&p.id).map_err(self.db())?;
            payments.push(convert::with_refunds(convert::payment(p, &[]), &refunds));
        }
        Ok(Response::new(pb::ListPaymentsResponse { payments, next_page_token }))
    }

    pub(super) async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let rec = self.engine.cancel_payment(&request.get_ref().payment_id).await.map_err(self.failed())?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    pub(super) async fn resolve_payment(
        &self,
        request: Request<pb::ResolvePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        let receipt = match (pb::JournalFinding::try_from(r.finding), u16::try_from(r.receipt_no)) {
            (Ok(pb::JournalFinding::Booked), Ok(n @ 1..=9999)) => Some(n),
            (Ok(pb::JournalFinding::Booked), _) => {
                return Err(invalid(
                    "receipt_no",
                    "a booked payment needs the receipt number the terminal's journal shows (1 to 9999)",
                ));
            }
            (Ok(pb::JournalFinding::NotBooked), _) if r.receipt_no != 0 => {
                return Err(invalid("receipt_no", "only a booked payment has a receipt number"));
            }
            (Ok(pb::JournalFinding::NotBooked), _) => None,
            _ => return Err(invalid("finding", "must be BOOKED or NOT_BOOKED, as the terminal's journal shows")),
        };
        self.changed_payment(|engine| async move {
            engine.resolve_payment(&r.payment_id, receipt, &r.note, &who.description).await
        })
        .await
    }
}

fn is_final_stage(stage: i32) -> bool {
    use pb::PaymentStage as S;
    matches!(S::try_from(stage), Ok(S::Approved | S::Declined | S::Canceled | S::Failed))
}
