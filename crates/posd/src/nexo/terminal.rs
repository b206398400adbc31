//! One lane's nexo terminal: [`NexoTerminal`] sends one request at a time
//! as a whole document (`SaleToPOIRequest`), encrypted under the lane's
//! shared key when it has one, over the lane's [`TerminalLine`], and returns
//! the terminal's answer only once it is shown to answer *that* request.
//!
//! # Names
//! - SaleID: `POSD-<lane>` ([`sale_id`]): stable for as long as the lane
//!   keeps its id, the same after every restart, at most [`SALE_ID_MAX`]
//!   characters (nexo's `Max35Text`). The store keeps the ServiceID counter
//!   by SaleID, so ServiceIDs stay unique per SaleID across restarts.
//! - ServiceID: a payment's, refund's or reversal's is reserved in the store
//!   with the commit that starts it (ten digits, `0000000042`); a health
//!   check's is `H` and nine random letters or digits ([`health_service_id`]),
//!   never all digits, so it cannot take one the counter will hand out, and it
//!   costs no commit.
//!
//! # What an error says ([`NexoError`])
//! `NotSent` and `Identity`: no byte of the request reached the terminal.
//! `Refused`: it reached the terminal, which did not take it (an HTTP 4xx,
//! or its `EventNotification` `Reject`: a request it could not decrypt under
//! its key, a malformed one): nothing was booked. `InDoubt`: the request was
//! delivered (or may have been) and what came back does not settle it: no
//! answer, an answer that does not decrypt and verify under the lane's key,
//! one that cannot be decoded, or one whose header is not the request's
//! (another SaleID, ServiceID, POIID or category, or an inner header that
//! differs from the clear one). Such an answer is not taken as a failure:
//! the terminal had the request and may have acted on it, so only a
//! TransactionStatus for the request's ServiceID settles it.
//!
//! # Logging
//! Every exchange is logged with the lane: the request and the answer as
//! decoded (so only the fields posd models, the card's as the terminal
//! masked it), passed through [`pos_mask::scrub_with_limit`]. Never the
//! passphrase, the key material, the ciphertext or the raw answer.

use pos_link::LineCounters;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_nexo::codes::{ErrorCondition, GlobalStatus, MessageCategory, MessageType, ResultType};
use pos_nexo::crypto::SecuredDocument;
use pos_nexo::diagnosis::DiagnosisRequest;
use pos_nexo::{Key, MessageHeader, RequestBody, ResponseBody, SaleToPoiRequest, SaleToPoiResponse, ServiceId};

use super::line::{PostError, TerminalLine};
use crate::line::ReaderState;

/// The longest SaleID posd writes (nexo: `Max35Text`).
pub const SALE_ID_MAX: usize = 35;

/// How often the terminal is asked how it is when nothing else sets it.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The most characters of one document the exchange log shows.
const LOG_LIMIT: usize = 16 * 1024;

/// How a lane reaches its nexo terminal, checked and loaded at start
/// (`ReaderConfig::device`): the line (URL, CA, POIID, timeouts), the key
/// derived once from the passphrase (none: the unencrypted local API, on
/// loopback only), and the SaleID.
#[derive(Debug, Clone)]
pub struct NexoSettings {
    pub line: Arc<TerminalLine>,
    pub key: Option<Key>,
    pub sale_id: String,
    /// How often the health check asks the terminal (DiagnosisRequest).
    pub health_interval: Duration,
    /// Where health checks' ServiceIDs come from: `None`, the OS's
    /// randomness (posd); a counter in the simulator, so a seed replays exactly.
    pub health_ids: Option<Arc<AtomicU64>>,
}

/// Why an exchange brought no answer posd can use (see the module's notes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NexoError {
    /// Nothing was sent: no connection, no TLS session, or the request could
    /// not be made.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The terminal is not the lane's (its certificate): nothing was sent.
    #[error("terminal refused: {0}")]
    Identity(String),
    /// The terminal did not take the request: nothing was booked.
    #[error("the terminal rejected the request: {0}")]
    Refused(String),
    /// The request may have been acted on; no usable answer came.
    #[error("outcome unknown: {0}")]
    InDoubt(String),
}

