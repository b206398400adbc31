//! One seed's run: posd's real engine and store, driven by simulated
//! registers, readers (firmware-sim's, in process) and a gateway
//! (gateway-sim's service, in process), all on one thread under tokio's
//! paused clock.
//!
//! posd lives one life per tokio runtime. A crash drops the runtime, and
//! with it every task of posd, of the reader and of the gateway's calls in
//! flight, exactly where each stood; the next life opens the same database
//! and recovers, as posd does after `kill -9`. What outlives a crash is
//! what outlives posd in a store: the gateway's ledger, what each register
//! was told, and the database.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_sim::Fault;
use gateway_sim::ledger::Ledger;
use pos_engine::Status;
use posd::engine::{Attached, Bug, Engine, EngineError, EngineSettings, Environment, ForwardSettings, Ids, NewPayment};
use posd::gateway::{Gateway, GatewaySettings};
use posd::lane::{CardDeviceSettings, Lane};
use posd::line::ReaderLine;
use posd::nexo::line::{LineSettings, TerminalLine};
use posd::nexo::terminal::NexoSettings;
use posd::store::{RefundStatus, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::check::{self, Told, ToldRefund};
use crate::plan::{self, CustomerPlan, LaneKind, Op, Plan, RefundAmount};
use crate::trace::Trace;

/// What a run is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub seed: u64,
    pub power_loss: bool,
    pub plant: Option<Bug>,
    /// Print the trace as it is written.
    pub verbose: bool,
}

/// What a seed found.
pub struct Outcome {
    pub violations: Vec<check::Violation>,
    pub trace_hash: [u8; 32],
    pub stats: Stats,
}

/// What a seed exercised, for the coverage report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub payments: u64,
    pub refunds: u64,
    pub crashes: u64,
    /// Crashes that were power losses.
    pub power_losses: u64,
    /// posd's disk: syncs, writes, bytes.
    pub disk: crate::vfs::DiskStats,
    /// Faults switched on at the gateway, by name.
    pub faults: BTreeMap<String, u64>,
    /// posd's payments at the end, by status.
    pub statuses: BTreeMap<&'static str, u64>,
    /// Left to a person by design (counted, not violations).
    pub left_to_person: u64,
    /// The status changes posd's payments went through (from, to), and how often.
    pub transitions: BTreeMap<(&'static str, &'static str), u64>,
}

/// How long posd is left to settle after the day (the gateway healthy).
const SETTLE: Duration = Duration::from_secs(3600);
/// How long a life may run before posd is taken for stuck: a register
/// gives up on an operation after [`ATTEMPTS`] of at most [`DEADLINE`],
/// [`FOLLOW`] and a backoff each (some 53 hours for the longest day).
const LIFE_BOUND: Duration = Duration::from_secs(7 * 86_400);
/// A register stops retrying an operation after this many attempts.
const ATTEMPTS: u32 = 12;
/// How long a register follows a payment before it asks again.
const FOLLOW: Duration = Duration::from_secs(600);
/// The wall clock when the day begins (2026-03-02 08:00 UTC).
const EPOCH_MS: i64 = 1_772_438_400_000;

/// Everything that outlives a crash.
struct Shared {
    trace: Trace,
    registers: Vec<Register>,
    /// When the current life began, and the day's time then (ms).
    life: (Instant, u64),
    stats: Stats,
    /// Invariants checked while the day runs, that did not hold.
    violations: Vec<check::Violation>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.life.1 + self.life.0.elapsed().as_millis() as u64
    }

    fn note(&mut self, line: impl AsRef<str>) {
        let at = self.now_ms();
        self.trace.note(at, line);
    }
}

/// A register: where it is in its plan, and what it was told.
struct Register {
    next_op: usize,
    attempts: u32,
    /// Whether the current payment's customer has stepped up to the reader.
    customer_planned: bool,
    rng: ChaCha8Rng,
    told: Vec<Told>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The panics on this thread (a seed's) since it last looked.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records every panic on the thread it happens on (a seed's runtime runs
/// on one thread), then reports it as Rust does: tokio catches a task's
/// panic, and a seed must not take that for a quiet end.
fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
            report(info);
        }));
    });
}

