//! After the sale: captures and voids of authorized payments, refunds
//! (and settling a refund in doubt by hand), and closing the day's batch.

use pos_proto::terminal as pb;
use tonic::{Request, Response, Status};

use super::TerminalApi;
use super::errors::invalid;
use super::identity::caller;
use super::request::RequestText;
use crate::convert;

impl TerminalApi {
    pub(super) async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(|engine| async move {
            engine.capture_payment(&r.payment_id, r.amount_minor, &who.description).await
        })
        .await
    }

    pub(super) async fn void_payment(
        &self,
        request: Request<pb::VoidPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(
            |engine| async move { engine.void_payment(&r.payment_id, &r.reason, &who.description).await },
        )
        .await
    }

    pub(super) async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let who = caller(&request);
        self.may_refund(&who)?;
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let refund = self
            .to_the_end(|engine| async move {
                engine
                    .refund_payment(&r.idempotency_key, &r.payment_id, r.amount_minor, &r.reason, &who.description)
                    .await
            })
            .await?;
        Ok(Response::new(convert::refund(&refund)))
    }

    pub(super) async fn resolve_refund(
        &self,
        request: Request<pb::ResolveRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let who = caller(&request);
        self.may_refund(&who)?;
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let (booked, receipt) = match (pb::JournalFinding::try_from(r.finding), r.receipt_no) {
            (Ok(pb::JournalFinding::Booked), 0) => (true, None),
            (Ok(pb::JournalFinding::Booked), n @ 1..=9999) => (true, Some(n as u16)),
            (Ok(pb::JournalFinding::Booked), _) => {
                return Err(invalid("receipt_no", "a terminal's receipt number is 1 to 9999"));
            }
            (Ok(pb::JournalFinding::NotBooked), 0) => (false, None),
            (Ok(pb::JournalFinding::NotBooked), _) => {
                return Err(invalid("receipt_no", "only a booked refund has a receipt number"));
            }
            _ => return Err(invalid("finding", "must be BOOKED or NOT_BOOKED, as the journal or records show")),
        };
        let refund = self
            .to_the_end(|engine| async move {
                engine.resolve_refund(&r.refund_id, receipt, booked, &r.note, &who.description).await
            })
            .await?;
        Ok(Response::new(convert::refund(&refund)))
    }

    pub(super) async fn close_batch(
        &self,
        request: Request<pb::CloseBatchRequest>,
    ) -> Result<Response<pb::BatchSummary>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        let summary =
            self.to_the_end(|engine| async move { engine.close_batch(&terminal, &who.description).await }).await?;
        Ok(Response::new(summary))
    }
}
