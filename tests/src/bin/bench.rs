//! posd's benchmark table: a payment's round trip and the share of it spent
//! inside posd, posd's time against the serial line time of the same frames,
//! durable commits against raw SQLite commits, memory, and start-up time with
//! a full database. Prints markdown tables; timing goals are reported here,
//! never asserted in tests.
//!
//! ```sh
//! cargo run --release -p posd-e2e --bin bench
//! cargo run --release -p posd-e2e --bin bench -- --payments 500 --stored 20000
//! ```
//!
//! Each payment must end CAPTURED, or the run stops: a fast wrong answer is
//! no benchmark.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use pos_engine::{Input, Status, next};
use pos_proto::terminal::{self as pb, payment_terminal_client::PaymentTerminalClient};
use posd::store::{CardInfo, Data, Inserted, PaymentRecord, Store, Update, now_ms};
use posd_e2e::measure::{
    Metrics, open_fds, proc_status_kib, quantile, rss_kib, start_until_ready, terminate, written_bytes,
};
use posd_e2e::{Lane, advance_all, count, final_payment, status, take};
use tonic::transport::Channel;

/// posd's benchmark table (docs/performance.md): (a) the payment round trip, (b) posd's time
/// against the serial line's, (c) durable commits against raw SQLite, (e) memory and start-up.
#[derive(clap::Parser)]
struct Options {
    /// Timed payments of the round-trip run (after the warm-up)
    #[arg(long, default_value_t = 2000, value_parser = count(1, usize::MAX))]
    payments: usize,
    /// Untimed payments before them
    #[arg(long, default_value_t = 200, value_parser = count(0, usize::MAX))]
    warmup: usize,
    /// Payments in the database for the start-up measurement
    #[arg(long, default_value_t = 100_000, value_parser = count(0, usize::MAX))]
    stored: usize,
    /// Writes per kind in the commit-rate run
    #[arg(long, default_value_t = 10_000, value_parser = count(5, usize::MAX))]
    commits: usize,
    /// posd starts per database size
    #[arg(long, default_value_t = 5, value_parser = count(1, usize::MAX))]
    starts: usize,
    /// Only this part (repeat for more); all when not given
    #[arg(long, value_enum)]
    only: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    /// (a), (b) and memory
    RoundTrip,
    /// (c)
    Commits,
    /// (e) start-up to READY
    Startup,
}

impl Options {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = <Options as clap::Parser>::parse();
    println!("# posd benchmarks\n\nmachine: {}\n", machine());
    if o.runs(Part::RoundTrip) {
        round_trip(&o).await;
    }
    if o.runs(Part::Commits) {
        commit_rate(o.commits).await;
    }
    if o.runs(Part::Startup) {
        startup(&o).await;
    }
    ExitCode::SUCCESS
}

/// CPU, cores, memory and kernel, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let profile = if cfg!(debug_assertions) { "debug build (numbers mean little)" } else { "release build" };
    format!("{model}, {cores} cores, {:.1} GiB, Linux {}, {profile}", mem_kib as f64 / 1048576.0, kernel.trim())
}

fn amount(i: usize) -> i64 {
    // Whole euros: the gateway simulator declines some cent values.
    1000 + 100 * (i % 50) as i64
}

