//! The configuration's tests: the model's parsing, every validation rule
//! (each error at its line and column), check-config's warnings and the
//! command-line overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::Examined;
use super::{CREDENTIALS_DIRECTORY, Config, FileRef, ReaderConfig, check, check_gateway_url, parse_span};
use crate::line::ReaderLine;

#[test]
fn a_full_config_parses_and_unknown_keys_are_errors() {
    let text = r#"
        state_dir = "/var/lib/posd"
        listen = "unix:/run/posd/posd.sock"
        [gateway]
        url = "https://gateway.example:443"
        [[lane]]
        id = "lane-1"
        currency = "EUR"
        reader = { device = "/dev/pos/lane1-reader" }
    "#;
    let cfg: Config = toml::from_str(text).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.gateway.request_timeout_ms, 30_000);
    assert_eq!(cfg.card_timeout.0, Duration::from_secs(120));
    for (timeout, ok) in [("\"3s\"", true), ("\"0s\"", false), ("\"1h\"", false)] {
        let with = format!("card_timeout = {timeout}\n{text}");
        let r = toml::from_str::<Config>(&with).unwrap().validate();
        assert_eq!(r.is_ok(), ok, "{timeout}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("card_timeout must be 1s to 10min"), "{e}");
        }
    }
    let bad = text.replace("[gateway]", "[gateway]\nretries = 5");
    let err = toml::from_str::<Config>(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown field `retries`"), "{err}");
}

#[test]
fn a_capture_window_under_an_hour_is_a_warning_and_zero_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let base = "state_dir = \"/var/lib/posd\"\n[gateway]\nurl = \"https://gateway.example:443\"\n\
                [[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = { tcp = \"127.0.0.1:1\" }\n";
    for (window, warned) in [("\"10m\"", true), ("\"2d\"", false), ("\"0s\"", false)] {
        let path = dir.path().join("posd.toml");
        std::fs::write(&path, format!("capture_window = {window}\n{base}")).unwrap();
        let findings = check(&path);
        assert!(findings.iter().all(|f| !f.error), "{window}: {findings:?}");
        let warning = findings.iter().find(|f| f.message.contains("capture_window"));
        assert_eq!(warning.is_some(), warned, "{window}: {findings:?}");
        if let Some(w) = warning {
            assert_eq!(w.at, Some((1, 1)), "points at the key");
        }
    }
    let cfg: Config = toml::from_str(base).unwrap();
    assert_eq!(cfg.capture_window.0, Duration::from_secs(2 * 86_400), "the default");
}

#[test]
fn files_are_absolute_paths_or_systemd_credentials() {
    for ok in ["/etc/posd/tls/posd.pem", "credential:posd_api.key"] {
        FileRef(ok.into()).check_form("k").unwrap();
    }
    for bad in ["posd.pem", "credential:", "credential:../x", "credential:a/b", "-----BEGIN PRIVATE KEY-----"] {
        assert!(FileRef(bad.into()).check_form("k").is_err(), "{bad}");
    }
    if std::env::var_os(CREDENTIALS_DIRECTORY).is_none() {
        let installed = FileRef("credential:posd_api.key".into()).installed_path();
        assert_eq!(installed, Some(PathBuf::from("/etc/posd/credentials/api.key")));
    }
}

#[test]
fn the_api_beyond_loopback_needs_tls() {
    let base = r#"
        state_dir = "/var/lib/posd"
        listen = "LISTEN"
        [gateway]
        url = "https://gateway.example:443"
        [[lane]]
        id = "lane-1"
        currency = "EUR"
        reader = { tcp = "127.0.0.1:9" }
    "#;
    let tls = "\n[api.tls]\ncert_file = \"/c.pem\"\nkey_file = \"credential:posd_k\"\nclient_ca_file = \"/ca.pem\"\n";
    let cfg = |listen: &str, extra: &str| toml::from_str::<Config>(&(base.replace("LISTEN", listen) + extra)).unwrap();
    assert!(cfg("127.0.0.1:50051", "").validate().is_ok());
    assert!(cfg("unix:/run/posd/posd.sock", "").validate().is_ok());
    let open = cfg("0.0.0.0:50051", "").validate().unwrap_err().to_string();
    assert!(open.contains("needs [api.tls]"), "{open}");
    assert!(cfg("0.0.0.0:50051", tls).validate().is_ok());
    assert!(cfg("unix:/run/posd/posd.sock", tls).validate().is_err());
}