pub fn run(opts: &Options) -> Outcome {
    record_panics();
    PANICS.with(|p| p.borrow_mut().clear());
    let log = crate::logscan::install();
    let plan = Arc::new(Plan::draw(opts.seed, opts.power_loss));
    // posd's database is on the simulated disk, which crashes and loses
    // power; the gateway's ledger on a disk of its own that does neither
    // (another computer's).
    crate::vfs::register();
    let disk = Disk { prefix: format!("/sim-{}/", opts.seed) };
    let gateway_disk = Disk { prefix: format!("/sim-{}-gateway/", opts.seed) };
    let ledger =
        Arc::new(Mutex::new(Ledger::open(&gateway_disk.uri("ledger.db")).expect("the gateway's ledger opens")));
    let registers = plan
        .lanes
        .iter()
        .enumerate()
        .map(|(i, _)| Register {
            next_op: 0,
            attempts: 0,
            customer_planned: false,
            rng: ChaCha8Rng::seed_from_u64(opts.seed.wrapping_mul(31).wrapping_add(i as u64 + 1)),
            told: Vec::new(),
        })
        .collect();
    let shared = Arc::new(Mutex::new(Shared {
        trace: Trace::new(opts.verbose),
        registers,
        life: (Instant::now(), 0),
        stats: Stats::default(),
        violations: Vec::new(),
    }));
    let ids = Arc::new(AtomicU64::new(0));
    // The lanes' payment terminals outlive posd's crashes.
    let terminals: Vec<Terminal> = plan
        .lanes
        .iter()
        .enumerate()
        .map(|(i, l)| match l.kind {
            LaneKind::Reader => Terminal::None,
            LaneKind::Zvt => Terminal::Zvt(crate::zvt::terminal()),
            LaneKind::Nexo => {
                let shared = Arc::downgrade(&shared);
                let now_ms = move || EPOCH_MS + shared.upgrade().map_or(0, |s| lock(&s).now_ms() as i64);
                Terminal::Nexo(crate::nexo::terminal(i + 1, now_ms))
            }
        })
        .collect();
    let health_ids = Arc::new(AtomicU64::new(0));
    let mut violations = Vec::new();
    let mut day_ms = 0u64;
    let life = |day_ms| Life {
        opts,
        plan: &plan,
        disk: &disk,
        ledger: &ledger,
        terminals: &terminals,
        shared: &shared,
        ids: &ids,
        health_ids: &health_ids,
        day_ms,
    };
    // The day, crash after crash, then one more start that settles.
    for crash in plan.crashes.iter().copied().map(Some).chain([None]) {
        let ended = life(day_ms).run(crash);
        // A nexo terminal's payment runs on without posd (its task died
        // with the life): it ends as its customer ends it.
        if let Ended::Crashed(at, _) | Ended::DayDone(at) = ended {
            let at = jiff::Timestamp::from_millisecond(EPOCH_MS + at as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            for t in &terminals {
                if let Terminal::Nexo(t) = t {
                    t.sale_system_gone(at);
                }
            }
        }
        match ended {
            Ended::Crashed(at, left) => {
                // Every connection of the dead posd is closed by now; what
                // its close wrote is undone: the disk is as the crash left it.
                crate::vfs::restore(&disk.prefix, left);
                let down_for = crash.map_or(1_000, |c| c.down_for);
                let mut s = lock(&shared);
                s.stats.crashes += 1;
                // Outside any runtime: stamped with the crash's time.
                s.trace.note(at, format!("posd down for {} s", down_for / 1000));
                day_ms = at + down_for;
            }
            Ended::DayDone(at) => {
                day_ms = at + 1_000;
                break;
            }
            Ended::Broken(v) => {
                violations.push(v);
                break;
            }
        }
    }
    if violations.is_empty() {
        violations.extend(life(day_ms).settle_and_check());
    }
    lock(&shared).stats.disk = crate::vfs::stats(&disk.prefix);
    drop(ledger);
    crate::vfs::remove(&disk.prefix);
    crate::vfs::remove(&gateway_disk.prefix);
    let shared = Arc::try_unwrap(shared).ok().expect("no life is left").into_inner().unwrap_or_else(|e| e.into_inner());
    let mut found = shared.violations;
    found.extend(violations);
    let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    found.extend(panics.into_iter().map(|p| check::violation("posd never panics", p)));
    drop(log);
    found.extend(crate::logscan::found().into_iter().map(|l| check::violation("no card data in posd's log", l)));
    Outcome { violations: found, trace_hash: shared.trace.finish(), stats: shared.stats }
}

/// A lane's payment terminal, which outlives posd's crashes.
enum Terminal {
    /// A card reader's lane: the reader is posd's, made anew each life.
    None,
    Zvt(Arc<firmware_sim::zvt::Terminal>),
    Nexo(Arc<firmware_sim::nexo::Terminal>),
}

/// posd's disk in the simulation (see [`crate::vfs`]).
struct Disk {
    /// The disk's files are under this path.
    prefix: String,
}

impl Disk {
    /// How SQLite opens a file of this disk.
    fn uri(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("file:{}{file}?vfs={}", self.prefix, crate::vfs::NAME))
    }

    /// The database and its WAL as they are now.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        ["posd.db", "posd.db-wal"]
            .iter()
            .map(|f| format!("{}{f}", self.prefix))
            .filter_map(|path| crate::vfs::file_contents(&path).map(|bytes| (path, bytes)))
            .collect()
    }
}