/// One payment through the API; it must end CAPTURED.
async fn pay(client: &mut PaymentTerminalClient<Channel>, key: &str, amount_minor: i64) {
    let events = take(client, key, amount_minor).await.unwrap_or_else(|e| panic!("payment {key} refused: {e}"));
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "payment {key} ended {p:?}");
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// (a) round trip, (b) line time, (e) idle and loaded memory.
async fn round_trip(o: &Options) {
    let mut lane = Lane::prepare(&[], "");
    lane.top_config = "[metrics]\nlisten = \"127.0.0.1:0\"\n".into();
    lane.posd_env = vec![("RUST_LOG".into(), "info".into())];
    lane.start_posd();
    let metrics = lane.posd_line("posd metrics on ").expect("posd's metrics address");
    lane.ready().await;
    let pid = lane.posd_pid();
    let idle_kib = rss_kib(pid);
    let idle_fds = open_fds(pid);

    let mut client = lane.client().await;
    for i in 0..o.warmup {
        pay(&mut client, &format!("warm-{i}"), amount(i)).await;
    }
    let before = Metrics::scrape(&metrics);
    let mut times = Vec::with_capacity(o.payments);
    let run_started = Instant::now();
    for i in 0..o.payments {
        let t = Instant::now();
        pay(&mut client, &format!("bench-{i}"), amount(i)).await;
        times.push(t.elapsed());
    }
    let run_took = run_started.elapsed();
    let after = Metrics::scrape(&metrics);
    let loaded_kib = rss_kib(pid);
    let peak_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let loaded_fds = open_fds(pid);
    lane.kill_posd();

    let n = o.payments as f64;
    let counted = after.delta(&before, "posd_payment_latency_seconds_count");
    assert_eq!(counted, n, "posd counted {counted} payments of the {n} timed");
    let mean_of = |name: &str| {
        let count = after.delta(&before, &format!("{name}_count"));
        assert!(count > 0.0, "no {name} samples");
        Duration::from_secs_f64(after.delta(&before, &format!("{name}_sum")) / count)
    };
    let inside = mean_of("posd_payment_latency_seconds");
    let reader = mean_of("posd_reader_latency_seconds");
    let gateway = mean_of("posd_gateway_latency_seconds");
    let own = inside.saturating_sub(reader + gateway);
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;

    println!("## (a) Payment round trip, register → posd → PTY reader → gateway-sim\n");
    println!(
        "{} payments one after another on one lane after {} of warm-up, zero simulated delays; \
         {:.0} payments/s.\n",
        o.payments,
        o.warmup,
        n / run_took.as_secs_f64()
    );
    println!("| measure | ms |\n|---|---:|");
    println!("| round trip p50 (register's view) | {} |", ms(quantile(&times, 0.50)));
    println!("| round trip p99 | {} |", ms(quantile(&times, 0.99)));
    println!("| round trip mean | {} |", ms(mean));
    println!("| posd: request in → answer out (mean) | {} |", ms(inside));
    println!("| of which waiting for the reader (mean) | {} |", ms(reader));
    println!("| of which waiting for the gateway (mean) | {} |", ms(gateway));
    println!("| posd's own time (mean) | {} |", ms(own));
    println!(
        "| synced commits per payment (posd's store) | {:.2} |",
        after.delta(&before, "posd_store_commits_total") / n
    );
    println!(
        "\nposd's own share of the round trip: **{:.1} %** (the rest: the reader and its line, the gateway \
         and its network, gRPC to the register).\n",
        100.0 * own.as_secs_f64() / mean.as_secs_f64()
    );

    let line = |dir: &str| {
        after.delta(&before, &format!("posd_card_line_bytes_total{{lane=\"lane-1\",direction=\"{dir}\"}}")) / n
    };
    let (out, inn) = (line("out"), line("in"));
    println!("## (b) posd's own time against the serial line time of the same frames\n");
    println!(
        "Per payment the reader line carried {out:.0} bytes out and {inn:.0} bytes in (frames, stuffing, ACKs), \
         {:.0} in all; at 8N1 a byte takes 10 bit times.\n",
        out + inn
    );
    println!("| baud | line time per payment, ms | posd's own time, ms | posd / line |\n|---:|---:|---:|---:|");
    for baud in [9600.0, 115_200.0] {
        let line_time = Duration::from_secs_f64((out + inn) * 10.0 / baud);
        println!(
            "| {baud:.0} | {} | {} | {:.3} |",
            ms(line_time),
            ms(own),
            own.as_secs_f64() / line_time.as_secs_f64()
        );
    }
    println!("\n## (e) Memory\n");
    println!("| posd | RSS MiB | open fds |\n|---|---:|---:|");
    println!("| idle after start-up (target ≤ 15 MB) | {} | {idle_fds} |", mib(idle_kib));
    println!("| after {} payments | {} | {loaded_fds} |", o.warmup + o.payments, mib(loaded_kib));
    println!("| peak (VmHWM) | {} | |", mib(peak_kib));
    println!();
}

