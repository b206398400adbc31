//! Client of the central gateway.
//!
//! The one distinction that matters for money: whether a request *cannot*
//! have reached the gateway. Each call opens its own connection first; only
//! a failure to connect is [`AuthOutcome::NotSent`]. Once the request is on
//! a connection, anything but a well-formed answer is [`AuthOutcome::Unknown`]
//! and is settled by a status query under the same key, never by resending
//! under a new one.
//!
//! The gateway's texts are device text to posd: every answer and error a
//! [`Gateway`] method returns has them scrubbed ([`pos_mask::scrub`],
//! through `Scrubbed` and `status_text`) before any caller stores, logs or
//! shows them.

use std::time::Duration;

use pos_mask::scrub;
use pos_proto::gateway::gateway_client::GatewayClient as Client;
use pos_proto::gateway::{
    AuthorizeRequest, BatchResult, ForwardBatchRequest, ForwardResult, GatewayEvent, GetTransactionRequest,
    RefundResult, ReverseRequest, TerminalRecordAck, Transaction,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub url: String,
    pub connect_timeout: Duration,
    /// How long to wait for an answer once a request is sent.
    pub request_timeout: Duration,
    /// A private CA for an https gateway (PEM); otherwise the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// posd's client certificate and key (PEM) for a gateway that requires one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// What came of an authorization request.
#[derive(Debug)]
pub enum AuthOutcome {
    /// The gateway's answer.
    Answer(Transaction),
    /// The gateway refused the request as malformed; nothing was charged.
    Rejected(String),
    /// No connection could be made: the request never left posd.
    NotSent(String),
    /// The request never left posd, for a reason on this machine
    /// (descriptors or memory exhausted, TLS not set up): the gateway may
    /// well be reachable, so this is no ground for an offline approval.
    LocalFault(String),
    /// The request may have reached the gateway, but no answer came back.
    Unknown(String),
}

/// What came of a forwarding batch.
#[derive(Debug)]
pub enum BatchOutcome {
    /// One result per item, in order.
    Results(Vec<ForwardResult>),
    /// The call failed as a whole; `auth` marks credential errors, which
    /// pause forwarding instead of being retried at once.
    LinkError { message: String, auth: bool },
}

/// Why a capture, void, refund or reversal call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never left posd.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The gateway refused it (wrong state, unknown key, bad amount).
    #[error("refused by the gateway: {0}")]
    Refused(String),
    /// It may have been processed; repeating the same call is safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// No answer in time; it may have been processed; repeating it is safe.
    #[error("no answer in time: {0}")]
    TimedOut(String),
}

/// Why the gateway's record of a refund could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RefundStatusError {
    /// The gateway does not offer the status query (UNIMPLEMENTED).
    #[error("the gateway cannot be asked about refunds: {0}")]
    Unsupported(String),
    /// No answer: not reached, timed out, or an error.
    #[error("{0}")]
    Unanswered(String),
}

fn is_auth_error(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
}

/// The message of a status the gateway sent, scrubbed.
pub(crate) fn status_text(s: &tonic::Status) -> String {
    scrub(s.message())
}

/// "Code: message" of a status the gateway sent, the message scrubbed.
fn status_line(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), status_text(s))
}

/// An answer from the gateway with its texts (decline and error reasons,
/// codes, references, ids) scrubbed: what posd stores, logs and shows of it.
pub(crate) trait Scrubbed {
    fn scrubbed(self) -> Self;
}

/// Identifiers (keys, event ids, the gateway's reference) are left as sent:
/// posd matches them against its own and deduplicates by them, and a masked
/// one would match nothing or collide with another.
impl Scrubbed for Transaction {
    fn scrubbed(mut self) -> Self {
        for text in [&mut self.decline_code, &mut self.decline_message, &mut self.auth_code, &mut self.currency] {
            *text = scrub(text.as_str());
        }
        self
    }
}

impl Scrubbed for RefundResult {
    fn scrubbed(mut self) -> Self {
        for text in [&mut self.decline_code, &mut self.decline_message] {
            *text = scrub(text.as_str());
        }
        self
    }
}

impl Scrubbed for BatchResult {
    fn scrubbed(mut self) -> Self {
        self.batch_id = scrub(&self.batch_id);
        for total in &mut self.totals {
            total.currency = scrub(&total.currency);
        }
        self
    }
}

/// The item's `transaction_key` is left as sent: posd only matches it
/// against its own keys and never keeps it.
impl Scrubbed for ForwardResult {
    fn scrubbed(mut self) -> Self {
        self.transaction = self.transaction.map(Scrubbed::scrubbed);
        self.error_code = scrub(&self.error_code);
        self.error_message = scrub(&self.error_message);
        self
    }
}

