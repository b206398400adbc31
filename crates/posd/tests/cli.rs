//! posd's command line: refusals that protect a store lane.

use std::process::Command;

fn posd(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posd")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn without_config_or_demo_it_refuses_and_says_what_to_do() {
    let (code, err) = posd(&[]);
    assert_eq!(code, Some(2));
    if cfg!(feature = "demo") {
        assert!(err.contains("posd --demo") && err.contains("posd --config"), "{err}");
    } else {
        assert!(err.contains("`demo`") && err.contains("posd --config"), "{err}");
    }
}

/// A posd built without the cargo feature `demo` (the store package) has no
/// demo mode, and says which feature it lacks.
#[cfg(not(feature = "demo"))]
#[test]
fn without_the_demo_feature_demo_mode_is_refused_naming_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = posd(&["--demo", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cargo feature `demo`") && err.contains("--config"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing is made in the state directory");
}

#[cfg(feature = "demo")]
#[test]
fn demo_and_config_exclude_each_other() {
    let (code, err) = posd(&["--demo", "--config", "/etc/posd/posd.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exclude each other"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let (code, err) = posd(&["--config", "/nonexistent/posd.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/posd.toml"), "{err}");
}

#[test]
fn an_unknown_config_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    std::fs::write(
        &path,
        "state_dir = \"/tmp/x\"\nlisten_on = \"127.0.0.1:1\"\n[gateway]\nurl = \"http://127.0.0.1:1\"\n\
         [[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = { device = \"/dev/null\" }\n",
    )
    .unwrap();
    let (code, err) = posd(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("listen_on"), "{err}");
}

#[cfg(feature = "demo")]
#[test]
fn demo_mode_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = posd(&["--demo", "--listen", "0.0.0.0:0", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("loopback"), "{err}");
}