/// (c) Durable payment commits against raw SQLite commits with
/// `synchronous=FULL`, interleaved in rounds so both see the same disk: one
/// writer at a time, then eight at once (lanes committing together).
async fn commit_rate(commits: usize) {
    const ROUNDS: usize = 10;
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let raw_db = rusqlite::Connection::open(dir.path().join("raw.db")).expect("raw db");
    let mode: String = raw_db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert!(mode.eq_ignore_ascii_case("wal"), "journal mode {mode}");
    raw_db
        .execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, at INTEGER)")
        .unwrap();
    // Eight raw writers share the one connection, each insert its own commit.
    let raw_db = std::sync::Mutex::new(raw_db);
    let store = Arc::new(Store::open(&dir.path().join("posd.db")).expect("posd store"));

    let per_round = commits / ROUNDS;
    let payments_per_round = (per_round / 5).max(1);
    let serial = Arc::new(AtomicUsize::new(0));
    let raw_insert = |serial: usize| {
        raw_db
            .lock()
            .unwrap()
            .execute("INSERT INTO t (k, at) VALUES (?1, ?2)", rusqlite::params![format!("k-{serial}"), now_ms()])
            .unwrap();
    };
    // Per number of writers: the raw inserts and posd's writes.
    let mut runs = [1, WRITERS].map(|writers| (writers, Tally::default(), Tally::default()));
    for _ in 0..ROUNDS {
        for (writers, raw, posd) in &mut runs {
            let from = Mark::now();
            spread(*writers, per_round, &serial, raw_insert);
            raw.add(from, per_round, per_round);
            let (from, synced) = (Mark::now(), store.write_counts().1);
            let n = lanes(&store, *writers, payments_per_round, &serial).await;
            posd.add(from, n, (store.write_counts().1 - synced) as usize);
        }
    }
    println!("## (c) Durable commits\n");
    println!(
        "WAL, `synchronous=FULL`, a file system on the machine's disk ({}); {ROUNDS} interleaved rounds. \
         A posd write is one payment insert or state change as the engine stores it (the payment row, its audit \
         entry, any outbox and card-data change), durable when the call returns; a raw write is a one-row insert \
         in its own commit. posd's writers are lanes as in the daemon: tasks on tokio's multi-threaded runtime \
         (a worker per core, as posd runs) calling the store's async API, {WRITERS} lanes sharing commits (group commit). Raw writers are threads \
         sharing one connection. Bytes are what the process handed to `write` (WAL frames and checkpoints).\n",
        dir.path().display()
    );
    println!(
        "| writers | writes | count | per second | KiB written per write | writes per synced commit |\n\
         |---:|---|---:|---:|---:|---:|"
    );
    for (writers, raw, posd) in &runs {
        for (what, t) in [("raw SQLite insert", raw), ("posd payment write", posd)] {
            println!(
                "| {writers} | {what} | {} | {:.0} | {:.1} | {:.1} |",
                t.writes,
                t.rate(),
                t.kib_per_write(),
                t.writes as f64 / t.syncs as f64
            );
        }
    }
    let [one, many] = runs.map(|(_, raw, posd)| posd.rate() / raw.rate());
    println!("\nposd / raw: one writer **{one:.2}**, {WRITERS} writers **{many:.2}** (target ≥ 0.8)\n");
}

/// Runs `count` units over `writers` threads at once, each unit numbered
/// from `serial`.
fn spread(writers: usize, count: usize, serial: &AtomicUsize, unit: impl Fn(usize) + Sync) {
    std::thread::scope(|scope| {
        for w in 0..writers {
            let n = count / writers + usize::from(w < count % writers);
            let unit = &unit;
            scope.spawn(move || (0..n).for_each(|_| unit(serial.fetch_add(1, Relaxed) + 1)));
        }
    });
}

/// Stores `count` payments over `lanes` tasks at once, each payment
/// numbered from `serial`; returns the writes they made.
async fn lanes(store: &Arc<Store>, lanes: usize, count: usize, serial: &Arc<AtomicUsize>) -> usize {
    let tasks: Vec<_> = (0..lanes)
        .map(|l| {
            let n = count / lanes + usize::from(l < count % lanes);
            let (store, serial) = (Arc::clone(store), Arc::clone(serial));
            tokio::spawn(async move {
                let mut writes = 0;
                for _ in 0..n {
                    writes += commit_one_payment(&store, serial.fetch_add(1, Relaxed) + 1).await;
                }
                writes
            })
        })
        .collect();
    let mut writes = 0;
    for t in tasks {
        writes += t.await.expect("lane task");
    }
    writes
}

/// When and at how many bytes written a timed part began.
struct Mark(Instant, u64);

impl Mark {
    fn now() -> Self {
        Mark(Instant::now(), written_bytes())
    }
}

/// Writes, their synced commits, their time and the bytes written for them,
/// over the rounds of the commit benchmark.
#[derive(Default)]
struct Tally {
    writes: usize,
    syncs: usize,
    time: Duration,
    bytes: u64,
}

impl Tally {
    /// Adds the part that began at `from`: `writes` writes in `syncs` synced commits.
    fn add(&mut self, from: Mark, writes: usize, syncs: usize) {
        self.time += from.0.elapsed();
        self.bytes += written_bytes() - from.1;
        self.writes += writes;
        self.syncs += syncs;
    }

    fn rate(&self) -> f64 {
        self.writes as f64 / self.time.as_secs_f64()
    }

