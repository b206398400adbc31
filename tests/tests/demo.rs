//! The README's promise: `posd --demo` runs, `posctl pay 12.34` approves and
//! `posctl pay 12.05` is declined with generic_decline.

use std::process::Command;

use posd_e2e::{Proc, bin, card_numbers, run};

#[test]
fn demo_mode_approves_12_34_and_declines_12_05() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("demo-state");
    let mut cmd = Command::new(bin("posd"));
    cmd.args(["--demo", "--listen", "127.0.0.1:0", "--demo-reader-delay-ms", "0", "--state-dir"]).arg(&state);
    let log = dir.path().join("posd.log");
    let (mut posd, addr) = Proc::start(cmd, &log, "posd listening on ");
    let posctl = |args: &[&str]| run(Command::new(bin("posctl")).args(["--addr", &addr]).args(args));

    // The reader link comes up right after start; wait for it.
    let deadline = std::time::Instant::now() + posd_e2e::PATIENCE;
    loop {
        let (_, out, _) = posctl(&["status", "--json"]);
        if out.contains("\"reader_connected\": true") {
            assert!(out.contains("\"demo\": true"), "status says DEMO: {out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "demo reader never connected");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (st, approved, err) = posctl(&["pay", "12.34"]);
    assert!(st.success(), "{approved}{err}");
    assert!(approved.contains("APPROVED") && approved.contains("DEMO"), "{approved}");
    let (st, declined, _) = posctl(&["pay", "12.05"]);
    assert_eq!(st.code(), Some(1));
    assert!(declined.contains("generic_decline"), "{declined}");
    posd.kill();

    for f in ["posd.db", "posd.db-wal"] {
        let bytes = std::fs::read(state.join(f)).unwrap_or_default();
        assert!(card_numbers(&bytes).is_empty(), "card number in {f}");
    }
    let logs = std::fs::read(&log).unwrap();
    assert!(card_numbers(&logs).is_empty());
    assert!(card_numbers(approved.as_bytes()).is_empty() && card_numbers(declined.as_bytes()).is_empty());
}
