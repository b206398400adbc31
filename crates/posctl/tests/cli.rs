//! posctl's documented exit codes for bad input and an unreachable daemon.

use std::process::Command;

fn posctl(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posctl")).args(args).env_remove("POSD_ADDR").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_amount_with_too_many_decimals_is_a_usage_error() {
    let (code, err) = posctl(&["pay", "12.345"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("2 decimal places"), "{err}");
}

#[test]
fn yen_takes_no_decimals() {
    let (code, err) = posctl(&["pay", "100.5", "--currency", "JPY"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("JPY has 0 decimal places"), "{err}");
}

#[test]
fn an_unreachable_daemon_is_exit_code_3() {
    // Nothing listens on a port we just bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, err) = posctl(&["--addr", &format!("127.0.0.1:{port}"), "status"]);
    assert_eq!(code, Some(3));
    assert!(err.contains("cannot reach posd"), "{err}");
}

#[test]
fn completions_are_printed_without_a_daemon() {
    let out = Command::new(env!("CARGO_BIN_EXE_posctl")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("posctl") && script.contains("refund") && script.contains("sync"), "{script}");
}

#[test]
fn an_unknown_currency_is_a_usage_error() {
    let (code, err) = posctl(&["pay", "1.00", "--currency", "XYZ"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("ISO 4217"), "{err}");
}

#[test]
fn unreachable_is_reported_in_json_on_stdout_too() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_posctl"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "status", "--json"])
        .env_remove("POSD_ADDR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["error"]["code"], "unreachable", "{v}");
    assert_eq!(v["error"]["reason"], "", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("cannot reach posd"), "{v}");
}

#[test]
fn completions_to_a_closed_pipe_end_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_posctl"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
