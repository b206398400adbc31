//! What the engine's in-process tests share: an [`Engine`] on a store in a
//! temporary directory whose [`Gateway`] reaches gateway-sim's own gRPC
//! service over in-memory pipes ([`Gateway::in_process`]), with the
//! simulator's faults switched as its control protocol switches them; a
//! customer who presents a card whose data is encrypted as a reader
//! encrypts it. The engine's wall clock follows tokio's from a fixed epoch
//! ([`EPOCH_MS`]); with [`rig_with_lane`] it drives `lane-1` as a card-reader
//! lane without a reader ([`Lane::without_device`]) whose printer is served
//! in process ([`Printer::in_process`]). No process, port or PTY: the tests
//! run under tokio's paused clock, and assert on posd's store and on the
//! gateway's ledger. [`Rig::restart`] and the `left_*` runs stand for a posd
//! that stopped mid-payment and started again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_sim::Fault;
use gateway_sim::ledger::{Charge, Ledger};
use gateway_sim::service::GatewayService;
use pos_cardcrypt::{BaseKey, Binding, CardData};
use pos_engine::Status;
use pos_engine::offline::OfflinePolicy;
use pos_engine::payment::ReaderPayment;
use pos_proto::gateway::gateway_server::GatewayServer;
use pos_proto::gateway::{AuthorizeRequest, Transaction};
use pos_proto::reader::{CardResult, CollectCard, EntryMode};
use pos_proto::terminal as pb;
use tokio::io::DuplexStream;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use super::payment::{Authorizer, CardReader, payment_of};
use super::{Engine, EngineSettings, Environment, ForwardSettings, LAST_ONLINE, Live, gateway_key};
use crate::clock::WallClock;
use crate::convert;
use crate::gateway::{AuthOutcome, Dial, Gateway, GatewaySettings};
use crate::lane::{Lane, ReaderEvent};
use crate::printer::Printer;
use crate::printer::fake::FakePrinter;
use crate::store::{EventKind, EventRecord, Inserted, PaymentRecord, Store, StoredEventKind};

pub(super) const LANE: &str = "lane-1";
/// What the rig's wall clock reads when it starts (2026-03-02 09:00:00 UTC);
/// it advances with tokio's clock.
pub(super) const EPOCH_MS: i64 = 1_772_442_000_000;
/// How long the gateway client waits for an answer.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the reader may take to return a card.
pub(super) const COLLECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first wait between status queries after a lost answer.
pub(super) const STATUS_BACKOFF: Duration = Duration::from_millis(500);
/// Longer than any test waits in the paused clock's time: a bound, not a
/// synchronisation.
const PATIENCE: Duration = Duration::from_secs(3600);
const PAN: &str = "4242424242424242";

/// The engine's settings in these tests (and `payment::tests`').
pub(super) fn settings() -> EngineSettings {
    let d = Duration::from_secs(1);
    EngineSettings {
        store_id: "store-1".into(),
        demo: false,
        collect_timeout: COLLECT_TIMEOUT,
        capture_window: None,
        status_attempts: 3,
        status_backoff: STATUS_BACKOFF,
        reversal_backoff: (d, d),
        forward: ForwardSettings {
            batch_size: 10,
            retry_first: d,
            retry_max: d,
            health_interval: d,
            ageing_interval: d,
            expire_after: Duration::from_secs(72 * 3600),
            alert_after: Duration::from_secs(12 * 3600),
            stop_after: Duration::from_secs(24 * 3600),
        },
        receipt: crate::receipt::ReceiptSettings { header: vec![], footer: vec![], tz: jiff::tz::TimeZone::UTC },
        auto_print: vec![],
    }
}

/// gateway-sim's service, served in this process on the pipes its
/// [`Dial`] hands out, with its ledger in the rig's directory.
pub(super) struct SimGateway {
    faults: watch::Sender<Fault>,
    ledger: Arc<Mutex<Ledger>>,
    ledger_path: PathBuf,
    account_mismatch: Arc<AtomicBool>,
    /// Connections asked for, refused ones included: one per gateway call.
    dials: watch::Receiver<u64>,
    dial: Dial,
    /// Kept so the service's event stream stays open.
    _events: watch::Sender<u64>,
}