impl Scrubbed for GatewayEvent {
    fn scrubbed(mut self) -> Self {
        for text in [&mut self.kind, &mut self.currency, &mut self.message] {
            *text = scrub(text.as_str());
        }
        self
    }
}

impl Scrubbed for TerminalRecordAck {
    fn scrubbed(self) -> Self {
        self
    }
}

pub struct Gateway {
    endpoint: Endpoint,
    settings: GatewaySettings,
    online: watch::Sender<bool>,
    /// Why the gateway was last found unreachable; empty once it answers.
    last_error: std::sync::Mutex<String>,
    /// See [`Gateway::local_faults`].
    local_faults: std::sync::atomic::AtomicU64,
    /// In-process use (tests, the simulator): connections come from here
    /// instead of the network.
    dial: Option<Dial>,
}

/// In-process use (the engine's tests, the simulator): opens one connection
/// to a gateway served in the same process (one end of an in-memory pipe),
/// or refuses it as a gateway that is down would. See [`Gateway::in_process`].
pub type Dial = std::sync::Arc<dyn Fn() -> std::io::Result<tokio::io::DuplexStream> + Send + Sync>;

/// Why no connection to the gateway was made.
#[derive(Debug)]
struct ConnectError {
    message: String,
    /// The network did not reach the gateway (refused, timed out, no route,
    /// no address for its name); otherwise the cause is on this machine.
    network: bool,
}

/// Whether a failed connect is the network's doing: refused, reset, timed
/// out, no route, no address for the name. Everything else (EMFILE, ENFILE,
/// ENOMEM, ENOBUFS, a TLS handshake or set-up error, anything unrecognised)
/// is a fault on this machine or in its set-up, which must never pass for
/// "the gateway is unreachable": that would approve payments offline while
/// the gateway may be up.
fn network_cause(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    const LOCAL: [i32; 4] = [libc_errno::EMFILE, libc_errno::ENFILE, libc_errno::ENOMEM, libc_errno::ENOBUFS];
    let mut network = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error().is_some_and(|n| LOCAL.contains(&n)) {
                return false;
            }
            network |= matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::NetworkDown
                    | K::AddrNotAvailable
                    | K::NotConnected
            );
        }
        // hyper's connector names a failed name lookup so.
        network |= err.to_string() == "dns error";
        cur = err.source();
    }
    network
}

/// Whether this process can open no socket now (descriptors or memory
/// exhausted): asked only after a failed connect.
fn descriptors_exhausted() -> bool {
    use libc_errno::*;
    match std::net::UdpSocket::bind(("127.0.0.1", 0)) {
        Ok(_) => false,
        Err(e) => e.raw_os_error().is_some_and(|n| [EMFILE, ENFILE, ENOMEM, ENOBUFS].contains(&n)),
    }
}

/// The errno values [`network_cause`] treats as local (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

