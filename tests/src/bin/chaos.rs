//! Crash-consistency chaos run: posd, gateway-sim and firmware-sim as
//! separate processes; a random workload of payments and refunds on several
//! lanes (three native readers on PTYs, one ZVT terminal on a PTY, one nexo
//! terminal on loopback HTTPS); at random moments posd is killed with SIGKILL
//! and restarted (a nexo payment mid-POST is then settled by TransactionStatus),
//! the gateway refuses, hangs, fails half its calls or loses answers after
//! committing them, the ZVT line drops ACKs and corrupts CRCs, the nexo
//! terminal cuts an answer after booking or restarts mid-payment, and another program holds posd's
//! database write lock past posd's busy timeout (posd then refuses payments
//! and, once the lock is gone, stops with exit 75 to be started again, as
//! systemd does here). Afterwards posd's database and
//! the gateway's ledger are checked against each other and against what the
//! register was told.
//!
//! ```text
//! cargo run -p posd-e2e --bin chaos -- --kills 50 [--seed N] [--lanes 3]
//! ```
//!
//! Prints the counts and each invariant's result; exits 1 on any violation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pos_proto::terminal as pb;
use pos_proto::terminal::payment_terminal_client::PaymentTerminalClient;
use posd_e2e::{Lane, Proc, bin, card_numbers, more_reader_lanes};
use tonic::transport::Channel;

/// A small deterministic generator (xorshift64*), so a seed replays the
/// workload's choices (not the kill timing, which races the processes).
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A random tag in letters: keys must not hold long digit runs, which
    /// the leak scan would take for card numbers.
    fn tag(&mut self) -> String {
        let mut v = self.next();
        (0..10)
            .map(|_| {
                let c = char::from(b'a' + (v % 26) as u8);
                v /= 26;
                c
            })
            .collect()
    }
}

/// The chaos run: kills posd, flaps the gateway, corrupts lines and locks the database while
/// lanes pay and refund, then checks every invariant (docs/reliability.md).
#[derive(clap::Parser)]
struct Options {
    /// Times posd is killed with SIGKILL
    #[arg(long, default_value_t = 50)]
    kills: u32,
    /// Seed of the workload and the faults (a run is repeatable by it)
    #[arg(long, default_value_t = 0x5EED, value_parser = clap::value_parser!(u64).range(1..))]
    seed: u64,
    /// Reader lanes, besides the ZVT lane
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    lanes: u32,
}

/// What the register was told, per payment.
#[derive(Default)]
struct Told {
    /// Payment ids whose stream ended with "approved".
    approved: HashSet<String>,
    /// Refund ids reported succeeded, with their payment and amount.
    refunds: HashMap<String, (String, i64)>,
    /// Refund ids reported failed (nothing refunded).
    failed_refunds: HashSet<String>,
    /// Payment ids whose stream ended failed, declined or canceled.
    failed_payments: HashSet<String>,
    /// Refund calls made, and those whose outcome was not heard (asked again).
    refunds_asked: u64,
    refunds_retried: u64,
    payments: u64,
    interrupted: u64,
    /// Payments refused before they started, by gRPC code and reason.
    refused: BTreeMap<String, u64>,
    /// Per lane: payments tried, reported approved.
    by_lane: BTreeMap<String, (u64, u64)>,
    api_responses: Vec<String>,
}

#[derive(Default)]
struct Counts {
    kills: AtomicU64,
    startup_kills: AtomicU64,
    gateway_faults: AtomicU64,
    line_faults: AtomicU64,
    nexo_faults: AtomicU64,
    db_locks: AtomicU64,
}

const OFFLINE_LIMITS: &str = "offline = { max_payment_minor = 1000000, max_total_minor = 1000000000, max_payments = 100000, max_per_card = 100000 }";

