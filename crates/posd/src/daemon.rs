//! Start-up and serving, [`run`] in named steps: lock the state directory,
//! claim the API socket, check that a database the state directory held is
//! still there and open it (`open_store`); connect the gateway, start the
//! lanes (`start_lanes`) and the engine, recover; build the API's services
//! (`build_services`), bind its one listener, Unix socket or TCP
//! (`bind_api`), serve it on one path for both (`serve`) until
//! `wait_for_stop` ends it. In demo mode (cargo feature `demo`) also the
//! simulated reader and gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pos_proto::terminal::payment_terminal_server::PaymentTerminalServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router};

use crate::config::Config;
use crate::engine::{Engine, EngineSettings, ForwardSettings};
use crate::gateway::{Gateway, GatewaySettings};
use crate::lane::Lane;
use crate::listen::Guarded;
use crate::store::{StateLock, Store};

// The command line's choices, and the configuration in force, live with
// the configuration they override.
pub use crate::config::{NO_CONFIG, Options, resolve};

/// How long a graceful stop waits for connected clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT or SIGTERM.
    OnRequest,
    /// The database failed and works again: posd exits with
    /// [`Stopped::RESTART_CODE`] for its service manager to start it again,
    /// so start-up settles what the failure interrupted.
    ToRecover,
}

impl Stopped {
    /// EX_TEMPFAIL; the unit's `Restart=on-failure` restarts posd on it.
    pub const RESTART_CODE: u8 = 75;
}

/// What a posd built without the cargo feature `demo` answers `--demo` with.
pub const NO_DEMO: &str = "this posd was built without the cargo feature `demo`: demo mode (a simulated card reader \
    and gateway) is not in this build; give a configuration file: posd --config /etc/posd/posd.toml";

/// Runs the daemon until SIGINT or SIGTERM, or until its database works
/// again after a failure.
pub async fn run(o: Options) -> anyhow::Result<Stopped> {
    #[cfg(not(feature = "demo"))]
    if o.demo {
        anyhow::bail!("{NO_DEMO}");
    }
    crate::failpoint::arm_from_env()?;
    let cfg = resolve(&o)?;
    let (_lock, store) = open_store(&cfg)?;

    let demo_banner = o.demo.then_some(o.gateway.is_none());
    // The demo reader's task keeps its PTY alive for the life of the daemon.
    #[cfg(feature = "demo")]
    let (cfg, demo_notes, _demo_reader) = if o.demo { start_demo(&o, cfg).await? } else { (cfg, Vec::new(), None) };
    #[cfg(not(feature = "demo"))]
    let demo_notes: Vec<String> = Vec::new();

    let gateway = connect_gateway(&cfg)?;
    let lanes = start_lanes(&cfg)?;
    let reports = crate::report::ReportSettings::new(&cfg.report.time_zone, &cfg.report.cutover)?;
    if let Some(warning) = cfg.short_capture_window() {
        tracing::warn!("{warning}");
    }
    let engine = Engine::new(store, gateway, lanes, engine_settings(&cfg, o.demo, &reports));
    engine.recover().await?;
    engine.start_workers();

    let metrics_addr = start_metrics(&cfg, &engine).await?;
    let api = &cfg.api;
    let bounds =
        crate::listen::Bounds { max_connections: api.max_connections, handshake_timeout: api.handshake_timeout.0 };
    let router = build_services(&cfg, &engine, reports, bounds).await?;
    // A signal starts a graceful stop: new payments are refused, payments in
    // progress finish or are parked (within `stop_timeout`), then the API
    // closes; clients still connected after a short grace period (a register
    // holding an event stream) do not hold posd up.
    // A database that failed and works again stops posd the same way.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(wait_for_stop(engine.clone(), cfg.stop_timeout.0, stop_tx));
    let shutdown = stopped_after(stop_rx.clone(), Duration::ZERO);
    let hard_stop = stopped_after(stop_rx.clone(), SHUTDOWN_GRACE);

    let (listener, addr) = bind_api(&cfg, o.demo, engine.store()).await?;
    announce(&addr, demo_banner, &demo_notes);
    if let Some(m) = metrics_addr {
        println!("posd metrics on http://{m}/metrics");
    }
    tokio::spawn(supervise(engine.clone()));
    serve(router, listener, bounds, shutdown, hard_stop).await?;

    engine.shutdown_warning().await;
    let why = stop_rx.borrow().unwrap_or(Stopped::OnRequest);
    match why {
        Stopped::OnRequest => tracing::info!("posd stopped"),
        Stopped::ToRecover => tracing::warn!(
            exit_code = Stopped::RESTART_CODE,
            "posd stopped to restart after the database failure; its service manager starts it again"
        ),
    }
    Ok(why)
}

