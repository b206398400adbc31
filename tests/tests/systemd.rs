//! The service files and what systemd sees of posd: the unit verifies and
//! scores at most 2.0 exposure; check-config explains errors with file, line
//! and fix; posd reports READY, STATUS and the watchdog over NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posd_e2e::{Lane, bin, run};

fn systemd_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd").join(name)
}

/// The unit with ExecStart pointing at the freshly built posd.
fn unit_for_checks(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(systemd_file("posd.service")).unwrap();
    let patched = text.replace("ExecStart=/usr/bin/posd", &format!("ExecStart={}", bin("posd").display()));
    assert_ne!(text, patched, "the unit's ExecStart is /usr/bin/posd");
    let path = dir.join("posd.service");
    std::fs::write(&path, patched).unwrap();
    path
}

#[test]
fn the_unit_verifies_cleanly_and_is_hardened_to_at_most_2_0() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_checks(dir.path());
    let (st, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(st.success(), "systemd-analyze verify failed: {out}{err}");
    assert!(err.trim().is_empty(), "systemd-analyze verify warned: {err}");
    let (st, out, err) = run(Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit));
    assert!(st.success(), "{err}");
    let line = out.lines().find(|l| l.contains("Overall exposure level")).expect("an exposure line");
    let score: f64 = line.split("posd.service:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
    let unit_text = std::fs::read_to_string(systemd_file("posd.service")).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=posd",
        "DevicePolicy=closed",
        "ProtectSystem=strict",
        "StateDirectory=posd",
        "ConfigurationDirectory=posd",
        "RuntimeDirectory=posd",
        "SupplementaryGroups=dialout lp",
        "LoadCredential=posd:/etc/posd/credentials",
    ] {
        assert!(unit_text.contains(key), "the unit lacks {key}");
    }
}

#[test]
fn the_companion_files_name_what_the_unit_needs() {
    let sysusers = std::fs::read_to_string(systemd_file("posd.sysusers")).unwrap();
    for line in ["u posd", "m posd dialout", "m posd lp", "g posd-clients"] {
        assert!(sysusers.contains(line), "sysusers lacks {line}");
    }
    let udev = std::fs::read_to_string(systemd_file("60-posd.rules")).unwrap();
    assert!(udev.contains("ENV{ID_MM_DEVICE_IGNORE}=\"1\"") && udev.contains("SYMLINK+=\"pos/lane1-reader\""));
    assert!(std::fs::read_to_string(systemd_file("posd.tmpfiles")).unwrap().contains("/etc/posd/credentials"));
}

#[test]
fn check_config_accepts_the_example_and_warns_about_absent_devices() {
    let (st, out, err) = run(Command::new(bin("posd")).arg("check-config").arg(systemd_file("posd.toml")));
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("0 errors"), "{out}");
    assert!(err.contains("warning: lane lane-1: the reader device /dev/pos/lane1-reader does not exist"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn check_config_finds_credentials_where_the_unit_loads_them_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    let example = std::fs::read_to_string(systemd_file("posd.toml")).unwrap();
    let with_tls = example
        .replace("listen = \"unix:/run/posd/posd.sock\"", "listen = \"0.0.0.0:50051\"")
        .replace("# [api.tls]\n# cert_file", "[api.tls]\ncert_file")
        .replace("# key_file", "key_file")
        .replace("# client_ca_file", "client_ca_file");
    std::fs::write(&path, &with_tls).unwrap();
    let (st, out, err) =
        run(Command::new(bin("posd")).arg("check-config").arg(&path).env_remove("CREDENTIALS_DIRECTORY"));
    assert!(st.success(), "{out}{err}");
    assert!(err.contains("[api.tls] key_file: /etc/posd/credentials/api.key does not exist"), "{err}");
    assert!(err.contains("[api.tls] cert_file: /etc/posd/tls/posd.pem does not exist"), "{err}");

    // TCP beyond loopback without TLS, or a key inline, is an error.
    let open = with_tls.replace("[api.tls]\ncert_file", "# [api.tls]\n# cert_file");
    let open = open.replace("\nkey_file", "\n# key_file").replace("\nclient_ca_file", "\n# client_ca_file");
    std::fs::write(&path, open).unwrap();
    let (st, _, err) = run(Command::new(bin("posd")).arg("check-config").arg(&path));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("needs [api.tls]"), "{err}");
    std::fs::write(&path, with_tls.replace("\"credential:posd_api.key\"", "\"-----BEGIN PRIVATE KEY-----\"")).unwrap();
    let (st, _, err) = run(Command::new(bin("posd")).arg("check-config").arg(&path));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("neither an absolute path nor credential:NAME"), "{err}");
}

#[test]
fn check_config_names_file_line_and_fix_for_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    let example = std::fs::read_to_string(systemd_file("posd.toml")).unwrap();
    std::fs::write(&path, example.replace("[gateway]\n", "[gateway]\nretries = 3\n")).unwrap();
    let (st, _, err) = run(Command::new(bin("posd")).arg("check-config").arg(&path));
    assert_eq!(st.code(), Some(1));
    let line = example.lines().position(|l| l == "[gateway]").unwrap() + 2;
    assert!(err.contains(&format!("posd.toml:{line}:1: error: unknown field `retries`")), "{err}");
    assert!(err.contains("fix: remove the key"), "{err}");
    std::fs::write(&path, example.replace("https://gateway.example.net:443", "http://gateway.example.net")).unwrap();
    let (st, _, err) = run(Command::new(bin("posd")).arg("check-config").arg(&path));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("plain http:// is allowed only on loopback"), "{err}");
}

