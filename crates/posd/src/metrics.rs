//! The metrics page: payments by status, the offline queue, device and
//! gateway states, store and API counts, and latency histograms (card reader,
//! gateway, end to end), in the OpenMetrics 1.0.0 text format.
//!
//! Each scrape reads a [`Snapshot`] of the engine and encodes it with
//! `prometheus-client` (a [`Collector`], so the families keep one fixed
//! order). prometheus-client writes label values as it is given them, so lane
//! ids and statuses go through [`Escaped`]. [`serve`] (in `metrics::http`)
//! answers `GET /metrics` within fixed connection bounds.

mod http;

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::Engine;

pub use http::{CONNECTION_TIMEOUT, CONTENT_TYPE, HEADER_TIMEOUT, MAX_CONNECTIONS, serve};

/// Upper bounds of the latency buckets, in seconds (5 ms to 10 s).
const BOUNDS_S: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A latency histogram with fixed buckets ([`BOUNDS_S`]). Clones share the
/// counts; sum, count and buckets change together under one lock, so a
/// scrape never sees a count that disagrees with its `+Inf` bucket.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Self(prometheus_client::metrics::histogram::Histogram::new(BOUNDS_S.iter().copied()))
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// The latencies the engine records.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// From asking the reader for a card to its card result.
    pub reader: Histogram,
    /// One authorization call to the gateway.
    pub gateway: Histogram,
    /// From the register's request to its answer.
    pub end_to_end: Histogram,
}

/// The offline queue and the gateway, as the engine reports them.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    /// Offline approvals not yet settled with the gateway.
    pub depth: u32,
    /// Age of the oldest unsent offline payment.
    pub oldest_age: Duration,
    /// The central gateway answers.
    pub gateway_online: bool,
}

/// One lane's devices.
#[derive(Debug, Clone, Default)]
pub struct LaneSnapshot {
    pub id: String,
    pub reader_connected: bool,
    pub printer_connected: bool,
    pub printer_ready: bool,
    /// Bytes written to the card device line (frames, ACKs).
    pub line_bytes_out: u64,
    /// Bytes read from it.
    pub line_bytes_in: u64,
}

/// The register API's listener counts (see `listen::Counts`).
#[derive(Debug, Clone, Default)]
pub struct ApiSnapshot {
    pub open: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub accept_errors: u64,
}

/// Everything the metrics page shows, read at one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Payments in the database by status.
    pub payments: Vec<(String, i64)>,
    pub payment_writes: u64,
    pub writes: u64,
    pub commits: u64,
    pub unsynced_commits: u64,
    /// `None` when the store could not say (the families are left out).
    pub queue: Option<QueueSnapshot>,
    pub database_failed: bool,
    pub api: ApiSnapshot,
    pub gateway_local_faults: u64,
    pub lanes: Vec<LaneSnapshot>,
    pub latencies: Latencies,
}

impl Snapshot {
    /// Reads the engine's state now.
    pub fn read(engine: &Engine) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let store = engine.store();
        let (writes, commits) = store.write_counts();
        let queue = engine.sync_report().ok().map(|s| QueueSnapshot {
            depth: s.queue_depth,
            oldest_age: s.oldest_age,
            gateway_online: s.online,
        });
        let api = &crate::listen::COUNTS;
        let lanes = engine
            .lanes()
            .map(|lane| {
                let printer = lane.printer.as_ref().map(|p| p.status()).unwrap_or_default();
                LaneSnapshot {
                    id: lane.id.clone(),
                    reader_connected: lane.reader_state().connected,
                    printer_connected: printer.connected,
                    printer_ready: printer.connected && printer.state.ready(),
                    line_bytes_out: lane.line_bytes.sent(),
                    line_bytes_in: lane.line_bytes.received(),
                }
            })
            .collect();
        Snapshot {
            payments: store.count_by_status().unwrap_or_default(),
            payment_writes: store.payment_writes(),
            writes,
            commits,
            unsynced_commits: store.unsynced_commits(),
            queue,
            database_failed: engine.refusing_payments(),
            api: ApiSnapshot {
                open: api.open.load(Relaxed),
                refused: api.refused.load(Relaxed),
                timed_out: api.timed_out.load(Relaxed),
                accept_errors: api.accept_errors.load(Relaxed),
            },
            gateway_local_faults: engine.gateway().local_faults(),
            lanes,
            latencies: engine.latencies().clone(),
        }
    }

    /// The page: OpenMetrics text, ending in `# EOF`.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String fails only if an encoder does, and ours do not;
        // should one, the page is empty rather than cut off.
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

