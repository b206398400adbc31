//! The register API (`pos.terminal.v1`), mapping engine errors to gRPC codes
//! in one place.
//!
//! This file holds the service and its one trait impl, each call handed to
//! the method of the same name in a submodule: `payments` (take, get, list,
//! cancel, resolve), `after_sale` (capture, void, refund, close the batch),
//! `reports` (the day's report, the offline queue, the event stream) and
//! `devices` (terminal status, receipts, the drawer). Beside them: `request`
//! (the checks every request's input passes), `errors` (errors as gRPC
//! statuses), `identity` (who called) and `page_token` (signed list
//! positions).

use std::pin::Pin;
use std::sync::Arc;

use pos_proto::terminal as pb;
use pos_proto::terminal::payment_terminal_server::PaymentTerminal;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

mod after_sale;
mod devices;
mod errors;
mod identity;
mod page_token;
mod payments;
mod reports;
mod request;

pub use errors::{ERROR_DOMAIN, invalid};
pub use identity::{Caller, authenticate, caller};
pub use request::{TEXT_MAX, parse_day, quote, text};

use crate::convert;
use crate::engine::{Engine, EngineError};
use crate::store::{DeviceKind, PaymentRecord, StoreError};
use errors::{db_status, engine_status, rich};

pub struct TerminalApi {
    engine: Arc<Engine>,
    reports: crate::report::ReportSettings,
    /// Callers allowed to refund ("uid=N", "ip=ADDR"); empty: every caller.
    refunds_allowed_from: Vec<String>,
}

impl TerminalApi {
    pub fn new(engine: Arc<Engine>, reports: crate::report::ReportSettings, refunds_allowed_from: Vec<String>) -> Self {
        Self { engine, reports, refunds_allowed_from }
    }

    fn payment_with_history(&self, rec: &PaymentRecord) -> Result<pb::Payment, Status> {
        stored_payment(&self.engine, rec)
    }

    /// [`db_status`] for this API's engine, for `map_err`.
    fn db(&self) -> impl Fn(StoreError) -> Status + '_ {
        move |e| db_status(&self.engine, e)
    }

    /// [`engine_status`] for this API's engine, for `map_err`.
    fn failed(&self) -> impl Fn(EngineError) -> Status + '_ {
        move |e| engine_status(&self.engine, e)
    }

    /// Refunds (and settling a refund by hand) are allowed from this caller.
    fn may_refund(&self, who: &Caller) -> Result<(), Status> {
        if !self.refunds_allowed_from.is_empty() && !self.refunds_allowed_from.contains(&who.key) {
            return Err(rich(
                tonic::Code::PermissionDenied,
                "REFUND_NOT_ALLOWED",
                format!("refunds are not allowed from {} ({}); see refunds_allowed_from", who.key, who.description),
                None,
            ));
        }
        Ok(())
    }

    /// [`Self::to_the_end`] for a call that changes one payment; answers the
    /// payment as stored, with its history.
    async fn changed_payment<F>(&self, call: impl FnOnce(Arc<Engine>) -> F) -> Result<Response<pb::Payment>, Status>
    where
        F: Future<Output = Result<PaymentRecord, EngineError>> + Send + 'static,
    {
        let rec = self.to_the_end(call).await?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    /// Runs a request that changes a payment or the day's batch in a task of
    /// its own. tonic drops a request's future when the register hangs up;
    /// the task goes on to the end, so what reached the database, the
    /// gateway or the terminal is always followed up and stored.
    async fn to_the_end<T, F>(&self, call: impl FnOnce(Arc<Engine>) -> F) -> Result<T, Status>
    where
        F: Future<Output = Result<T, EngineError>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(call(Arc::clone(&self.engine))).await {
            Ok(answer) => answer.map_err(self.failed()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                Err(EngineError::Unavailable("SHUTTING_DOWN", "posd is stopping; call again once it is back".into())
                    .into())
            }
        }
    }
}

