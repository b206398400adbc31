//! The connection to posd: a plain, TLS (`https://`) or unix-socket address,
//! and the TLS settings of `--tls-*`.

use pos_proto::terminal::payment_terminal_client::PaymentTerminalClient;
use tonic::transport::Channel;

use crate::TlsArgs;
use crate::cmd::Client;
use crate::failure::{Failure, causes};

impl TlsArgs {
    /// TLS settings for `addr`: none for plain addresses (where `--tls-*`
    /// makes no sense), the system roots plus the given files for https.
    fn config(&self, addr: &str) -> Result<Option<tonic::transport::ClientTlsConfig>, Failure> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if !addr.starts_with("https://") {
            if self.tls_ca.is_some() || self.tls_cert.is_some() {
                return Err(Failure::usage(format!("--tls-* options need an https:// --addr, not {addr:?}")));
            }
            return Ok(None);
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }
}

/// Connects to posd at HOST:PORT, http(s)://HOST:PORT, or unix:PATH.
pub(crate) async fn connect(addr: &str, tls: &TlsArgs) -> Result<Client, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::unreachable(format!("cannot reach posd at {addr}: {e} (is it running? see --addr / POSD_ADDR)"))
    };
    let unreachable = |e: &tonic::transport::Error| unreachable(&causes(e));
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = path.to_string();
        // The URI is required by the API but unused: the connector dials the socket.
        let endpoint = tonic::transport::Endpoint::from_static("http://posd.local");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|e| unreachable(&e))?;
        return Ok(PaymentTerminalClient::new(channel));
    }
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let mut endpoint = Channel::from_shared(url).map_err(|e| Failure::usage(format!("--addr {addr:?}: {e}")))?;
    if let Some(config) = tls.config(addr)? {
        endpoint = endpoint.tls_config(config).map_err(|e| Failure::usage(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    Ok(PaymentTerminalClient::new(channel))
}
