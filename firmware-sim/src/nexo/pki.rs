//! The terminal's identity: a CA made at start and a certificate it signs
//! whose common name is `<poi-id>.test.terminal.adyen.com`, as an Adyen test
//! terminal's is. The CA goes to a file (PEM) for the Sale system to pin.

use std::io::Write;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA (PEM) and the terminal's certificate chain and key.
pub struct Identity {
    pub ca_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The common name of terminal `poi_id`'s test certificate.
pub fn common_name(poi_id: &str) -> String {
    format!("{poi_id}.test.terminal.adyen.com")
}

/// A new CA and the certificate of terminal `poi_id` it signed.
pub fn issue(poi_id: &str) -> Result<Identity, rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "firmware-sim nexo test terminal CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, common_name(poi_id));
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Identity {
        ca_pem,
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// The TLS server settings for `identity` (ring, TLS 1.2 and 1.3).
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
}

/// Writes `contents` to `path` so that a reader sees the old file or the
/// whole new one, never a part: a temporary file beside it, synced, renamed.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let temporary = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = write_synced(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn write_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
