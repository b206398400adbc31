//! The register API (`pos.terminal.v1`), mapping engine errors to gRPC codes
//! in one place.

use std::pin::Pin;
use std::sync::Arc;

use pos_proto::terminal as pb;
use pos_proto::terminal::payment_terminal_server::PaymentTerminal;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::engine::{Engine, EngineError, NewPayment};
use crate::store::{ListFilter, PaymentRecord, StoreError};

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
        stored_payment(self.engine.store(), rec)
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
            Ok(answer) => Ok(answer?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                Err(EngineError::Unavailable("SHUTTING_DOWN", "posd is stopping; call again once it is back".into())
                    .into())
            }
        }
    }
}

/// A payment as the API shows it: with its audit history and refunds.
fn stored_payment(store: &crate::store::Store, rec: &PaymentRecord) -> Result<pb::Payment, Status> {
    let history = store.history(&rec.id).map_err(store_status)?;
    let refunds = store.refunds_of(&rec.id).map_err(store_status)?;
    let mut p = convert::with_refunds(convert::payment(rec, &history), &refunds);
    if rec.on_terminal() {
        p.terminal = store.terminal_result(&rec.id).map_err(store_status)?.map(|t| convert::terminal(&t));
    }
    Ok(p)
}

/// The event that tells a register where a payment stands now.
fn event_now(store: &crate::store::Store, rec: &PaymentRecord) -> Result<pb::PaymentEvent, Status> {
    let payment = stored_payment(store, rec)?;
    Ok(convert::payment_event(rec, convert::stage(rec.status), convert::status_message(rec), payment))
}

/// The error domain in every `google.rpc.ErrorInfo` posd sends.
pub const ERROR_DOMAIN: &str = "posd.pos.terminal.v1";

/// A status with `google.rpc` details: an `ErrorInfo` with a stable reason
/// code, and for field errors a `BadRequest` naming the field.
fn rich(code: tonic::Code, reason: &str, message: String, field: Option<&str>) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    if let Some(f) = field {
        details.add_bad_request_violation(f, message.clone());
    }
    Status::with_error_details(code, message, details)
}

/// A bad request field, with its `BadRequest` detail.
pub fn invalid(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    rich(tonic::Code::InvalidArgument, "INVALID_FIELD", format!("{field}: {message}"), Some(field))
}

fn store_status(e: StoreError) -> Status {
    use rusqlite::ErrorCode;
    tracing::error!(error = %e, "storage error");
    let code = match &e {
        StoreError::Db(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DiskFull) => rich(
            tonic::Code::ResourceExhausted,
            "DATABASE_FULL",
            "the payment database is full; new payments are refused and queued payments are kept. \
             Free disk space: posd checks every few seconds and restarts by itself once it can write."
                .into(),
            None,
        ),
        // Another program holds the database past posd's busy timeout: not
        // a fault of the request, and it passes.
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => rich(
            tonic::Code::Unavailable,
            "DATABASE_UNAVAILABLE",
            "another program holds posd's payment database locked, past posd's wait for it; posd refuses \
             new payments until the lock is gone and then restarts by itself. Try again then (a repeat \
             under the same key is safe)."
                .into(),
            None,
        ),
        _ => rich(tonic::Code::Internal, "DATABASE_ERROR", format!("payment storage failed: {e}"), None),
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        use tonic::Code;
        match e {
            EngineError::InvalidArgument { field, message } => invalid(field, message),
            EngineError::AlreadyExists(m) => rich(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", m, None),
            EngineError::NotFound(m) => rich(Code::NotFound, "NOT_FOUND", m, None),
            EngineError::FailedPrecondition(reason, m) => rich(Code::FailedPrecondition, reason, m, None),
            EngineError::Unavailable(reason, m) => rich(Code::Unavailable, reason, m, None),
            EngineError::DeadlineExceeded(reason, m) => rich(Code::DeadlineExceeded, reason, m, None),
            EngineError::Store(e) => store_status(e),
        }
    }
}

/// Who called: Unix peer credentials, the subject of a TLS client
/// certificate, or the TCP peer. `key` is what `refunds_allowed_from`
/// matches ("uid=N", "cn=NAME" or "ip=ADDR").
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: String,
    pub description: String,
}

pub fn caller<T>(request: &Request<T>) -> Caller {
    if let Some(info) = request.extensions().get::<tonic::transport::server::UdsConnectInfo>()
        && let Some(cred) = info.peer_cred
    {
        let pid = cred.pid().map(|p| format!(" pid={p}")).unwrap_or_default();
        return Caller {
            key: format!("uid={}", cred.uid()),
            description: format!("unix uid={} gid={}{pid}", cred.uid(), cred.gid()),
        };
    }
    let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
    if let Some(certs) = request.peer_certs()
        && let Some(leaf) = certs.first()
    {
        // The TLS layer verified the chain; the subject names the register.
        return match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, cert)) => {
                let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("");
                Caller {
                    key: format!("cn={cn}"),
                    description: format!("tls subject \"{}\" from {peer}", cert.subject()),
                }
            }
            Err(_) => {
                Caller { key: "unknown".into(), description: format!("tls (unreadable certificate) from {peer}") }
            }
        };
    }
    match request.remote_addr() {
        Some(addr) => Caller { key: format!("ip={}", addr.ip()), description: format!("tcp {addr}") },
        None => Caller { key: "unknown".into(), description: "unknown caller".into() },
    }
}