/// Locks the state directory, claims the API socket, checks that a database
/// the state directory held is still there and opens it. The lock is held
/// while the returned [`StateLock`] lives.
fn open_store(cfg: &Config) -> anyhow::Result<(StateLock, Arc<Store>)> {
    crate::listen::raise_descriptor_limit();
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create state directory {}: {e}", cfg.state_dir.display()))?;
    let lock = StateLock::acquire(&cfg.state_dir)?;
    // Before the database or any lane device is opened: a posd already
    // serving this socket (from another state directory) keeps it.
    if let Some(path) = cfg.listen.strip_prefix("unix:") {
        crate::uds::claim(std::path::Path::new(path))?;
    }
    // A state directory that held a database and lost it is not a new install.
    crate::store::check_database_kept(&cfg.state_dir)?;
    let store = Arc::new(Store::open_with(&cfg.state_dir.join("posd.db"), cfg.store.max_page_count)?);
    crate::store::mark_initialized(&cfg.state_dir)?;
    Ok((lock, store))
}

/// The central gateway's client, with its TLS files read.
fn connect_gateway(cfg: &Config) -> anyhow::Result<Arc<Gateway>> {
    let gateway = Gateway::new(GatewaySettings {
        url: cfg.gateway.url.clone(),
        connect_timeout: cfg.gateway.connect_timeout(),
        request_timeout: cfg.gateway.request_timeout(),
        ca_pem: cfg.gateway.ca_file.as_ref().map(|f| f.read("[gateway] ca_file")).transpose()?,
        identity: match (&cfg.gateway.client_cert_file, &cfg.gateway.client_key_file) {
            (Some(c), Some(k)) => Some((c.read("[gateway] client_cert_file")?, k.read("[gateway] client_key_file")?)),
            _ => None,
        },
    })?;
    Ok(Arc::new(gateway))
}

/// Each lane's card device and receipt printer, each on a task of its own.
fn start_lanes(cfg: &Config) -> anyhow::Result<Vec<Arc<Lane>>> {
    let mut lanes = Vec::new();
    for l in &cfg.lanes {
        let printer = match &l.printer {
            Some(p) => Some(crate::printer::Printer::spawn(
                p.line(&l.id)?,
                pos_escpos::Width::from_columns(p.columns).unwrap_or(pos_escpos::Width::Cols48),
            )),
            None => None,
        };
        let mut device = l.reader.device(&l.id, &l.currency)?;
        if let crate::lane::CardDeviceSettings::Nexo(nexo) = &mut device {
            // A nexo terminal is asked how it is as often as the gateway.
            nexo.health_interval = cfg.offline.health_interval.0;
        }
        lanes.push(Lane::spawn(l.id.clone(), l.currency.clone(), device, l.offline_policy(&cfg.offline), printer));
    }
    Ok(lanes)
}