#[test]
fn spans_parse_with_units() {
    assert_eq!(parse_span("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_span("12h").unwrap(), Duration::from_secs(43_200));
    assert_eq!(parse_span("30d").unwrap(), Duration::from_secs(30 * 86_400));
    assert!(parse_span("12").is_err());
    assert!(parse_span("h").is_err());
    assert!(parse_span("5 weeks").is_err());
}

#[test]
fn durations_take_jiffs_friendly_spellings_up_to_days() {
    let s = Duration::from_secs;
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", s(30)),
        ("15 s", s(15)),
        (" 30s ", s(30)),
        ("15m", s(15 * 60)),
        ("2h", s(2 * 3600)),
        ("2h30m", s(2 * 3600 + 30 * 60)),
        ("2h 30m", s(2 * 3600 + 30 * 60)),
        ("1.5h", s(90 * 60)),
        ("0.5s", Duration::from_millis(500)),
        ("90 seconds", s(90)),
        ("10 minutes", s(600)),
        ("3 hours", s(3 * 3600)),
        ("2 days", s(2 * 86_400)),
        ("2d", s(2 * 86_400)),
        ("1d 12h", s(36 * 3600)),
        ("0s", Duration::ZERO),
        ("0d", Duration::ZERO),
    ] {
        assert_eq!(parse_span(text), Ok(want), "{text:?}");
        // The same in a file; zero is refused there (see below), not by the grammar.
        let cfg = Config::parse(&format!("{BASE}[offline]\nageing_interval = \"{text}\"\n"));
        match cfg {
            Ok(cfg) => assert_eq!(cfg.offline.ageing_interval.0, want, "{text:?}"),
            Err(e) => assert!(want.is_zero() && e.to_string().contains("ageing_interval is 0s"), "{text:?}: {e}"),
        }
    }
    for (bad, needle) in [
        ("12", "has no unit"),
        ("1.5", "has no unit"),
        ("", "is not a duration"),
        ("s", "is not a duration"),
        ("30 parsecs", "is not a duration"),
        ("30S", "is not a duration"),
        ("PT30S", "is not a duration"),
        ("-5s", "is negative"),
        ("5s ago", "is negative"),
        ("1w", "weeks, months and years are not taken"),
        ("5 weeks", "weeks, months and years are not taken"),
        ("1mo", "weeks, months and years are not taken"),
        ("1y", "weeks, months and years are not taken"),
    ] {
        let e = parse_span(bad).unwrap_err();
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
}

#[test]
fn a_duration_that_cannot_be_read_is_an_error_at_its_value() {
    // Column 19 is the opening quote of the value after `health_interval = `.
    let errs = errors(&format!("{BASE}[offline]\nhealth_interval = \"5 parsecs\"\n"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (9, 19), "{errs:#?}");
    assert!(errs[0].2.contains("\"5 parsecs\" is not a duration"), "{errs:#?}");
    let errs = errors(&format!("stop_timeout = \"15x\"\n{BASE}"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (1, 16), "{errs:#?}");
    assert!(errs[0].2.contains("the unit is one of ms, s, m, h or d"), "{errs:#?}");
    let errs = errors(&format!("{BASE}[lane.offline]\nreadiness = \"4 weeks\"\n"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (9, 13), "{errs:#?}");
    assert!(errs[0].2.contains("give days or less"), "{errs:#?}");
    let e = Config::parse(&format!("card_timeout = \"2 min\"\ncapture_window = \"12\"\n{BASE}")).unwrap_err();
    assert!(e.to_string().contains("config:2:18: error: \"12\" has no unit"), "{e}");
}

#[test]
fn zero_is_refused_for_every_timeout_and_interval_at_its_key() {
    for (table, setting) in [
        ("[api]", "handshake_timeout"),
        ("[api]", "keepalive_interval"),
        ("[offline]", "retry_first"),
        ("[offline]", "ageing_interval"),
    ] {
        let text = format!("{BASE}{table}\n{setting} = \"0s\"\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].0, errs[0].1), (9, 1), "{errs:#?}");
        assert!(errs[0].2.contains(&format!("{table} {setting} is 0s")), "{errs:#?}");
    }
    assert_error(&format!("stop_timeout = \"0 seconds\"\n{BASE}"), 1, "stop_timeout is 0s");
    let spelled_out = "capture_window = \"0s\"\nstop_timeout = \"15 s\"\ncard_timeout = \"2 minutes\"\n";
    assert_no_errors(&format!("{spelled_out}{BASE}"));
}

#[test]
fn reader_needs_exactly_one_line() {
    let r = ReaderConfig { device: Some("/dev/x".into()), tcp: Some("h:1".into()), ..ReaderConfig::from_arg("") };
    assert!(r.line("lane-1").is_err());
    assert!(matches!(ReaderConfig::from_arg("tcp:127.0.0.1:20007").line("l").unwrap(), ReaderLine::Tcp(_)));
    assert!(matches!(ReaderConfig::from_arg("/dev/ttyUSB0").line("l").unwrap(), ReaderLine::Serial(_)));
}

#[test]
fn a_zvt_lane_is_checked() {
    let zvt = |extra: &str| {
        toml::from_str::<ReaderConfig>(&format!("kind = \"zvt\"\ntcp = \"127.0.0.1:20007\"\n{extra}")).unwrap()
    };
    let crate::lane::CardDeviceSettings::Zvt(s) = zvt("").device("l", "EUR").unwrap() else { panic!("not zvt") };
    assert_eq!((s.password, s.currency, s.t4), ([0x12, 0x34, 0x56], 978, Duration::from_secs(180)));
    assert!(zvt("password = 1234567").device("l", "EUR").unwrap_err().to_string().contains("6 digits"));
    assert!(zvt("").device("l", "XPF").unwrap_err().to_string().contains("ISO 4217 number"));
    for ambiguous in ["HUF", "JPY", "ISK"] {
        let e = zvt("").device("l", ambiguous).unwrap_err().to_string();
        assert!(e.contains("cannot be told apart"), "{ambiguous}: {e}");
    }
    assert!(zvt("t3_ms = 5000\nt4_ms = 100").device("l", "EUR").is_err());
    let serial = toml::from_str::<ReaderConfig>("kind = \"zvt\"\ndevice = \"/dev/ttyS0\"").unwrap();
    let crate::lane::CardDeviceSettings::Zvt(s) = serial.device("l", "EUR").unwrap() else { panic!("not zvt") };
    assert!(matches!(s.line, ReaderLine::Serial(ref p) if p.stop_bits == 2 && p.baud == 9600), "ZVT runs 8N2 at 9600");
    let odd = toml::from_str::<ReaderConfig>("kind = \"chip-and-pin\"\ntcp = \"h:1\"").unwrap();
    assert!(odd.device("l", "EUR").unwrap_err().to_string().contains("\"reader\" or \"zvt\""));
    let reader = toml::from_str::<ReaderConfig>("tcp = \"h:1\"\nt4_ms = 10").unwrap();
    assert!(reader.device("l", "EUR").unwrap_err().to_string().contains("zvt"));
}

/// A configuration posd starts with; the tests below break it one way
/// at a time. Lines: 1 state_dir, 2 [gateway], 3 url, 4 [[lane]], 5 id,
/// 6 currency, 7 reader.
const BASE: &str = "state_dir = \"/nonexistent/posd-config-test\"\n\
                    [gateway]\n\
                    url = \"https://gateway.example:443\"\n\
                    [[lane]]\n\
                    id = \"lane-1\"\n\
                    currency = \"EUR\"\n\
                    reader = { tcp = \"127.0.0.1:20007\" }\n";

/// The errors check-config and start-up report for `text`: line, column, message.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    Examined::new(text)
        .findings
        .into_iter()
        .filter(|f| f.error)
        .map(|f| {
            let (line, col) = f.at.expect("every error has a place");
            (line, col, f.message)
        })
        .collect()
}

/// Asserts an error on `line` whose message contains `needle`.
#[track_caller]
fn assert_error(text: &str, line: usize, needle: &str) {
    let errors = errors(text);
    assert!(
        errors.iter().any(|(l, _, m)| *l == line && m.contains(needle)),
        "expected {needle:?} on line {line}, got {errors:#?}\nin:\n{text}"
    );
}

#[track_caller]
fn assert_no_errors(text: &str) {
    let errors = errors(text);
    assert!(errors.is_empty(), "{errors:#?}\nin:\n{text}");
}

#[test]
fn the_base_configuration_has_no_errors() {
    assert_no_errors(BASE);
    Config::parse(BASE).unwrap();
}

#[test]
fn the_gateway_url_is_https_or_plain_http_to_this_machine() {
    let with = |url: &str| BASE.replace("https://gateway.example:443", url);
    for (url, needle) in [
        ("HTTP://192.0.2.10:80", "plain http:// is allowed only on loopback"),
        ("http://192.0.2.10", "not to 192.0.2.10"),
        ("http://localhost.example.net", "plain http://"),
        ("http://127.0.0.1:1@192.0.2.10", "user name or password"),
        ("https://user:secret@gateway.example", "user name or password"),
        ("ftp://192.0.2.10", "ftp:// is not one posd speaks"),
        ("FTP://192.0.2.10", "ftp:// is not one posd speaks"),
        ("gateway.example:443", "[gateway] url"),
        ("", "[gateway] url"),
    ] {
        assert_error(&with(url), 3, needle);
        let e = toml::from_str::<Config>(&with(url)).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("[gateway] url"), "{url}: {e}");
    }
    for ok in [
        "https://gateway.example",
        "HTTPS://gateway.example:443",
        "http://127.0.0.1:7000",
        "http://127.10.0.1",
        "HTTP://LOCALHOST:7000",
        "http://[::1]:7000",
    ] {
        assert_no_errors(&with(ok));
    }
    let cfg = Config::parse(&with("HTTPS://Gateway.example:443")).unwrap();
    assert_eq!(cfg.gateway.url, "https://Gateway.example:443", "the scheme is read in lower case");
    assert_eq!(check_gateway_url("Https://gw"), Ok(true));
    assert_eq!(check_gateway_url("http://localhost:1"), Ok(false));
}

#[test]
fn the_command_line_gateway_is_checked_too_in_demo_mode() {
    use super::{Options, resolve};
    let demo = |url: &str| Options { demo: true, gateway: Some(url.into()), ..Default::default() };
    for bad in ["HTTP://192.0.2.10:80", "http://127.0.0.1:1@192.0.2.10", "ftp://192.0.2.10"] {
        let e = resolve(&demo(bad)).unwrap_err().to_string();
        assert!(e.contains("--gateway"), "{bad}: {e}");
    }
    assert_eq!(resolve(&demo("HTTPS://gateway.example")).unwrap().gateway.url, "https://gateway.example");
    assert_eq!(resolve(&demo("http://127.0.0.1:7000")).unwrap().gateway.url, "http://127.0.0.1:7000");
    let zero = Options { demo: true, gateway_timeout_ms: Some(0), ..Default::default() };
    assert!(resolve(&zero).unwrap_err().to_string().contains("--gateway-timeout-ms"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    std::fs::write(&path, BASE).unwrap();
    let file = |url: &str| Options { config: Some(path.clone()), gateway: Some(url.into()), ..Default::default() };
    let e = resolve(&file("http://192.0.2.10")).unwrap_err().to_string();
    assert!(e.contains("--gateway") && e.contains("plain http://"), "{e}");
    assert_eq!(resolve(&file("http://[::1]:7000")).unwrap().gateway.url, "http://[::1]:7000");
}

#[test]
fn the_command_line_metrics_address_is_checked_and_applied_in_demo_mode_and_with_a_file() {
    use super::{Options, resolve};
    let demo = |m: Option<&str>| Options { demo: true, metrics: m.map(Into::into), ..Default::default() };
    assert_eq!(resolve(&demo(None)).unwrap().metrics.listen, None, "no metrics unless asked for");
    assert_eq!(resolve(&demo(Some("127.0.0.1:9464"))).unwrap().metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    assert_eq!(resolve(&demo(Some("[::1]:0"))).unwrap().metrics.listen.as_deref(), Some("[::1]:0"));
    // By the rule of `[metrics] listen`: loopback HOST:PORT only.
    for bad in ["0.0.0.0:9464", "192.0.2.10:9464", "localhost:9464", "9464", ""] {
        let e = resolve(&demo(Some(bad))).unwrap_err().to_string();
        assert!(e.contains("--metrics") && e.contains("loopback"), "{bad}: {e}");
    }

    // With a file: --metrics replaces its `[metrics] listen`, or adds one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.toml");
    let file =
        |m: Option<&str>| Options { config: Some(path.clone()), metrics: m.map(Into::into), ..Default::default() };
    std::fs::write(&path, BASE).unwrap();
    assert_eq!(resolve(&file(None)).unwrap().metrics.listen, None);
    assert_eq!(resolve(&file(Some("127.0.0.1:9464"))).unwrap().metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    std::fs::write(&path, format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9000\"\n")).unwrap();
    assert_eq!(resolve(&file(None)).unwrap().metrics.listen.as_deref(), Some("127.0.0.1:9000"));
    assert_eq!(resolve(&file(Some("127.0.0.1:9464"))).unwrap().metrics.listen.as_deref(), Some("127.0.0.1:9464"));
    let e = resolve(&file(Some("0.0.0.0:9464"))).unwrap_err().to_string();
    assert!(e.contains("--metrics"), "{e}");
}

#[test]
fn zero_or_negative_durations_and_timeouts_are_refused() {
    for (setting, needle) in [
        ("health_interval = \"0s\"", "[offline] health_interval is 0s"),
        ("ageing_interval = \"0ms\"", "[offline] ageing_interval is 0s"),
        ("retry_first = \"0s\"", "[offline] retry_first is 0s"),
        ("retry_max = \"0s\"", "[offline] retry_max is 0s"),
        ("alert_after = \"0s\"", "[offline] alert_after is 0s"),
        ("stop_after = \"0h\"", "[offline] stop_after is 0s"),
        ("expire_after = \"0d\"", "[offline] expire_after is 0s"),
        ("health_interval = \"-5s\"", "is negative"),
        ("batch_size = -1", "invalid value"),
    ] {
        assert_error(&format!("{BASE}[offline]\n{setting}\n"), 9, needle);
    }
    assert_error(&format!("stop_timeout = \"0s\"\n{BASE}"), 1, "stop_timeout is 0s");
    assert_error(&format!("card_timeout = \"0s\"\n{BASE}"), 1, "card_timeout must be 1s to 10min");
    assert_no_errors(&format!("capture_window = \"0s\"\n{BASE}"));
    let gateway = BASE.replace("[gateway]\n", "[gateway]\nrequest_timeout_ms = 0\nconnect_timeout_ms = 0\n");
    assert_error(&gateway, 3, "[gateway] request_timeout_ms is 0");
    assert_error(&gateway, 4, "[gateway] connect_timeout_ms is 0");
    let negative = BASE.replace("[gateway]\n", "[gateway]\nrequest_timeout_ms = -1\n");
    assert_error(&negative, 3, "invalid value");
    assert_error(&format!("{BASE}[lane.offline]\nreadiness = \"0s\"\n"), 9, "readiness is 0s");
    let zvt = |timers: &str| {
        BASE.replace(
            "reader = { tcp = \"127.0.0.1:20007\" }",
            &format!("reader = {{ kind = \"zvt\", tcp = \"127.0.0.1:20007\"{timers} }}"),
        )
    };
    assert_no_errors(&zvt(""));
    assert_error(&zvt(", t3_ms = 0"), 7, "t3_ms is 0");
    assert_error(&zvt(", t4_ms = 0"), 7, "t4_ms is 0");
    // A zero interval panics tokio's interval: posd must not start with one.
    let e = Config::parse(&format!("{BASE}[offline]\nhealth_interval = \"0s\"\n")).unwrap_err().to_string();
    assert!(e.contains("config:9:1: error: [offline] health_interval is 0s"), "{e}");
}

#[test]
fn two_lanes_on_one_device_are_refused() {
    let second =
        |reader: &str| format!("{BASE}[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\nreader = {{ {reader} }}\n");
    assert_no_errors(&second("tcp = \"127.0.0.1:20008\""));
    assert_error(&second("tcp = \"127.0.0.1:20007\""), 11, "which lane lane-1 already uses for its reader");
    let serial = |base: &str| base.replace("tcp = \"127.0.0.1:20007\"", "device = \"/dev/pos/reader\"");
    assert_error(&serial(&second("device = \"/dev/pos/reader\"")), 11, "already uses");
    let printers = |a: &str, b: &str| {
        format!(
            "{BASE}printer = {{ {a} }}\n[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\n\
             reader = {{ tcp = \"127.0.0.1:20008\" }}\nprinter = {{ {b} }}\n"
        )
    };
    assert_no_errors(&printers("tcp = \"192.0.2.20:9100\"", "tcp = \"192.0.2.21:9100\""));
    assert_error(&printers("tcp = \"192.0.2.20:9100\"", "tcp = \"192.0.2.20:9100\""), 13, "lane lane-1");
    assert_error(&printers("usb = \"/dev/usb/lp0\"", "usb = \"/dev/usb/lp0\""), 13, "already uses");
    assert_error(&printers("device = \"/dev/pos/p\"", "device = \"/dev/pos/p\""), 13, "for its printer");
    // One lane's printer on its own reader's line.
    let same = format!("{BASE}printer = {{ tcp = \"127.0.0.1:20007\" }}\n");
    assert_error(&same, 8, "the reader and the printer are both on 127.0.0.1:20007");
}

#[test]
fn tls_files_must_be_pem_when_they_can_be_read() {
    // Lines: 9 [api.tls], 10 cert_file, 11 key_file, 12 client_ca_file.
    fn text(cert: &Path, key: &Path, ca: &Path) -> String {
        format!(
            "listen = \"0.0.0.0:50051\"\n{BASE}[api.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             client_ca_file = {ca:?}\n"
        )
    }
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let der = file("cert.der", b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00\xff".as_slice());
    let bad_cert = file("bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".as_slice());
    let key = file("key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".as_slice());
    let locked = file(
        "locked.pem",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".as_slice(),
    );
    let all_bad = text(&der, &bad_cert, &key);
    assert_error(&all_bad, 10, "is not PEM: it has no -----BEGIN CERTIFICATE----- block");
    assert_error(&all_bad, 11, "holds no private key, only PEM blocks of CERTIFICATE");
    assert_error(&all_bad, 12, "holds no certificate, only PEM blocks of PRIVATE KEY");
    let locked_key = text(&bad_cert, &locked, &bad_cert);
    assert_error(&locked_key, 10, "not an X.509 certificate");
    assert_error(&locked_key, 11, "encrypted private key");
    let gateway = BASE.replace("[gateway]\n", &format!("[gateway]\nca_file = {der:?}\n"));
    assert_error(&gateway, 3, "[gateway] ca_file");
    // A file or credential not readable here is left to start-up (check-config warns).
    let absent = text(Path::new("/nonexistent/c.pem"), Path::new("credential:posd_absent.key"), &bad_cert);
    let errs = errors(&absent);
    assert!(!errs.is_empty() && errs.iter().all(|(line, _, _)| *line == 12), "only client_ca_file: {errs:#?}");
}

#[test]
fn a_state_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.db");
    std::fs::write(&path, b"").unwrap();
    let text = BASE.replace("/nonexistent/posd-config-test", &path.to_string_lossy());
    assert_error(&text, 1, "exists and is not a directory");
    assert_no_errors(&BASE.replace("/nonexistent/posd-config-test", &dir.path().to_string_lossy()));
}

#[test]
fn lane_ids_are_non_empty_without_control_characters_and_unique() {
    assert_error(&BASE.replace("id = \"lane-1\"", "id = \"\""), 5, "id is empty");
    assert_error(&BASE.replace("id = \"lane-1\"", "id = \"lane\\u0007\""), 5, "contains a control character");
    let twice = format!("{BASE}[[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = {{ tcp = \"127.0.0.1:9\" }}\n");
    assert_error(&twice, 9, "lane lane-1 is configured twice");
}

#[test]
fn log_levels_are_the_five_known_ones() {
    assert_error(&format!("{BASE}[log]\nlevel = \"verbose\"\n"), 9, "[log] level \"verbose\" is not a log level");
    assert_error(&format!("{BASE}[log]\nlevel = \"posd=debug\"\n"), 9, "is not a log level");
    assert_no_errors(&format!("{BASE}[log]\nlevel = \"debug\"\n"));
    assert_no_errors(&format!("{BASE}[log]\nlevel = \"WARN\"\n"));
}

#[test]
fn offline_limits_and_counts_are_not_negative() {
    let text = format!("{BASE}[lane.offline]\nmax_payment_minor = -1\nmax_total_minor = -500\n");
    assert_error(&text, 9, "max_payment_minor is -1; a limit cannot be negative");
    assert_error(&text, 10, "max_total_minor is -500");
    assert_error(&format!("{BASE}[lane.offline]\nmax_payments = -3\n"), 9, "invalid value: integer `-3`");
    assert_error(&format!("{BASE}[lane.offline]\nmax_per_card = -1\n"), 9, "invalid value");
    assert_no_errors(&format!("{BASE}[lane.offline]\nmax_payment_minor = 0\nmax_total_minor = 0\n"));
}

#[test]
fn currencies_are_active_iso_4217_codes() {
    assert_error(&BASE.replace("\"EUR\"", "\"EURO\""), 6, "currency must be an ISO 4217 code");
    let lower = errors(&BASE.replace("\"EUR\"", "\"eur\""));
    assert_eq!(lower.len(), 1, "{lower:#?}");
    let finding = Examined::new(&BASE.replace("\"EUR\"", "\"eur\"")).findings.remove(0);
    assert!(finding.fix.contains("\"EUR\""), "{finding:?}");
    assert_error(&format!("{BASE}[lane.offline]\ncurrencies = [\"EUR\", \"XYZ\"]\n"), 9, "\"XYZ\"");
    assert_no_errors(&BASE.replace("\"EUR\"", "\"JPY\""));
}

#[test]
fn retry_first_is_at_most_retry_max() {
    let text = format!("{BASE}[offline]\nretry_first = \"1m\"\nretry_max = \"30s\"\n");
    assert_error(&text, 9, "[offline] retry_first (1m) is longer than retry_max (30s)");
    // Against the default retry_max (30s), it points at the key the file has.
    assert_error(&format!("{BASE}[offline]\nretry_first = \"31s\"\n"), 9, "longer than retry_max");
    assert_no_errors(&format!("{BASE}[offline]\nretry_first = \"30s\"\nretry_max = \"30s\"\n"));
    let order = format!("{BASE}[offline]\nalert_after = \"2d\"\n");
    assert_error(&order, 9, "alert_after (2d) is later than stop_after (1d)");
}

#[test]
fn refunds_allowed_from_entries_are_callers_posd_can_match() {
    let text = format!(
        "{BASE}[api]\nrefunds_allowed_from = [\"uid=1001\", \"cn=register-1\", \"ip=192.0.2.31\", \"ip=::1\", \
         \"uid=abc\", \"uid=01\", \"ip=999.1.1.1\", \"ip=2001:DB8::1\", \"cn=\", \"user=1\", \"\"]\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 7, "{errs:#?}");
    assert!(errs.iter().all(|(line, _, _)| *line == 9), "{errs:#?}");
    for needle in [
        "\"uid=abc\" names no numeric user id",
        "\"uid=01\" never matches: posd writes that user as uid=1",
        "\"ip=999.1.1.1\" names no IP address",
        "\"ip=2001:DB8::1\" never matches: posd writes that address as ip=2001:db8::1",
        "\"cn=\" names no certificate",
        "\"user=1\" is not uid=N, cn=NAME or ip=ADDR",
        "\"\" is not uid=N, cn=NAME or ip=ADDR",
    ] {
        assert!(errs.iter().any(|(_, _, m)| m.contains(needle)), "{needle}: {errs:#?}");
    }
}

#[test]
fn every_error_is_reported_at_once_each_at_its_place() {
    // Semantic errors in four places.
    let text = format!(
        "{}[[lane]]\nid = \"lane-2\"\ncurrency = \"EUR\"\nreader = {{ tcp = \"127.0.0.1:20007\" }}\n\
         [offline]\nhealth_interval = \"0s\"\nretry_first = \"1m\"\n[log]\nlevel = \"loud\"\n",
        BASE.replace("https://gateway.example:443", "HTTP://192.0.2.10:80")
    );
    let errs = errors(&text);
    let want = [
        (3, 1, "plain http://"),
        (11, 12, "already uses"),
        (13, 1, "health_interval is 0s"),
        (14, 1, "retry_first (1m) is longer"),
        (16, 1, "not a log level"),
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (line, col, needle) in want {
        assert!(errs.iter().any(|(l, c, m)| (*l, *c) == (line, col) && m.contains(needle)), "{needle}: {errs:#?}");
    }
    // The start-up refuses with the same list.
    let e = Config::parse(&text).unwrap_err().to_string();
    assert!(e.starts_with("5 errors in the configuration:"), "{e}");
    let e = toml::from_str::<Config>(&text).unwrap().validate().unwrap_err().to_string();
    assert!(e.starts_with("5 errors in the configuration:") && e.contains("fix: "), "{e}");

    // Errors of form too: each bad key is set aside and the rest read on,
    // semantic errors included.
    let text = format!(
        "card_timeout = 5\n{}[offline]\nbatch_size = -1\nhealth_interval = \"0s\"\n",
        BASE.replace("[gateway]\n", "[gateway]\nretries = 3\n")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert_error(&text, 1, "invalid type");
    assert_error(&text, 4, "unknown field `retries`");
    assert_error(&text, 11, "invalid value: integer `-1`");
    assert_error(&text, 12, "health_interval is 0s");
    // A required key of the wrong type is one error, not also "missing".
    let errs = errors(&BASE.replace("\"https://gateway.example:443\"", "5"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].2.contains("invalid type"), "{errs:#?}");
    // TOML syntax errors: all of them.
    let errs = errors(&format!("{BASE}[offline]\nretry_first = \"1s\nretry_max = 3s\n"));
    assert!(errs.iter().any(|(l, _, _)| *l == 9) && errs.iter().any(|(l, _, _)| *l == 10), "{errs:#?}");
}

/// BASE with its lane's reader (line 7) replaced by `reader`.
fn with_reader(reader: &str) -> String {
    BASE.replace("reader = { tcp = \"127.0.0.1:20007\" }", &format!("reader = {{ {reader} }}"))
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "terminal CA");
    ca.self_signed(&key).unwrap().pem()
}

#[test]
fn a_nexo_lane_is_checked_setting_by_setting_each_refusal_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let ca = write("ca.pem", ca_pem().as_bytes());
    let pass = write("passphrase", b"mysupersecretpassphrase\n");
    let good = format!(
        "kind = \"nexo\", url = \"https://192.0.2.30:8443/nexo\", poi_id = \"V400m-324688179\", ca_file = {ca:?}, \
         key_id = \"posd\", key_version = 1, passphrase_file = {pass:?}"
    );
    assert_no_errors(&with_reader(&good));

    // What the lane starts with: the files read, the key derived once.
    let cfg = Config::parse(&with_reader(&good)).unwrap();
    let crate::lane::CardDeviceSettings::Nexo(s) = cfg.lanes[0].reader.device("lane-1", "EUR").unwrap() else {
        panic!("not nexo")
    };
    assert_eq!(
        (s.sale_id.as_str(), s.line.poi_id(), s.line.url()),
        ("POSD-lane-1", "V400m-324688179", "https://192.0.2.30:8443/nexo")
    );
    let key = s.key.expect("encrypted");
    assert_eq!((key.key_identifier(), key.key_version()), ("posd", 1));
    assert_eq!(super::model::passphrase_text(b"mysupersecretpassphrase\r\n").unwrap(), "mysupersecretpassphrase");

    let not_ascii = write("latin1", "pässphrase".as_bytes());
    let empty = write("empty", b"\n");
    let der = write("ca.der", b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00\xff");
    let unencrypted = good.replace(&format!(", passphrase_file = {pass:?}"), "");
    for (reader, message) in [
        (
            good.replace("\"V400m-324688179\"", "\"V400m324688179\""),
            "lane lane-1: reader poi_id \"V400m324688179\" is not <model>-<serial>: it has no '-'".to_string(),
        ),
        (
            good.replace("\"V400m-324688179\"", "\"V400m-32.4\""),
            "lane lane-1: reader poi_id \"V400m-32.4\" is not <model>-<serial>: letters and digits with one '-' \
             between them, e.g. V400m-324688179"
                .into(),
        ),
        (
            good.replace("https://", "http://"),
            "lane lane-1: reader url \"http://192.0.2.30:8443/nexo\": a nexo terminal is reached over https".into(),
        ),
        (
            good.replace("key_version = 1", "key_version = 0"),
            "lane lane-1: reader key_version is 0; key versions start at 1".into(),
        ),
        (good.replace("key_id = \"posd\"", "key_id = \"\""), "lane lane-1: reader key_id is empty".into()),
        (
            good.replace(", key_id = \"posd\"", ""),
            "lane lane-1: reader passphrase_file needs key_id, the shared key's identifier".into(),
        ),
        (
            unencrypted.clone(),
            "lane lane-1: without passphrase_file posd would speak to the terminal at 192.0.2.30 unencrypted, which \
             it does only on this machine (127.0.0.0/8, ::1, localhost)"
                .into(),
        ),
        (
            good.replace(&format!("ca_file = {ca:?}, "), ""),
            "lane lane-1: reader kind = \"nexo\" needs ca_file, the CA that signs the terminal's certificate".into(),
        ),
        (
            good.replace("poi_id = \"V400m-324688179\", ", ""),
            "lane lane-1: reader kind = \"nexo\" needs poi_id, the terminal's POIID".into(),
        ),
        (
            format!("{good}, tcp = \"127.0.0.1:1\""),
            "lane lane-1: reader tcp does not apply to kind = \"nexo\": the terminal is reached at its url".into(),
        ),
        (format!("{good}, answer_timeout = \"0s\""), "lane lane-1: reader answer_timeout is 0s".into()),
        (format!("{good}, connect_timeout = \"0ms\""), "lane lane-1: reader connect_timeout is 0s".into()),
        (
            good.replace(&format!("{pass:?}"), &format!("{not_ascii:?}")),
            format!(
                "lane lane-1: reader passphrase_file: {} holds a character that is not ASCII; the terminal reads the \
                 passphrase as Latin-1 bytes, so posd takes ASCII passphrases only",
                not_ascii.display()
            ),
        ),
        (
            good.replace(&format!("{pass:?}"), &format!("{empty:?}")),
            format!("lane lane-1: reader passphrase_file: {} is empty", empty.display()),
        ),
        (
            good.replace(&format!("{ca:?}"), &format!("{der:?}")),
            format!(
                "lane lane-1: reader ca_file: {} is not PEM: it has no -----BEGIN CERTIFICATE----- block",
                der.display()
            ),
        ),
        (
            "tcp = \"127.0.0.1:20007\", url = \"https://127.0.0.1:8443/nexo\"".into(),
            "lane lane-1: reader url applies to kind = \"nexo\" only".into(),
        ),
        (
            "kind = \"nexo\", password = 123456".into(),
            "lane lane-1: reader password applies to kind = \"zvt\" only".into(),
        ),
    ] {
        let text = with_reader(&reader);
        let errs = errors(&text);
        assert!(errs.iter().any(|(line, _, m)| *line == 7 && *m == message), "{message}\n{errs:#?}");
        assert!(Config::parse(&text).is_err(), "start-up refuses it too: {reader}");
    }

    // Unencrypted: on this machine only, with a warning.
    let local = unencrypted.replace("192.0.2.30", "127.0.0.2");
    assert_no_errors(&with_reader(&local));
    let cfg = Config::parse(&with_reader(&local)).unwrap();
    let crate::lane::CardDeviceSettings::Nexo(s) = cfg.lanes[0].reader.device("lane-1", "EUR").unwrap() else {
        panic!("not nexo")
    };
    assert!(s.key.is_none());
    let path = write("posd.toml", with_reader(&local).as_bytes());
    let warnings: Vec<_> = check(&path).into_iter().filter(|f| !f.error).collect();
    assert!(
        warnings.iter().any(|f| f.at.map(|(l, _)| l) == Some(7) && f.message.contains("spoken to unencrypted")),
        "{warnings:#?}"
    );
    let e = cfg.lanes[0].reader.device("lane-1", "EUR");
    assert!(e.is_ok());
    let remote = ReaderConfig { url: Some("https://192.0.2.30:8443/nexo".into()), ..cfg.lanes[0].reader.clone() };
    let e = remote.device("lane-1", "EUR").unwrap_err().to_string();
    assert!(e.contains("unencrypted"), "the start refuses it as check-config does: {e}");
}
