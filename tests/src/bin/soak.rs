//! Soak run: many payments over several lanes with zero simulated delays,
//! posd's resident memory and open file descriptors sampled throughout.
//! After a warm-up (the first tenth of the payments) memory may grow less
//! than 10 % and the descriptors must stay flat. Then posd is restarted on the
//! full database and its start-up to READY is timed.
//!
//! ```sh
//! cargo run --release -p posd-e2e --bin soak                     # 100,000 payments, 8 lanes
//! cargo run --release -p posd-e2e --bin soak -- --payments 2000 --lanes 2
//! ```
//!
//! Exits 1 when a payment does not end CAPTURED, the gateway's ledger does not
//! hold exactly one charge per payment, or (runs of 10,000 payments or more)
//! memory or descriptors grow.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pos_proto::terminal as pb;
use posd_e2e::measure::{Metrics, open_fds, quantile, rss_kib, start_until_ready, terminate};
use posd_e2e::{Lane, count, final_payment, more_reader_lanes, request, status};

/// Below this many payments a run has no steady state worth judging.
const JUDGED_FROM: usize = 10_000;
const MAX_GROWTH: f64 = 0.10;

/// The soak: payments over several lanes with zero simulated delays, posd's memory and
/// descriptors sampled throughout (docs/performance.md).
#[derive(clap::Parser)]
struct Options {
    /// Payments in all
    #[arg(long, default_value_t = 100_000, value_parser = count(1, usize::MAX))]
    payments: usize,
    /// Reader lanes paying at once
    #[arg(long, default_value_t = 8, value_parser = count(1, 16))]
    lanes: usize,
}

