//! The HTTPS line to a nexo terminal: one POST per request, each on a new
//! connection, bounded in time.
//!
//! As with the gateway, what matters for money is whether a request
//! *cannot* have reached the terminal ([`PostError::NotSent`],
//! [`PostError::Identity`]: no connection, or a handshake that failed, so no
//! byte of the request left posd) or may have ([`PostError::InDoubt`]: the
//! connection broke or the answer did not come in time once the request was
//! being written). A payment in doubt is settled by asking the terminal
//! (TransactionStatus), never by sending it again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::line::InProcessLine;

/// The largest answer posd reads from a terminal (receipts included).
pub const MAX_ANSWER: usize = 1 << 20;

/// How posd reaches one terminal.
#[derive(Debug, Clone)]
pub struct LineSettings {
    /// `https://HOST:PORT/PATH`, e.g. `https://192.168.1.20:8443/nexo`.
    pub url: String,
    /// The terminal's CA (PEM).
    pub ca_pem: Vec<u8>,
    pub poi_id: String,
    /// Connection and TLS handshake, each.
    pub connect_timeout: Duration,
    /// From the request's first byte to the whole answer: a payment's POST
    /// lasts as long as the customer at the terminal.
    pub answer_timeout: Duration,
}

/// Why a POST did not bring an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// No connection or no TLS session: nothing was sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The terminal is not the lane's (wrong POIID, or a chain the lane's
    /// CA did not sign): nothing was sent.
    #[error("terminal refused: {0}")]
    Identity(String),
    /// The terminal answered with an HTTP error status: it did not take the
    /// request.
    #[error("the terminal answered HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    /// The request may have reached the terminal; no (whole) answer came.
    #[error("outcome unknown: {0}")]
    InDoubt(String),
}

impl PostError {
    /// True when the request cannot have reached the terminal.
    pub fn not_sent(&self) -> bool {
        matches!(self, PostError::NotSent(_) | PostError::Identity(_))
    }
}

/// One lane's line to its terminal.
pub struct TerminalLine {
    address: String,
    authority: String,
    path: String,
    transport: Transport,
    settings: LineSettings,
}

/// How a POST reaches the terminal.
enum Transport {
    /// TCP, then TLS with the terminal's identity checked: a real terminal.
    Tls { server_name: ServerName<'static>, connector: TlsConnector },
    /// A terminal served in the same process (the simulator): HTTP/1 on an
    /// in-memory pipe, without TLS. posd's configuration never makes one.
    InProcess(InProcessLine),
}

impl std::fmt::Debug for TerminalLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalLine").field("url", &self.settings.url).field("poi_id", &self.settings.poi_id).finish()
    }
}

/// Host, port and path of a terminal URL; only `https` is accepted.
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?}: a nexo terminal is reached over https"));
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let path = match uri.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    Ok((host, uri.port_u16().unwrap_or(443), path))
}

/// Whether a URL's host is this machine (127.0.0.0/8, ::1, `localhost`):
/// the only place posd speaks to a terminal without message encryption.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl TerminalLine {
    pub fn new(settings: LineSettings) -> Result<Self, String> {
        let (host, port, path) = parse_url(&settings.url)?;
        let server_name = ServerName::try_from(host.clone()).map_err(|e| format!("{:?}: {e}", settings.url))?;
        let tls = super::tls::client_config(&settings.ca_pem, &settings.poi_id)?;
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self {
            authority: address.clone(),
            address,
            path,
            transport: Transport::Tls { server_name, connector: TlsConnector::from(Arc::new(tls)) },
            settings,
        })
    }

    /// A line to a terminal served in this process on `line` (the
    /// simulator); `settings.url` names it (its CA is not used).
    pub fn in_process(settings: LineSettings, line: InProcessLine) -> Result<Self, String> {
        let (host, port, path) = parse_url(&settings.url)?;
        let address = format!("{host}:{port}");
        Ok(Self { authority: address.clone(), address, path, transport: Transport::InProcess(line), settings })
    }

    pub fn poi_id(&self) -> &str {
        &self.settings.poi_id
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// POSTs one JSON document and returns the terminal's answer (a 2xx
    /// status's body).
    pub async fn post(&self, body: Vec<u8>) -> Result<Bytes, PostError> {
        match &self.transport {
            Transport::Tls { server_name, connector } => {
                let tls = self.connect_tls(server_name, connector).await?;
                self.exchange(tls, body).await
            }
            Transport::InProcess(line) => {
                let pipe = (line.dial)()
                    .map_err(|e| PostError::NotSent(format!("cannot connect to {}: {e}", self.address)))?;
                self.exchange(pipe, body).await
            }
        }
    }

    /// A TLS session with the terminal, its identity checked.
    async fn connect_tls(
        &self,
        server_name: &ServerName<'static>,
        connector: &TlsConnector,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PostError> {
        let s = &self.settings;
        let tcp = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(&self.address)).await {
            Err(_) => {
                return Err(PostError::NotSent(format!(
                    "no connection to {} within {:?}",
                    self.address, s.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(PostError::NotSent(format!("cannot connect to {}: {e}", self.address))),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        match tokio::time::timeout(s.connect_timeout, connector.connect(server_name.clone(), tcp)).await {
            Err(_) => {
                Err(PostError::NotSent(format!("no TLS session with {} within {:?}", self.address, s.connect_timeout)))
            }
            Ok(Err(e)) => Err(handshake_error(&self.address, &e)),
            Ok(Ok(tls)) => Ok(tls),
        }
    }

    /// One HTTP/1 POST of `body` on the connection `io`, bounded by the
    /// answer timeout.
    async fn exchange<IO>(&self, io: IO, body: Vec<u8>) -> Result<Bytes, PostError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.settings;
        // The HTTP/1 handshake only sets up the connection's state.
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| PostError::NotSent(format!("HTTP set-up with {} failed: {e}", self.address)))?;
        let connection = AbortOnDrop(tokio::spawn(connection));
        let request = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::NotSent(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let answer = tokio::time::timeout(s.answer_timeout, exchange).await;
        drop(connection);
        match answer {
            Err(_) => Err(PostError::InDoubt(format!("no answer from {} within {:?}", self.address, s.answer_timeout))),
            Ok(Err(e)) => Err(PostError::InDoubt(format!("the line to {} failed: {e}", self.address))),
            Ok(Ok((status, body))) if status.is_success() => Ok(body),
            Ok(Ok((status, body))) if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT => {
                let text = pos_mask::scrub(&String::from_utf8_lossy(&body[..body.len().min(200)]));
                Err(PostError::Refused { status: status.as_u16(), body: text })
            }
            Ok(Ok((status, _))) => Err(PostError::InDoubt(format!("{} answered HTTP {status}", self.address))),
        }
    }
}

/// A failed TLS handshake: a refused certificate is the terminal's identity.
fn handshake_error(address: &str, e: &std::io::Error) -> PostError {
    let refused = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match refused {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            PostError::Identity(format!("{address}: {}", other.0))
        }
        Some(rustls::Error::InvalidCertificate(cause)) => PostError::Identity(format!(
            "{address}: the terminal's certificate is not one the lane's CA file vouches for ({cause:?})"
        )),
        _ => PostError::NotSent(format!("TLS handshake with {address} failed: {e}")),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
pub(crate) mod tests;