/// A payment as the API shows it: with its audit history and refunds.
fn stored_payment(engine: &Engine, rec: &PaymentRecord) -> Result<pb::Payment, Status> {
    let store = engine.store();
    let db = |e| db_status(engine, e);
    let history = store.history(&rec.id).map_err(db)?;
    let refunds = store.refunds_of(&rec.id).map_err(db)?;
    let mut p = convert::with_refunds(convert::payment(rec, &history), &refunds);
    match rec.device {
        DeviceKind::Reader => {}
        DeviceKind::Zvt => p.terminal = store.terminal_result(&rec.id).map_err(db)?.map(|t| convert::terminal(&t)),
        DeviceKind::Nexo => {
            p.terminal = store.terminal_result(&rec.id).map_err(db)?.map(|t| convert::terminal(&t));
            if let Some((sale_id, service_id)) = store.nexo_service(&rec.id).map_err(db)? {
                let terminal = p.terminal.get_or_insert_with(pb::TerminalAuthorization::default);
                terminal.sale_id = sale_id;
                terminal.service_id = service_id.to_string();
            }
        }
    }
    Ok(p)
}

/// The event that tells a register where a payment stands now.
fn event_now(engine: &Engine, rec: &PaymentRecord) -> Result<pb::PaymentEvent, Status> {
    let payment = stored_payment(engine, rec)?;
    Ok(convert::payment_event(rec, convert::stage(rec.status), convert::status_message(rec), payment))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

type TerminalEventStream = Pin<Box<dyn Stream<Item = Result<pb::TerminalEvent, Status>> + Send>>;

/// Each call goes to the inherent method of the same name (`TerminalApi::x`
/// names the inherent one, never this trait's) in the submodule for its kind.
#[tonic::async_trait]
impl PaymentTerminal for TerminalApi {
    type TakePaymentStream = EventStream;
    type StreamEventsStream = TerminalEventStream;

    async fn close_batch(&self, request: Request<pb::CloseBatchRequest>) -> Result<Response<pb::BatchSummary>, Status> {
        TerminalApi::close_batch(self, request).await
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        TerminalApi::get_report(self, request).await
    }

    async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::capture_payment(self, request).await
    }

    async fn void_payment(&self, request: Request<pb::VoidPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::void_payment(self, request).await
    }

    async fn requeue_payment(
        &self,
        request: Request<pb::RequeuePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::requeue_payment(self, request).await
    }

    async fn resolve_payment(
        &self,
        request: Request<pb::ResolvePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::resolve_payment(self, request).await
    }

    async fn resolve_refund(&self, request: Request<pb::ResolveRefundRequest>) -> Result<Response<pb::Refund>, Status> {
        TerminalApi::resolve_refund(self, request).await
    }

    async fn refund_payment(&self, request: Request<pb::RefundPaymentRequest>) -> Result<Response<pb::Refund>, Status> {
        TerminalApi::refund_payment(self, request).await
    }

    async fn get_sync_status(
        &self,
        request: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatus>, Status> {
        TerminalApi::get_sync_status(self, request).await
    }

    async fn sync_now(&self, request: Request<pb::SyncNowRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        TerminalApi::sync_now(self, request).await
    }

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        TerminalApi::stream_events(self, request).await
    }

    async fn take_payment(
        &self,
        request: Request<pb::TakePaymentRequest>,
    ) -> Result<Response<Self::TakePaymentStream>, Status> {
        TerminalApi::take_payment(self, request).await
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::get_payment(self, request).await
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        TerminalApi::list_payments(self, request).await
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        TerminalApi::cancel_payment(self, request).await
    }

    async fn print_receipt(
        &self,
        request: Request<pb::PrintReceiptRequest>,
    ) -> Result<Response<pb::PrintReceiptResponse>, Status> {
        TerminalApi::print_receipt(self, request).await
    }

    async fn open_drawer(
        &self,
        request: Request<pb::OpenDrawerRequest>,
    ) -> Result<Response<pb::OpenDrawerResponse>, Status> {
        TerminalApi::open_drawer(self, request).await
    }

    async fn get_terminal_status(
        &self,
        request: Request<pb::GetTerminalStatusRequest>,
    ) -> Result<Response<pb::TerminalStatus>, Status> {
        TerminalApi::get_terminal_status(self, request).await
    }
}