impl NexoError {
    /// True when the request cannot have reached the terminal.
    pub fn not_sent(&self) -> bool {
        matches!(self, NexoError::NotSent(_) | NexoError::Identity(_))
    }

    /// True when the terminal did not book anything for the request.
    pub fn not_booked(&self) -> bool {
        !matches!(self, NexoError::InDoubt(_))
    }
}

impl From<PostError> for NexoError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::NotSent(m) => NexoError::NotSent(m),
            PostError::Identity(m) => NexoError::Identity(m),
            PostError::Refused { status, body } => NexoError::Refused(format!("HTTP {status}: {body}")),
            PostError::InDoubt(m) => NexoError::InDoubt(m),
        }
    }
}

/// The SaleID of a lane: `POSD-` and the lane's id, each character that is
/// not an ASCII letter, digit, `-`, `_` or `.` written as `_`, cut to
/// [`SALE_ID_MAX`] characters.
pub fn sale_id(lane: &str) -> String {
    let safe = |c: char| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' };
    "POSD-".chars().chain(lane.chars().map(safe)).take(SALE_ID_MAX).collect()
}

/// Checks a POIID's form, `<model>-<serial>`: ASCII letters and digits with
/// one `-` between two non-empty parts (`V400m-324688179`); why not, as the
/// end of a sentence.
pub fn check_poi_id(poi_id: &str) -> Result<(), &'static str> {
    let Some((model, serial)) = poi_id.split_once('-') else {
        return Err("is not <model>-<serial>: it has no '-'");
    };
    let part_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric());
    if part_ok(model) && part_ok(serial) {
        Ok(())
    } else {
        Err("is not <model>-<serial>: letters and digits with one '-' between them, e.g. V400m-324688179")
    }
}

/// A health check's ServiceID: `H` and nine random letters or digits (or,
/// with a counter, the counter's next value's).
pub fn health_service_id(counter: Option<&AtomicU64>) -> ServiceId {
    const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut digits = [0u8; 9];
    match counter {
        // The counter's value in base 36, most significant digit first.
        Some(n) => {
            let mut n = n.fetch_add(1, Ordering::Relaxed);
            for digit in digits.iter_mut().rev() {
                *digit = (n % 36) as u8;
                n /= 36;
            }
        }
        None => getrandom::fill(&mut digits).expect("the operating system's random source works"),
    }
    let text: String =
        std::iter::once('H').chain(digits.iter().map(|b| char::from(ALPHABET[usize::from(*b) % 36]))).collect();
    ServiceId::parse(&text).expect("ten letters and digits")
}

/// The category a request body belongs to (its header's `MessageCategory`).
fn category(body: &RequestBody) -> MessageCategory {
    match body {
        RequestBody::Payment(_) => MessageCategory::Payment,
        RequestBody::TransactionStatus(_) => MessageCategory::TransactionStatus,
        RequestBody::Abort(_) => MessageCategory::Abort,
        RequestBody::Reversal(_) => MessageCategory::Reversal,
        RequestBody::Diagnosis(_) => MessageCategory::Diagnosis,
        RequestBody::Reconciliation(_) => MessageCategory::Reconciliation,
        RequestBody::Other(name) => MessageCategory::from_wire(name.strip_suffix("Request").unwrap_or(name)),
    }
}

/// One lane's nexo terminal.
pub struct NexoTerminal {
    lane: String,
    line: Arc<TerminalLine>,
    key: Option<Key>,
    sale_id: String,
    health_ids: Option<Arc<AtomicU64>>,
    /// Exchanges other than health checks in flight: the health check waits
    /// its turn rather than disturb a payment.
    busy: AtomicUsize,
    /// The lane's card line counters: request and answer bodies as they
    /// crossed the line (encrypted when encrypted; TLS and HTTP framing not
    /// counted).
    line_bytes: Arc<LineCounters>,
}

impl std::fmt::Debug for NexoTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexoTerminal")
            .field("lane", &self.lane)
            .field("line", &self.line)
            .field("key", &self.key)
            .field("sale_id", &self.sale_id)
            .finish()
    }
}

