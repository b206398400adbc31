//! The store package: its file list names the binaries, unit, sysusers,
//! tmpfiles, udev and config files; its maintainer scripts create the user,
//! enable the service, restart it gracefully on upgrade, and refuse removal
//! while offline payments are queued; its posd (built without the cargo
//! feature `demo`) links no simulator and no card key, and no posd built
//! without the feature `failpoints` links the `fail` crate. The technicians'
//! package ships firmware-sim with its scenario library.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use posd_e2e::run;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_package_ships_the_binaries_service_files_and_config() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("crates/posd/Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_str().unwrap().to_string()))
        .collect();
    for dest in [
        "usr/bin/",
        "usr/lib/systemd/system/posd.service",
        "usr/lib/sysusers.d/posd.conf",
        "usr/lib/tmpfiles.d/posd.conf",
        "usr/share/doc/posd/examples/60-posd.rules",
        "etc/posd/posd.toml",
    ] {
        assert!(assets.iter().any(|(_, d)| d == dest), "no asset installed at {dest}");
    }
    for (src, _) in &assets {
        if !src.starts_with("target/") {
            assert!(root().join("crates/posd").join(src).exists(), "asset {src} is missing");
        }
    }
    assert!(
        assets.iter().any(|(s, _)| s == "target/release/posd")
            && assets.iter().any(|(s, _)| s == "target/release/posctl")
    );
    assert_eq!(deb["conf-files"][0].as_str(), Some("/etc/posd/posd.toml"));
    let scripts = root().join("crates/posd").join(deb["maintainer-scripts"].as_str().unwrap());
    for s in ["postinst", "prerm", "postrm"] {
        let path = scripts.join(s);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{s} is not executable");
        let (st, _, err) = run(Command::new("sh").arg("-n").arg(&path));
        assert!(st.success(), "{s}: {err}");
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    for needle in ["systemd-sysusers posd.conf", "systemctl enable posd.service", "systemctl try-restart posd.service"]
    {
        assert!(postinst.contains(needle), "postinst lacks {needle}");
    }
}

/// The packages posd's normal dependencies (not dev or build) come to, by
/// name, as `cargo tree` lists them, with or without posd's default features.
fn posd_dependencies(default_features: bool) -> Vec<String> {
    posd_dependencies_with(default_features, &[])
}

/// [`posd_dependencies`] with posd's cargo features `features` on as well.
fn posd_dependencies_with(default_features: bool, features: &[&str]) -> Vec<String> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(root()).args(["tree", "--offline", "-p", "posd", "-e", "normal", "--prefix", "none"]);
    if !default_features {
        cargo.arg("--no-default-features");
    }
    if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    let (st, out, err) = run(&mut cargo);
    assert!(st.success(), "cargo tree: {err}");
    out.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect()
}

#[test]
fn the_packaged_posd_links_no_simulator_and_no_card_key() {
    // The store package builds posd without its default features: no demo mode.
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("crates/posd/Cargo.toml")).unwrap()).unwrap();
    assert_eq!(manifest["package"]["metadata"]["deb"]["default-features"].as_bool(), Some(false));
    assert!(manifest["features"]["default"].as_array().unwrap().iter().any(|f| f.as_str() == Some("demo")));

    let unwanted = ["gateway-sim", "firmware-sim", "pos-cardcrypt"];
    let packaged = posd_dependencies(false);
    assert!(packaged.iter().any(|p| p == "posd") && packaged.iter().any(|p| p == "pos-mask"), "{packaged:?}");
    for name in unwanted {
        assert!(!packaged.iter().any(|p| p == name), "posd without `demo` links {name}: {packaged:?}");
    }
    // The check can fail: with the default features (demo mode) they are linked.
    let demo = posd_dependencies(true);
    for name in unwanted {
        assert!(demo.iter().any(|p| p == name), "posd with `demo` does not link {name}: {demo:?}");
    }
}

#[test]
fn the_packaged_posd_has_no_failpoints() {
    // Failpoints are the cargo feature `failpoints`, off by default: neither
    // the package nor `cargo run -p posd` has the `fail` crate.
    for default_features in [false, true] {
        let deps = posd_dependencies(default_features);
        assert!(!deps.iter().any(|p| p == "fail"), "posd links `fail` without `failpoints`: {deps:?}");
    }
    // The check can fail: the tests' posd, with the feature, links it.
    let tested = posd_dependencies_with(false, &["failpoints"]);
    assert!(tested.iter().any(|p| p == "fail"), "posd with `failpoints` does not link `fail`: {tested:?}");
}