#[test]
fn check_config_and_start_up_report_every_semantic_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    let example = std::fs::read_to_string(systemd_file("posd.toml")).unwrap();
    // Plain http to a remote gateway (in any case), and an interval that would panic a worker.
    let bad = example
        .replace("url = \"https://gateway.example.net:443\"", "url = \"HTTP://192.0.2.10:80\"")
        .replace("health_interval = \"5s\"", "health_interval = \"0s\"");
    std::fs::write(&path, &bad).unwrap();
    let line_of = |start: &str| bad.lines().position(|l| l.starts_with(start)).expect(start) + 1;
    let want = [
        (
            line_of("url = \"HTTP://"),
            "[gateway] url \"http://192.0.2.10:80\": plain http:// is allowed only on loopback",
        ),
        (line_of("health_interval = \"0s\""), "[offline] health_interval is 0s"),
    ];
    let (st, out, err) = run(Command::new(bin("posd")).arg("check-config").arg(&path));
    assert_eq!(st.code(), Some(1), "{out}{err}");
    assert!(out.contains("2 errors"), "{out}");
    for (line, message) in want {
        assert!(err.contains(&format!("posd.toml:{line}:1: error: {message}")), "{err}");
    }
    assert!(err.matches("fix: ").count() >= 2, "{err}");
    // posd itself refuses to start on the same errors, each with its place.
    let state = dir.path().join("state");
    let (st, _, err) = run(Command::new(bin("posd")).arg("--config").arg(&path).arg("--state-dir").arg(&state));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("2 errors in the configuration"), "{err}");
    for (line, message) in want {
        assert!(err.contains(&format!("posd.toml:{line}:1: error: {message}")), "{err}");
    }
    assert!(!state.exists(), "posd stopped before touching its state directory");
}

#[tokio::test]
async fn posd_tells_systemd_it_is_ready_its_status_and_pets_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut lane = Lane::start(&[]);
    lane.kill_posd();
    lane.posd_env = vec![
        ("NOTIFY_SOCKET".into(), socket_path.to_string_lossy().into_owned()),
        ("WATCHDOG_USEC".into(), "2000000".into()),
    ];
    lane.start_posd();
    let mut seen = String::new();
    let deadline = Instant::now() + posd_e2e::PATIENCE;
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1") && seen.contains("STATUS=readers 1/1 connected")) {
        assert!(Instant::now() < deadline, "systemd messages so far: {seen}");
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        tokio::task::yield_now().await;
    }
    assert!(seen.contains("STATUS=readers"), "{seen}");
    lane.finish();
}

#[tokio::test]
async fn the_api_on_a_unix_socket_is_group_only_and_posctl_reaches_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut lane = Lane::start(&[]);
    lane.kill_posd();
    let socket = lane.dir.path().join("posd.sock");
    // The harness config listens on TCP; this posd listens on the socket instead.
    let mut cmd = lane.posd_command();
    cmd.args(["--listen", &format!("unix:{}", socket.display())]);
    let (mut posd, addr) = posd_e2e::Proc::start(cmd, &lane.posd_log(), "posd listening on ");
    assert_eq!(addr, format!("unix:{}", socket.display()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the API socket is for the owner and posd-clients only");
    let deadline = Instant::now() + posd_e2e::PATIENCE;
    loop {
        let (st, out, err) = run(Command::new(bin("posctl")).args(["--addr", &addr, "status", "--json"]));
        assert!(st.success(), "posctl over the Unix socket: {out}{err}");
        if out.contains("\"reader_connected\": true") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, out, _) = run(Command::new(bin("posctl")).args(["--addr", &addr, "pay", "4.00"]));
    assert!(st.success(), "{out}");
    let (_, out, _) = run(Command::new(bin("posctl")).args(["--addr", &addr, "payments", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["payments"][0]["payment_id"].as_str().unwrap().to_string();
    let (_, out, _) = run(Command::new(bin("posctl")).args(["--addr", &addr, "payment", &id, "--json"]));
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cause = p["history"][0]["cause"].as_str().unwrap();
    assert!(cause.contains("unix uid="), "the audit log names the Unix peer: {cause}");
    posd.kill();
    lane.finish();
}

#[tokio::test]
async fn metrics_are_served_on_loopback_in_prometheus_text() {
    let mut lane = posd_e2e::Lane::start_configured(&[], "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    lane.ready().await;
    lane.pay("k-metrics", 1_500).await;
    let body = lane.metrics_get("/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for needle in [
        "posd_payments{status=\"captured\"} 1",
        "posd_offline_queue_depth 0",
        "posd_gateway_online 1",
        "posd_database_failed 0",
        "posd_reader_connected{lane=\"lane-1\"} 1",
        "posd_gateway_latency_seconds_count 1",
        "posd_reader_latency_seconds_count 1",
        "posd_payment_latency_seconds_count 1",
        "# TYPE posd_payment_latency_seconds histogram",
    ] {
        assert!(body.contains(needle), "missing {needle}:\n{body}");
    }
    let other = lane.metrics_get("/").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    lane.finish();
}
