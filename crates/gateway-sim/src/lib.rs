//! A simulated central gateway for tests, demos and technicians.
//!
//! A real gRPC server (`pos.gateway.v1`) with its own SQLite ledger. It
//! decrypts the reader's card blob, decides by the test-amount rules,
//! deduplicates by transaction key, tombstones reversed keys, and injects
//! faults switched at run time over a separate control address.
//!
//! # Layout
//! - [`ledger`]: the SQLite ledger.
//! - [`service`]: the gRPC service and the test-amount rules.
//! - [`control`]: faults and the control protocol.
//! - [`start`]: runs both listeners; takes the gateway listener down and up
//!   again as the `down` fault comes and goes.

pub mod control;
pub mod ledger;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_cardcrypt::BaseKey;
use pos_proto::gateway::gateway_server::GatewayServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

pub use control::Fault;

pub struct Options {
    pub listen: String,
    pub control: String,
    pub db: PathBuf,
    pub base_key: BaseKey,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// With TLS: require client certificates signed by this CA (PEM).
    pub client_ca: Option<Vec<u8>>,
}

/// A running simulator.
pub struct Running {
    /// The gateway API's actual address (after binding port 0).
    pub listen_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub faults: Arc<watch::Sender<Fault>>,
}

/// Opens the ledger, binds both listeners and serves in background tasks.
pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let ledger = ledger::Ledger::open(&opts.db)
        .map_err(|e| anyhow::anyhow!("cannot open the ledger {}: {e}", opts.db.display()))?;
    let listener =
        TcpListener::bind(&opts.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let control = TcpListener::bind(&opts.control)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on control address {}: {e}", opts.control))?;
    let listen_addr = listener.local_addr()?;
    let control_addr = control.local_addr()?;
    let (faults, _) = watch::channel(Fault::None);
    let faults = Arc::new(faults);
    let ledger = Arc::new(Mutex::new(ledger));
    let events = Arc::new(watch::Sender::new(0u64));
    let account_mismatch = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let service = service::GatewayService::new(
        ledger.clone(),
        faults.subscribe(),
        opts.base_key,
        events.subscribe(),
        account_mismatch.clone(),
    );
    let (listening_tx, listening) = watch::channel(false);
    let controls = control::Controls { faults: faults.clone(), ledger, events, listening, account_mismatch };
    tokio::spawn(control::serve(control, controls));
    let client_ca = opts.client_ca;
    let tls = opts.tls.map(|(cert, key)| {
        let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key));
        match client_ca {
            Some(ca) => tls.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => tls,
        }
    });
    tokio::spawn(supervise(listener, listen_addr, service, faults.subscribe(), listening_tx, tls));
    Ok(Running { listen_addr, control_addr, faults })
}

/// Serves the gateway API while the fault is not `down`; while it is, the
/// listener is closed so connections are refused.
async fn supervise(
    first: TcpListener,
    addr: SocketAddr,
    service: service::GatewayService,
    mut faults: watch::Receiver<Fault>,
    listening: watch::Sender<bool>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) {
    let mut listener = Some(first);
    loop {
        if faults.wait_for(|f| *f != Fault::Down).await.is_err() {
            return;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(addr).await {
                Some(l) => l,
                None => return,
            },
        };
        listening.send_replace(true);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let svc = GatewayServer::new(service.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = match builder.tls_config(tls.clone()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "invalid TLS certificate or key");
                    return;
                }
            };
        }
        let server = tokio::spawn(builder.add_service(svc).serve_with_incoming_shutdown(
            TcpIncoming::from(l).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        ));
        if faults.wait_for(|f| *f == Fault::Down).await.is_err() {
            return;
        }
        tracing::info!("gateway going down: closing the listener");
        let _ = stop_tx.send(());
        // `down` is in effect once a new connection is refused; requests
        // already on a connection may still finish.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        listening.send_replace(false);
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
            abort.abort();
        }
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "gateway back up");
                return Some(l);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot rebind the gateway listener yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::error!(%addr, "giving up rebinding the gateway listener");
    None
}
