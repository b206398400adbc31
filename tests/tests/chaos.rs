//! The crash-consistency chaos run (src/bin/chaos.rs) at CI size: 50 kills
//! of posd under a random workload with gateway and serial-line faults, then
//! every invariant checked against the gateway's ledger.

use std::process::Command;

#[test]
fn fifty_kills_lose_nothing_and_double_nothing() {
    let (status, out, err) =
        posd_e2e::run(Command::new(posd_e2e::bin("chaos")).args(["--kills", "50", "--seed", "4242"]));
    println!("{out}");
    assert!(status.success(), "invariants violated:\n{out}\n{err}");
    let ok = out.lines().filter(|l| l.trim_start().starts_with("ok ")).count();
    assert_eq!(ok, 8, "every invariant was checked:\n{out}");
    assert!(out.contains("kills 50,"), "{out}");
}
