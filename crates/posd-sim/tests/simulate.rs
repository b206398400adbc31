//! The short version of the simulation that CI runs (`simulate` as a
//! technician runs it): a few hundred seeds with and without power loss,
//! a seed replayed to the same trace hash, and every planted bug found.

use std::process::{Command, Output};

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simulate")).args(args).output().expect("simulate runs")
}

/// The last line `simulate` printed.
fn last_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().unwrap_or_default().to_string()
}

fn assert_clean(args: &[&str], seeds: u32) {
    let out = simulate(args);
    assert_eq!(
        last_line(&out),
        format!("{seeds} seeds, 0 violations"),
        "simulate {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "exit 0 without violations");
}

#[test]
fn two_hundred_store_days_break_no_invariant() {
    assert_clean(&["--seeds", "200"], 200);
}

#[test]
fn a_hundred_store_days_with_power_losses_break_no_invariant() {
    assert_clean(&["--seeds", "100", "--from", "1000", "--power-loss"], 100);
}

#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    let hash = |seed: &str| {
        let out = simulate(&["--seed", seed, "--power-loss", "--trace-hash"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let line = last_line(&out);
        assert!(line.len() == 64 && line.chars().all(|c| c.is_ascii_hexdigit()), "a hex hash: {line:?}");
        line
    };
    let first = hash("17");
    assert_eq!(hash("17"), first, "the same seed gives the same trace");
    assert_ne!(hash("18"), first, "another seed gives another trace");
}

/// A seed on which each planted bug breaks an invariant (with power
/// losses), as `simulate --seeds 3000 --plant NAME --power-loss
/// --stop-at-first` found it; docs/reliability.md records how many seeds
/// each takes. A change to how plans are drawn moves them: find them again
/// with that command.
const PLANTED: &[(&str, &str)] = &[
    ("refund-not-sent-settles", "477"),
    ("synchronous-normal", "9"),
    ("zvt-confirm-before-store", "0"),
    ("authorizing-after-send", "140"),
    ("forward-unclaimed", "321"),
    ("offline-counted-after-approval", "2"),
];

#[test]
fn every_planted_bug_is_found() {
    let out = simulate(&["--plant", "list"]);
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    let known: Vec<&str> = PLANTED.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, known, "every bug `--plant list` names has a seed here");
    for (name, seed) in PLANTED {
        let out = simulate(&["--seed", seed, "--plant", name, "--power-loss"]);
        let last = last_line(&out);
        let violations: u64 = last
            .split(", ")
            .nth(1)
            .and_then(|v| v.strip_suffix(" violations"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: a last line of seeds and violations, not {last:?}"));
        assert!(violations >= 1, "the planted bug {name} is found on seed {seed}: {last}");
        assert!(!out.status.success(), "a run with violations fails");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let replay =
            format!("replay with: cargo run --release --bin simulate -- --seed {seed} --power-loss --plant {name}");
        assert!(stdout.contains(&replay), "{stdout}");
        // Without the bug, the same seed is clean.
        assert_clean(&["--seed", seed, "--power-loss"], 1);
    }
    let out = simulate(&["--plant", "no-such-bug"]);
    assert_eq!(out.status.code(), Some(2), "an unknown bug is refused");
}

/// Found by the simulator (seed 56 when found, in #25's first session; seed
/// 180 of the plan as drawn since nexo lanes came): a void whose answer the
/// gateway lost, and that the register gave up asking about, left the
/// payment AUTHORIZED in posd while the gateway had voided it (and, since
/// the simulated store has a capture window, stuck in REVERSAL_PENDING).
/// posd now settles captures and voids in doubt from the gateway's record.
/// A change to how plans are drawn moves the case to another seed: find it
/// again with the fix disabled (`settle_after_sale_in_doubt` in recovery.rs).
#[test]
fn seed_180_a_void_whose_answer_was_lost_is_settled() {
    assert_clean(&["--seed", "180"], 1);
}
