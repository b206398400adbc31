//! firmware-sim's command line refuses what a real reader could not do.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_firmware-sim");

#[test]
fn a_test_card_number_must_pass_luhn() {
    let out = Command::new(BIN).args(["reader", "--tcp", "127.0.0.1:0", "--pan", "4242424242424241"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Luhn"));
}

#[test]
fn the_reader_needs_a_line() {
    let out = Command::new(BIN).args(["reader"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pty-link"));
}