#[test]
fn the_technicians_package_ships_the_simulator_and_every_scenario() {
    let dir = root().join("firmware-sim");
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
    let assets: Vec<(String, String)> = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_str().unwrap().to_string()))
        .collect();
    let dest = |src: &str| assets.iter().find(|(s, _)| s == src).map(|(_, d)| d.as_str());
    assert_eq!(dest("target/release/firmware-sim"), Some("usr/bin/"));
    assert_eq!(dest("README.md"), Some("usr/share/doc/firmware-sim/README.md"));
    assert!(dir.join("README.md").exists());
    // The glob takes every file of the library: none is left behind.
    assert_eq!(dest("scenarios/*.toml"), Some("usr/share/firmware-sim/scenarios/"));
    let files: Vec<String> = std::fs::read_dir(dir.join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(files.len() >= 30, "the scenario library: {files:?}");
    let left_out: Vec<&String> = files.iter().filter(|f| !f.ends_with(".toml")).collect();
    assert!(left_out.is_empty(), "not shipped by the glob: {left_out:?}");
    // The README's commands name the installed library.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("/usr/share/firmware-sim/scenarios/"));
}

/// Runs a maintainer script with stub `posd` and `systemctl` commands first on PATH.
fn run_script(script: &str, arg: &str, posd_exit: i32) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    for (name, code) in [("posd", posd_exit), ("systemctl", 0)] {
        let stub = dir.path().join(name);
        std::fs::write(&stub, format!("#!/bin/sh\necho \"{name} $*\" >> {}\nexit {code}\n", log.display())).unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let (st, _, err) =
        run(Command::new("sh").arg(root().join("systemd/debian").join(script)).arg(arg).env("PATH", path));
    (st.success(), std::fs::read_to_string(&log).unwrap_or_default(), err)
}

#[test]
fn removal_is_refused_while_offline_payments_are_queued() {
    let (ok, calls, err) = run_script("prerm", "remove", 3);
    assert!(!ok, "prerm must fail: {calls}");
    assert!(err.contains("refusing to remove posd while offline payments are queued"), "{err}");
    assert!(!calls.contains("systemctl stop"), "posd keeps running: {calls}");
    let (ok, calls, _) = run_script("prerm", "remove", 0);
    assert!(ok);
    assert!(
        calls.contains("posd --config /etc/posd/posd.toml check-queue")
            && calls.contains("systemctl stop posd.service")
    );
    let (ok, calls, _) = run_script("prerm", "upgrade", 3);
    assert!(ok && calls.is_empty(), "an upgrade never stops posd from prerm: {calls}");
}

#[tokio::test]
async fn check_queue_reports_unsent_payments_of_a_live_posd() {
    let mut lane = posd_e2e::Lane::start(&[]);
    lane.ready().await;
    let config = lane.config_path();
    let check = || run(Command::new(posd_e2e::bin("posd")).arg("--config").arg(&config).arg("check-queue"));
    assert_eq!(check().0.code(), Some(0));
    lane.fault("down");
    lane.pay("k-queued", 500).await;
    let (st, out, _) = check();
    assert_eq!(st.code(), Some(3), "{out}");
    assert!(out.contains("1 offline payments are not yet forwarded"), "{out}");
    let backup = lane.dir.path().join("backup.db");
    let (st, out, err) =
        run(Command::new(posd_e2e::bin("posd")).arg("--config").arg(&config).arg("backup").arg(&backup));
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("backup of 1 payments"), "{out}");
    let (st, _, err) = run(Command::new(posd_e2e::bin("posd")).arg("--config").arg(&config).arg("backup").arg(&backup));
    assert!(!st.success() && err.contains("not overwriting"), "{err}");
    let utc_today = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now()).date();
    let today = utc_today.to_string();
    let yesterday = utc_today.yesterday().unwrap().to_string();
    let (st, csv, err) = run(Command::new(posd_e2e::bin("posd"))
        .arg("--config")
        .arg(&config)
        .args(["export", "--from", &yesterday, "--to", &today]));
    assert!(st.success(), "{err}");
    assert!(csv.starts_with("payment_id,created_at,business_day"), "{csv}");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("offline_approved,true,true"), "{csv}");
    lane.responses.push(csv);
    lane.finish();
}
