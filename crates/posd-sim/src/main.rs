//! `simulate`: runs seeds of posd's deterministic simulation and reports
//! the invariants each broke. The last line is `N seeds, V violations`
//! (or, with `--trace-hash`, the hash of the runs' traces); the exit code
//! is 0 only without violations.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use posd::engine::Bug;
use posd_sim::{Options, Outcome};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(name = "simulate", about = "posd's deterministic simulation: seeded store days with faults and crashes")]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds, from `--from` on, in parallel on the machine's cores.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Print, as the last line, the hash of the runs' traces (hex).
    #[arg(long)]
    trace_hash: bool,
    /// Mix power losses (unsynced writes lost) into the crashes.
    #[arg(long)]
    power_loss: bool,
    /// Re-introduce a known bug (`--plant list` names them).
    #[arg(long)]
    plant: Option<String>,
    /// End a multi-seed run at its first violation.
    #[arg(long)]
    stop_at_first: bool,
    /// Print each seed's trace as it runs (use with `--seed`).
    #[arg(long)]
    verbose: bool,
    /// Threads to run seeds on (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Ok(filter) = std::env::var("SIMULATE_LOG") {
        // posd's own log, without wall-clock stamps, for comparing two runs.
        tracing_subscriber::fmt()
            .without_time()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stdout)
            .init();
    }
    let plant = match args.plant.as_deref() {
        Some("list") => {
            for (name, _) in Bug::ALL {
                println!("{name}");
            }
            return std::process::ExitCode::SUCCESS;
        }
        Some(name) => match Bug::from_name(name) {
            Some(bug) => Some(bug),
            None => {
                let names: Vec<&str> = Bug::ALL.iter().map(|(n, _)| *n).collect();
                eprintln!("simulate: unknown bug {name:?}; one of: {}", names.join(", "));
                return std::process::ExitCode::from(2);
            }
        },
        None => None,
    };
    let (first, count) = match (args.seed, args.seeds) {
        (Some(s), _) => (s, 1),
        (None, Some(n)) => (args.from, n),
        (None, None) => (0, 1),
    };
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(u64, Outcome)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(count as usize).max(1) {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= first + count {
                        return;
                    }
                    let opts = Options { seed, power_loss: args.power_loss, plant, verbose: args.verbose };
                    let outcome = posd_sim::run(&opts);
                    if !outcome.violations.is_empty() {
                        report(&opts, &outcome);
                        if args.stop_at_first {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((seed, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(seed, _)| *seed);
    let seeds = results.len();
    let violations: usize = results.iter().map(|(_, o)| o.violations.len()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = summary(&results);
    eprintln!("{stats}");
    eprintln!("{seeds} seeds in {elapsed:.1} s: {:.1} seeds per second on {jobs} threads", seeds as f64 / elapsed);
    println!("{seeds} seeds, {violations} violations");
    if args.trace_hash {
        let mut all = Sha256::new();
        for (_, o) in &results {
            all.update(o.trace_hash);
        }
        let hash: [u8; 32] = if seeds == 1 { results[0].1.trace_hash } else { all.finalize().into() };
        println!("{}", hex::encode(hash));
    }
    if violations == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

fn report(opts: &Options, outcome: &Outcome) {
    let mut replay = format!("cargo run --release --bin simulate -- --seed {}", opts.seed);
    if opts.power_loss {
        replay.push_str(" --power-loss");
    }
    if let Some(bug) = opts.plant {
        replay.push_str(&format!(" --plant {}", bug.name()));
    }
    let mut out = String::new();
    for v in &outcome.violations {
        out.push_str(&format!("seed {}: VIOLATION {}: {}\n", opts.seed, v.invariant, v.detail));
    }
    out.push_str(&format!("seed {}: replay with: {replay} --verbose\n", opts.seed));
    print!("{out}");
}

/// What the seeds exercised, summed.
fn summary(results: &[(u64, Outcome)]) -> String {
    let mut payments = 0;
    let mut refunds = 0;
    let mut crashes = 0;
    let mut power_losses = 0;
    let mut syncs = 0;
    let mut left = 0;
    let mut faults = std::collections::BTreeMap::<String, u64>::new();
    let mut statuses = std::collections::BTreeMap::<&str, u64>::new();
    let mut transitions = std::collections::BTreeMap::<(&str, &str), u64>::new();
    for (_, o) in results {
        payments += o.stats.payments;
        refunds += o.stats.refunds;
        crashes += o.stats.crashes;
        power_losses += o.stats.power_losses;
        syncs += o.stats.disk.syncs;
        left += o.stats.left_to_person;
        for (k, n) in &o.stats.faults {
            *faults.entry(k.split(' ').next().unwrap_or(k).to_string()).or_default() += n;
        }
        for (k, n) in &o.stats.statuses {
            *statuses.entry(k).or_default() += n;
        }
        for (k, n) in &o.stats.transitions {
            *transitions.entry(*k).or_default() += n;
        }
    }
    // pos-engine's status changes: which the seeds went through, which not.
    let made: Vec<(pos_engine::Status, pos_engine::Status)> = pos_engine::transitions::ALLOWED
        .iter()
        .filter(|t| !pos_engine::transitions::NOT_MADE_BY_POSD.contains(t))
        .copied()
        .collect();
    let (visited, missed): (Vec<_>, Vec<_>) =
        made.iter().partition(|(f, t)| transitions.contains_key(&(f.as_str(), t.as_str())));
    let missed: Vec<String> = missed.iter().map(|(f, t)| format!("{}->{}", f.as_str(), t.as_str())).collect();
    let counts: Vec<String> = transitions.iter().map(|((f, t), n)| format!("{f}->{t} {n}")).collect();
    format!(
        "payments {payments}, refunds {refunds}, crashes {crashes} (power losses {power_losses}), disk syncs {syncs}, \
         left to a person {left}\nfaults switched on {faults:?}\nfinal statuses {statuses:?}\n\
         transitions visited {} of the {} posd makes; not visited: [{}]\ntransitions {}",
        visited.len(),
        made.len(),
        missed.join(", "),
        counts.join(", ")
    )
}