/// The engine's settings from the configuration.
fn engine_settings(cfg: &Config, demo: bool, reports: &crate::report::ReportSettings) -> EngineSettings {
    EngineSettings {
        store_id: cfg.store_id.clone(),
        demo,
        collect_timeout: cfg.card_timeout.0,
        capture_window: Some(cfg.capture_window.0).filter(|w| !w.is_zero()),
        status_attempts: cfg.gateway.status_attempts,
        status_backoff: Duration::from_millis(500),
        reversal_backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        forward: ForwardSettings {
            batch_size: cfg.offline.batch_size,
            retry_first: cfg.offline.retry_first.0,
            retry_max: cfg.offline.retry_max.0,
            health_interval: cfg.offline.health_interval.0,
            ageing_interval: cfg.offline.ageing_interval.0,
            expire_after: cfg.offline.expire_after.0,
            alert_after: cfg.offline.alert_after.0,
            stop_after: cfg.offline.stop_after.0,
        },
        receipt: crate::receipt::ReceiptSettings {
            header: cfg.receipt.header.clone(),
            footer: cfg.receipt.footer.clone(),
            tz: reports.tz.clone(),
        },
        auto_print: cfg.receipt.auto_print.clone(),
    }
}

/// The metrics page, when `[metrics] listen` names an address: the address
/// it is served on.
async fn start_metrics(cfg: &Config, engine: &Arc<Engine>) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = &cfg.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    let actual = listener.local_addr()?;
    let engine = engine.clone();
    tokio::spawn(crate::metrics::serve(listener, move || engine.telemetry()));
    Ok(Some(actual))
}

/// The API's gRPC server: the register API, health and reflection, with
/// the `[api]` limits and, when configured, TLS with client certificates.
async fn build_services(
    cfg: &Config,
    engine: &Arc<Engine>,
    reports: crate::report::ReportSettings,
    bounds: crate::listen::Bounds,
) -> anyhow::Result<Router> {
    // Every call passes `authenticate` first (a client certificate naming
    // more than one common name is refused).
    let service = PaymentTerminalServer::with_interceptor(
        crate::api::TerminalApi::new(engine.clone(), reports, cfg.api.refunds_allowed_from.clone()),
        crate::api::authenticate,
    );
    // grpc.health.v1: the API as a whole, and one service name per lane
    // ("posd.lane.<id>", SERVING while its card reader is connected).
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PaymentTerminalServer<crate::api::TerminalApi>>().await;
    tokio::spawn(report_health(engine.clone(), health));
    // Server reflection, v1 and v1alpha (grpcurl and Python clients use the latter).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pos_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let api = &cfg.api;
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(api.max_streams)
        .http2_keepalive_interval(Some(api.keepalive_interval.0))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(t) = &cfg.api.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        // Client certificates are required: a register without one signed by
        // client_ca_file fails the handshake and never reaches the API.
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                t.cert_file.read("[api.tls] cert_file")?,
                t.key_file.read("[api.tls] key_file")?,
            ))
            .client_ca_root(Certificate::from_pem(t.client_ca_file.read("[api.tls] client_ca_file")?))
            .client_auth_optional(false)
            .timeout(bounds.handshake_timeout);
        server = server.tls_config(tls).map_err(|e| anyhow::anyhow!("[api.tls]: {e}"))?;
    }
    let router = server
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok(router)
}