impl SimGateway {
    fn start(ledger_path: &Path) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::open(ledger_path).expect("the gateway's ledger opens")));
        let faults = watch::Sender::new(Fault::None);
        let events = watch::Sender::new(0u64);
        let account_mismatch = Arc::new(AtomicBool::new(true));
        let service = GatewayService::new(
            ledger.clone(),
            faults.subscribe(),
            BaseKey::test_key(),
            events.subscribe(),
            account_mismatch.clone(),
        );
        let (conns, incoming) = mpsc::unbounded_channel::<std::io::Result<DuplexStream>>();
        let server = tonic::transport::Server::builder()
            .add_service(GatewayServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::UnboundedReceiverStream::new(incoming));
        tokio::spawn(server);
        // `down` refuses connections, as the simulator's closed listener does.
        let (dialed, dials) = watch::channel(0u64);
        let fault = faults.subscribe();
        let dial: Dial = Arc::new(move || -> std::io::Result<DuplexStream> {
            dialed.send_modify(|n| *n += 1);
            let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            if *fault.borrow() == Fault::Down {
                return Err(refused());
            }
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            conns.send(Ok(theirs)).map_err(|_| refused())?;
            Ok(ours)
        });
        Self { faults, ledger, ledger_path: ledger_path.to_path_buf(), account_mismatch, dials, dial, _events: events }
    }

    /// Switches the injected fault (gateway-sim's `fault ...`).
    pub(super) fn fault(&self, fault: Fault) {
        self.faults.send_replace(fault);
    }

    /// Amounts ending in 98 belong to this merchant again (`accounts fixed`).
    pub(super) fn fix_accounts(&self) {
        self.account_mismatch.store(false, Ordering::SeqCst);
    }

    /// The gateway calls made so far (one connection each).
    pub(super) fn dials(&self) -> u64 {
        *self.dials.borrow()
    }

    /// Returns once `n` gateway calls in all have been made.
    pub(super) async fn dialed(&self, n: u64) {
        let mut dials = self.dials.clone();
        let reached = tokio::time::timeout(PATIENCE, dials.wait_for(|d| *d >= n)).await.is_ok_and(|r| r.is_ok());
        assert!(reached, "{n} gateway calls in time (made: {})", self.dials());
    }

    /// The ledger's charge under a transaction key.
    pub(super) fn charge(&self, key: &str) -> Option<Charge> {
        self.ledger.lock().unwrap().get(key).expect("the ledger reads")
    }

    /// Every charge the gateway booked.
    pub(super) fn charges(&self) -> Vec<Charge> {
        self.ledger.lock().unwrap().all().expect("the ledger reads")
    }

    /// Changes a charge behind posd's back (as the gateway's back office would).
    pub(super) fn edit(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }

    /// The batches the gateway closed under a key: (batch key, batch id).
    pub(super) fn batch_keys(&self) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(&self.ledger_path).expect("the ledger opens");
        let mut stmt =
            conn.prepare("SELECT batch_key, batch_id FROM batch_keys ORDER BY rowid").expect("the ledger has batches");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("the ledger reads")
            .collect::<Result<_, _>>()
            .expect("the ledger reads")
    }

    /// The batch a charge was settled in, if any.
    pub(super) fn batch_of(&self, key: &str) -> Option<String> {
        let conn = rusqlite::Connection::open(&self.ledger_path).expect("the ledger opens");
        conn.query_row("SELECT batch_id FROM charges WHERE key = ?1", [key], |r| r.get(0)).expect("the charge is there")
    }

    /// The refunds the gateway recorded against a charge: (refund key,
    /// amount, succeeded), in the order they were recorded.
    pub(super) fn refunds(&self, key: &str) -> Vec<(String, i64, bool)> {
        let conn = rusqlite::Connection::open(&self.ledger_path).expect("the ledger opens");
        let mut stmt = conn
            .prepare("SELECT refund_key, amount_minor, succeeded FROM refunds WHERE key = ?1 ORDER BY rowid")
            .expect("the ledger has refunds");
        stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("the ledger reads")
            .collect::<Result<_, _>>()
            .expect("the ledger reads")
    }
}

/// An engine with its store and the gateway it reaches, and its lane's
/// printer when it has one.
pub(super) struct Rig {
    pub(super) engine: Arc<Engine>,
    pub(super) gateway: SimGateway,
    printer: Option<FakePrinter>,
    paid: AtomicU32,
    _dir: tempfile::TempDir,
}

/// An engine with no lane configured: payments name `lane-1` and are paid
/// through [`Rig::pay`].
pub(super) async fn rig() -> Rig {
    build(settings(), false).await
}

/// An engine with `settings` that drives `lane-1`: a card-reader lane
/// without a reader (payments are paid through [`Rig::pay`]), whose printer
/// (42 columns) is served in process, ready.
pub(super) async fn rig_with_lane(settings: EngineSettings) -> Rig {
    build(settings, true).await
}