enum Ended {
    /// At this time of the day, leaving the disk so.
    Crashed(u64, crate::vfs::Snapshot),
    DayDone(u64),
    /// posd could not start (a violation in itself).
    Broken(check::Violation),
}

/// One life of posd.
struct Life<'a> {
    opts: &'a Options,
    plan: &'a Arc<Plan>,
    disk: &'a Disk,
    ledger: &'a Arc<Mutex<Ledger>>,
    terminals: &'a [Terminal],
    shared: &'a SharedRef,
    ids: &'a Arc<AtomicU64>,
    /// Where the nexo lanes' health checks take their ServiceIDs.
    health_ids: &'a Arc<AtomicU64>,
    /// The day's time when this life begins (ms).
    day_ms: u64,
}

/// posd's engine in a life, with the gateway's fault switch.
struct Running {
    engine: Arc<Engine>,
    faults: watch::Sender<Fault>,
    hang: Arc<crate::gateway::Calls>,
    devices: Vec<Device>,
}

/// A lane's card device, as its register's customers meet it.
#[derive(Clone)]
enum Device {
    Reader(Arc<firmware_sim::reader::Desk>),
    Zvt(Arc<firmware_sim::zvt::Terminal>),
    Nexo(Arc<firmware_sim::nexo::Terminal>),
}

/// How a payment goes, on each kind of device.
struct Sale<'a> {
    customer: &'a CustomerPlan,
    zvt: &'a firmware_sim::zvt::Plan,
    nexo: firmware_sim::nexo::Scenario,
}

impl Device {
    /// The next payment's customer steps up.
    fn plan(&self, sale: &Sale<'_>) {
        match self {
            Device::Reader(desk) => desk.plan(vec![crate::reader::customer(sale.customer)]),
            Device::Zvt(t) => t.plan(vec![sale.zvt.clone()]),
            Device::Nexo(t) => t.plan(vec![sale.nexo]),
        }
    }
}