/// One look at posd.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    done: usize,
    rss_kib: u64,
    fds: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = <Options as clap::Parser>::parse();
    let mut lane = Lane::prepare(&[], "");
    lane.posd_env = vec![("RUST_LOG".into(), "info".into())];
    let dir = lane.dir.path().to_path_buf();
    let (readers, tables) = more_reader_lanes(&dir, o.lanes, "");
    lane.extra_config = tables;
    lane.top_config = "[metrics]\nlisten = \"127.0.0.1:0\"\n".into();
    lane.start_posd();
    let metrics = lane.posd_line("posd metrics on ").expect("posd's metrics address");
    lane.ready().await;
    let pid = lane.posd_pid();

    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = std::thread::spawn({
        let (done, stop) = (done.clone(), stop.clone());
        move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                samples.push(Sample {
                    at: started.elapsed(),
                    done: done.load(Ordering::SeqCst),
                    rss_kib: rss_kib(pid),
                    fds: open_fds(pid),
                });
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        }
    });
    let mut clients = Vec::new();
    for _ in 0..o.lanes {
        let mut client = lane.client().await;
        // One answered call: posd has accepted this register's connection.
        client.get_sync_status(pb::GetSyncStatusRequest::default()).await.expect("posd answers");
        clients.push(client);
    }
    // Quiet, with every register connected: the descriptors to come back to.
    let quiet_fds = open_fds(pid);
    let mut workers = Vec::new();
    for (l, client) in clients.into_iter().enumerate() {
        let count = o.payments / o.lanes + usize::from(l < o.payments % o.lanes);
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut client = client;
            let terminal_id = format!("lane-{}", l + 1);
            let mut times = Vec::with_capacity(count);
            for i in 0..count {
                let key = format!("soak-{l}-{i}");
                let req = pb::TakePaymentRequest {
                    terminal_id: terminal_id.clone(),
                    ..request(&key, 1000 + (i % 50) as i64 * 100)
                };
                let t = Instant::now();
                let mut stream =
                    client.take_payment(req).await.unwrap_or_else(|e| panic!("{key} refused: {e}")).into_inner();
                let mut events = Vec::new();
                while let Some(ev) = stream.message().await.unwrap_or_else(|e| panic!("{key}: {e}")) {
                    events.push(ev);
                }
                times.push(t.elapsed());
                let p = final_payment(&events);
                assert_eq!(status(&p), pb::PaymentStatus::Captured, "{key} ended {p:?}");
                done.fetch_add(1, Ordering::SeqCst);
            }
            (times, client)
        }));
    }
    let mut times = Vec::with_capacity(o.payments);
    let mut failed = false;
    // The registers stay connected until the descriptors are counted.
    let mut connected = Vec::new();
    for w in workers {
        match w.await {
            Ok((t, client)) => {
                times.extend(t);
                connected.push(client);
            }
            Err(e) => {
                eprintln!("soak: a lane's register failed: {e}");
                failed = true;
            }
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut samples = sampler.join().expect("sampler");
    if failed {
        return ExitCode::FAILURE;
    }
    // Each gateway call has a connection of its own, closed as the call
    // ends; give the last ones a moment to go.
    let quiet_again = Instant::now();
    let mut end_fds = open_fds(pid);
    while end_fds > quiet_fds && quiet_again.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        end_fds = open_fds(pid);
    }
    samples.push(Sample { at: took, done: done.load(Ordering::SeqCst), rss_kib: rss_kib(pid), fds: end_fds });
    drop(connected);

    let store = Metrics::scrape(&metrics);
    let (payment_writes, writes, commits) = (
        store.get("posd_store_payment_writes_total"),
        store.get("posd_store_writes_total"),
        store.get("posd_store_commits_total"),
    );

    // The gateway's ledger: one charge per payment.
    lane.kill_posd();
    let ledger = lane.ledger();
    let captured = ledger.iter().filter(|c| c["captured_minor"].as_i64().unwrap_or(0) > 0).count();
    let keys: std::collections::HashSet<&str> = ledger.iter().filter_map(|c| c["key"].as_str()).collect();

    // Start-up on the full database.
    let mut starts = Vec::new();
    for _ in 0..3 {
        let (mut child, t) = start_until_ready(lane.posd_command(), &dir, &lane.posd_log());
        terminate(&mut child);
        starts.push(t);
    }
    starts.sort();

    times.sort();
    let warm_from = o.payments / 10;
    let warm = samples.iter().find(|s| s.done >= warm_from).copied().unwrap_or(samples[0]);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm.at).collect();
    let max_rss = after.iter().map(|s| s.rss_kib).max().unwrap_or(warm.rss_kib);
    let last = *samples.last().unwrap();
    let growth = max_rss as f64 / warm.rss_kib as f64 - 1.0;
    let (fd_min, fd_max) = (after.iter().map(|s| s.fds).min().unwrap(), after.iter().map(|s| s.fds).max().unwrap());

    println!("## Soak: {} payments over {} lanes, zero simulated delays\n", o.payments, o.lanes);
    println!(
        "{:.1} s, {:.0} payments/s; round trip p50 {:.2} ms, p99 {:.2} ms; {} samples of posd every 0.5 s.\n",
        took.as_secs_f64(),
        o.payments as f64 / took.as_secs_f64(),
        quantile(&times, 0.5).as_secs_f64() * 1e3,
        quantile(&times, 0.99).as_secs_f64() * 1e3,
        samples.len()
    );
    println!("| posd | payments done | RSS MiB | open fds |\n|---|---:|---:|---:|");
    let row = |what: &str, s: &Sample| {
        println!("| {what} | {} | {:.1} | {} |", s.done, s.rss_kib as f64 / 1024.0, s.fds);
    };
    row("first sample", &samples[0]);
    row("end of warm-up (10 %)", &warm);
    if let Some(peak) = after.iter().max_by_key(|s| s.rss_kib) {
        row("largest after warm-up", peak);
    }
    row("end", &last);
    println!(
        "\nmemory growth after warm-up: {:.1} % (limit {:.0} %); open fds: {quiet_fds} before the run, \
         {fd_min}..{fd_max} during it (one gateway connection per payment in flight), {end_fds} after it",
        growth * 100.0,
        MAX_GROWTH * 100.0
    );
    println!(
        "store: {payment_writes} payment writes ({writes} writes in all, with events) in {commits} synced commits \
         ({:.2} writes per commit)",
        writes / commits
    );
    println!("gateway ledger: {} charges, {} distinct keys, {captured} captured", ledger.len(), keys.len());
    println!(
        "start-up to READY with {} payments stored: median {:.1} ms, max {:.1} ms",
        o.payments,
        quantile(&starts, 0.5).as_secs_f64() * 1e3,
        starts.last().unwrap().as_secs_f64() * 1e3
    );

    let mut ok = true;
    if ledger.len() != o.payments || keys.len() != o.payments || captured != o.payments {
        println!(
            "FAIL: {} payments captured, but the gateway holds {} charges under {} keys, {captured} captured",
            o.payments,
            ledger.len(),
            keys.len()
        );
        ok = false;
    }
    if o.payments < JUDGED_FROM {
        println!("verdict on memory and descriptors: not judged (fewer than {JUDGED_FROM} payments)");
    } else {
        if growth >= MAX_GROWTH {
            println!("FAIL: memory grew {:.1} % after warm-up", growth * 100.0);
            ok = false;
        }
        if end_fds > quiet_fds || fd_max > quiet_fds + 2 * o.lanes {
            println!("FAIL: open file descriptors: {quiet_fds} before, up to {fd_max} during, {end_fds} after the run");
            ok = false;
        }
    }
    drop(readers);
    if ok {
        println!("soak ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