impl Gateway {
    pub fn new(settings: GatewaySettings) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| anyhow::anyhow!("invalid gateway URL {:?}: {e}", settings.url))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            // A WAN that drops without closing connections must not leave the
            // gateway event stream waiting forever.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let endpoint = if settings.url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &settings.ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &settings.identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("gateway TLS settings: {e}"))?
        } else {
            endpoint
        };
        Ok(Self {
            endpoint,
            settings,
            online: watch::Sender::new(false),
            last_error: Default::default(),
            local_faults: Default::default(),
            dial: None,
        })
    }

    /// A client whose connections `dial` makes (in-memory pipes to a gateway
    /// service in the same process: the engine's tests, the simulator)
    /// instead of TCP; posd itself never makes one. Everything from
    /// the connection on is [`Gateway::new`]'s: a connection per call, the
    /// timeouts, what counts as not sent, scrubbing. A refused dial is a
    /// refused TCP connect (not sent, the gateway unreachable).
    pub fn in_process(settings: GatewaySettings, dial: Dial) -> anyhow::Result<Self> {
        Ok(Self { dial: Some(dial), ..Self::new(settings)? })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// True when the last contact with the gateway succeeded.
    pub fn is_online(&self) -> bool {
        *self.online.borrow()
    }

    /// Follows the online state as calls and health checks find it.
    pub fn subscribe_online(&self) -> watch::Receiver<bool> {
        self.online.subscribe()
    }

    /// Why the gateway was last found unreachable (empty while it answers).
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap().clone()
    }

    fn set_online(&self, online: bool) {
        if online {
            self.last_error.lock().unwrap().clear();
        }
        if self.online.send_replace(online) != online {
            tracing::info!(online, url = %self.settings.url, "gateway connectivity changed");
        }
    }

    /// Health check: a status query for a key that never exists. Any answer
    /// from the gateway itself, even a refusal of posd's credentials, means it
    /// is reachable; a connection closed under the call (a TLS handshake the
    /// gateway rejected, say) does not.
    pub async fn probe(&self) {
        let online = match self.connect().await {
            Err(_) => false,
            Ok(mut client) => {
                let req = GetTransactionRequest { transaction_key: "posd-connectivity-probe".into() };
                match tokio::time::timeout(self.settings.request_timeout, client.get_transaction(req)).await {
                    Err(_) => false,
                    Ok(Ok(_)) => true,
                    Ok(Err(s)) => {
                        // A status the gateway sent has no source; one made
                        // from a broken connection carries its transport error.
                        let answered = std::error::Error::source(&s).is_none()
                            && !matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded);
                        if !answered {
                            *self.last_error.lock().unwrap() =
                                format!("{} did not answer: {}", self.settings.url, scrub(&source_chain(&s)));
                        }
                        answered
                    }
                }
            }
        };
        self.set_online(online);
    }

    /// The gateway's event stream after a sequence number. Its events are
    /// the gateway's text: scrub each (`Scrubbed`) before using it.
    pub async fn events(
        &self,
        after_sequence: u64,
    ) -> Result<tonic::Streaming<pos_proto::gateway::GatewayEvent>, String> {
        let mut client = self.connect().await?;
        let req = pos_proto::gateway::GatewayEventsRequest { after_sequence };
        match tokio::time::timeout(self.settings.request_timeout, client.stream_events(req)).await {
            Err(_) => Err("no answer to the event stream request".into()),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(s)) => Err(status_line(&s)),
        }
    }

    /// Captures an authorized charge.
    pub async fn capture(&self, key: &str, amount_minor: i64) -> Result<Transaction, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        let req = pos_proto::gateway::CaptureRequest { transaction_key: key.into(), amount_minor };
        self.finish(tokio::time::timeout(self.settings.request_timeout, client.capture(req)).await)
    }

    /// Voids an authorized charge.
    pub async fn void(&self, key: &str) -> Result<Transaction, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        let req = pos_proto::gateway::VoidRequest { transaction_key: key.into() };
        self.finish(tokio::time::timeout(self.settings.request_timeout, client.void(req)).await)
    }

    /// Refunds (part of) a captured charge under the refund's own key.
    pub async fn refund(
        &self,
        req: pos_proto::gateway::RefundRequest,
    ) -> Result<pos_proto::gateway::RefundResult, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        self.finish(tokio::time::timeout(self.settings.request_timeout, client.refund(req)).await)
    }

    /// The gateway's record of a refund under its key: `Ok(None)` when it
    /// has none. [`RefundStatusError::Unsupported`] for a gateway without the
    /// call.
    pub async fn refund_status(
        &self,
        refund_key: &str,
    ) -> Result<Option<pos_proto::gateway::RefundResult>, RefundStatusError> {
        let mut client = self.connect().await.map_err(RefundStatusError::Unanswered)?;
        let req = pos_proto::gateway::GetRefundRequest { refund_key: refund_key.to_string() };
        match tokio::time::timeout(self.settings.request_timeout, client.get_refund(req)).await {
            Err(_) => {
                Err(RefundStatusError::Unanswered(format!("no answer within {:?}", self.settings.request_timeout)))
            }
            Ok(Ok(resp)) => {
                self.set_online(true);
                Ok(Some(resp.into_inner().scrubbed()))
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                self.set_online(true);
                Ok(None)
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented && std::error::Error::source(&s).is_none() => {
                self.set_online(true);
                Err(RefundStatusError::Unsupported(status_text(&s)))
            }
            Ok(Err(s)) => Err(RefundStatusError::Unanswered(status_line(&s))),
        }
    }

    /// Closes a terminal's batch.
    pub async fn close_batch(
        &self,
        terminal_id: &str,
        batch_key: &str,
    ) -> Result<pos_proto::gateway::BatchResult, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        let req =
            pos_proto::gateway::CloseBatchRequest { terminal_id: terminal_id.into(), batch_key: batch_key.into() };
        self.finish(tokio::time::timeout(self.settings.request_timeout, client.close_batch(req)).await)
    }

    /// Records a payment a terminal authorized by itself; `Ok(true)` when
    /// the gateway already had the record.
    pub async fn record_terminal(&self, record: pos_proto::gateway::TerminalRecord) -> Result<bool, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        let call = client.record_terminal_transaction(record);
        self.finish(tokio::time::timeout(self.settings.request_timeout, call).await).map(|ack| ack.duplicate)
    }

    fn finish<T: Scrubbed>(
        &self,
        r: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, CallError> {
        match r {
            Err(_) => {
                self.set_online(false);
                Err(CallError::TimedOut(format!("no answer within {:?}", self.settings.request_timeout)))
            }
            Ok(Ok(resp)) => {
                self.set_online(true);
                Ok(resp.into_inner().scrubbed())
            }
            Ok(Err(s)) => match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists => {
                    self.set_online(true);
                    Err(CallError::Refused(status_text(&s)))
                }
                c if is_auth_error(c) => {
                    Err(CallError::NotSent(format!("the gateway refused the credentials: {}", status_text(&s))))
                }
                _ => Err(CallError::Unknown(status_line(&s))),
            },
        }
    }

    /// Forwards queued payments in one call.
    pub async fn forward_batch(&self, items: Vec<AuthorizeRequest>) -> BatchOutcome {
        let n = items.len();
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(message) => return BatchOutcome::LinkError { message, auth: false },
        };
        let call = client.forward_batch(ForwardBatchRequest { items });
        match tokio::time::timeout(self.settings.request_timeout, call).await {
            Err(_) => {
                self.set_online(false);
                BatchOutcome::LinkError {
                    message: format!("no answer within {:?}", self.settings.request_timeout),
                    auth: false,
                }
            }
            Ok(Ok(resp)) => {
                self.set_online(true);
                let results: Vec<ForwardResult> =
                    resp.into_inner().results.into_iter().map(Scrubbed::scrubbed).collect();
                if results.len() != n {
                    return BatchOutcome::LinkError {
                        message: format!("the gateway answered {} results for {n} items", results.len()),
                        auth: false,
                    };
                }
                BatchOutcome::Results(results)
            }
            Ok(Err(s)) => {
                let auth = is_auth_error(s.code());
                if auth {
                    // It answered: the link is up, the credentials are not.
                    self.set_online(true);
                }
                BatchOutcome::LinkError { message: status_line(&s), auth }
            }
        }
    }

    async fn connect(&self) -> Result<Client<Channel>, String> {
        self.connect_classified().await.map_err(|e| e.message)
    }

    /// Connects, telling a network that does not reach the gateway from a
    /// fault on this machine. Only the first makes the gateway "offline".
    async fn connect_classified(&self) -> Result<Client<Channel>, ConnectError> {
        match self.open().await {
            Ok(channel) => Ok(Client::new(channel)),
            Err(e) => {
                // The chain may quote the gateway (its certificate's names, say).
                let message = format!("cannot connect to {}: {}", self.settings.url, scrub(&source_chain(&e)));
                // Out of descriptors, a name lookup fails as "temporary
                // failure" (EAI_AGAIN), which reads like the network's: a
                // socket of our own tells.
                let network = network_cause(&e) && !descriptors_exhausted();
                if network {
                    self.set_online(false);
                    *self.last_error.lock().unwrap() = message.clone();
                } else {
                    self.local_faults.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(url = %self.settings.url, error = %message, "ALERT: a fault on this machine kept posd from connecting to the gateway");
                }
                Err(ConnectError { message, network })
            }
        }
    }

    /// A new connection to the gateway (in process, through the dialer).
    async fn open(&self) -> Result<Channel, tonic::transport::Error> {
        if let Some(dial) = &self.dial {
            let dial = dial.clone();
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                std::future::ready(dial().map(hyper_util::rt::TokioIo::new))
            });
            return self.endpoint.connect_with_connector(connector).await;
        }
        self.endpoint.connect().await
    }

    /// Connections to the gateway that failed for a reason on this machine
    /// (descriptors, memory, TLS), not the network: the metric to alert on.
    pub fn local_faults(&self) -> u64 {
        self.local_faults.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn authorize(&self, req: AuthorizeRequest) -> AuthOutcome {
        let mut client = match self.connect_classified().await {
            Ok(c) => c,
            Err(ConnectError { message, network: true }) => return AuthOutcome::NotSent(message),
            Err(ConnectError { message, network: false }) => return AuthOutcome::LocalFault(message),
        };
        match tokio::time::timeout(self.settings.request_timeout, client.authorize(req)).await {
            Err(_) => {
                self.set_online(false);
                AuthOutcome::Unknown(format!("no answer within {:?}", self.settings.request_timeout))
            }
            Ok(Ok(resp)) => {
                self.set_online(true);
                match resp.into_inner().transaction {
                    Some(t) => AuthOutcome::Answer(t.scrubbed()),
                    None => AuthOutcome::Unknown("answer without a transaction".into()),
                }
            }
            Ok(Err(status))
                if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) =>
            {
                self.set_online(true);
                AuthOutcome::Rejected(status_text(&status))
            }
            // Refused before processing (credentials): nothing was charged.
            Ok(Err(status)) if is_auth_error(status.code()) => {
                AuthOutcome::NotSent(format!("the gateway refused the credentials: {}", status_text(&status)))
            }
            Ok(Err(status)) => AuthOutcome::Unknown(status_line(&status)),
        }
    }

    /// The gateway's record under a key: `Ok(None)` when it has none.
    pub async fn transaction(&self, key: &str) -> Result<Option<Transaction>, String> {
        let mut client = self.connect().await?;
        let req = GetTransactionRequest { transaction_key: key.to_string() };
        match tokio::time::timeout(self.settings.request_timeout, client.get_transaction(req)).await {
            Err(_) => Err(format!("no answer within {:?}", self.settings.request_timeout)),
            Ok(Ok(resp)) => {
                self.set_online(true);
                Ok(Some(resp.into_inner().scrubbed()))
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                self.set_online(true);
                Ok(None)
            }
            Ok(Err(s)) => Err(status_line(&s)),
        }
    }

    pub async fn reverse(&self, req: ReverseRequest) -> Result<Transaction, CallError> {
        let mut client = self.connect().await.map_err(CallError::NotSent)?;
        self.finish(tokio::time::timeout(self.settings.request_timeout, client.reverse(req)).await)
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error as hyper's connector wraps the socket's.
    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn only_the_network_makes_the_gateway_unreachable() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::ConnectionRefused, ErrorKind::TimedOut, ErrorKind::HostUnreachable] {
            assert!(network_cause(&Wrapped("tcp connect error", Error::from(kind))), "{kind:?}");
        }
        assert!(network_cause(&Wrapped("dns error", Error::other("failed to lookup address information"))));
        // EMFILE, ENFILE, ENOMEM, ENOBUFS: this machine, not the network.
        for errno in [24, 23, 12, 105] {
            assert!(!network_cause(&Wrapped("tcp open error", Error::from_raw_os_error(errno))), "errno {errno}");
        }
        // A TLS failure, or anything not recognised, is no reason to go offline.
        assert!(!network_cause(&Wrapped("invalid peer certificate", Error::other("UnknownIssuer"))));
    }

    #[test]
    fn the_gateway_s_texts_are_scrubbed_before_posd_uses_them() {
        let t = Transaction {
            decline_code: "generic_decline".into(),
            decline_message: "declined 4242424242424242\nINFO forged".into(),
            auth_code: "A1\x1b[2J".into(),
            gateway_reference: "GW-1".into(),
            ..Default::default()
        }
        .scrubbed();
        assert_eq!(t.decline_code, "generic_decline");
        assert_eq!(t.decline_message, "declined 424242******4242 INFO forged");
        assert_eq!(t.auth_code, "A1 [2J");
        assert_eq!(t.gateway_reference, "GW-1");

        let s = tonic::Status::invalid_argument("card 4242 4242 4242 4242\r\nforged");
        assert_eq!(status_text(&s), "card 424242******4242  forged");
        assert_eq!(status_line(&s), "InvalidArgument: card 424242******4242  forged");

        let r = ForwardResult {
            transaction_key: "KEY".into(),
            transaction: Some(Transaction { decline_message: "no\u{2028}way".into(), ..Default::default() }),
            error_code: String::new(),
            error_message: "x".repeat(1000),
        }
        .scrubbed();
        assert_eq!(r.transaction_key, "KEY");
        assert_eq!(r.transaction.unwrap().decline_message, "no way");
        assert_eq!(r.error_message.chars().count(), pos_mask::SCRUB_LIMIT);

        let e = GatewayEvent {
            event_id: "1234567890123456789".into(),
            message: "refund for 5555555555554444\nforged".into(),
            ..Default::default()
        }
        .scrubbed();
        assert_eq!(e.message, "refund for 555555******4444 forged");
        assert_eq!(e.event_id, "1234567890123456789", "an identifier is matched and deduplicated, never masked");
        let r = RefundResult { decline_message: "\u{202e}4000056655665556".into(), ..Default::default() }.scrubbed();
        assert_eq!(r.decline_message, " 400005******5556");
    }
}