async fn build(settings: EngineSettings, with_lane: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let gateway = SimGateway::start(&dir.path().join("gateway-sim.db"));
    let store = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    let client = Gateway::in_process(
        GatewaySettings {
            url: "http://gateway.in-process".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: REQUEST_TIMEOUT,
            ca_pem: None,
            identity: None,
        },
        gateway.dial.clone(),
    )
    .unwrap();
    let (lanes, printer) = if with_lane {
        let (printer, fake) = Printer::in_process(pos_escpos::Width::Cols42);
        (vec![Lane::without_device(LANE, "EUR", Some(printer))], Some(fake))
    } else {
        (Vec::new(), None)
    };
    let env = Environment { wall: WallClock::following_tokio(EPOCH_MS), ..Environment::system() };
    let engine = Engine::in_environment(store, Arc::new(client), lanes, settings, env);
    // The gateway was reached a minute ago: offline approval is allowed.
    engine.store.set_meta(LAST_ONLINE, engine.now_ms() - 60_000).await.unwrap();
    Rig { engine, gateway, printer, paid: AtomicU32::new(0), _dir: dir }
}

impl Rig {
    /// A payment of `amount_minor` EUR on the lane, run to its end as the
    /// register's task runs it (the gateway as the rig's faults have it);
    /// the customer presents a card at once. Returns it as stored.
    pub(super) async fn pay(&self, amount_minor: i64, manual_capture: bool) -> PaymentRecord {
        let (rec, payment, customer) = self.begin(amount_minor, manual_capture, true).await;
        self.engine.drive_reader(&*self.engine.gateway, Some(&customer), payment, rec.clone(), None).await;
        self.stored(&rec.id)
    }

    /// A payment that posd stopped (a crash, a power cut) while the reader
    /// waited for a card: stored COLLECTING, nothing sent.
    pub(super) async fn left_collecting(&self, amount_minor: i64) -> PaymentRecord {
        let (rec, payment, customer) = self.begin(amount_minor, false, false).await;
        let run = self.engine.drive_reader(&*self.engine.gateway, Some(&customer), payment, rec.clone(), None);
        tokio::select! {
            _ = run => panic!("the payment ends without a card"),
            () = customer.asked.notified() => {}
        }
        self.stored(&rec.id)
    }

    /// A payment that posd stopped once the gateway had answered its
    /// authorization, before the answer was stored: stored AUTHORIZING, with
    /// its card data, and booked at the gateway.
    pub(super) async fn left_authorizing(&self, amount_minor: i64) -> PaymentRecord {
        let (rec, payment, customer) = self.begin(amount_minor, false, true).await;
        let answered = Notify::new();
        let stops = StopsAfterSending { gateway: &self.engine.gateway, answered: &answered };
        let run = self.engine.drive_reader(&stops, Some(&customer), payment, rec.clone(), None);
        tokio::select! {
            _ = run => panic!("posd stops before the answer is stored"),
            () = answered.notified() => {}
        }
        self.stored(&rec.id)
    }

    /// posd started again: a new engine on the same store, gateway client,
    /// lanes and wall clock, with nothing in memory from the one before
    /// (whose runs the test dropped, as a crash ends them).
    pub(super) fn restart(&mut self) {
        let old = &self.engine;
        let lanes = old.lanes.values().cloned().collect();
        let engine = Engine::in_environment(
            old.store.clone(),
            old.gateway.clone(),
            lanes,
            old.settings.clone(),
            old.env.clone(),
        );
        self.engine = engine;
    }

    /// The lane's printer ([`rig_with_lane`]).
    pub(super) fn printer(&self) -> &FakePrinter {
        self.printer.as_ref().expect("the rig has a lane with a printer")
    }

    /// The register events of `kind` stored so far, oldest first.
    pub(super) fn events(&self, kind: EventKind) -> Vec<EventRecord> {
        let all = self.engine.store.events_after(0, 10_000).unwrap();
        all.into_iter().filter(|e| e.kind == StoredEventKind::Known(kind)).collect()
    }

    /// A new payment as the register's request stores it, its machine, and
    /// the customer at the reader (presenting a card when asked, or not).
    async fn begin(
        &self,
        amount_minor: i64,
        manual_capture: bool,
        presents: bool,
    ) -> (PaymentRecord, ReaderPayment, Customer) {
        let n = self.paid.fetch_add(1, Ordering::SeqCst) + 1;
        let candidate = PaymentRecord {
            manual_capture,
            ..PaymentRecord::created(
                format!("pay_{n}"),
                format!("k-{n}"),
                gateway_key(),
                LANE.into(),
                amount_minor,
                "EUR".into(),
                self.engine.now_ms(),
            )
        };
        let Inserted::New(rec) = self.engine.store.insert_or_get(&candidate, "test").await.unwrap() else {
            panic!("the payment's key is free");
        };
        let settings = self.engine.reader_settings(OfflinePolicy::defaults_for("EUR"));
        let payment = ReaderPayment::new(payment_of(&rec), settings);
        let customer =
            Customer { fingerprint: format!("FP{n}"), presents, asked: Notify::new(), open: Mutex::new(None) };
        (rec, payment, customer)
    }

