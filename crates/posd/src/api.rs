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
use crate::store::{DatabaseFailure, ListFilter, PaymentRecord, StoreError};

/// The most characters posd takes in a free-text field of a request:
/// idempotency keys, order references, reasons, notes, ids, page tokens.
pub const TEXT_MAX: usize = 255;
/// The most characters of a currency field (ISO 4217 codes have 3; a few
/// more get the engine's own "not an ISO 4217 currency code").
const CURRENCY_MAX: usize = 8;
/// The most characters of bad input an error message quotes.
const QUOTED_CHARS: usize = 32;

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

    /// [`Self::to_the_end`] for a call that changes one payment; answers the
    /// payment as stored, with its history.
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
    if rec.on_terminal() {
        p.terminal = store.terminal_result(&rec.id).map_err(db)?.map(|t| convert::terminal(&t));
    }
    Ok(p)
}

/// The event that tells a register where a payment stands now.
fn event_now(engine: &Engine, rec: &PaymentRecord) -> Result<pb::PaymentEvent, Status> {
    let payment = stored_payment(engine, rec)?;
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

/// Bad input as an error message shows it: quoted and escaped, at most
/// `QUOTED_CHARS` (32) characters of it, and the size of the whole when it is
/// longer (`"abc…"…(1048576 bytes)`), so a huge value never comes back as
/// huge trailers.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTED_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &input[..cut], input.len()),
    }
}

/// A character no request text may hold: control characters (C0, DEL and
/// C1: line breaks, tabs, escapes), the line and paragraph separators, and
/// the bidirectional overrides and isolates, with which a value could forge
/// or hide lines of posd's log, a payment's history or a CSV export.
fn forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks one string field of a request before posd uses it (stores, logs
/// or echoes it): at most `max` characters, none of them `forbidden`.
/// Refused, the message quotes at most a short prefix of it. Every string
/// field of every request passes here first (`RequestText`).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    // A character takes at most 4 bytes: longer input is refused uncounted.
    if value.len() > max.saturating_mul(4) || value.chars().count() > max {
        return Err(invalid(field, format!("too long: at most {max} characters, not {}", quote(value))));
    }
    if let Some((at, c)) = value.chars().enumerate().find(|&(_, c)| forbidden(c)) {
        return Err(invalid(
            field,
            format!("holds a control character (U+{:04X} at character {}): {}", u32::from(c), at + 1, quote(value)),
        ));
    }
    Ok(())
}

/// The string fields of a request, each checked with [`text`] before the
/// request is used.
trait RequestText {
    fn check_text(&self) -> Result<(), Status>;
}

impl RequestText for pb::TakePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("idempotency_key", &self.idempotency_key, TEXT_MAX)?;
        text("order_reference", &self.order_reference, TEXT_MAX)?;
        if let Some(amount) = &self.amount {
            text("amount.currency", &amount.currency, CURRENCY_MAX)?;
        }
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::GetPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::ListPaymentsRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)?;
        text("page_token", &self.page_token, TEXT_MAX)
    }
}

impl RequestText for pb::CancelPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::GetTerminalStatusRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::CapturePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::VoidPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("reason", &self.reason, TEXT_MAX)
    }
}

impl RequestText for pb::RefundPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("idempotency_key", &self.idempotency_key, TEXT_MAX)?;
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("reason", &self.reason, TEXT_MAX)
    }
}

impl RequestText for pb::GetReportRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("business_day", &self.business_day, TEXT_MAX)?;
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::CloseBatchRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::PrintReceiptRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::OpenDrawerRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::RequeuePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::ResolveRefundRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("refund_id", &self.refund_id, TEXT_MAX)?;
        text("note", &self.note, TEXT_MAX)
    }
}

impl RequestText for pb::ResolvePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("note", &self.note, TEXT_MAX)
    }
}

