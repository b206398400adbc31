//! pos-nexo stays without I/O and without a random number generator: neither
//! tokio, nix nor getrandom is in its normal dependency tree (callers pass
//! each message's nonce).

use std::path::{Path, PathBuf};
use std::process::Command;

use posd_e2e::run;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn pos_nexo_depends_on_no_runtime_system_or_random_crate() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = ["tree", "-p", "pos-nexo", "-e", "normal", "--prefix", "none", "--offline"];
    let (status, out, err) = run(Command::new(cargo).current_dir(root()).args(args));
    assert!(status.success(), "cargo tree failed: {err}");
    let names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"pos-nexo") && names.contains(&"aes"), "unexpected cargo tree output:\n{out}");
    for banned in ["tokio", "nix", "getrandom"] {
        assert!(!names.contains(&banned), "pos-nexo depends on {banned}:\n{out}");
    }
}
