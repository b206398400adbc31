//! gateway-sim's command line: serve, control faults, print the ledger.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gateway-sim");

#[test]
fn faults_are_switched_over_the_control_address_and_the_ledger_prints_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listen = lines.next().unwrap().unwrap();
    assert!(listen.starts_with("gateway-sim listening on 127.0.0.1:"), "{listen}");
    let control = lines.next().unwrap().unwrap();
    let addr = control.strip_prefix("gateway-sim control on ").expect("control line").to_string();
    let ctl = |args: &[&str]| Command::new(BIN).args(["ctl", "--addr", &addr]).args(args).output().unwrap();
    let out = ctl(&["fault", "flaky", "50"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok fault=flaky 50");
    let out = ctl(&["status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok fault=flaky 50");
    let out = ctl(&["fault", "explode"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault"));
    let out = Command::new(BIN).args(["ledger", "--json", "--db"]).arg(&db).output().unwrap();
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    child.kill().unwrap();
    child.wait().unwrap();
}