impl Life<'_> {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime for the life")
    }

    /// Runs the day until `crash` (or, without one, until every register
    /// has done its day).
    fn run(&self, crash: Option<plan::Crash>) -> Ended {
        let rt = Self::runtime();
        rt.block_on(async {
            let running = match self.start(true).await {
                Ok(r) => r,
                Err(v) => return Ended::Broken(v),
            };
            let start = lock(self.shared).life.0;
            let registers: Vec<_> = (0..self.plan.lanes.len())
                .map(|i| {
                    tokio::spawn(register(
                        running.engine.clone(),
                        i,
                        running.devices[i].clone(),
                        self.plan.clone(),
                        self.shared.clone(),
                    ))
                })
                .collect();
            tokio::spawn(fault_schedule(
                running.faults.clone(),
                running.hang.clone(),
                self.plan.clone(),
                self.shared.clone(),
                start,
                self.day_ms,
            ));
            // Every register's day ends: each gives up on an operation after
            // its attempts, so a life that runs on for days has posd stuck.
            let day = async {
                let stuck = tokio::time::timeout(LIFE_BOUND, async {
                    for r in registers {
                        let _ = r.await;
                    }
                });
                stuck.await.is_err()
            };
            match crash {
                Some(c) => {
                    let hang = running.hang.clone();
                    let crash = async move {
                        match c.after_calls {
                            Some(moment) => hang.reached(moment).await,
                            None => {
                                let at = start + Duration::from_millis(c.at.saturating_sub(self.day_ms));
                                tokio::time::sleep_until(at).await;
                            }
                        }
                        for _ in 0..c.polls {
                            tokio::task::yield_now().await;
                        }
                    };
                    tokio::select! {
                        biased;
                        () = crash => {
                            // Every other task stands still: the disk now is what the crash leaves.
                            let prefix = &self.disk.prefix;
                            let left = match c.power {
                                None => crate::vfs::crash(prefix),
                                Some(loss) => {
                                    let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed ^ c.at.rotate_left(17));
                                    crate::vfs::power_loss(prefix, &mut rng, loss)
                                }
                            };
                            let mut s = lock(self.shared);
                            let when = match c.after_calls {
                                Some(m) => format!(
                                    "at call {} of {} ({})",
                                    m.n,
                                    m.method.unwrap_or("any method"),
                                    if m.answered { "answered" } else { "received" }
                                ),
                                None => "at its time".into(),
                            };
                            match c.power {
                                None => s.note(format!("CRASH {when}, after {} polls", c.polls)),
                                Some(loss) => {
                                    s.stats.power_losses += 1;
                                    s.note(format!("POWER LOSS ({loss:?}) {when}, after {} polls", c.polls));
                                }
                            }
                            Ended::Crashed(s.now_ms(), left)
                        }
                        stuck = day => self.day_ended(stuck),
                    }
                }
                None => {
                    let stuck = day.await;
                    self.day_ended(stuck)
                }
            }
        })
        // The runtime is dropped here: every task of this life stops where it stood.
    }

    /// The registers' day ended, or (`stuck`) did not within [`LIFE_BOUND`].
    fn day_ended(&self, stuck: bool) -> Ended {
        let mut s = lock(self.shared);
        if stuck {
            let detail = format!("a register still waits on posd {} days into a life", LIFE_BOUND.as_secs() / 86_400);
            s.note(format!("VIOLATION {detail}"));
            return Ended::Broken(check::violation("every register's day ends", detail));
        }
        Ended::DayDone(s.now_ms())
    }

    /// posd starts: the store opens, the engine recovers and its workers run.
    async fn start(&self, with_faults: bool) -> Result<Running, check::Violation> {
        {
            let mut s = lock(self.shared);
            s.life = (Instant::now(), self.day_ms);
            s.note("posd starts");
        }
        let store = Store::open(&self.disk.uri("posd.db"))
            .map_err(|e| check::violation("posd starts", format!("the store: {e}")))?;
        // What the crash left: nothing posd holds as never sent is at the gateway.
        let never_sent = check::never_sent(&store, &self.ledger.lock().unwrap_or_else(|e| e.into_inner()));
        lock(self.shared).violations.extend(never_sent);
        // A commit takes time: other tasks run meanwhile (and share it).
        store.set_commit_yields(self.plan.commit_yields);
        let (faults, faults_rx) = watch::channel(Fault::None);
        let hang = Arc::new(crate::gateway::Calls::default());
        let dial = crate::gateway::serve(self.ledger.clone(), faults_rx, hang.clone());
        let client = Gateway::in_process(
            GatewaySettings {
                url: "http://gateway.in-process".into(),
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(5),
                ca_pem: None,
                identity: None,
            },
            dial,
        )
        .map_err(|e| check::violation("posd starts", format!("the gateway client: {e}")))?;
        let mut lanes = Vec::new();
        let mut devices = Vec::new();
        for (n, (lane, terminal)) in self.plan.lanes.iter().zip(self.terminals).enumerate() {
            let settings = match terminal {
                Terminal::None => {
                    let (line, desk) = crate::reader::serve(&lane.id);
                    devices.push(Device::Reader(desk));
                    CardDeviceSettings::Reader(ReaderLine::InProcess(line))
                }
                Terminal::Zvt(t) => {
                    devices.push(Device::Zvt(t.clone()));
                    CardDeviceSettings::Zvt(posd::zvt::ZvtSettings {
                        line: ReaderLine::InProcess(crate::zvt::serve(&lane.id, t.clone())),
                        password: pos_zvt::message::password(123_456).expect("a six-digit password"),
                        currency: 978,
                        t3: Duration::from_secs(5),
                        t4: Duration::from_secs(180),
                        commit_bound: Duration::from_secs(3),
                    })
                }
                Terminal::Nexo(t) => {
                    devices.push(Device::Nexo(t.clone()));
                    let line = LineSettings {
                        url: format!("https://127.0.0.{}:8443/nexo", n + 1),
                        ca_pem: Vec::new(),
                        poi_id: crate::nexo::poi_id(n + 1),
                        // As a store's lane has them by default.
                        connect_timeout: posd::config::DEFAULT_NEXO_CONNECT_TIMEOUT,
                        answer_timeout: posd::config::DEFAULT_NEXO_ANSWER_TIMEOUT,
                    };
                    let line = TerminalLine::in_process(line, crate::nexo::serve(&lane.id, t.clone()))
                        .map_err(|e| check::violation("posd starts", format!("{}'s nexo line: {e}", lane.id)))?;
                    CardDeviceSettings::Nexo(NexoSettings {
                        line: Arc::new(line),
                        key: None,
                        sale_id: posd::nexo::terminal::sale_id(&lane.id),
                        health_interval: Duration::from_secs(60),
                        health_ids: Some(self.health_ids.clone()),
                    })
                }
            };
            lanes.push(Lane::spawn(lane.id.clone(), "EUR".into(), settings, offline_policy(), None));
        }
        let env = Environment {
            wall: posd::clock::WallClock::following_tokio(EPOCH_MS + self.day_ms as i64),
            ids: Ids::Counter(self.ids.clone()),
            planted: self.opts.plant,
            random: posd::engine::Random::seeded(self.opts.seed ^ self.day_ms),
            inline_blocking: true,
        };
        if with_faults && let Some((_, f)) = self.plan.faults.iter().rev().find(|(at, _)| *at <= self.day_ms) {
            // The fault in force when this life begins.
            hang.switch(&faults, *f);
        }
        let engine = Engine::in_environment(Arc::new(store), Arc::new(client), lanes, settings(with_faults), env);
        for (lane, terminal) in self.plan.lanes.iter().zip(self.terminals) {
            if let Terminal::Zvt(t) = terminal {
                t.on_confirmed(stored_before_confirmed(&engine, &lane.id, self.shared));
            }
        }
        engine.recover().await.map_err(|e| check::violation("posd starts", format!("recovery: {e:#}")))?;
        engine.start_workers();
        Ok(Running { engine, faults, hang, devices })
    }

    /// The last start: the gateway healthy, posd left to settle, then every
    /// invariant checked against the gateway's ledger.
    fn settle_and_check(&self) -> Vec<check::Violation> {
        let rt = Self::runtime();
        rt.block_on(async {
            let running = match self.start(false).await {
                Ok(r) => r,
                Err(v) => return vec![v],
            };
            tokio::time::sleep(SETTLE).await;
            lock(self.shared).note("settled");
            let told: Vec<Vec<Told>> = lock(self.shared).registers.iter().map(|r| r.told.clone()).collect();
            let ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
            let journals: Vec<(String, check::Journal)> = (self.plan.lanes.iter().zip(self.terminals))
                .filter_map(|(l, t)| {
                    let journal = match t {
                        Terminal::None => return None,
                        Terminal::Zvt(t) => check::Journal::Zvt(t.journal()),
                        Terminal::Nexo(t) => check::Journal::Nexo(t.booked()),
                    };
                    Some((l.id.clone(), journal))
                })
                .collect();
            let report = check::all(running.engine.store(), &ledger, &told, &journals, &self.disk.files());
            drop(ledger);
            let mut s = lock(self.shared);
            for line in &report.ledger {
                s.note(line);
            }
            s.stats.statuses = report.statuses;
            s.stats.left_to_person = report.left_to_person;
            s.stats.transitions = report.transitions;
            report.violations
        })
    }
}