    fn kib_per_write(&self) -> f64 {
        self.bytes as f64 / 1024.0 / self.writes as f64
    }
}

/// Stores one payment's life as posd does, a commit per state change;
/// returns the number of writes.
async fn commit_one_payment(store: &Arc<Store>, serial: usize) -> usize {
    let rec = PaymentRecord::created(
        format!("pay_commit_{serial:07}"),
        format!("commit-{serial}"),
        format!("K{serial:012}"),
        "lane-1".into(),
        amount(serial),
        "EUR".into(),
        now_ms(),
    );
    let inserted = store.insert_or_get(&rec, "bench").await.expect("insert");
    assert!(matches!(inserted, Inserted::New(_)), "new payment");
    let card = (card_info(), vec![0xA5; 160]);
    let mut s = Status::Created;
    let steps = captured_life();
    for input in &steps {
        let t = next(s, input).expect("a valid transition");
        let data = match input {
            Input::CardRead => Data::Card(card.0.clone(), card.1.clone()),
            _ => Data::None,
        };
        let update = Update { data, ..Default::default() };
        s = store.apply(&rec.id, &t, update, now_ms()).await.expect("commit").0.status;
    }
    assert_eq!(s, Status::Captured);
    1 + steps.len()
}

/// An online payment's life after it was created, as the engine stores it.
fn captured_life() -> [Input; 4] {
    [Input::Start, Input::CardRead, Input::Sending, Input::Approved { captured: true }]
}

fn card_info() -> CardInfo {
    CardInfo { masked_pan: "424242******4242".into(), brand: "visa".into(), entry_mode: 1, ..Default::default() }
}

/// (e) Start-up to READY=1 with an empty database and with `stored` payments.
async fn startup(o: &Options) {
    let mut lane = Lane::prepare(&[], "");
    lane.posd_env = vec![("RUST_LOG".into(), "info".into())];
    let state = lane.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    println!("## (e) Start-up to READY\n");
    println!(
        "posd started {} times per database size (spawn to `READY=1` on NOTIFY_SOCKET), then stopped with SIGTERM.\n",
        o.starts
    );
    println!("| payments stored | database MiB | median ms | max ms | RSS at READY MiB |\n|---:|---:|---:|---:|---:|");
    for stored in [0, o.stored] {
        let seeded = Instant::now();
        if stored > 0 {
            seed(&state.join("posd.db"), stored).await;
        }
        let seeding = seeded.elapsed();
        let mut times = Vec::new();
        let mut rss = 0;
        for _ in 0..o.starts {
            let (mut child, took) = start_until_ready(lane.posd_command(), lane.dir.path(), &lane.posd_log());
            rss = rss.max(rss_kib(child.id()));
            terminate(&mut child);
            times.push(took);
        }
        times.sort();
        let size: u64 = std::fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("posd.db"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        println!(
            "| {stored} | {:.1} | {} | {} | {} |",
            size as f64 / 1048576.0,
            ms(quantile(&times, 0.5)),
            ms(*times.last().unwrap()),
            mib(rss)
        );
        if stored > 0 {
            eprintln!("(seeding {stored} payments took {:.1} s)", seeding.as_secs_f64());
        }
    }
    println!("\ntarget: ≤ 200 ms with 100,000 payments stored\n");
}

/// Puts `n` captured payments into posd's database at `path`: inserted in
/// one commit, then walked through their life by the store's batched
/// transitions.
async fn seed(path: &Path, n: usize) {
    let store = Arc::new(Store::open(path).expect("posd store"));
    let start = now_ms() - 30 * 24 * 3600 * 1000;
    let recs: Vec<PaymentRecord> = (0..n)
        .map(|i| {
            PaymentRecord::created(
                format!("pay_seed_{i:07}"),
                format!("seed-{i}"),
                format!("S{i:012}"),
                format!("lane-{}", 1 + i % 8),
                amount(i),
                "EUR".into(),
                start + i as i64 * 20,
            )
        })
        .collect();
    store.insert_batch(&recs, "bench").await.expect("seed payments");
    let ids: Vec<String> = recs.into_iter().map(|r| r.id).collect();
    let status = advance_all(&store, &ids, &captured_life(), |_, input| {
        let data = match input {
            Input::CardRead => Data::Card(card_info(), vec![0xA5; 160]),
            _ => Data::None,
        };
        Update { data, ..Default::default() }
    })
    .await;
    assert_eq!(status, Status::Captured);
    assert_eq!(store.count_by_status().unwrap(), vec![("captured".to_string(), n as i64)]);
    store.checkpoint();
}
