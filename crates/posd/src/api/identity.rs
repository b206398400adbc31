//! Who calls the register API: Unix peer credentials, a TLS client
//! certificate's subject or the TCP peer, and the refusal of a certificate
//! that names more than one register.

use tonic::{Request, Status};

use super::errors::rich;

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
                    // The certificate's text is a peer's: scrubbed before it
                    // is stored in an audit entry, logged or echoed.
                    (Some(cn), None) => format!("cn={}", pos_mask::scrub(cn.as_str().unwrap_or(""))),
                    (None, _) => "cn=".into(),
                    // Refused by [`authenticate`] before any call; never
                    // authorised as the first (or any) of its names.
                    (Some(_), Some(_)) => "unknown".into(),
                };
                let subject = pos_mask::scrub(&cert.subject().to_string());
                Caller { key, description: format!("tls subject \"{subject}\" from {peer}") }
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