    pub(super) fn stored(&self, id: &str) -> PaymentRecord {
        self.engine.store.get(id).unwrap().expect("the payment is stored")
    }

    /// Follows a payment as a register attached to it does: what each of
    /// its commits publishes from now on.
    pub(super) fn follow(&self, id: &str) -> broadcast::Receiver<pb::PaymentEvent> {
        let (events, rx) = broadcast::channel(64);
        let live = Live { events, cancel: mpsc::channel(1).0, received: std::time::Instant::now() };
        self.engine.live.lock().unwrap().insert(id.to_string(), live);
        rx
    }
}

/// Returns once the followed payment is published in `status`.
pub(super) async fn published(rx: &mut broadcast::Receiver<pb::PaymentEvent>, status: Status) {
    let wait = async {
        loop {
            let event = rx.recv().await.expect("the payment is followed");
            let published = event.payment.and_then(|p| pb::PaymentStatus::try_from(p.status).ok());
            if published.and_then(convert::status_from_proto) == Some(status) {
                return;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("the payment is published {status}"));
}

/// Returns the next register event of `kind`.
pub(super) async fn next_event(rx: &mut broadcast::Receiver<EventRecord>, kind: EventKind) -> EventRecord {
    let wait = async {
        loop {
            let event = rx.recv().await.expect("the engine's events are followed");
            if event.kind == StoredEventKind::Known(kind) {
                return event;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| panic!("a {kind} event"))
}

/// A customer who presents a card as soon as the reader asks for one: its
/// data encrypted for the payment as a reader encrypts it, with a card
/// fingerprint of its own (so per-card offline limits do not interfere).
/// One who does not present it keeps the reader waiting.
struct Customer {
    fingerprint: String,
    presents: bool,
    /// Notified when the reader asks for the card.
    asked: Notify,
    /// The payment's channel, open until the reader is released.
    open: Mutex<Option<mpsc::UnboundedSender<ReaderEvent>>>,
}

impl CardReader for Customer {
    fn collect(
        &self,
        req: CollectCard,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<ReaderEvent>, String>> + Send {
        let card = CardData {
            pan: PAN.into(),
            expiry: "3012".into(),
            track2_equivalent: format!("{PAN}=30122010000000000000"),
        };
        let binding = Binding {
            amount_minor: req.amount_minor,
            currency: &req.currency,
            terminal_id: &req.terminal_id,
            transaction_key: &req.transaction_key,
        };
        let encrypted_card = pos_cardcrypt::encrypt(&BaseKey::test_key(), "TEST-READER-1", &card, &binding);
        let result = CardResult {
            payment_id: req.payment_id.clone(),
            masked_pan: "424242******4242".into(),
            brand: "visa".into(),
            entry_mode: EntryMode::Chip as i32,
            encrypted_card,
            card_fingerprint: self.fingerprint.clone(),
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if self.presents {
            tx.send(ReaderEvent::Card(Box::new(result))).expect("the receiver is here");
        }
        *self.open.lock().unwrap() = Some(tx);
        self.asked.notify_one();
        std::future::ready(Ok(rx))
    }

    fn release(&self, _: &str) {
        *self.open.lock().unwrap() = None;
    }

    fn cancel(&self, _: &str) -> impl Future<Output = ()> + Send {
        *self.open.lock().unwrap() = None;
        std::future::ready(())
    }

    fn show_result(&self, _: &str, _: bool, _: &str) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// The gateway client of a posd that stops (a crash, a power cut) once its
/// authorization has been answered, before the answer is stored: the
/// authorization never returns to the driver.
struct StopsAfterSending<'a> {
    gateway: &'a Gateway,
    answered: &'a Notify,
}

impl Authorizer for StopsAfterSending<'_> {
    async fn authorize(&self, req: AuthorizeRequest) -> AuthOutcome {
        let _answer = self.gateway.authorize(req).await;
        self.answered.notify_one();
        std::future::pending().await
    }

    fn transaction(&self, key: &str) -> impl Future<Output = Result<Option<Transaction>, String>> + Send {
        self.gateway.transaction(key)
    }
}