/// A business day as a request names it: strictly `YYYY-MM-DD`, a day of
/// the calendar, in the years reports cover (1970 to 9998). The message
/// says what is wrong.
pub fn parse_day(day: &str) -> Result<jiff::civil::Date, String> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return Err(format!("{} is not a date as YYYY-MM-DD", quote(day)));
    }
    let number = |r: std::ops::Range<usize>| b[r].iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
    let (year, month, d) = (number(0..4), number(5..7), number(8..10));
    let date = jiff::civil::Date::new(year, month as i8, d as i8)
        .map_err(|_| format!("{day:?} is not a day of the calendar (YYYY-MM-DD)"))?;
    if !(1970..=9998).contains(&year) {
        return Err(format!("{day:?} is out of range: reports cover the years 1970 to 9998"));
    }
    Ok(date)
}

/// Unix milliseconds of a time filter a request set; refused, naming the
/// field, when out of the range of `google.protobuf.Timestamp`.
fn time_filter(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    t.map(|t| {
        convert::checked_millis(t).ok_or_else(|| {
            invalid(
                field,
                format!(
                    "seconds {} and nanos {} are not a time: seconds from 0001-01-01 to 9999-12-31 \
                     (-62135596800 to 253402300799), nanos from 0 to 999999999",
                    t.seconds, t.nanos
                ),
            )
        })
    })
    .transpose()
}

/// Page tokens: the position after a page's last payment (its creation time
/// and id) in Crockford base32, followed by a MAC of it under a random key
/// of this posd process, so that a token a client altered or made up is
/// refused instead of read as some other position. A token does not outlive
/// the process that issued it: after a restart of posd, a register starts
/// again from the first page.
mod page_token {
    use std::sync::LazyLock;

    use hmac::{Hmac, Mac};
    use pos_mask::{crockford32, crockford32_decode};
    use sha2::Sha256;

    /// Length of the MAC at the end of a token (128 bits in Crockford base32).
    const MAC_CHARS: usize = 26;

    /// The key tokens are signed with: random, once per process.
    static KEY: LazyLock<[u8; 32]> = LazyLock::new(random_key);

    fn random_key() -> [u8; 32] {
        use std::io::Read;
        let mut key = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
        if read.is_err() {
            // The standard library's hash keys, random per process, instead.
            use std::hash::{BuildHasher, Hasher};
            let state = std::collections::hash_map::RandomState::new();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                let mut h = state.build_hasher();
                h.write_usize(i);
                h.write_u128(now);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        key
    }

    /// The keyed hash of a token's body: HMAC-SHA256, its first 128 bits in
    /// Crockford base32.
    fn mac(body: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&*KEY).expect("HMAC takes a key of any length");
        mac.update(b"page-token:");
        mac.update(body.as_bytes());
        crockford32(&mac.finalize().into_bytes()[..16])
    }

    /// The token for the position after a payment created at `at_ms` with id `id`.
    pub fn issue(at_ms: i64, id: &str) -> String {
        let mut bytes = at_ms.to_be_bytes().to_vec();
        bytes.extend_from_slice(id.as_bytes());
        let body = crockford32(&bytes);
        let mac = mac(&body);
        format!("{body}{mac}")
    }

    /// The position a token this process issued stands for; `None` for any
    /// other string.
    pub fn read(token: &str) -> Option<(i64, String)> {
        let split = token.len().checked_sub(MAC_CHARS).filter(|&n| n > 0 && token.is_char_boundary(n))?;
        let (body, given) = token.split_at(split);
        let expected = mac(body);
        // Compared in a time that does not tell where they differ.
        let differ =
            given.bytes().zip(expected.bytes()).fold(given.len() ^ expected.len(), |d, (a, b)| d | usize::from(a ^ b));
        if differ != 0 {
            return None;
        }
        let bytes = crockford32_decode(body)?;
        let (at, id) = bytes.split_at_checked(8)?;
        Some((i64::from_be_bytes(at.try_into().ok()?), String::from_utf8(id.to_vec()).ok()?))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_token_reads_back_as_its_position() {
            for (at, id) in [(0, ""), (1_795_656_600_123, "pay_01KAXYZ0123456789ABCDEFGHJ"), (-5, "x"), (i64::MAX, "é")]
            {
                assert_eq!(read(&issue(at, id)), Some((at, id.to_string())), "{at} {id}");
            }
        }

        #[test]
        fn an_altered_truncated_or_made_up_token_is_refused() {
            let token = issue(1_795_656_600_123, "pay_01KAXYZ0123456789ABCDEFGHJ");
            const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
            for i in 0..token.len() {
                for other in ALPHABET.chars().filter(|&c| c != token.as_bytes()[i] as char) {
                    let mut altered = token.clone();
                    altered.replace_range(i..i + 1, &other.to_string());
                    assert_eq!(read(&altered), None, "{altered}");
                }
            }
            let longer = format!("{token}0");
            for bad in [&token[..token.len() - 1], &token[1..], longer.as_str(), "", "x", "garbage", "1:pay_x"] {
                assert_eq!(read(bad), None, "{bad}");
            }
            // One made the old way (a plain "<ms>:<id>" cursor) no longer passes.
            assert_eq!(read("1795656600123:pay_01KAXYZ0123456789ABCDEFGHJ"), None);
            // Non-ASCII where the MAC would begin.
            assert_eq!(read(&format!("{}é{}", "0".repeat(30), "0".repeat(25))), None);
        }
    }
}

