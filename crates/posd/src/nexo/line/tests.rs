//! The line against a TLS terminal in this process (loopback, port 0):
//! identity checks before anything is sent, and sent / not sent / in doubt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::*;

const POI: &str = "V400m-324688179";

/// A CA and a terminal certificate it signed for the common name `cn`
/// (the nexo terminal's tests use them too).
pub(crate) struct Pki {
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

pub(crate) fn issue(cn: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test terminal CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem().into_bytes();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem,
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with the request's body.
    Echo,
    /// This HTTP status, with a short text.
    Status(u16),
    /// Reads the request, then closes the connection without an answer.
    Close,
    /// Reads the request and never answers.
    Hold,
}

/// A terminal on loopback; counts the requests that reached it.
struct Terminal {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

/// A TLS acceptor presenting `pki`'s terminal certificate.
pub(crate) fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn terminal(pki: &Pki, behaviour: Behaviour) -> Terminal {
    let acceptor = acceptor(pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counted = counted.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        counted.fetch_add(1, Ordering::SeqCst);
                        match behaviour {
                            Behaviour::Echo => Ok(Response::new(Full::new(body))),
                            Behaviour::Status(code) => {
                                let mut r = Response::new(Full::new(Bytes::from_static(b"no such key")));
                                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                                Ok(r)
                            }
                            Behaviour::Close => Err("closing without an answer"),
                            Behaviour::Hold => std::future::pending::<Result<Response<Full<Bytes>>, &str>>().await,
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Terminal { addr, requests }
}

fn line(ca_pem: &[u8], addr: SocketAddr, answer_timeout: Duration) -> TerminalLine {
    TerminalLine::new(LineSettings {
        url: format!("https://{addr}/nexo"),
        ca_pem: ca_pem.to_vec(),
        poi_id: POI.into(),
        connect_timeout: Duration::from_secs(10),
        answer_timeout,
    })
    .unwrap()
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_lane_s_terminal_answers() {
    let pki = issue(&format!("{POI}.test.terminal.adyen.com"));
    let t = terminal(&pki, Behaviour::Echo).await;
    let answer = line(&pki.ca_pem, t.addr, LONG).post(br#"{"SaleToPOIRequest":{}}"#.to_vec()).await.unwrap();
    assert_eq!(&answer[..], br#"{"SaleToPOIRequest":{}}"#);
    assert_eq!(t.requests.load(Ordering::SeqCst), 1);

    let live = issue(&format!("{POI}.live.terminal.adyen.com"));
    let t = terminal(&live, Behaviour::Echo).await;
    assert!(line(&live.ca_pem, t.addr, LONG).post(b"{}".to_vec()).await.is_ok());
}

#[tokio::test]
async fn a_terminal_named_otherwise_is_refused_before_anything_is_sent() {
    for cn in [
        "V400m-999999999.test.terminal.adyen.com".to_string(),
        format!("{POI}.test.terminal.adyen.com.example"),
        "legacy-terminal-certificate.test.terminal.adyen.com".to_string(),
        "127.0.0.1".to_string(),
    ] {
        let pki = issue(&cn);
        let t = terminal(&pki, Behaviour::Echo).await;
        let err = line(&pki.ca_pem, t.addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(&err, PostError::Identity(m) if m.contains(POI)), "{cn}: {err}");
        assert!(err.not_sent());
        assert_eq!(t.requests.load(Ordering::SeqCst), 0, "{cn}: a request reached the wrong terminal");
    }
}

#[tokio::test]
async fn a_terminal_another_ca_signed_is_refused() {
    let name = format!("{POI}.test.terminal.adyen.com");
    // The impostor's CA even bears the lane CA's name.
    let (real, other) = (issue(&name), issue(&name));
    let t = terminal(&real, Behaviour::Echo).await;
    let err = line(&other.ca_pem, t.addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(&err, PostError::Identity(m) if m.contains("CA file")), "{err}");
    assert_eq!(t.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_terminal_listening_is_not_sent() {
    let pki = issue(&format!("{POI}.test.terminal.adyen.com"));
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = line(&pki.ca_pem, addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(err, PostError::NotSent(_)), "{err}");
}

#[tokio::test]
async fn an_answer_that_never_comes_leaves_the_request_in_doubt() {
    let pki = issue(&format!("{POI}.test.terminal.adyen.com"));
    let closing = terminal(&pki, Behaviour::Close).await;
    let err = line(&pki.ca_pem, closing.addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(err, PostError::InDoubt(_)), "{err}");
    assert!(!err.not_sent());
    assert_eq!(closing.requests.load(Ordering::SeqCst), 1);

    // The terminal holds the request (a customer at the keypad) past the bound.
    let holding = terminal(&pki, Behaviour::Hold).await;
    let err = line(&pki.ca_pem, holding.addr, Duration::from_millis(300)).post(b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(&err, PostError::InDoubt(m) if m.contains("no answer")), "{err}");
}

#[tokio::test]
async fn http_errors_say_whether_the_terminal_took_the_request() {
    let pki = issue(&format!("{POI}.test.terminal.adyen.com"));
    let t = terminal(&pki, Behaviour::Status(401)).await;
    let err = line(&pki.ca_pem, t.addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
    assert_eq!(err, PostError::Refused { status: 401, body: "no such key".into() });
    let t = terminal(&pki, Behaviour::Status(500)).await;
    let err = line(&pki.ca_pem, t.addr, LONG).post(b"{}".to_vec()).await.unwrap_err();
    assert!(matches!(err, PostError::InDoubt(_)), "{err}");
}

#[test]
fn urls_are_https_with_a_host() {
    assert_eq!(parse_url("https://127.0.0.2:8443/nexo").unwrap(), ("127.0.0.2".into(), 8443, "/nexo".into()));
    assert_eq!(parse_url("https://terminal.local/").unwrap(), ("terminal.local".into(), 443, "/".into()));
    assert_eq!(parse_url("https://[::1]:8443/nexo/").unwrap(), ("::1".into(), 8443, "/nexo/".into()));
    assert!(parse_url("http://127.0.0.1:8443/nexo").unwrap_err().contains("https"));
    assert!(parse_url("not a url").is_err());
    assert!(
        TerminalLine::new(LineSettings {
            url: "https://127.0.0.1:8443/nexo".into(),
            ca_pem: b"not pem".to_vec(),
            poi_id: POI.into(),
            connect_timeout: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(1),
        })
        .unwrap_err()
        .contains("CA file")
    );
}