/// Checks, as the terminal hears posd's 80 00 for an approved result, that
/// posd stored the result first (persist before act): otherwise a crash
/// between the two leaves a sale the terminal booked and posd cannot show.
fn stored_before_confirmed(engine: &Arc<Engine>, lane: &str, shared: &SharedRef) -> firmware_sim::zvt::Confirmed {
    // Weak: the terminal outlives this life and the seed's shared state.
    let (engine, lane, shared) = (Arc::downgrade(engine), lane.to_string(), Arc::downgrade(shared));
    Arc::new(move |txn: &firmware_sim::zvt::Txn| {
        let (Some(engine), Some(shared)) = (engine.upgrade(), shared.upgrade()) else { return };
        // A sale's result (the terminal's refunds are checked by their totals).
        if txn.kind != firmware_sim::zvt::Kind::Sale {
            return;
        }
        let Some(id) = engine.busy_with(&lane) else { return };
        let stored = engine.store().terminal_result(&id).ok().flatten().and_then(|r| r.receipt_no);
        if stored != Some(txn.receipt_no) {
            let mut s = lock(&shared);
            let detail = format!("{lane}: {id} confirmed receipt {} with {stored:?} stored", txn.receipt_no);
            s.note(format!("VIOLATION {detail}"));
            s.violations.push(check::violation("a terminal's result is stored before posd confirms it", detail));
        }
    })
}

/// Every lane's offline limits: a store's defaults.
fn offline_policy() -> pos_engine::offline::OfflinePolicy {
    pos_engine::offline::OfflinePolicy::defaults_for("EUR")
}

/// The engine's settings in the simulation: as configured in a store,
/// with short retry intervals so a day settles within the run. While the
/// day runs (`day`) posd asks the gateway how it is every 10 s; in the hour
/// it settles, with the gateway healthy from its start, every minute.
fn settings(day: bool) -> EngineSettings {
    let s = Duration::from_secs;
    EngineSettings {
        store_id: "store-1".into(),
        demo: false,
        collect_timeout: s(60),
        // Manual captures the register does not make within a quarter of an
        // hour are reversed (a late capture is refused).
        capture_window: Some(Duration::from_secs(15 * 60)),
        status_attempts: 3,
        status_backoff: Duration::from_millis(500),
        reversal_backoff: (s(1), s(60)),
        forward: ForwardSettings {
            batch_size: 10,
            retry_first: s(1),
            retry_max: s(60),
            health_interval: if day { s(10) } else { s(60) },
            ageing_interval: s(60),
            expire_after: s(72 * 3600),
            alert_after: s(12 * 3600),
            stop_after: s(24 * 3600),
        },
        receipt: posd::receipt::ReceiptSettings { header: vec![], footer: vec![], tz: jiff::tz::TimeZone::UTC },
        auto_print: vec![],
    }
}