/// Waits for SIGINT or SIGTERM, or for the failed database to work again;
/// then tells systemd posd is stopping, drains the engine (within `bound`)
/// and sends why posd stops.
async fn wait_for_stop(engine: Arc<Engine>, bound: Duration, stop: watch::Sender<Option<Stopped>>) {
    let why = tokio::select! {
        () = shutdown_signal() => Stopped::OnRequest,
        () = engine.database_recovered() => Stopped::ToRecover,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    engine.drain(bound).await;
    let _ = stop.send(Some(why));
}

/// Ends `grace` after [`wait_for_stop`] sent why posd stops.
async fn stopped_after(mut stop: watch::Receiver<Option<Stopped>>, grace: Duration) {
    let _ = stop.wait_for(Option::is_some).await;
    tokio::time::sleep(grace).await;
}

/// The API's listener: the Unix socket (`unix:PATH`) or TCP (`HOST:PORT`).
enum ApiListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Binds the API's listener; returns it with the address posd announces.
async fn bind_api(cfg: &Config, demo: bool, store: &Arc<Store>) -> anyhow::Result<(ApiListener, String)> {
    if let Some(path) = cfg.listen.strip_prefix("unix:") {
        // `uds::claim` removed a stale socket at start; a live one is never removed.
        let listener =
            tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("cannot listen on {path}: {e}"))?;
        restrict_socket(path, store).await?;
        return Ok((ApiListener::Unix(listener), format!("unix:{path}")));
    }
    let scheme = if cfg.api.tls.is_some() { "https://" } else { "" };
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {:?}: expected HOST:PORT or unix:PATH ({e})", cfg.listen))?;
    if demo && !addr.ip().is_loopback() {
        anyhow::bail!("demo mode listens on loopback only, not {addr}");
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let actual = listener.local_addr()?;
    Ok((ApiListener::Tcp(listener), format!("{scheme}{actual}")))
}

/// Serves the API on `listener` within `bounds` until `shutdown`; clients
/// still connected at `hard_stop` are left behind.
async fn serve(
    router: Router,
    listener: ApiListener,
    bounds: crate::listen::Bounds,
    shutdown: impl Future<Output = ()>,
    hard_stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use crate::listen::{COUNTS, incoming};
    match listener {
        // Each connection through `uds::Connection`, which lets any `:authority` through.
        ApiListener::Unix(l) => {
            let connections = incoming(l, bounds, &COUNTS, crate::uds::Connection::new);
            serve_connections(router, connections, shutdown, hard_stop).await
        }
        ApiListener::Tcp(l) => {
            let connections = incoming(l, bounds, &COUNTS, |c| c);
            serve_connections(router, connections, shutdown, hard_stop).await
        }
    }
}

/// [`serve`] for either listener's connections.
async fn serve_connections<IO>(
    router: Router,
    connections: ReceiverStream<std::io::Result<Guarded<IO>>>,
    shutdown: impl Future<Output = ()>,
    hard_stop: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    Guarded<IO>: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    tokio::select! {
        r = router.serve_with_incoming_shutdown(connections, shutdown) => r?,
        () = hard_stop => tracing::warn!("clients still connected after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    Ok(())
}

/// What [`start_demo`] gives back: the configuration pointing at the
/// simulators, the lines the banner shows, and the simulated reader's task.
#[cfg(feature = "demo")]
type Demo = (Config, Vec<String>, Option<tokio::task::JoinHandle<()>>);

/// Demo mode: starts the simulated gateway (unless `--gateway` names one)
/// and the simulated card reader on a PTY (unless `--reader` names one), and
/// points the configuration at them.
#[cfg(feature = "demo")]
async fn start_demo(o: &Options, mut cfg: Config) -> anyhow::Result<Demo> {
    use pos_link::pty::PtyMaster;
    use pos_link::{Link, SerialLink, SerialTiming};

    use crate::config::ReaderConfig;

    let mut demo_notes = Vec::new();
    let mut demo_reader = None;
    if cfg.gateway.url.is_empty() {
        let sim = gateway_sim::start(gateway_sim::Options {
            listen: "127.0.0.1:0".into(),
            control: "127.0.0.1:0".into(),
            db: cfg.state_dir.join("gateway-sim.db"),
            base_key: pos_cardcrypt::BaseKey::test_key(),
            tls: None,
            client_ca: None,
        })
        .await?;
        cfg.gateway.url = format!("http://{}", sim.listen_addr);
        demo_notes.push(format!(
            "gateway: built-in gateway-sim on {} (control {}; ledger {})",
            sim.listen_addr,
            sim.control_addr,
            cfg.state_dir.join("gateway-sim.db").display()
        ));
    } else {
        demo_notes.push(format!("gateway: {}", cfg.gateway.url));
    }
    if o.reader.is_none() {
        let pty = PtyMaster::open()?;
        let path = pty.slave_path().to_path_buf();
        let delay = Duration::from_millis(o.demo_reader_delay_ms);
        let customer =
            firmware_sim::reader::Customer { present_after: Some(delay), pin_after: delay, ..Default::default() };
        let opts = firmware_sim::reader::ReaderOptions {
            serial: "DEMO-READER-0001".into(),
            customer: customer.clone(),
            ..Default::default()
        };
        demo_reader = Some(tokio::spawn(async move {
            let desk = firmware_sim::reader::Desk::new(customer);
            let line = firmware_sim::line::Line::plain(Link::spawn(pty, SerialLink::new(SerialTiming::default())));
            let reason = firmware_sim::reader::serve(line, &opts, &desk).await;
            tracing::warn!(%reason, "demo reader stopped");
        }));
        cfg.lanes[0].reader = ReaderConfig::from_arg(&path.to_string_lossy());
        demo_notes.push(format!("card reader: built-in simulated reader on PTY {}", path.display()));
    }
    Ok((cfg, demo_notes, demo_reader))
}

/// Keeps the health service current: NOT_SERVING for the API while posd
/// refuses payments (database failure), and per lane by its reader.
async fn report_health(engine: Arc<Engine>, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut last: std::collections::HashMap<String, ServingStatus> = Default::default();
    loop {
        let api = if engine.refusing_payments() { ServingStatus::NotServing } else { ServingStatus::Serving };
        let mut states = vec![("pos.terminal.v1.PaymentTerminal".to_string(), api)];
        for lane in engine.lanes() {
            let s = if lane.reader_state().connected { ServingStatus::Serving } else { ServingStatus::NotServing };
            states.push((format!("posd.lane.{}", lane.id), s));
        }
        for (name, status) in states {
            if last.get(&name) != Some(&status) {
                health.set_service_status(name.clone(), status).await;
                last.insert(name, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Tells systemd posd is ready, keeps STATUS= current, and pets the watchdog
/// only while the engine is healthy (so a hung posd is restarted).
async fn supervise(engine: Arc<Engine>) {
    use sd_notify::NotifyState;
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&engine.status_line())]);
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
    let mut last_status = String::new();
    loop {
        tokio::time::sleep(period).await;
        let status = engine.status_line();
        if status != last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if watchdog.is_some() && engine.healthy() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }
}

/// The API socket: mode 0660, group posd-clients when that group exists.
/// A missing group (a development setup) is warned about once per state
/// directory, not at every start.
async fn restrict_socket(path: &str, store: &Arc<Store>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {path}: {e}"))?;
    match nix::unistd::Group::from_name("posd-clients") {
        Ok(Some(g)) => nix::unistd::chown(path, None, Some(g.gid))
            .map_err(|e| anyhow::anyhow!("cannot give {path} to group posd-clients: {e}"))?,
        _ if store.meta(NO_CLIENTS_GROUP).ok().flatten().is_some() => {
            tracing::debug!(socket = path, "group posd-clients does not exist (warned before)");
        }
        _ => {
            tracing::warn!(
                socket = path,
                "group posd-clients does not exist; only posd's own group may call the API (said once per state directory)"
            );
            if let Err(e) = store.set_meta(NO_CLIENTS_GROUP, 1).await {
                tracing::debug!(error = %e, "cannot note the warning about posd-clients");
            }
        }
    }
    Ok(())
}

/// Meta key: posd warned that the group posd-clients is missing.
const NO_CLIENTS_GROUP: &str = "warned_no_clients_group";

fn announce(addr: &str, demo: Option<bool>, notes: &[String]) {
    println!("posd listening on {addr}");
    if let Some(simulated_gateway) = demo {
        println!();
        println!("  *** posd DEMO MODE: every payment, status and receipt says DEMO. ***");
        if simulated_gateway {
            println!("  *** The gateway is simulated inside this process: no real money moves. ***");
        } else {
            println!("  *** CAUTION: payments go to the real gateway named below.            ***");
        }
        for n in notes {
            println!("  {n}");
        }
        let addr_arg = if addr == "127.0.0.1:50051" { String::new() } else { format!(" --addr {addr}") };
        println!();
        println!("  Take a payment from another terminal:   cargo run -p posctl --{addr_arg} pay 12.34");
        println!("  A declined one (cents 05):              cargo run -p posctl --{addr_arg} pay 12.05");
        println!();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
