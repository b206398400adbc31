//! The metrics page is OpenMetrics 1.0.0 as the Prometheus project reads it:
//! the official Python client's parser (`prometheus_client.openmetrics.parser`,
//! pinned in `tests/python/requirements.txt`, installed from PyPI into a
//! virtualenv under `target/` on first use) reads a live posd's page whole, and
//! a lane id with a quote, a backslash and a line feed comes back unchanged.
//! The page's listener keeps its bounds: one method, one path, a connection
//! cap and a time limit on idle connections.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use posd::telemetry::{LaneSnapshot, Snapshot};
use posd_e2e::Lane;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/requirements.txt");
const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/parse_openmetrics.py");

/// Succeeds while every `name==version` line of the requirements file (argv[1])
/// is installed at that version.
const PINS_INSTALLED: &str = "\
import importlib.metadata as m, sys
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        name, version = line.split('==')
        assert m.version(name) == version, line
";

/// Every family posd exposes, with its OpenMetrics type.
const FAMILIES: [(&str, &str); 21] = [
    ("posd_payments", "gauge"),
    ("posd_store_payment_writes", "counter"),
    ("posd_store_writes", "counter"),
    ("posd_store_commits", "counter"),
    ("posd_store_unsynced_commits", "counter"),
    ("posd_offline_queue_depth", "gauge"),
    ("posd_offline_oldest_age_seconds", "gauge"),
    ("posd_gateway_online", "gauge"),
    ("posd_database_failed", "gauge"),
    ("posd_api_connections", "gauge"),
    ("posd_api_connections_refused", "counter"),
    ("posd_api_handshake_timeouts", "counter"),
    ("posd_api_accept_errors", "counter"),
    ("posd_gateway_local_faults", "counter"),
    ("posd_reader_connected", "gauge"),
    ("posd_printer_connected", "gauge"),
    ("posd_printer_ready", "gauge"),
    ("posd_card_line_bytes", "counter"),
    ("posd_reader_latency_seconds", "histogram"),
    ("posd_gateway_latency_seconds", "histogram"),
    ("posd_payment_latency_seconds", "histogram"),
];

/// The virtualenv's python, made once for all the tests here (they run at once).
fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            posd_e2e::python_venv("python-metrics-venv", &["-c", PINS_INSTALLED, REQUIREMENTS], &["-r", REQUIREMENTS])
        })
        .clone()
}

/// `page` as the official parser reads it: `{family: {type, samples}}`.
fn parse(page: &str) -> Value {
    let mut child = Command::new(venv_python())
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the page:\n{}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The value of the sample `name` with exactly `labels` in `family`.
fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family]["samples"].as_array().unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .find(|s| {
            let l = s[1].as_object().unwrap();
            s[0] == name && l.len() == labels.len() && labels.iter().all(|(k, v)| l.get(*k) == Some(&Value::from(*v)))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {family}: {samples:?}"))[2]
        .as_f64()
        .unwrap()
}

#[tokio::test]
async fn a_live_page_parses_with_the_prometheus_openmetrics_parser() {
    venv_python();
    let mut lane = Lane::start_configured(&[], "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    lane.ready().await;
    lane.pay("k-openmetrics", 1_500).await;
    let answer = lane.metrics_get("/metrics").await;
    let (head, page) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let families = parse(page);
    assert_eq!(families.as_object().unwrap().len(), FAMILIES.len(), "{families:#}");
    for (name, kind) in FAMILIES {
        assert_eq!(families[name]["type"], kind, "{name}: {families:#}");
    }
    assert_eq!(sample(&families, "posd_payments", "posd_payments", &[("status", "captured")]), 1.0);
    assert_eq!(sample(&families, "posd_gateway_online", "posd_gateway_online", &[]), 1.0);
    assert!(sample(&families, "posd_store_commits", "posd_store_commits_total", &[]) >= 1.0);
    assert_eq!(sample(&families, "posd_reader_connected", "posd_reader_connected", &[("lane", "lane-1")]), 1.0);
    assert!(
        sample(
            &families,
            "posd_card_line_bytes",
            "posd_card_line_bytes_total",
            &[("lane", "lane-1"), ("direction", "out")]
        ) > 0.0
    );
    for family in ["posd_reader_latency_seconds", "posd_gateway_latency_seconds", "posd_payment_latency_seconds"] {
        let count = format!("{family}_count");
        let bucket = format!("{family}_bucket");
        assert_eq!(sample(&families, family, &count, &[]), 1.0);
        assert_eq!(sample(&families, family, &bucket, &[("le", "+Inf")]), 1.0);
        assert_eq!(sample(&families, family, &bucket, &[("le", "10.0")]), 1.0, "{family} took over 10 s");
    }
    lane.finish();
}

/// prometheus-client writes label values as given; posd escapes them, so a
/// lane id that would otherwise end its label early, or break its line,
/// reads back as it was.
#[test]
fn an_awkward_lane_id_reads_back_unchanged() {
    let ids = ["till \"7\"", "back\\room", "two\nlines", "\\\"\\n\""];
    let lanes = ids.iter().map(|id| LaneSnapshot { id: id.to_string(), ..LaneSnapshot::default() }).collect();
    let page = posd::metrics::render(Snapshot { lanes, ..Snapshot::default() });
    let families = parse(&page);
    for id in ids {
        assert_eq!(sample(&families, "posd_reader_connected", "posd_reader_connected", &[("lane", id)]), 0.0);
        for direction in ["out", "in"] {
            let labels = [("lane", id), ("direction", direction)];
            assert_eq!(sample(&families, "posd_card_line_bytes", "posd_card_line_bytes_total", &labels), 0.0);
        }
    }
}

/// Reads what posd answers on `conn` until it closes; a reset counts as closed.
async fn answer_of(conn: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Only `GET /metrics`: another method is 405, another path 404. Past the
/// connection cap a connection is closed unanswered; idle connections are
/// closed after the header timeout, and the page answers again.
#[tokio::test]
async fn the_metrics_listener_keeps_its_bounds() {
    let mut lane = Lane::start_configured(&[], "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    lane.ready().await;
    let post = lane.metrics_request("POST", "/metrics").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.to_ascii_lowercase().contains("\r\nallow: get\r\n"), "{post}");
    let other = lane.metrics_get("/other").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");

    let addr = lane.metrics_addr();
    let mut idle = Vec::new();
    for _ in 0..posd::metrics::MAX_CONNECTIONS {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut past_cap = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = past_cap.write_all(b"GET /metrics HTTP/1.1\r\nHost: posd\r\n\r\n").await;
    let refused = tokio::time::timeout(Duration::from_secs(2), answer_of(&mut past_cap)).await;
    assert_eq!(refused.as_deref(), Ok(""), "a connection past the cap is closed unanswered");
    for mut conn in idle {
        // The bound is the test's own guard; posd closes them after its header timeout.
        let closed = tokio::time::timeout(posd::metrics::HEADER_TIMEOUT * 4, answer_of(&mut conn)).await;
        assert!(closed.is_ok(), "an idle metrics connection stayed open");
    }
    let page = lane.metrics_get("/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    lane.finish();
}