/// Counts an exchange as in flight while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NexoTerminal {
    /// The terminal of `lane`, without its health check.
    pub fn new(lane: String, settings: &NexoSettings) -> NexoTerminal {
        NexoTerminal {
            lane,
            line: settings.line.clone(),
            key: settings.key.clone(),
            sale_id: settings.sale_id.clone(),
            health_ids: settings.health_ids.clone(),
            busy: AtomicUsize::new(0),
            line_bytes: Arc::default(),
        }
    }

    /// The terminal of `lane`, with its health check keeping `state`: up
    /// (it answered a DiagnosisRequest), down (no answer), or unavailable
    /// (it is not the lane's terminal, or it rejected posd's key).
    pub fn spawn(
        lane: String,
        settings: NexoSettings,
        state: Arc<Mutex<ReaderState>>,
        line_bytes: Arc<LineCounters>,
    ) -> Arc<NexoTerminal> {
        let terminal = Arc::new(NexoTerminal { line_bytes, ..NexoTerminal::new(lane, &settings) });
        if terminal.key.is_none() {
            tracing::warn!(
                lane = %terminal.lane,
                url = %terminal.line.url(),
                "the nexo terminal is spoken to UNENCRYPTED (no passphrase_file): for a test terminal on this \
                 machine only"
            );
        }
        tokio::spawn(watch(terminal.clone(), settings.health_interval, state));
        terminal
    }

    pub fn lane(&self) -> &str {
        &self.lane
    }

    pub fn sale_id(&self) -> &str {
        &self.sale_id
    }

    pub fn poi_id(&self) -> &str {
        self.line.poi_id()
    }

    /// Whether requests are encrypted (the lane has a passphrase).
    pub fn encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The request `body` under `service_id`, from this lane's SaleID to its
    /// terminal's POIID.
    pub fn request(&self, service_id: &ServiceId, body: RequestBody) -> SaleToPoiRequest {
        let header = MessageHeader::request(category(&body), service_id, &self.sale_id, self.poi_id());
        SaleToPoiRequest { header, body }
    }

    /// Sends `body` under `service_id` and returns the terminal's answer to it.
    pub async fn exchange(&self, service_id: &ServiceId, body: RequestBody) -> Result<SaleToPoiResponse, NexoError> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(&self.busy);
        self.send(&self.request(service_id, body)).await
    }

    /// Sends a whole request (its header as given) and returns the answer,
    /// checked against it.
    pub async fn send(&self, request: &SaleToPoiRequest) -> Result<SaleToPoiResponse, NexoError> {
        let quiet = request.header.message_category == MessageCategory::Diagnosis;
        let clear =
            serde_json::to_vec(request).map_err(|e| NexoError::NotSent(format!("cannot encode the request: {e}")))?;
        log_document(&self.lane, quiet, "to terminal", &request.header, &clear);
        let body = match &self.key {
            Some(key) => {
                let mut nonce = [0u8; pos_nexo::crypto::NONCE_LEN];
                getrandom::fill(&mut nonce).map_err(|e| NexoError::NotSent(format!("no random nonce: {e}")))?;
                key.encrypt(&clear, nonce)
                    .map_err(|e| NexoError::NotSent(format!("cannot encrypt the request: {e}")))?
                    .into_bytes()
            }
            None => clear,
        };
        let sent = body.len() as u64;
        let posted = self.line.post(body).await;
        match &posted {
            Ok(answer) => self.line_bytes.count(sent, answer.len() as u64),
            Err(e) if !e.not_sent() => self.line_bytes.count(sent, 0),
            Err(_) => {}
        }
        let answer = posted.map_err(NexoError::from);
        let answer = answer.and_then(|bytes| self.read_answer(&request.header, &bytes));
        match &answer {
            Ok(response) => match serde_json::to_vec(response) {
                Ok(text) => log_document(&self.lane, quiet, "from terminal", &response.header, &text),
                Err(e) => tracing::warn!(lane = %self.lane, error = %e, "cannot show the terminal's answer"),
            },
            Err(e) => {
                let service_id = request.header.service_id.as_deref().unwrap_or("");
                if quiet {
                    tracing::debug!(lane = %self.lane, service_id, error = %e, "nexo exchange failed");
                } else {
                    tracing::warn!(lane = %self.lane, service_id, error = %e, "nexo exchange failed");
                }
            }
        }
        answer
    }

    /// Reads the terminal's answer to the request whose header is `sent`.
    fn read_answer(&self, sent: &MessageHeader, bytes: &[u8]) -> Result<SaleToPoiResponse, NexoError> {
        let doubt = |why: String| NexoError::InDoubt(format!("the terminal's answer {why}"));
        if let Some(rejected) = rejection(bytes) {
            return Err(rejected);
        }
        let response: SaleToPoiResponse = match &self.key {
            Some(key) => {
                let secured: SecuredDocument = serde_json::from_slice(bytes)
                    .map_err(|e| doubt(format!("is not an encrypted nexo response ({})", short(&e.to_string()))))?;
                let Some(message) = secured.response else {
                    return Err(doubt("is not a SaleToPOIResponse".into()));
                };
                let plain = key.open(&message).map_err(|e| doubt(format!("was refused: {e}")))?;
                let inner: SaleToPoiResponse = serde_json::from_slice(&plain)
                    .map_err(|e| doubt(format!("decrypted to no nexo response ({})", short(&e.to_string()))))?;
                if inner.header != message.message_header {
                    return Err(doubt("has an encrypted header that differs from its clear one".into()));
                }
                inner
            }
            None => serde_json::from_slice(bytes)
                .map_err(|e| doubt(format!("is not a clear nexo response ({})", short(&e.to_string()))))?,
        };
        check_header(sent, &response.header).map_err(|why| doubt(format!("does not answer the request: {why}")))?;
        Ok(response)
    }

    /// Asks the terminal how it is (DiagnosisRequest) and judges its answer.
    pub async fn diagnose(&self) -> Health {
        let body = DiagnosisRequest { host_diagnosis_flag: Some(false), poi_id: None };
        match self.send(&self.request(&health_service_id(self.health_ids.as_deref()), body.into())).await {
            Ok(response) => judge(&response),
            Err(e @ (NexoError::Identity(_) | NexoError::Refused(_))) => Health::Unavailable(e.to_string()),
            Err(e) => Health::Down(e.to_string()),
        }
    }
}

