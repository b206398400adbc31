//! Who a nexo terminal is: its certificate chains to the lane's CA file,
//! and its subject's one common name is `<poi_id>.test.terminal.adyen.com`
//! or `<poi_id>.live.terminal.adyen.com` for the lane's configured POIID.
//!
//! Terminals are reached by IP address, so the host name of the URL says
//! nothing about them and is not checked; the POIID in the common name is
//! what identifies the device. Anything else is refused during the
//! handshake, before a byte of a request is sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

/// Why a terminal's certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the terminal's certificate names {found:?}, not POIID {poi_id} (expected {poi_id}.test|live.terminal.adyen.com)"
    )]
    OtherTerminal { poi_id: String, found: String },
    #[error("the terminal's certificate has {0} common names; exactly one is required")]
    CommonNames(usize),
    #[error("the terminal's certificate cannot be read: {0}")]
    Unreadable(String),
}

/// The POIID a terminal's common name carries, if it has the form
/// `<poiid>.(test|live).terminal.adyen.com`.
pub fn poi_id_of(common_name: &str) -> Option<&str> {
    let head = common_name
        .strip_suffix(".test.terminal.adyen.com")
        .or_else(|| common_name.strip_suffix(".live.terminal.adyen.com"))?;
    (!head.is_empty() && !head.contains('.')).then_some(head)
}

/// Checks that the leaf certificate (DER) names exactly the terminal `poi_id`.
pub fn check_identity(leaf: &[u8], poi_id: &str) -> Result<(), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    let [name] = names.as_slice() else {
        return Err(IdentityError::CommonNames(names.len()));
    };
    // The certificate's text is a peer's: scrubbed before it is shown.
    let found = pos_mask::scrub(name.as_str().unwrap_or(""));
    match poi_id_of(&found) {
        Some(id) if id == poi_id => Ok(()),
        _ => Err(IdentityError::OtherTerminal { poi_id: poi_id.to_string(), found }),
    }
}

/// Verifies a terminal's chain against the lane's CA and its identity
/// against the lane's POIID; the URL's host name is not consulted.
#[derive(Debug)]
pub struct TerminalVerifier {
    roots: RootCertStore,
    poi_id: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TerminalVerifier {
    pub fn new(roots: RootCertStore, poi_id: &str, provider: &CryptoProvider) -> Self {
        Self { roots, poi_id: poi_id.to_string(), algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for TerminalVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_identity(end_entity, &self.poi_id)
            .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS client settings for one terminal: its CA (PEM, one or more
/// certificates) and its POIID.
pub fn client_config(ca_pem: &[u8], poi_id: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert: CertificateDer<'static> = cert.map_err(|e| format!("the CA file is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err("the CA file holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(TerminalVerifier::new(roots, poi_id, &provider));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_carry_the_poi_id() {
        assert_eq!(poi_id_of("V400m-324688179.test.terminal.adyen.com"), Some("V400m-324688179"));
        assert_eq!(poi_id_of("P400Plus-1.live.terminal.adyen.com"), Some("P400Plus-1"));
        assert_eq!(poi_id_of("V400m-324688179.terminal.adyen.com"), None);
        assert_eq!(poi_id_of(".test.terminal.adyen.com"), None);
        assert_eq!(poi_id_of("a.b.test.terminal.adyen.com"), None);
        assert_eq!(poi_id_of("V400m-1.test.terminal.adyen.com.evil"), None);
    }
}