/// A TLS client certificate's common names (CN attributes of its subject),
/// counted; `None` when it cannot be read.
fn common_names(der: &[u8]) -> Option<usize> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, cert)| cert.subject().iter_common_name().count())
}

/// Refuses, before any call of the register API, a caller whose TLS client
/// certificate names more than one common name: posd authorises by that
/// name ("cn=NAME" in `refunds_allowed_from`), and a certificate with two
/// names must not pass as either. (The TLS layer verified the chain.)
pub fn authenticate(request: Request<()>) -> Result<Request<()>, Status> {
    if let Some(certs) = request.peer_certs()
        && let Some(leaf) = certs.first()
        && let Some(n @ 2..) = common_names(leaf)
    {
        return Err(rich(
            tonic::Code::Unauthenticated,
            "AMBIGUOUS_CLIENT_CERTIFICATE",
            format!(
                "the client certificate's subject has {n} common names (CN); posd takes a certificate whose \
                 subject names the register with exactly one"
            ),
            None,
        ));
    }
    Ok(request)
}

/// How a failing database answers callers. The engine keeps the first
/// failure of an episode ([`Engine::database_failure`]), and every call that
/// meets the database failing (its own write or read, or the refusal of a
/// new payment) is answered as that failure, until posd restarts once the
/// database works again: a full disk is RESOURCE_EXHAUSTED `DATABASE_FULL`
/// from the first failed write to the restart, whatever later writes and
/// reads report.
impl DatabaseFailure {
    /// The answer to every call that meets the database failing so.
    pub fn status(self) -> Status {
        match self {
            Self::Full => rich(
                tonic::Code::ResourceExhausted,
                "DATABASE_FULL",
                "the payment database is full; new payments are refused and queued payments are kept. \
                 Free disk space: posd checks every few seconds and restarts by itself once it can write."
                    .into(),
                None,
            ),
            // Another program holds the database past posd's busy timeout:
            // not a fault of the request, and it passes.
            Self::Locked => rich(
                tonic::Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                "another program holds posd's payment database locked, past posd's wait for it; posd refuses \
                 new payments until the lock is gone and then restarts by itself. Try again then (a repeat \
                 under the same key is safe)."
                    .into(),
                None,
            ),
            Self::Failed => rich(
                tonic::Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                "posd cannot use its payment database (an I/O error or a damaged file); new payments are \
                 refused and queued payments are kept. posd checks the database every few seconds and \
                 restarts by itself once it works (repair or replace it)."
                    .into(),
                None,
            ),
        }
    }
}

/// A store error outside a database failure episode: a full or locked
/// database as [`DatabaseFailure::status`] says, any other error INTERNAL.
fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "storage error");
    match DatabaseFailure::of(&e) {
        DatabaseFailure::Failed => {
            rich(tonic::Code::Internal, "DATABASE_ERROR", format!("payment storage failed: {e}"), None)
        }
        failure => failure.status(),
    }
}

/// A store error met by a call: within a database failure episode, the
/// episode's answer (see [`DatabaseFailure`]); otherwise [`store_status`].
fn db_status(engine: &Engine, e: StoreError) -> Status {
    store_status_in(engine.database_failure(), e)
}