fn is_final_stage(stage: i32) -> bool {
    use pb::PaymentStage as S;
    matches!(S::try_from(stage), Ok(S::Approved | S::Declined | S::Canceled | S::Failed))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

type TerminalEventStream = Pin<Box<dyn Stream<Item = Result<pb::TerminalEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PaymentTerminal for TerminalApi {
    type TakePaymentStream = EventStream;
    type StreamEventsStream = TerminalEventStream;

    async fn close_batch(&self, request: Request<pb::CloseBatchRequest>) -> Result<Response<pb::BatchSummary>, Status> {
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        let summary =
            self.to_the_end(|engine| async move { engine.close_batch(&terminal, &who.description).await }).await?;
        Ok(Response::new(summary))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        let r = request.into_inner();
        let day = if r.business_day.is_empty() {
            self.reports.business_day(crate::store::now_ms())
        } else {
            r.business_day.parse().map_err(|_| invalid("business_day", "must be a date as YYYY-MM-DD"))?
        };
        let terminal = (!r.terminal_id.is_empty()).then_some(r.terminal_id.as_str());
        if let Some(t) = terminal
            && self.engine.lane(t).is_none()
        {
            return Err(invalid("terminal_id", format!("unknown terminal {t:?}")));
        }
        let report = crate::report::build(self.engine.store(), &self.reports, day, terminal).map_err(store_status)?;
        Ok(Response::new(report))
    }

    async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(|engine| async move {
            engine.capture_payment(&r.payment_id, r.amount_minor, &who.description).await
        })
        .await
    }

    async fn void_payment(&self, request: Request<pb::VoidPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(
            |engine| async move { engine.void_payment(&r.payment_id, &r.reason, &who.description).await },
        )
        .await
    }

    async fn requeue_payment(
        &self,
        request: Request<pb::RequeuePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(|engine| async move { engine.requeue_payment(&r.payment_id, &who.description).await })
            .await
    }

    async fn resolve_payment(
        &self,
        request: Request<pb::ResolvePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let who = caller(&request);
        let r = request.into_inner();
        if r.note.chars().count() > 255 {
            return Err(invalid("note", "must be at most 255 characters"));
        }
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

    async fn refund_payment(&self, request: Request<pb::RefundPaymentRequest>) -> Result<Response<pb::Refund>, Status> {
        let who = caller(&request);
        if !self.refunds_allowed_from.is_empty() && !self.refunds_allowed_from.contains(&who.key) {
            return Err(rich(
                tonic::Code::PermissionDenied,
                "REFUND_NOT_ALLOWED",
                format!("refunds are not allowed from {} ({}); see refunds_allowed_from", who.key, who.description),
                None,
            ));
        }
        let r = request.into_inner();
        if r.reason.chars().count() > 255 {
            return Err(invalid("reason", "must be at most 255 characters"));
        }
        let refund = self
            .to_the_end(|engine| async move {
                engine
                    .refund_payment(&r.idempotency_key, &r.payment_id, r.amount_minor, &r.reason, &who.description)
                    .await
            })
            .await?;
        Ok(Response::new(convert::refund(&refund)))
    }

    async fn get_sync_status(&self, _: Request<pb::GetSyncStatusRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        let report = self.engine.sync_report().map_err(store_status)?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    async fn sync_now(&self, _: Request<pb::SyncNowRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        self.engine.sync_now();
        let report = self.engine.sync_report().map_err(store_status)?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let from = i64::try_from(request.get_ref().from_cursor).map_err(|_| invalid("from_cursor", "out of range"))?;
        let newest = self.engine.store().last_event_cursor().map_err(store_status)?;
        if from > newest {
            return Err(invalid(
                "from_cursor",
                format!(
                    "{from} is beyond the newest event ({newest}); this posd's events were reset (reinstall?): \
                     resume from 0"
                ),
            ));
        }
        // Subscribe first, then read the stored backlog: an event committed in
        // between is in both and is skipped by cursor, so none is missed.
        let mut live = self.engine.subscribe_events();
        let engine = self.engine.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = from;
            loop {
                // Catch up from the database (at start, and after lagging behind).
                loop {
                    let batch = match engine.store().events_after(last, 500) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(store_status(e))).await;
                            return;
                        }
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for e in batch {
                        last = e.cursor;
                        if tx.send(Ok(convert::event(&e))).await.is_err() {
                            return;
                        }
                    }
                }
                loop {
                    let received = tokio::select! {
                        r = live.recv() => r,
                        () = tx.closed() => return,
                    };
                    match received {
                        Ok(e) if e.cursor <= last => continue,
                        Ok(e) if e.cursor == last + 1 => {
                            last = e.cursor;
                            if tx.send(Ok(convert::event(&e))).await.is_err() {
                                return;
                            }
                        }
                        // A gap (an event committed by another writer first) or
                        // lag: read what is missing from the database.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn take_payment(
        &self,
        request: Request<pb::TakePaymentRequest>,
    ) -> Result<Response<Self::TakePaymentStream>, Status> {
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
        let first = event_now(self.engine.store(), &attached.payment)?;
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
                    let now = event_now(engine.store(), &rec);
                    if !now.as_ref().is_ok_and(|ev| status_of(ev) == shown) {
                        let _ = tx.send(now).await;
                    }
                }
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let id = &request.get_ref().payment_id;
        let rec = self
            .engine
            .store()
            .get(id)
            .map_err(store_status)?
            .ok_or_else(|| Status::from(EngineError::NotFound(format!("no payment {id}"))))?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
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
            let (at, id) = r
                .page_token
                .split_once(':')
                .and_then(|(a, id)| Some((a.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| invalid("page_token", "not a token this server issued"))?;
            Some((at, id))
        };
        let filter = ListFilter {
            terminal_id: (!r.terminal_id.is_empty()).then_some(r.terminal_id),
            statuses,
            created_after_ms: r.created_after.as_ref().map(convert::millis),
            created_before_ms: r.created_before.as_ref().map(convert::millis),
            after,
            limit: limit + 1,
            oldest_first: false,
        };
        let mut rows = self.engine.store().list(&filter).map_err(store_status)?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|p| format!("{}:{}", p.created_at_ms, p.id)).unwrap_or_default()
        } else {
            String::new()
        };
        // Without history (GetPayment has it), but with the refunds: a
        // listed payment shows what was paid back of it.
        let store = self.engine.store();
        let mut payments = Vec::with_capacity(rows.len());
        for p in &rows {
            let refunds = store.refunds_of(&p.id).map_err(store_status)?;
            payments.push(convert::with_refunds(convert::payment(p, &[]), &refunds));
        }
        Ok(Response::new(pb::ListPaymentsResponse { payments, next_page_token }))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let rec = self.engine.cancel_payment(&request.get_ref().payment_id).await?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    async fn print_receipt(
        &self,
        request: Request<pb::PrintReceiptRequest>,
    ) -> Result<Response<pb::PrintReceiptResponse>, Status> {
        let r = request.into_inner();
        let copy = match pb::ReceiptCopy::try_from(r.copy) {
            Ok(pb::ReceiptCopy::Merchant) => crate::receipt::Copy::Merchant,
            Ok(_) => crate::receipt::Copy::Customer,
            Err(_) => return Err(invalid("copy", format!("unknown receipt copy {}", r.copy))),
        };
        let (terminal_id, reprint) = self.engine.print_receipt(&r.payment_id, copy).await?;
        Ok(Response::new(pb::PrintReceiptResponse { terminal_id, reprint }))
    }

    async fn open_drawer(
        &self,
        request: Request<pb::OpenDrawerRequest>,
    ) -> Result<Response<pb::OpenDrawerResponse>, Status> {
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        self.engine.open_drawer(&terminal).await?;
        tracing::info!(terminal = %terminal, caller = %who.description, "cash drawer opened");
        Ok(Response::new(pb::OpenDrawerResponse {}))
    }

    async fn get_terminal_status(
        &self,
        request: Request<pb::GetTerminalStatusRequest>,
    ) -> Result<Response<pb::TerminalStatus>, Status> {
        let id = &request.get_ref().terminal_id;
        let lane = self.engine.lane(id).ok_or_else(|| {
            let known: Vec<&str> = self.engine.lanes().map(|l| l.id.as_str()).collect();
            Status::from(EngineError::NotFound(format!(
                "unknown terminal {id:?}; this posd drives {}",
                known.join(", ")
            )))
        })?;
        let reader = lane.reader_state();
        let printer = lane.printer.as_ref().map(|p| p.status());
        Ok(Response::new(pb::TerminalStatus {
            terminal_id: lane.id.clone(),
            reader_connected: reader.connected,
            reader_serial: reader.serial,
            reader_firmware: reader.firmware,
            printer_connected: printer.as_ref().is_some_and(|p| p.connected),
            printer: Some(convert::printer_status(printer.as_ref())),
            gateway_online: self.engine.gateway().is_online(),
            busy_with_payment_id: self.engine.busy_with(&lane.id).unwrap_or_default(),
            demo: self.engine.demo(),
            currency: lane.currency.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Db(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn a_locked_database_is_unavailable_a_full_one_exhausted_and_the_rest_internal() {
        for (code, want, reason) in [
            (rusqlite::ffi::SQLITE_BUSY, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE"),
            (rusqlite::ffi::SQLITE_LOCKED, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE"),
            (rusqlite::ffi::SQLITE_FULL, tonic::Code::ResourceExhausted, "DATABASE_FULL"),
            (rusqlite::ffi::SQLITE_IOERR, tonic::Code::Internal, "DATABASE_ERROR"),
        ] {
            let status = store_status(sqlite(code));
            assert_eq!(status.code(), want, "{code}: {status:?}");
            let details = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
            assert_eq!(details.reason, reason, "{code}");
        }
    }
}
