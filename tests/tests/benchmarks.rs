//! The benchmark and soak binaries at toy sizes, so they keep working. Their
//! timings belong in docs/performance.md and are not judged here; what they
//! check about correctness (every payment captured, one charge each) is.

use std::process::Command;

use posd_e2e::{bin, run};

#[test]
fn the_benchmark_prints_every_table() {
    let (status, out, err) = run(Command::new(bin("bench")).args([
        "--payments",
        "5",
        "--warmup",
        "2",
        "--stored",
        "300",
        "--commits",
        "50",
        "--starts",
        "1",
    ]));
    assert!(status.success(), "{out}\n{err}");
    for heading in ["## (a)", "## (b)", "## (c)", "## (e) Memory", "## (e) Start-up"] {
        assert!(out.contains(heading), "no {heading} table:\n{out}");
    }
    assert!(out.contains("| 115200 |"), "{out}");
    assert!(out.contains("posd / raw: one writer **") && out.contains("8 writers **"), "{out}");
    assert!(out.contains("| 8 | posd payment write | 50 |"), "eight writers, every write counted:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("| 300 |")), "start-up with 300 payments stored:\n{out}");
}

#[test]
fn a_small_soak_captures_every_payment_exactly_once() {
    let (status, out, err) = run(Command::new(bin("soak")).args(["--payments", "200", "--lanes", "2"]));
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("gateway ledger: 200 charges, 200 distinct keys, 200 captured"), "{out}");
    assert!(out.contains("start-up to READY with 200 payments stored"), "{out}");
    assert!(out.contains("store: 1000 payment writes ("), "five writes per payment, from posd's metrics:\n{out}");
    assert!(out.contains("not judged"), "a 200-payment run is too short to judge memory:\n{out}");
}