/// [`db_status`] with the episode's first failure, if any.
fn store_status_in(episode: Option<DatabaseFailure>, e: StoreError) -> Status {
    match (&e, episode) {
        (StoreError::Db(_), Some(first)) => {
            tracing::error!(error = %e, "storage error");
            first.status()
        }
        _ => store_status(e),
    }
}

/// An engine error as the API answers it; database failures as
/// [`db_status`] says, the refusal of new payments while the database fails
/// included.
fn engine_status(engine: &Engine, e: EngineError) -> Status {
    engine_status_in(engine.database_failure(), e)
}

/// [`engine_status`] with the episode's first failure, if any.
fn engine_status_in(episode: Option<DatabaseFailure>, e: EngineError) -> Status {
    match e {
        EngineError::Store(e) => store_status_in(episode, e),
        EngineError::Unavailable("DATABASE_UNAVAILABLE", m) => match episode {
            Some(first) => first.status(),
            None => EngineError::Unavailable("DATABASE_UNAVAILABLE", m).into(),
        },
        e => e.into(),
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
                let mut names = cert.subject().iter_common_name();
                let key = match (names.next(), names.next()) {
                    (Some(cn), None) => format!("cn={}", cn.as_str().unwrap_or("")),
                    (None, _) => "cn=".into(),
                    // Refused by [`authenticate`] before any call; never
                    // authorised as the first (or any) of its names.
                    (Some(_), Some(_)) => "unknown".into(),
                };
                Caller { key, description: format!("tls subject \"{}\" from {peer}", cert.subject()) }
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
        request.get_ref().check_text()?;
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        let summary =
            self.to_the_end(|engine| async move { engine.close_batch(&terminal, &who.description).await }).await?;
        Ok(Response::new(summary))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::Report>, Status> {
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let day = if r.business_day.is_empty() {
            self.reports.business_day(crate::store::now_ms())
        } else {
            let day = parse_day(&r.business_day).map_err(|m| invalid("business_day", m))?;
            // The day's span must be a span of time posd can count in.
            self.reports.bounds(day).map_err(|e| {
                invalid(
                    "business_day",
                    format!("{:?} is out of range in time zone {}: {e}", r.business_day, self.reports.tz_name),
                )
            })?;
            day
        };
        let terminal = (!r.terminal_id.is_empty()).then_some(r.terminal_id.as_str());
        if let Some(t) = terminal
            && self.engine.lane(t).is_none()
        {
            return Err(invalid("terminal_id", format!("unknown terminal {}", quote(t))));
        }
        let report = crate::report::build(self.engine.store(), &self.reports, day, terminal).map_err(self.db())?;
        Ok(Response::new(report))
    }

    async fn capture_payment(
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

    async fn void_payment(&self, request: Request<pb::VoidPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
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
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(|engine| async move { engine.requeue_payment(&r.payment_id, &who.description).await })
            .await
    }

    async fn resolve_payment(
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

    async fn resolve_refund(&self, request: Request<pb::ResolveRefundRequest>) -> Result<Response<pb::Refund>, Status> {
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

    async fn refund_payment(&self, request: Request<pb::RefundPaymentRequest>) -> Result<Response<pb::Refund>, Status> {
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

    async fn get_sync_status(&self, _: Request<pb::GetSyncStatusRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        let report = self.engine.sync_report().map_err(self.db())?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    async fn sync_now(&self, _: Request<pb::SyncNowRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        self.engine.sync_now();
        let report = self.engine.sync_report().map_err(self.db())?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let from = i64::try_from(request.get_ref().from_cursor).map_err(|_| invalid("from_cursor", "out of range"))?;
        let newest = self.engine.store().last_event_cursor().map_err(self.db())?;
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
                            let _ = tx.send(Err(db_status(&engine, e))).await;
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

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
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

    async fn list_payments(
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

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let rec = self.engine.cancel_payment(&request.get_ref().payment_id).await.map_err(self.failed())?;
        Ok(Response::new(self.payment_with_history(&rec)?))
    }

    async fn print_receipt(
        &self,
        request: Request<pb::PrintReceiptRequest>,
    ) -> Result<Response<pb::PrintReceiptResponse>, Status> {
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let copy = match pb::ReceiptCopy::try_from(r.copy) {
            Ok(pb::ReceiptCopy::Merchant) => crate::receipt::Copy::Merchant,
            Ok(_) => crate::receipt::Copy::Customer,
            Err(_) => return Err(invalid("copy", format!("unknown receipt copy {}", r.copy))),
        };
        let (terminal_id, reprint) = self.engine.print_receipt(&r.payment_id, copy).await.map_err(self.failed())?;
        Ok(Response::new(pb::PrintReceiptResponse { terminal_id, reprint }))
    }

    async fn open_drawer(
        &self,
        request: Request<pb::OpenDrawerRequest>,
    ) -> Result<Response<pb::OpenDrawerResponse>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        self.engine.open_drawer(&terminal).await.map_err(self.failed())?;
        tracing::info!(terminal = %terminal, caller = %who.description, "cash drawer opened");
        Ok(Response::new(pb::OpenDrawerResponse {}))
    }

    async fn get_terminal_status(
        &self,
        request: Request<pb::GetTerminalStatusRequest>,
    ) -> Result<Response<pb::TerminalStatus>, Status> {
        request.get_ref().check_text()?;
        let id = &request.get_ref().terminal_id;
        let lane = self.engine.lane(id).ok_or_else(|| {
            let known: Vec<&str> = self.engine.lanes().map(|l| l.id.as_str()).collect();
            Status::from(EngineError::NotFound(format!(
                "unknown terminal {}; this posd drives {}",
                quote(id),
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

    fn reason(status: &Status) -> String {
        tonic_types::StatusExt::get_details_error_info(status).expect("an ErrorInfo").reason
    }

    /// The field a status's `BadRequest` names.
    fn field(status: &Status) -> String {
        let details = tonic_types::StatusExt::get_details_bad_request(status).expect("a BadRequest");
        details.field_violations[0].field.clone()
    }

    #[test]
    fn a_database_failure_episode_answers_as_its_first_failure_throughout() {
        use tonic::Code;
        let full = Some(DatabaseFailure::of(&sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert_eq!(full, Some(DatabaseFailure::Full));
        let refusal = || EngineError::Unavailable("DATABASE_UNAVAILABLE", "posd cannot use its database".into());
        // A full disk: the failed write, a later write failing otherwise, a
        // read, and the refusal of new payments all say DATABASE_FULL.
        for status in [
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_FULL))),
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_IOERR))),
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_BUSY))),
            store_status_in(full, sqlite(rusqlite::ffi::SQLITE_CANTOPEN)),
            engine_status_in(full, refusal()),
        ] {
            assert_eq!((status.code(), reason(&status)), (Code::ResourceExhausted, "DATABASE_FULL".to_string()));
        }
        // A lock, and anything else: UNAVAILABLE throughout.
        for first in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_IOERR, rusqlite::ffi::SQLITE_CORRUPT] {
            let episode = Some(DatabaseFailure::of(&sqlite(first)));
            for status in [
                engine_status_in(episode, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_FULL))),
                engine_status_in(episode, EngineError::Store(sqlite(first))),
                engine_status_in(episode, refusal()),
            ] {
                assert_eq!((status.code(), reason(&status)), (Code::Unavailable, "DATABASE_UNAVAILABLE".to_string()));
            }
        }
        // What is not a database failure keeps its own answer.
        let status = engine_status_in(full, EngineError::Store(StoreError::NotFound("pay_x".into())));
        assert_ne!(reason(&status), "DATABASE_FULL");
        let status = engine_status_in(full, EngineError::FailedPrecondition("WRONG_STATE", "no".into()));
        assert_eq!((status.code(), reason(&status)), (Code::FailedPrecondition, "WRONG_STATE".to_string()));
        // Outside an episode: as the error itself says.
        let status = engine_status_in(None, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_IOERR)));
        assert_eq!((status.code(), reason(&status)), (Code::Internal, "DATABASE_ERROR".to_string()));
        let status = engine_status_in(None, refusal());
        assert_eq!((status.code(), reason(&status)), (Code::Unavailable, "DATABASE_UNAVAILABLE".to_string()));
    }

    #[test]
    fn bad_input_is_quoted_short() {
        assert_eq!(quote("EUR"), "\"EUR\"");
        assert_eq!(quote("a\nb\u{1b}"), "\"a\\nb\\u{1b}\"");
        let huge = "E".repeat(1 << 20);
        let q = quote(&huge);
        assert_eq!(q, format!("\"{}\"…(1048576 bytes)", "E".repeat(QUOTED_CHARS)));
        // Cut on a character, never inside one.
        let q = quote(&"é".repeat(100));
        assert!(q.starts_with(&format!("\"{}\"…", "é".repeat(QUOTED_CHARS))) && q.ends_with("(200 bytes)"), "{q}");
        assert_eq!(quote(&"x".repeat(QUOTED_CHARS)), format!("{:?}", "x".repeat(QUOTED_CHARS)));
    }

    #[test]
    fn request_text_is_bounded_and_free_of_control_characters() {
        assert!(text("reason", "", TEXT_MAX).is_ok());
        assert!(text("reason", &"r".repeat(TEXT_MAX), TEXT_MAX).is_ok());
        assert!(text("reason", &"é".repeat(TEXT_MAX), TEXT_MAX).is_ok(), "characters, not bytes");
        assert!(text("reason", "order canceled: Müller & Söhne, Straße 5 – ☕", TEXT_MAX).is_ok());
        for bad in [
            "r".repeat(TEXT_MAX + 1),
            "é".repeat(TEXT_MAX + 1),
            "r".repeat(1 << 20),
            "line\nforged".into(),
            "tab\there".into(),
            "\u{1b}[31mred".into(),
            "nul\0".into(),
            "del\u{7f}".into(),
            "c1\u{85}".into(),
            "sep\u{2028}".into(),
            "bidi\u{202e}txt.exe".into(),
        ] {
            let status = text("reason", &bad, TEXT_MAX).expect_err(&quote(&bad));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!((reason(&status), field(&status)), ("INVALID_FIELD".to_string(), "reason".to_string()));
            assert!(status.message().starts_with("reason: "), "{}", status.message());
            assert!(status.message().len() < 200, "{}", status.message());
            assert!(!status.message().contains(['\n', '\u{1b}', '\u{2028}', '\u{202e}']), "{:?}", status.message());
        }
    }

    #[test]
    fn every_string_field_of_every_request_is_checked() {
        let huge = || "x".repeat(1 << 20);
        let cases: Vec<(&str, Result<(), Status>)> = vec![
            ("idempotency_key", pb::TakePaymentRequest { idempotency_key: huge(), ..Default::default() }.check_text()),
            ("order_reference", pb::TakePaymentRequest { order_reference: huge(), ..Default::default() }.check_text()),
            (
                "amount.currency",
                pb::TakePaymentRequest {
                    amount: Some(pb::Money { amount_minor: 1, currency: huge() }),
                    ..Default::default()
                }
                .check_text(),
            ),
            ("terminal_id", pb::TakePaymentRequest { terminal_id: huge(), ..Default::default() }.check_text()),
            ("payment_id", pb::GetPaymentRequest { payment_id: huge() }.check_text()),
            ("terminal_id", pb::ListPaymentsRequest { terminal_id: huge(), ..Default::default() }.check_text()),
            ("page_token", pb::ListPaymentsRequest { page_token: huge(), ..Default::default() }.check_text()),
            ("payment_id", pb::CancelPaymentRequest { payment_id: huge() }.check_text()),
            ("terminal_id", pb::GetTerminalStatusRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::CapturePaymentRequest { payment_id: huge(), amount_minor: 0 }.check_text()),
            ("payment_id", pb::VoidPaymentRequest { payment_id: huge(), reason: String::new() }.check_text()),
            ("reason", pb::VoidPaymentRequest { payment_id: String::new(), reason: huge() }.check_text()),
            (
                "idempotency_key",
                pb::RefundPaymentRequest { idempotency_key: huge(), ..Default::default() }.check_text(),
            ),
            ("payment_id", pb::RefundPaymentRequest { payment_id: huge(), ..Default::default() }.check_text()),
            ("reason", pb::RefundPaymentRequest { reason: huge(), ..Default::default() }.check_text()),
            ("business_day", pb::GetReportRequest { business_day: huge(), terminal_id: String::new() }.check_text()),
            ("terminal_id", pb::GetReportRequest { business_day: String::new(), terminal_id: huge() }.check_text()),
            ("terminal_id", pb::CloseBatchRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::PrintReceiptRequest { payment_id: huge(), copy: 0 }.check_text()),
            ("terminal_id", pb::OpenDrawerRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::RequeuePaymentRequest { payment_id: huge() }.check_text()),
            ("payment_id", pb::ResolvePaymentRequest { payment_id: huge(), ..Default::default() }.check_text()),
            ("note", pb::ResolvePaymentRequest { note: huge(), ..Default::default() }.check_text()),
        ];
        for (want, result) in cases {
            let status = result.expect_err(want);
            assert_eq!(field(&status), want);
            assert!(status.message().len() < 1024, "{want}: {} bytes", status.message().len());
        }
    }

    #[test]
    fn report_days_are_strictly_yyyy_mm_dd_days_in_range() {
        for ok in ["2026-11-25", "2024-02-29", "1970-01-01", "9998-12-31"] {
            assert_eq!(parse_day(ok).map(|d| d.to_string()), Ok(ok.to_string()));
        }
        for (bad, says) in [
            ("2026-13-45", "not a day of the calendar"),
            ("2026-02-30", "not a day of the calendar"),
            ("2026-00-10", "not a day of the calendar"),
            ("2025-02-29", "not a day of the calendar"),
            ("26.11.2026", "YYYY-MM-DD"),
            ("2026-1-05", "YYYY-MM-DD"),
            ("20261125", "YYYY-MM-DD"),
            ("+002026-11-25", "YYYY-MM-DD"),
            ("2026-11-25T00:00", "YYYY-MM-DD"),
            ("2026-11-2５", "YYYY-MM-DD"),
            (" 2026-11-2", "YYYY-MM-DD"),
            ("", "YYYY-MM-DD"),
            ("9999-12-31", "out of range"),
            ("9999-01-01", "out of range"),
            ("1969-12-31", "out of range"),
            ("0000-01-01", "out of range"),
        ] {
            let message = parse_day(bad).expect_err(bad);
            assert!(message.contains(says), "{bad}: {message}");
        }
        // Every day it takes has a span of time in any zone.
        for tz in ["UTC", "Europe/Berlin", "America/New_York"] {
            let settings = crate::report::ReportSettings::new(tz, "04:00").unwrap();
            for day in ["1970-01-01", "9998-12-31"] {
                assert!(settings.bounds(parse_day(day).unwrap()).is_ok(), "{tz} {day}");
            }
        }
    }

    #[test]
    fn time_filters_out_of_the_timestamp_range_are_refused_naming_the_field() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(time_filter("created_after", None).unwrap(), None);
        assert_eq!(
            time_filter("created_after", Some(&at(1_795_656_600, 123_456_789))).unwrap(),
            Some(1_795_656_600_123)
        );
        assert_eq!(time_filter("created_after", Some(&at(-62_135_596_800, 0))).unwrap(), Some(-62_135_596_800_000));
        assert_eq!(
            time_filter("created_after", Some(&at(253_402_300_799, 999_999_999))).unwrap(),
            Some(253_402_300_799_999)
        );
        for (field_name, t) in [
            ("created_after", at(i64::MAX, 0)),
            ("created_before", at(i64::MIN, 0)),
            ("created_after", at(253_402_300_800, 0)),
            ("created_before", at(-62_135_596_801, 0)),
            ("created_after", at(0, 1_000_000_000)),
            ("created_before", at(0, -1)),
            ("created_after", at(i64::MAX, 2_000_000_000)),
        ] {
            let status = time_filter(field_name, Some(&t)).expect_err(field_name);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(field(&status), field_name);
        }
    }
}