/// The metrics page of `engine`, read now.
pub fn render(engine: &Engine) -> String {
    Snapshot::read(engine).render()
}

/// A label value escaped as OpenMetrics requires: `\` as `\\`, `"` as `\"`
/// and a line feed as `\n`. prometheus-client (0.24) writes label values
/// unescaped, so a lane id with a quote would otherwise end the value early
/// and make the whole page unreadable to Prometheus.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Writes one family with a single unlabelled counter sample, exposed as
/// `{name}_total`.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one family with a single unlabelled gauge sample.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one gauge family with a sample per lane, labelled `lane`.
fn lane_gauge(
    encoder: &mut DescriptorEncoder,
    lanes: &[LaneSnapshot],
    name: &str,
    help: &str,
    value: impl Fn(&LaneSnapshot) -> bool,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for lane in lanes {
        let labels = [("lane", Escaped(&lane.id))];
        ConstGauge::new(i64::from(value(lane))).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Saturates rather than wraps a count too large for a gauge.
fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let mut family =
            e.encode_descriptor("posd_payments", "Payments in the database by status.", None, MetricType::Gauge)?;
        for (status, n) in &self.payments {
            let labels = [("status", Escaped(status))];
            ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
        }
        counter(
            e,
            "posd_store_payment_writes",
            "New payments and single state changes committed (the forwarder's batches not counted).",
            self.payment_writes,
        )?;
        counter(
            e,
            "posd_store_writes",
            "Writes committed through the group commit: payment writes, events, audit entries, refunds and records.",
            self.writes,
        )?;
        counter(
            e,
            "posd_store_commits",
            "Synced commits that carried them; writes of several lanes share one.",
            self.commits,
        )?;
        counter(
            e,
            "posd_store_unsynced_commits",
            "Commits without a sync of their own (state whose loss is harmless); the next synced commit makes them durable.",
            self.unsynced_commits,
        )?;
        if let Some(q) = &self.queue {
            gauge(
                e,
                "posd_offline_queue_depth",
                "Offline approvals not yet settled with the gateway.",
                i64::from(q.depth),
            )?;
            gauge(
                e,
                "posd_offline_oldest_age_seconds",
                "Age of the oldest unsent offline payment.",
                as_gauge(q.oldest_age.as_secs()),
            )?;
            gauge(e, "posd_gateway_online", "1 while the central gateway answers.", i64::from(q.gateway_online))?;
        }
        gauge(
            e,
            "posd_database_failed",
            "1 while posd refuses new payments because its database failed (it restarts itself once the database works again).",
            i64::from(self.database_failed),
        )?;
        gauge(e, "posd_api_connections", "Connections to the register API open now.", as_gauge(self.api.open))?;
        counter(
            e,
            "posd_api_connections_refused",
            "Connections closed at once because [api] max_connections were open.",
            self.api.refused,
        )?;
        counter(
            e,
            "posd_api_handshake_timeouts",
            "Connections closed for sending nothing (or not finishing TLS) within [api] handshake_timeout.",
            self.api.timed_out,
        )?;
        counter(
            e,
            "posd_api_accept_errors",
            "Failed accepts of API connections (descriptors or memory exhausted); posd backs off.",
            self.api.accept_errors,
        )?;
        counter(
            e,
            "posd_gateway_local_faults",
            "Connections to the gateway that failed for a reason on the lane PC (descriptors, memory, TLS), not the network; the payments concerned failed, none was approved offline.",
            self.gateway_local_faults,
        )?;
        lane_gauge(e, &self.lanes, "posd_reader_connected", "1 while a lane's card reader is connected.", |l| {
            l.reader_connected
        })?;
        lane_gauge(e, &self.lanes, "posd_printer_connected", "1 while a lane's printer answers.", |l| {
            l.printer_connected
        })?;
        lane_gauge(e, &self.lanes, "posd_printer_ready", "1 while a lane's printer can print.", |l| l.printer_ready)?;
        let mut family = e.encode_descriptor(
            "posd_card_line_bytes",
            "Bytes on a lane's card device line (frames, ACKs), by direction.",
            None,
            MetricType::Counter,
        )?;
        for lane in &self.lanes {
            for (direction, bytes) in [("out", lane.line_bytes_out), ("in", lane.line_bytes_in)] {
                let labels = [("lane", Escaped(&lane.id)), ("direction", Escaped(direction))];
                ConstCounter::new(bytes).encode(family.encode_family(&labels)?)?;
            }
        }
        let l = &self.latencies;
        for (name, help, histogram) in [
            ("posd_reader_latency_seconds", "From asking the reader for a card to its result.", &l.reader),
            ("posd_gateway_latency_seconds", "One authorization call to the gateway.", &l.gateway),
            ("posd_payment_latency_seconds", "From the register's request to its answer.", &l.end_to_end),
        ] {
            histogram.0.encode(e.encode_descriptor(name, help, None, histogram.0.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(id: &str) -> LaneSnapshot {
        LaneSnapshot {
            id: id.into(),
            reader_connected: true,
            printer_connected: true,
            printer_ready: false,
            line_bytes_out: 12,
            line_bytes_in: 34,
        }
    }

    /// The sample lines of a page (no comments).
    fn samples(page: &str) -> Vec<&str> {
        page.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_sample_keeps_its_name_and_the_page_ends_in_eof() {
        let snapshot = Snapshot {
            payments: vec![("captured".into(), 3), ("failed".into(), 1)],
            payment_writes: 7,
            writes: 9,
            commits: 4,
            unsynced_commits: 2,
            queue: Some(QueueSnapshot { depth: 5, oldest_age: Duration::from_millis(61_500), gateway_online: true }),
            database_failed: false,
            api: ApiSnapshot { open: 1, refused: 17, timed_out: 2, accept_errors: 3 },
            gateway_local_faults: 6,
            lanes: vec![lane("lane-1")],
            latencies: Latencies::default(),
        };
        let page = snapshot.render();
        for line in [
            "posd_payments{status=\"captured\"} 3",
            "posd_payments{status=\"failed\"} 1",
            "posd_store_payment_writes_total 7",
            "posd_store_writes_total 9",
            "posd_store_commits_total 4",
            "posd_store_unsynced_commits_total 2",
            "posd_offline_queue_depth 5",
            "posd_offline_oldest_age_seconds 61",
            "posd_gateway_online 1",
            "posd_database_failed 0",
            "posd_api_connections 1",
            "posd_api_connections_refused_total 17",
            "posd_api_handshake_timeouts_total 2",
            "posd_api_accept_errors_total 3",
            "posd_gateway_local_faults_total 6",
            "posd_reader_connected{lane=\"lane-1\"} 1",
            "posd_printer_connected{lane=\"lane-1\"} 1",
            "posd_printer_ready{lane=\"lane-1\"} 0",
            "posd_card_line_bytes_total{lane=\"lane-1\",direction=\"out\"} 12",
            "posd_card_line_bytes_total{lane=\"lane-1\",direction=\"in\"} 34",
            "posd_reader_latency_seconds_count 0",
            "posd_gateway_latency_seconds_count 0",
            "posd_payment_latency_seconds_count 0",
            "# TYPE posd_payment_latency_seconds histogram",
            "# TYPE posd_store_commits counter",
        ] {
            assert!(page.lines().any(|l| l == line), "missing {line}:\n{page}");
        }
        assert!(page.ends_with("\n# EOF\n"), "{page}");
    }

    #[test]
    fn the_queue_families_are_left_out_when_the_store_cannot_say() {
        let page = Snapshot::default().render();
        assert!(!page.contains("posd_offline_queue_depth"), "{page}");
        assert!(!page.contains("posd_gateway_online"), "{page}");
        assert!(page.contains("posd_database_failed 0"), "{page}");
    }

    /// A lane id with a quote, a backslash and a line feed stays inside its
    /// label value, escaped; every other line of the page is intact.
    #[test]
    fn lane_labels_are_escaped() {
        let id = "till \"7\" \\ back\nroom";
        let page = Snapshot { lanes: vec![lane(id)], ..Snapshot::default() }.render();
        let escaped = r#"lane="till \"7\" \\ back\nroom""#;
        for line in [
            format!("posd_reader_connected{{{escaped}}} 1"),
            format!("posd_printer_connected{{{escaped}}} 1"),
            format!("posd_printer_ready{{{escaped}}} 0"),
            format!("posd_card_line_bytes_total{{{escaped},direction=\"out\"}} 12"),
            format!("posd_card_line_bytes_total{{{escaped},direction=\"in\"}} 34"),
        ] {
            assert!(page.lines().any(|l| l == line), "missing {line}:\n{page}");
        }
        for line in samples(&page) {
            assert!(line.starts_with("posd_"), "a sample line broken by the lane id: {line:?}\n{page}");
        }
    }

    #[test]
    fn escaping_leaves_plain_values_alone() {
        let page = Snapshot { payments: vec![("captured".into(), 1)], ..Snapshot::default() }.render();
        assert!(page.contains("posd_payments{status=\"captured\"} 1\n"), "{page}");
        let page = Snapshot { payments: vec![("a\\\"\n".into(), 1)], ..Snapshot::default() }.render();
        assert!(page.contains("posd_payments{status=\"a\\\\\\\"\\n\"} 1\n"), "{page}");
    }

    /// The buckets keep their bounds (5 ms to 10 s); counts are cumulative
    /// and agree with `_count`.
    #[test]
    fn latency_buckets_keep_their_bounds() {
        let latencies = Latencies::default();
        latencies.gateway.observe(Duration::from_millis(7));
        latencies.gateway.observe(Duration::from_millis(300));
        latencies.gateway.observe(Duration::from_secs(20));
        let page = Snapshot { latencies, ..Snapshot::default() }.render();
        let buckets: Vec<&str> =
            samples(&page).into_iter().filter(|l| l.starts_with("posd_gateway_latency_seconds_bucket")).collect();
        assert_eq!(
            buckets,
            [
                "posd_gateway_latency_seconds_bucket{le=\"0.005\"} 0",
                "posd_gateway_latency_seconds_bucket{le=\"0.01\"} 1",
                "posd_gateway_latency_seconds_bucket{le=\"0.025\"} 1",
                "posd_gateway_latency_seconds_bucket{le=\"0.05\"} 1",
                "posd_gateway_latency_seconds_bucket{le=\"0.1\"} 1",
                "posd_gateway_latency_seconds_bucket{le=\"0.25\"} 1",
                "posd_gateway_latency_seconds_bucket{le=\"0.5\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"1.0\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"2.5\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"10.0\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"+Inf\"} 3",
            ]
        );
        assert!(page.contains("posd_gateway_latency_seconds_count 3\n"), "{page}");
        let sum: f64 = samples(&page)
            .into_iter()
            .find_map(|l| l.strip_prefix("posd_gateway_latency_seconds_sum "))
            .expect("a _sum sample")
            .parse()
            .unwrap();
        assert!((sum - 20.307).abs() < 1e-9, "{page}");
    }
}