/// Switches the gateway's faults as the plan has them, from this life's start on.
async fn fault_schedule(
    faults: watch::Sender<Fault>,
    hang: Arc<crate::gateway::Calls>,
    plan: Arc<Plan>,
    shared: SharedRef,
    start: Instant,
    day_ms: u64,
) {
    for (at, fault) in plan.faults.iter().filter(|(at, _)| *at > day_ms) {
        tokio::time::sleep_until(start + Duration::from_millis(at - day_ms)).await;
        hang.switch(&faults, *fault);
        let mut s = lock(&shared);
        *s.stats.faults.entry(fault.to_string()).or_default() += 1;
        s.note(format!("gateway fault {fault}"));
    }
}

/// A register's day: its plan's operations in order, each retried with the
/// same key after an error (and after posd's crash, in the next life) until
/// it hears an answer or gives up.
async fn register(engine: Arc<Engine>, i: usize, device: Device, plan: Arc<Plan>, shared: SharedRef) {
    let lane = &plan.lanes[i];
    loop {
        let idx = lock(&shared).registers[i].next_op;
        let Some(op) = lane.ops.get(idx) else { return };
        let key = format!("{}-{idx}", lane.id);
        match op {
            Op::Pay { amount_minor, manual_capture, customer, cancel_after, terminal, nexo, not_before } => {
                if let Some(at) = not_before {
                    let wait = at.saturating_sub(lock(&shared).now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                device.plan_once(&shared, i, &Sale { customer, zvt: terminal, nexo: *nexo });
                let ask =
                    Ask { lane: &lane.id, key: &key, amount_minor: *amount_minor, manual_capture: *manual_capture };
                pay(&engine, i, ask, *cancel_after, &shared).await
            }
            Op::Refund { of, amount } => refund(&engine, i, &key, *of, *amount, &shared).await,
            // A terminal's payments are captured with the sale.
            Op::Capture { .. } if lane.kind.is_terminal() => {}
            Op::Capture { of } => after_sale(&engine, i, *of, AfterSale::Capture, true, &shared).await,
            // A terminal's sale is voided by a reversal at the terminal.
            Op::Void { of } => {
                after_sale(&engine, i, *of, AfterSale::Void, lane.kind == LaneKind::Reader, &shared).await
            }
            Op::Idle(d) => tokio::time::sleep(*d).await,
        }
        let think = {
            let mut s = lock(&shared);
            let r = &mut s.registers[i];
            r.next_op += 1;
            r.attempts = 0;
            r.customer_planned = false;
            Duration::from_millis(r.rng.gen_range(500..30_000))
        };
        // Into a rush without a pause: its moment is set.
        if !lane.ops.get(idx + 1).is_some_and(Op::is_rush) {
            tokio::time::sleep(think).await;
        }
    }
}

/// How long a register waits for posd to answer a call (its gRPC deadline).
const DEADLINE: Duration = Duration::from_secs(60);

/// Calls posd as the register API does, in a task of its own that runs to
/// its end, with the register's deadline: past it the register hears
/// DEADLINE_EXCEEDED, as a gRPC client does, and posd carries on.
async fn call<T, Fut>(engine: &Arc<Engine>, f: impl FnOnce(Arc<Engine>) -> Fut) -> Result<T, EngineError>
where
    Fut: std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
    T: Send + 'static,
{
    let task = tokio::spawn(f(engine.clone()));
    match tokio::time::timeout(DEADLINE, task).await {
        Ok(Ok(answer)) => answer,
        // A panic is recorded by the seed's panic hook (a violation); the
        // register hears what a gRPC client hears of a failed handler.
        Ok(Err(e)) => Err(EngineError::Unavailable("INTERNAL", format!("the call's task ended: {e}"))),
        Err(_) => Err(EngineError::DeadlineExceeded("DEADLINE", format!("no answer within {DEADLINE:?}"))),
    }
}

/// Counts an attempt of the register's current operation; `false` once it
/// has had all its attempts.
fn attempt(shared: &SharedRef, i: usize) -> bool {
    let mut s = lock(shared);
    let r = &mut s.registers[i];
    r.attempts += 1;
    r.attempts <= ATTEMPTS
}

/// How long a register waits before it tries again.
async fn backoff(shared: &SharedRef, i: usize) {
    let d = {
        let mut s = lock(shared);
        let r = &mut s.registers[i];
        let ceiling = 1_000u64 << r.attempts.min(6);
        Duration::from_millis(r.rng.gen_range(500..=ceiling))
    };
    tokio::time::sleep(d).await;
}

/// Whether the register tries again after this error (as a real one does:
/// posd or the gateway cannot answer now, or the outcome is unknown).
fn retryable(e: &EngineError) -> bool {
    matches!(e, EngineError::Unavailable(..) | EngineError::DeadlineExceeded(..) | EngineError::Store(_))
        || matches!(e, EngineError::FailedPrecondition(code, _) if *code == "TERMINAL_BUSY" || *code == "PAYMENT_BUSY")
}

fn code(e: &EngineError) -> String {
    match e {
        EngineError::InvalidArgument { field, .. } => format!("INVALID_ARGUMENT({field})"),
        EngineError::AlreadyExists(_) => "ALREADY_EXISTS".into(),
        EngineError::NotFound(_) => "NOT_FOUND".into(),
        EngineError::FailedPrecondition(c, _) => format!("FAILED_PRECONDITION({c})"),
        EngineError::Unavailable(c, _) => format!("UNAVAILABLE({c})"),
        EngineError::DeadlineExceeded(c, _) => format!("DEADLINE_EXCEEDED({c})"),
        EngineError::Store(_) => "STORE".into(),
    }
}

impl Device {
    /// The payment's customer steps up, once: not again when the register
    /// asks again with the same key.
    fn plan_once(&self, shared: &SharedRef, i: usize, sale: &Sale<'_>) {
        let mut s = lock(shared);
        if !s.registers[i].customer_planned {
            s.registers[i].customer_planned = true;
            self.plan(sale);
            s.stats.payments += 1;
        }
    }
}

/// A payment as the register asks for it.
struct Ask<'a> {
    lane: &'a str,
    key: &'a str,
    amount_minor: i64,
    manual_capture: bool,
}

async fn pay(engine: &Arc<Engine>, i: usize, ask: Ask<'_>, cancel_after: Option<Duration>, shared: &SharedRef) {
    let Ask { lane, key, amount_minor, manual_capture } = ask;
    if lock(shared).registers[i].attempts == 0 {
        lock(shared).note(format!("{key} pay {amount_minor} manual={manual_capture}"));
    }
    while attempt(shared, i) {
        let req = NewPayment {
            idempotency_key: key.into(),
            order_reference: format!("order {key}"),
            amount_minor,
            currency: "EUR".into(),
            terminal_id: lane.into(),
            manual_capture,
            caller: "register".into(),
        };
        match call(engine, move |engine| async move { engine.take_payment(req).await }).await {
            Ok(attached) => {
                let id = attached.payment.id.clone();
                if let Some(status) = follow(engine, attached, cancel_after).await {
                    if status.is_unsent()
                        && let Ok(Some(rec)) = engine.store().get(&id)
                        && let Some(v) = check::offline_limits(engine.store(), &offline_policy(), &rec)
                    {
                        lock(shared).violations.push(v);
                    }
                    let mut s = lock(shared);
                    s.note(format!("{key} told {status} ({id})"));
                    s.registers[i].told.push(Told::Payment { key: key.into(), id, status, manual_capture });
                    return;
                }
                lock(shared).note(format!("{key} still running after {}s; asks again", FOLLOW.as_secs()));
            }
            Err(e) if retryable(&e) => lock(shared).note(format!("{key} error {}", code(&e))),
            Err(e) => {
                let mut s = lock(shared);
                s.note(format!("{key} refused {}", code(&e)));
                s.registers[i].told.push(Told::Refused { key: key.into() });
                return;
            }
        }
        backoff(shared, i).await;
    }
    lock(shared).note(format!("{key} gives up"));
}

/// Follows a payment until the register has its answer (or [`FOLLOW`] has
/// passed), canceling it once after `cancel_after` if it is still running.
/// Like a register, it waits for the payment's events and reads the payment
/// when one arrives; once the events end (or were never offered) it asks
/// every second.
async fn follow(engine: &Arc<Engine>, attached: Attached, cancel_after: Option<Duration>) -> Option<Status> {
    let began = Instant::now();
    let deadline = began + FOLLOW;
    let id = attached.payment.id;
    let mut events = attached.events;
    let mut cancel_at = cancel_after.map(|after| began + after);
    loop {
        let rec = engine.store().get(&id).ok().flatten()?;
        if rec.status.is_settled_for_register() {
            return Some(rec.status);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if cancel_at.is_some_and(|at| now >= at) {
            cancel_at = None;
            let payment = id.clone();
            let _ = call(engine, move |engine| async move { engine.cancel_payment(&payment).await }).await;
            continue;
        }
        let until = cancel_at.map_or(deadline, |at| at.min(deadline));
        match events.as_mut() {
            Some(rx) => match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
                Ok(Err(RecvError::Closed)) => events = None,
            },
            None => tokio::time::sleep(Duration::from_secs(1).min(until - now)).await,
        }
    }
}

/// The register's payment `of` (modulo their number) that it was told
/// approved, with its id, if it has any.
fn approved(shared: &SharedRef, i: usize, of: usize, manual_only: bool) -> Option<(String, bool)> {
    let s = lock(shared);
    let paid: Vec<(String, bool)> = s.registers[i]
        .told
        .iter()
        .filter_map(|t| match t {
            Told::Payment { id, status, manual_capture, .. }
                if status.is_approved() && (!manual_only || *manual_capture) =>
            {
                Some((id.clone(), *manual_capture))
            }
            _ => None,
        })
        .collect();
    (!paid.is_empty()).then(|| paid[of % paid.len()].clone())
}

async fn refund(engine: &Arc<Engine>, i: usize, key: &str, of: usize, amount: RefundAmount, shared: &SharedRef) {
    let Some((payment_id, _)) = approved(shared, i, of, false) else { return };
    let Ok(Some(rec)) = engine.store().get(&payment_id) else { return };
    let amount_minor = match amount {
        RefundAmount::Rest => 0,
        RefundAmount::Part(pm) => (rec.amount_minor * i64::from(pm) / 1000).max(1),
        RefundAmount::Over => rec.amount_minor + 1 + (of as i64 % 500),
    };
    {
        let mut s = lock(shared);
        if s.registers[i].attempts == 0 {
            s.stats.refunds += 1;
        }
        s.note(format!("{key} refund {amount_minor} of {payment_id}"));
    }
    while attempt(shared, i) {
        let (k, id) = (key.to_string(), payment_id.clone());
        let refunded = call(engine, move |engine| async move {
            engine.refund_payment(&k, &id, amount_minor, "simulated return", "register").await
        });
        let told = match refunded.await {
            Ok(r) if r.status == RefundStatus::Succeeded => Some(ToldRefund::Succeeded(r.amount_minor)),
            Ok(r) if r.status == RefundStatus::Failed => Some(ToldRefund::Failed),
            Ok(_) => {
                lock(shared).note(format!("{key} refund pending"));
                None
            }
            Err(e) if retryable(&e) => {
                lock(shared).note(format!("{key} error {}", code(&e)));
                None
            }
            Err(e) => {
                lock(shared).note(format!("{key} refused {}", code(&e)));
                Some(ToldRefund::Refused)
            }
        };
        if let Some(told) = told {
            let mut s = lock(shared);
            s.note(format!("{key} told {told:?}"));
            s.registers[i].told.push(Told::Refund { key: key.into(), payment_id, told });
            return;
        }
        backoff(shared, i).await;
    }
    lock(shared).note(format!("{key} gives up"));
}

#[derive(Debug, Clone, Copy)]
enum AfterSale {
    Capture,
    Void,
}

async fn after_sale(engine: &Arc<Engine>, i: usize, of: usize, what: AfterSale, manual_only: bool, shared: &SharedRef) {
    let Some((id, _)) = approved(shared, i, of, manual_only) else { return };
    lock(shared).note(format!("{what:?} {id}"));
    while attempt(shared, i) {
        let payment = id.clone();
        let answer = call(engine, move |engine| async move {
            match what {
                AfterSale::Capture => engine.capture_payment(&payment, 0, "register").await,
                AfterSale::Void => engine.void_payment(&payment, "simulated void", "register").await,
            }
        })
        .await;
        match answer {
            Ok(rec) => {
                let mut s = lock(shared);
                s.note(format!("{what:?} {id} told {}", rec.status));
                s.registers[i].told.push(Told::AfterSale { id, status: rec.status });
                return;
            }
            Err(e) if retryable(&e) => lock(shared).note(format!("{what:?} {id} error {}", code(&e))),
            Err(e) => {
                lock(shared).note(format!("{what:?} {id} refused {}", code(&e)));
                return;
            }
        }
        backoff(shared, i).await;
    }
    lock(shared).note(format!("{what:?} {id} gives up"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_the_same_for_the_same_seed() {
        let a = format!("{:?}", Plan::draw(7, true));
        let b = format!("{:?}", Plan::draw(7, true));
        assert_eq!(a, b);
        assert_ne!(a, format!("{:?}", Plan::draw(8, true)));
    }
}