/// What a health check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The terminal answered: whether it is ready (GlobalStatus OK), and
    /// what it said.
    Up { ready: bool, detail: String },
    /// No answer (not reachable, no answer in time, an unreadable one).
    Down(String),
    /// Not the lane's terminal, or one that rejects posd's key: nothing will
    /// work until a person fixes the configuration or the terminal.
    Unavailable(String),
}

/// A DiagnosisResponse's verdict.
fn judge(response: &SaleToPoiResponse) -> Health {
    let ResponseBody::Diagnosis(d) = &response.body else {
        return Health::Down("the terminal answered the DiagnosisRequest with another message".into());
    };
    if d.response.result != ResultType::Success {
        let condition = d.response.error_condition.as_ref().map_or("no ErrorCondition", ErrorCondition::as_str);
        return Health::Up { ready: false, detail: pos_mask::scrub(&format!("diagnosis failed: {condition}")) };
    }
    match d.poi_status.as_ref().map(|s| &s.global_status) {
        Some(GlobalStatus::Ok) | None => Health::Up { ready: true, detail: "ready".into() },
        Some(other) => Health::Up { ready: false, detail: pos_mask::scrub(&format!("GlobalStatus {other}")) },
    }
}

/// The terminal's `EventNotification` that rejects a request (it could not
/// decrypt it, or could not read it), sent in clear under
/// `SaleToPOIRequest`; any other message from the terminal's side there is
/// no answer either.
fn rejection(bytes: &[u8]) -> Option<NexoError> {
    let document: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let message = document.get(pos_nexo::message::REQUEST_KEY)?;
    let event = message.get("EventNotification");
    let text = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).unwrap_or("").to_string();
    let to_notify = text(event.and_then(|e| e.get("EventToNotify")));
    if to_notify == "Reject" {
        let details = text(event.and_then(|e| e.get("EventDetails")));
        let details = if details.is_empty() { "no details".to_string() } else { details };
        return Some(NexoError::Refused(pos_mask::scrub(&format!(
            "Reject ({details}); a wrong key_id, key_version or passphrase is the usual cause"
        ))));
    }
    Some(NexoError::InDoubt(pos_mask::scrub(&format!(
        "the terminal sent a message of its own instead of an answer (EventToNotify {to_notify:?})"
    ))))
}

