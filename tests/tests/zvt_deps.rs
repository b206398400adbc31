//! pos-zvt stays a codec without I/O: neither tokio, tokio-serial nor nix is in
//! its normal dependency tree (pos-link's `io` and `pty` features stay off for it).

use std::path::{Path, PathBuf};
use std::process::Command;

use posd_e2e::run;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn pos_zvt_depends_on_no_runtime_serial_port_or_pty_crate() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = ["tree", "-p", "pos-zvt", "-e", "normal", "--prefix", "none", "--offline"];
    let (status, out, err) = run(Command::new(cargo).current_dir(root()).args(args));
    assert!(status.success(), "cargo tree failed: {err}");
    let names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"pos-zvt") && names.contains(&"pos-link"), "unexpected cargo tree output:\n{out}");
    for banned in ["tokio", "tokio-serial", "nix"] {
        assert!(!names.contains(&banned), "pos-zvt depends on {banned}:\n{out}");
    }
}