#[tokio::main]
async fn main() -> ExitCode {
    let o = <Options as clap::Parser>::parse();
    let started = Instant::now();
    // Lane 1 comes with the harness; lanes 2.. get readers of their own,
    // lane "zvt" a ZVT terminal that keeps results it never saw confirmed,
    // and lane "nexo" a nexo terminal (encrypted, its CA written here).
    let mut lane = Lane::prepare(&[], "");
    lane.lane_config = format!("{OFFLINE_LIMITS}\n");
    let dir = lane.dir.path().to_path_buf();
    let (mut devices, mut extra) = more_reader_lanes(&dir, o.lanes as usize, OFFLINE_LIMITS);
    let zvt_link = dir.join("zvt-link");
    let mut cmd = Command::new(bin("firmware-sim"));
    cmd.arg("zvt").arg("--pty-link").arg(&zvt_link);
    cmd.args(["--control", "127.0.0.1:0", "--step-ms", "5", "--t3-ms", "800", "--keep-unconfirmed"]);
    let (zvt_proc, zvt_control) = Proc::start(cmd, &dir.join("zvt.log"), "firmware-sim zvt control on ");
    devices.push(zvt_proc);
    extra += &format!(
        "[[lane]]\nid = \"zvt\"\ncurrency = \"EUR\"\nreader = {{ kind = \"zvt\", device = {zvt_link:?}, t3_ms = 1000, t4_ms = 3000 }}\n"
    );
    let (nexo_proc, nexo_control, nexo_table) = nexo_terminal(&dir);
    devices.push(nexo_proc);
    extra += &nexo_table;
    lane.extra_config = extra;
    lane.start_posd();
    let addr = Arc::new(Mutex::new(lane.posd_addr.clone()));
    let told = Arc::new(Mutex::new(Told::default()));
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut lanes: Vec<String> = (1..=o.lanes).map(|i| format!("lane-{i}")).collect();
    lanes.push("zvt".into());
    lanes.push("nexo".into());
    let mut workers = Vec::new();
    for (n, id) in lanes.iter().enumerate() {
        let (addr, told, stop, id) = (addr.clone(), told.clone(), stop.clone(), id.clone());
        let rng = Rng(o.seed.wrapping_add(n as u64 * 7919) | 1);
        workers.push(tokio::spawn(workload(id, addr, told, stop, rng)));
    }

    // The chaos: kill posd, flap the gateway, disturb the ZVT line, lock the database.
    let mut rng = Rng(o.seed ^ 0xC4A0_5EED);
    let faults = ["none", "down", "hang", "flaky 50", "lose-answers", "none", "none"];
    // How posd ended each time it stopped by itself.
    let mut own_exits = Vec::new();
    while counts.kills.load(Ordering::SeqCst) < u64::from(o.kills) {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        // Stopped by itself (to recover from a database failure): start it
        // again, as systemd's Restart=on-failure does.
        if let Some(exit) = lane.posd_exited() {
            own_exits.push(exit);
            lane.start_posd();
            *addr.lock().unwrap() = lane.posd_addr.clone();
        }
        let event = rng.below(40);
        if event == 0 {
            hold_write_lock(&lane).await;
            counts.db_locks.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match event % 10 {
            0..=5 => {
                lane.kill_posd();
                counts.kills.fetch_add(1, Ordering::SeqCst);
                // One restart in four is killed again during start-up
                // (migrations, recovery, the first forwarding round).
                if rng.below(4) == 0 {
                    kill_during_start_up(&lane, Duration::from_millis(rng.below(150))).await;
                    counts.startup_kills.fetch_add(1, Ordering::SeqCst);
                }
                lane.start_posd();
                *addr.lock().unwrap() = lane.posd_addr.clone();
            }
            6..=8 => {
                let f = faults[rng.below(faults.len() as u64) as usize];
                lane.fault(f);
                counts.gateway_faults.fetch_add(1, Ordering::SeqCst);
                // Answers lost, then the gateway gone: the registers' same-key
                // retries now meet "not sent" for calls that may have been sent.
                if f == "lose-answers" && rng.below(2) == 0 {
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(200))).await;
                    lane.fault("down");
                    counts.gateway_faults.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ if rng.below(2) == 0 => {
                let f = if rng.below(2) == 0 { "fault drop-ack" } else { "fault bad-crc" };
                terminal(&zvt_control, f);
                counts.line_faults.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                // The nexo terminal's next payment: its answer lost after
                // booking, or the terminal restarting in the middle of it.
                let f = if rng.below(2) == 0 { "next lost-answer" } else { "next restart" };
                terminal(&nexo_control, f);
                counts.nexo_faults.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    lane.fault("none");
    for w in workers {
        let _ = w.await;
    }
    // One clean restart, then let recovery and forwarding finish.
    lane.kill_posd();
    lane.start_posd();
    let settled = settle(&lane).await;
    lane.terminate_posd();
    let _ = lane.wait_posd_exit().await;

    let told = std::mem::take(&mut *told.lock().unwrap());
    let mut report = check(&lane, &told, settled);
    let unexpected: Vec<String> = own_exits.iter().filter(|e| e.code() != Some(75)).map(|e| format!("{e:?}")).collect();
    report.push((
        "posd stopped by itself only to recover from a database failure (exit 75)",
        if unexpected.is_empty() {
            Ok(format!("{} stops after {} database locks", own_exits.len(), counts.db_locks.load(Ordering::SeqCst)))
        } else {
            Err(format!("unexpected exits: {}", unexpected.join(", ")))
        },
    ));
    println!(
        "chaos run: seed {}, {} lanes + 1 ZVT lane + 1 nexo lane, {:.1} s",
        o.seed,
        o.lanes,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  kills {}, of them {} again during start-up, gateway faults {}, ZVT line faults {}, nexo terminal faults {}, database locks {}, payments {} ({} reported approved, {} ended without an outcome and were asked again), refunds asked {} ({} reported succeeded, {} failed, {} asked again)",
        counts.kills.load(Ordering::SeqCst),
        counts.startup_kills.load(Ordering::SeqCst),
        counts.gateway_faults.load(Ordering::SeqCst),
        counts.line_faults.load(Ordering::SeqCst),
        counts.nexo_faults.load(Ordering::SeqCst),
        counts.db_locks.load(Ordering::SeqCst),
        told.payments,
        told.approved.len(),
        told.interrupted,
        told.refunds_asked,
        told.refunds.len(),
        told.failed_refunds.len(),
        told.refunds_retried
    );
    for (lane, (tried, approved)) in &told.by_lane {
        println!("  lane {lane}: {tried} payments, {approved} reported approved");
    }
    for (reason, n) in &told.refused {
        println!("  refused {n}: {reason}");
    }
    let mut failed = false;
    for (name, result) in &report {
        match result {
            Ok(detail) => println!("  ok    {name}: {detail}"),
            Err(detail) => {
                failed = true;
                println!("  FAIL  {name}: {detail}");
            }
        }
    }
    drop(devices);
    if failed {
        println!("chaos: invariants violated; the run's files are kept in {}", dir.display());
        std::mem::forget(lane);
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts the nexo lane's terminal (`firmware-sim nexo` on a free loopback
/// port, encrypted, quick: 5 ms a payment, 200 ms a restart) with its files
/// in `dir`; returns it, its control address and posd's `[[lane]]` table.
fn nexo_terminal(dir: &std::path::Path) -> (Proc, String, String) {
    let passphrase = dir.join("nexo-passphrase");
    std::fs::write(&passphrase, "chaos-Nexo-Passphrase\n").expect("the passphrase file");
    let ca = dir.join("nexo-ca.pem");
    let mut cmd = Command::new(bin("firmware-sim"));
    cmd.args(["nexo", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--poi-id", "V400m-324688179"]);
    cmd.args(["--key-id", "chaos", "--key-version", "1", "--step-ms", "5", "--restart-ms", "200"]);
    cmd.arg("--passphrase-file").arg(&passphrase).arg("--ca-out").arg(&ca);
    let (mut proc, control) = Proc::start(cmd, &dir.join("nexo.log"), "firmware-sim nexo control on ");
    let addr = proc.wait_line("firmware-sim nexo listening on ").expect("the nexo terminal's address");
    let table = format!(
        "[[lane]]\nid = \"nexo\"\ncurrency = \"EUR\"\nreader = {{ kind = \"nexo\", url = \"https://{addr}/nexo\", \
         poi_id = \"V400m-324688179\", ca_file = {ca:?}, key_id = \"chaos\", key_version = 1, \
         passphrase_file = {passphrase:?} }}\n"
    );
    (proc, control, table)
}

/// Starts posd and kills it `after` the start, whatever it is doing then.
async fn kill_during_start_up(lane: &Lane, after: Duration) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(lane.posd_log()).expect("posd's log");
    let mut cmd = lane.posd_command();
    cmd.stdout(std::process::Stdio::null()).stderr(log).stdin(std::process::Stdio::null());
    let Ok(mut child) = cmd.spawn() else { return };
    tokio::time::sleep(after).await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Another program (a technician's sqlite3 shell, a backup tool) holds
/// posd's database write lock for 6 s, past posd's 5 s busy timeout.
async fn hold_write_lock(lane: &Lane) {
    let db = rusqlite::Connection::open(lane.state_dir().join("posd.db")).expect("posd's database");
    db.busy_timeout(Duration::from_secs(30)).expect("a busy timeout");
    db.execute_batch("BEGIN IMMEDIATE").expect("the write lock");
    tokio::time::sleep(Duration::from_secs(6)).await;
    db.execute_batch("ROLLBACK").expect("the lock released");
}

fn terminal(control: &str, command: &str) {
    use std::io::{BufRead, BufReader, Write};
    if let Ok(mut s) = std::net::TcpStream::connect(control) {
        let _ = writeln!(s, "{command}");
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
    }
}

async fn connect(addr: &Mutex<String>) -> Option<PaymentTerminalClient<Channel>> {
    let url = format!("http://{}", addr.lock().unwrap());
    let channel = tokio::time::timeout(Duration::from_secs(2), Channel::from_shared(url).ok()?.connect()).await;
    Some(PaymentTerminalClient::new(channel.ok()?.ok()?))
}

/// A refund the register asked for and has not heard the end of: it asks
/// again under the same key, as a register must after "outcome unknown" or
/// a broken connection.
struct AskedRefund {
    key: String,
    payment: String,
    amount: i64,
}

/// A payment whose stream ended without its outcome (posd killed, the
/// connection broken): the register takes it again under the same key and
/// parameters, which attaches to the stored payment.
struct AskedPayment {
    key: String,
    amount: i64,
}

/// One lane's register, as a real one behaves: payments (mostly approvable
/// amounts, some declines), partial refunds of captured ones, refunds past
/// what is left (refused), and every call whose outcome it did not hear
/// asked again under the same key, across kills and gateway faults.
struct Register {
    lane: String,
    told: Arc<Mutex<Told>>,
    rng: Rng,
    n: u64,
    /// Captured payments: id, amount, refunded or asked so far.
    captured: Vec<(String, i64, i64)>,
    refunds_in_doubt: Vec<AskedRefund>,
    payments_in_doubt: Vec<AskedPayment>,
}

async fn workload(lane: String, addr: Arc<Mutex<String>>, told: Arc<Mutex<Told>>, stop: Arc<AtomicBool>, rng: Rng) {
    let mut r = Register {
        lane,
        told,
        rng,
        n: 0,
        captured: Vec::new(),
        refunds_in_doubt: Vec::new(),
        payments_in_doubt: Vec::new(),
    };
    while !stop.load(Ordering::SeqCst) {
        let Some(mut client) = connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let pause = match r.rng.below(10) {
            0 if !r.refunds_in_doubt.is_empty() => {
                let asked = r.refunds_in_doubt.swap_remove(r.rng.below(r.refunds_in_doubt.len() as u64) as usize);
                r.refund(&mut client, asked).await
            }
            1 if !r.payments_in_doubt.is_empty() => {
                let asked = r.payments_in_doubt.swap_remove(r.rng.below(r.payments_in_doubt.len() as u64) as usize);
                r.pay(&mut client, asked).await
            }
            2 | 3 if !r.captured.is_empty() => {
                let i = r.rng.below(r.captured.len() as u64) as usize;
                let (payment, amount, asked) = r.captured[i].clone();
                // One refund in five asks for more than is left: refused.
                let part = if r.rng.below(5) == 0 {
                    amount - asked + 1
                } else {
                    1 + r.rng.below((amount as u64 / 3).max(1)) as i64
                };
                if part <= amount - asked {
                    r.captured[i].2 += part;
                }
                r.n += 1;
                let key = format!("{}-refund-{}-{}", r.lane, r.n, r.rng.tag());
                r.refund(&mut client, AskedRefund { key, payment, amount: part }).await
            }
            _ => {
                r.n += 1;
                let cents = [0, 0, 0, 0, 0, 0, 5][r.rng.below(7) as usize];
                let amount = (1 + r.rng.below(50) as i64) * 100 + cents;
                let key = format!("{}-{}-{}", r.lane, r.n, r.rng.tag());
                r.pay(&mut client, AskedPayment { key, amount }).await
            }
        };
        if pause {
            // A register waits a moment before it tries again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Register {
    /// Takes (or attaches to) a payment; true when refused before it started.
    async fn pay(&mut self, client: &mut PaymentTerminalClient<Channel>, asked: AskedPayment) -> bool {
        let req = pb::TakePaymentRequest {
            idempotency_key: asked.key.clone(),
            terminal_id: self.lane.clone(),
            amount: Some(pb::Money { amount_minor: asked.amount, currency: "EUR".into() }),
            ..Default::default()
        };
        let events = tokio::time::timeout(Duration::from_secs(30), async {
            let mut stream = client.take_payment(req).await?.into_inner();
            let mut events = Vec::new();
            while let Some(ev) = stream.message().await? {
                events.push(ev);
            }
            Ok::<_, tonic::Status>(events)
        })
        .await;
        let mut t = self.told.lock().unwrap();
        t.payments += 1;
        t.by_lane.entry(self.lane.clone()).or_default().0 += 1;
        let last = match events {
            Ok(Ok(events)) => {
                t.api_responses.push(format!("{events:?}"));
                events.last().and_then(|e| e.payment.clone())
            }
            // Refused before it started (busy lane, posd stopping or gone):
            // a new payment the next time.
            Ok(Err(status)) if status.code() != tonic::Code::Unknown => {
                let reason = format!("{:?} {}", status.code(), status.message().split(';').next().unwrap_or_default());
                *t.refused.entry(reason.chars().take(60).collect()).or_default() += 1;
                return true;
            }
            _ => None,
        };
        let final_status = last.as_ref().map(|p| pb::PaymentStatus::try_from(p.status).unwrap_or_default());
        match (last, final_status) {
            (Some(p), _) if p.approved => {
                t.by_lane.entry(self.lane.clone()).or_default().1 += 1;
                t.approved.insert(p.payment_id.clone());
                if p.status == pb::PaymentStatus::Captured as i32 {
                    self.captured.push((p.payment_id, asked.amount, 0));
                }
            }
            (Some(p), Some(pb::PaymentStatus::Failed | pb::PaymentStatus::Declined | pb::PaymentStatus::Canceled)) => {
                t.failed_payments.insert(p.payment_id);
            }
            // Ended without an outcome (posd killed, the line lost, a
            // payment still in doubt): the register asks again, same key.
            _ => {
                t.interrupted += 1;
                self.payments_in_doubt.push(asked);
            }
        }
        false
    }

    /// Asks for a refund (or asks again); true when posd said to wait.
    async fn refund(&mut self, client: &mut PaymentTerminalClient<Channel>, asked: AskedRefund) -> bool {
        let req = pb::RefundPaymentRequest {
            payment_id: asked.payment.clone(),
            idempotency_key: asked.key.clone(),
            amount_minor: asked.amount,
            reason: "chaos".into(),
        };
        let answer = tokio::time::timeout(Duration::from_secs(20), client.refund_payment(req)).await;
        let mut t = self.told.lock().unwrap();
        t.refunds_asked += 1;
        match answer {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                t.api_responses.push(format!("{r:?}"));
                match pb::RefundStatus::try_from(r.status) {
                    Ok(pb::RefundStatus::Succeeded) => {
                        t.refunds.insert(r.refund_id.clone(), (asked.payment, asked.amount));
                    }
                    Ok(pb::RefundStatus::Failed) => {
                        t.failed_refunds.insert(r.refund_id.clone());
                    }
                    _ => self.refunds_in_doubt.push(asked),
                }
                false
            }
            // Refused for good: more than is left, a payment not captured.
            Ok(Err(s)) if matches!(s.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument) => {
                *t.refused.entry(format!("refund {:?}", s.code())).or_default() += 1;
                false
            }
            // Outcome unknown, posd stopping or gone, no answer in time:
            // asked again later under the same key.
            _ => {
                t.refunds_retried += 1;
                self.refunds_in_doubt.push(asked);
                true
            }
        }
    }
}

/// Waits until no payment is in flight and the offline queue is empty. A
/// ZVT payment the terminal could not confirm either way is left UNKNOWN for
/// a person on purpose (event `terminal_outcome_unknown`); those are counted
/// apart, and money invariants 2-4 still cover them.
async fn settle(lane: &Lane) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let not_final = "status NOT IN \
             ('captured','authorized','declined','canceled','failed','reversed','offline_declined','expired','voided')";
        let parked = "status = 'unknown' AND device IN ('zvt', 'nexo') AND id IN \
             (SELECT payment_id FROM events WHERE kind = 'terminal_outcome_unknown')";
        // A refund the terminal's journal or the gateway could not settle
        // is left to a person too (posctl resolve), with its event.
        let parked_refund = "status = 'pending' AND EXISTS (SELECT 1 FROM events e WHERE e.payment_id = refunds.payment_id \
             AND e.kind IN ('terminal_refund_unknown', 'refund_outcome_unknown') AND e.message LIKE 'refund ' || refunds.id || ' %')";
        // One connection per look, five counts.
        let counts = open_db(lane).and_then(|db| {
            let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(|e| e.to_string());
            Ok((
                count(&format!("SELECT COUNT(*) FROM payments WHERE {not_final} AND NOT ({parked})"))?,
                count(&format!("SELECT COUNT(*) FROM payments WHERE {parked}"))?,
                count("SELECT COUNT(*) FROM gateway_records WHERE sent_at_ms IS NULL")?,
                count(&format!("SELECT COUNT(*) FROM refunds WHERE status = 'pending' AND NOT ({parked_refund})"))?,
                count(&format!("SELECT COUNT(*) FROM refunds WHERE {parked_refund}"))?,
            ))
        });
        match counts {
            Ok((0, left, 0, 0, refunds_left)) => {
                return Ok(format!(
                    "every payment and refund final, queues empty ({left} terminal payments and {refunds_left} refunds \
                     the terminal could not confirm left to a person)"
                ));
            }
            other if Instant::now() > deadline => {
                return Err(format!(
                    "after 120 s: (payments not final, left to a person, records unsent, refunds pending, \
                     refunds left to a person) = {other:?}"
                ));
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gateway's refunds by refund key: whether each succeeded.
fn gateway_refunds(lane: &Lane) -> HashMap<String, bool> {
    let Ok(db) = rusqlite::Connection::open_with_flags(
        lane.dir.path().join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return HashMap::new();
    };
    db.prepare("SELECT refund_key, succeeded FROM refunds")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .unwrap_or_default()
}

fn open_db(lane: &Lane) -> Result<rusqlite::Connection, String> {
    rusqlite::Connection::open_with_flags(
        lane.state_dir().join("posd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())
}

struct Payment {
    status: String,
    gateway_key: String,
    captured: i64,
    device: String,
}

type Report = Vec<(&'static str, Result<String, String>)>;

fn check(lane: &Lane, told: &Told, settled: Result<String, String>) -> Report {
    let mut report: Report = vec![("nothing stuck after recovery", settled)];
    let db = match open_db(lane) {
        Ok(db) => db,
        Err(e) => return vec![("posd database readable", Err(e))],
    };
    let payments: BTreeMap<String, Payment> = db
        .prepare("SELECT id, status, gateway_key, captured_minor, device FROM payments")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Payment { status: r.get(1)?, gateway_key: r.get(2)?, captured: r.get(3)?, device: r.get(4)? },
                ))
            })?
            .collect()
        })
        .unwrap_or_default();
    let refunds: Vec<(String, String, i64, String, String)> = db
        .prepare("SELECT id, payment_id, amount_minor, status, refund_key FROM refunds")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect())
        .unwrap_or_default();
    let ledger = lane.ledger();
    let charges: HashMap<String, &serde_json::Value> =
        ledger.iter().map(|c| (c["key"].as_str().unwrap_or_default().to_string(), c)).collect();
    let by_key: HashMap<&str, (&String, &Payment)> =
        payments.iter().map(|(id, p)| (p.gateway_key.as_str(), (id, p))).collect();

    // Every payment the register was told approved is at the gateway once.
    let mut missing = Vec::new();
    for id in &told.approved {
        match payments.get(id) {
            None => missing.push(format!("{id}: not in posd")),
            Some(p) => match charges.get(&p.gateway_key) {
                Some(c) if c["status"] != "declined" || p.status == "offline_declined" => {}
                Some(c) => missing.push(format!("{id}: {} at the gateway but told approved", c["status"])),
                None => missing.push(format!("{id}: {} in posd, absent from the ledger", p.status)),
            },
        }
    }
    report.push((
        "every payment reported approved exists exactly once at the gateway",
        if missing.is_empty() { Ok(format!("{} payments", told.approved.len())) } else { Err(missing.join("; ")) },
    ));

    // No charge without a payment that took it, no charge for a payment that failed.
    let mut orphans = Vec::new();
    for (key, c) in &charges {
        let live = c["status"] == "approved";
        match by_key.get(key.as_str()) {
            None if live => orphans.push(format!("{key}: charged, unknown to posd")),
            Some((id, p)) if live && !matches!(p.status.as_str(), "captured" | "authorized") => {
                orphans.push(format!("{id}: charged at the gateway but {} in posd", p.status));
            }
            _ => {}
        }
    }
    report.push((
        "no charge without an approved payment (no duplicate, no orphan)",
        if orphans.is_empty() { Ok(format!("{} charges", charges.len())) } else { Err(orphans.join("; ")) },
    ));

    // Refunds: never more than captured; posd's refunded total per payment
    // is the gateway's (a terminal's refunds reach it as records).
    let mut over = Vec::new();
    let mut refunded: HashMap<&str, i64> = HashMap::new();
    for (_, payment, amount, status, _) in &refunds {
        if status == "succeeded" {
            *refunded.entry(payment.as_str()).or_default() += amount;
        }
    }
    for (id, p) in &payments {
        let sum = refunded.get(id.as_str()).copied().unwrap_or(0);
        if sum > p.captured {
            over.push(format!("{id}: {sum} refunded of {} captured", p.captured));
        }
        let at_gateway = charges.get(&p.gateway_key).and_then(|c| c["refunded_minor"].as_i64()).unwrap_or(0);
        if at_gateway != sum {
            over.push(format!("{id} ({}): {sum} refunded in posd, {at_gateway} at the gateway", p.device));
        }
    }
    for c in &ledger {
        if c["refunded_minor"].as_i64() > c["captured_minor"].as_i64() {
            over.push(format!("{}: the gateway refunded more than it captured", c["key"]));
        }
    }
    for (refund, (payment, _)) in &told.refunds {
        if !refunds.iter().any(|r| &r.0 == refund && &r.1 == payment && r.3 == "succeeded") {
            over.push(format!("refund {refund} reported succeeded but not stored so"));
        }
    }
    report.push((
        "refunds never exceed captures; posd's refunded total per payment equals the gateway's",
        if over.is_empty() { Ok(format!("{} refunds", refunds.len())) } else { Err(over.join("; ")) },
    ));

    // Nothing the register was told failed exists at the gateway: no charge
    // under a failed payment's key, no refund under a failed refund's key.
    let mut booked = Vec::new();
    for id in &told.failed_payments {
        if let Some(p) = payments.get(id)
            && charges.get(&p.gateway_key).is_some_and(|c| c["status"] == "approved")
        {
            booked.push(format!("payment {id}: reported failed, charged at the gateway"));
        }
    }
    let gateway_refunds = gateway_refunds(lane);
    for (id, _, _, _, refund_key) in &refunds {
        if told.failed_refunds.contains(id) && gateway_refunds.get(refund_key.as_str()) == Some(&true) {
            booked.push(format!("refund {id}: reported failed, refunded at the gateway"));
        }
    }
    report.push((
        "no operation reported failed exists at the gateway",
        if booked.is_empty() {
            Ok(format!(
                "{} payments and {} refunds reported failed",
                told.failed_payments.len(),
                told.failed_refunds.len()
            ))
        } else {
            Err(booked.join("; "))
        },
    ));

    let integrity = |path: &std::path::Path| -> Result<String, String> {
        let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).map_err(|e| e.to_string())
    };
    let mut integ = Vec::new();
    for path in [lane.state_dir().join("posd.db"), lane.dir.path().join("ledger.db")] {
        match integrity(&path) {
            Ok(s) if s == "ok" => {}
            other => integ.push(format!("{}: {other:?}", path.display())),
        }
    }
    report.push((
        "PRAGMA integrity_check",
        if integ.is_empty() { Ok("ok (posd, gateway)".into()) } else { Err(integ.join("; ")) },
    ));

    // No card data in posd's files or anything the register saw.
    let mut leaks = Vec::new();
    let mut scanned = 0;
    for entry in std::fs::read_dir(lane.state_dir()).into_iter().flatten().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        scanned += 1;
        if !card_numbers(&bytes).is_empty() {
            leaks.push(entry.path().display().to_string());
        }
    }
    if !card_numbers(&std::fs::read(lane.posd_log()).unwrap_or_default()).is_empty() {
        leaks.push("posd.log".into());
    }
    if told.api_responses.iter().any(|r| !card_numbers(r.as_bytes()).is_empty()) {
        leaks.push("an API response".into());
    }
    report.push((
        "no card number in posd's database files, log or API responses",
        if leaks.is_empty() {
            Ok(format!("{scanned} files, the log, {} responses", told.api_responses.len()))
        } else {
            Err(leaks.join(", "))
        },
    ));
    report
}