/// Whether an answer's header is the one to the request `sent`: a response,
/// of the same category, between the same SaleID, ServiceID and POIID.
fn check_header(sent: &MessageHeader, got: &MessageHeader) -> Result<(), String> {
    let mut wrong = Vec::new();
    if got.message_type != MessageType::Response {
        wrong.push(format!("MessageType {}", got.message_type));
    }
    if got.message_category != sent.message_category {
        wrong.push(format!("MessageCategory {} (sent {})", got.message_category, sent.message_category));
    }
    for (name, got, sent) in [
        ("SaleID", &got.sale_id, &sent.sale_id),
        ("ServiceID", &got.service_id, &sent.service_id),
        ("POIID", &Some(got.poi_id.clone()), &Some(sent.poi_id.clone())),
    ] {
        if got != sent {
            let shown = |v: &Option<String>| v.as_deref().map_or("none".to_string(), |s| format!("{s:?}"));
            wrong.push(format!("{name} {} (sent {})", shown(got), shown(sent)));
        }
    }
    if wrong.is_empty() { Ok(()) } else { Err(pos_mask::scrub(&wrong.join(", "))) }
}

/// An error's text, short enough for a message.
fn short(text: &str) -> String {
    pos_mask::scrub_with_limit(text, 120)
}

/// Logs one document of an exchange, decoded and scrubbed; health checks
/// at debug level, everything else at info.
fn log_document(lane: &str, quiet: bool, direction: &str, header: &MessageHeader, document: &[u8]) {
    let text = pos_mask::scrub_with_limit(&String::from_utf8_lossy(document), LOG_LIMIT);
    let category = header.message_category.as_str();
    let service_id = header.service_id.as_deref().unwrap_or("");
    if quiet {
        tracing::debug!(%lane, direction, category, service_id, document = %text, "nexo");
    } else {
        tracing::info!(%lane, direction, category, service_id, document = %text, "nexo");
    }
}

/// The health check: asks the terminal every `interval` (not while another
/// exchange is in flight) and keeps the lane's device state.
async fn watch(terminal: Arc<NexoTerminal>, interval: Duration, state: Arc<Mutex<ReaderState>>) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        ticks.tick().await;
        if terminal.busy.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let health = terminal.diagnose().await;
        let shown = format!("{health:?}");
        if shown != last {
            match &health {
                Health::Up { ready: true, .. } => tracing::info!(lane = %terminal.lane, "nexo terminal up"),
                Health::Up { detail, .. } => tracing::warn!(lane = %terminal.lane, %detail, "nexo terminal not ready"),
                Health::Down(why) => tracing::warn!(lane = %terminal.lane, error = %why, "nexo terminal down"),
                Health::Unavailable(why) => {
                    tracing::error!(lane = %terminal.lane, error = %why, "nexo terminal unavailable");
                }
            }
            last = shown;
        }
        apply(&terminal, &health, &mut state.lock().unwrap());
    }
}

/// Keeps what a health check found in the lane's device state (which the
/// status, the metrics and the monitor's connect/disconnect events show).
fn apply(terminal: &NexoTerminal, health: &Health, state: &mut ReaderState) {
    match health {
        Health::Up { ready, detail } => {
            let poi_id = terminal.poi_id();
            state.connect(ReaderState {
                serial: poi_id.to_string(),
                model: poi_id.split_once('-').map_or(poi_id, |(model, _)| model).to_string(),
                firmware: "nexo".into(),
                healthy: *ready,
                detail: detail.clone(),
                ..ReaderState::default()
            });
        }
        Health::Down(why) => state.lose(format!("down: {why}")),
        Health::Unavailable(why) => state.lose(format!("unavailable: {why}")),
    }
}

#[cfg(test)]
mod tests;
