//! The metrics page: payments by status, the offline queue, device and
//! gateway states, store and API counts, and latency histograms (card reader,
//! gateway, end to end), in the OpenMetrics 1.0.0 text format.
//!
//! Each scrape encodes the [`Snapshot`] the engine makes (`Engine::telemetry`;
//! this module does not read the engine) with `prometheus-client`, as a
//! [`Collector`], so the families keep one fixed order. prometheus-client
//! writes label values as it is given them, so lane ids and statuses go
//! through [`Escaped`]. [`serve`] (in `metrics::http`) answers `GET /metrics`
//! within fixed connection bounds.

mod http;

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use http::{CONNECTION_TIMEOUT, CONTENT_TYPE, HEADER_TIMEOUT, MAX_CONNECTIONS, serve};

use crate::telemetry::{HistogramSnapshot, LaneSnapshot, Snapshot};

/// The register API's listener counts (`listen::COUNTS`), read at a scrape.
#[derive(Debug, Clone, Default)]
struct ApiCounts {
    open: u64,
    refused: u64,
    timed_out: u64,
    accept_errors: u64,
}

impl ApiCounts {
    fn now() -> Self {
        let api = &crate::listen::COUNTS;
        ApiCounts {
            open: api.open.load(Relaxed),
            refused: api.refused.load(Relaxed),
            timed_out: api.timed_out.load(Relaxed),
            accept_errors: api.accept_errors.load(Relaxed),
        }
    }
}

/// One page: the engine's snapshot and the API's counts.
#[derive(Debug)]
struct Page {
    snapshot: Snapshot,
    api: ApiCounts,
}

/// The page for `snapshot`: OpenMetrics text, ending in `# EOF`.
pub fn render(snapshot: Snapshot) -> String {
    encode(Page { snapshot, api: ApiCounts::now() })
}

fn encode(page: Page) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(page));
    let mut out = String::new();
    // Writing to a String fails only if an encoder does, and ours do not;
    // should one, the page is empty rather than cut off.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
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

impl Collector for Page {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (s, api) = (&self.snapshot, &self.api);
        let e = &mut encoder;
        let mut family =
            e.encode_descriptor("posd_payments", "Payments in the database by status.", None, MetricType::Gauge)?;
        for (status, n) in &s.payments_by_status {
            let labels = [("status", Escaped(status))];
            ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
        }
        counter(
            e,
            "posd_store_payment_writes",
            "New payments and single state changes committed (the forwarder's batches not counted).",
            s.payment_writes,
        )?;
        counter(
            e,
            "posd_store_writes",
            "Writes committed through the group commit: payments, events, audit entries, refunds, records, meta.",
            s.store_writes,
        )?;
        counter(
            e,
            "posd_store_commits",
            "Synced commits that carried them; writes of several lanes share one.",
            s.store_commits,
        )?;
        counter(
            e,
            "posd_store_unsynced_commits",
            "Commits without a sync of their own (state whose loss is harmless); the next synced commit makes them durable.",
            s.unsynced_commits,
        )?;
        if let Some(q) = &s.sync {
            gauge(
                e,
                "posd_offline_queue_depth",
                "Offline approvals not yet settled with the gateway.",
                i64::from(q.queue_depth),
            )?;
            gauge(
                e,
                "posd_offline_oldest_age_seconds",
                "Age of the oldest unsent offline payment.",
                as_gauge(q.oldest_age.as_secs()),
            )?;
            gauge(e, "posd_gateway_online", "1 while the central gateway answers.", i64::from(q.online))?;
        }
        gauge(
            e,
            "posd_database_failed",
            "1 while posd refuses new payments because its database failed (it restarts itself once the database works again).",
            i64::from(s.refusing_payments),
        )?;
        gauge(e, "posd_api_connections", "Connections to the register API open now.", as_gauge(api.open))?;
        counter(
            e,
            "posd_api_connections_refused",
            "Connections closed at once because [api] max_connections were open.",
            api.refused,
        )?;
        counter(
            e,
            "posd_api_handshake_timeouts",
            "Connections closed for sending nothing (or not finishing TLS) within [api] handshake_timeout.",
            api.timed_out,
        )?;
        counter(
            e,
            "posd_api_accept_errors",
            "Failed accepts of API connections (descriptors or memory exhausted); posd backs off.",
            api.accept_errors,
        )?;
        counter(
            e,
            "posd_gateway_local_faults",
            "Connections to the gateway that failed for a reason on the lane PC (descriptors, memory, TLS), not the network; the payments concerned failed, none was approved offline.",
            s.gateway_local_faults,
        )?;
        lane_gauge(e, &s.lanes, "posd_reader_connected", "1 while a lane's card reader is connected.", |l| {
            l.reader_connected
        })?;
        lane_gauge(e, &s.lanes, "posd_printer_connected", "1 while a lane's printer answers.", |l| {
            l.printer_connected
        })?;
        lane_gauge(e, &s.lanes, "posd_printer_ready", "1 while a lane's printer can print.", |l| l.printer_ready)?;
        let mut family = e.encode_descriptor(
            "posd_card_line_bytes",
            "Bytes on a lane's card device line (frames and ACKs; a nexo terminal's request and answer bodies), by direction.",
            None,
            MetricType::Counter,
        )?;
        for lane in &s.lanes {
            for (direction, bytes) in [("out", lane.line_bytes_sent), ("in", lane.line_bytes_received)] {
                let labels = [("lane", Escaped(&lane.id)), ("direction", Escaped(direction))];
                ConstCounter::new(bytes).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, histogram) in [
            ("posd_reader_latency_seconds", "From asking the reader for a card to its result.", &s.reader_latency),
            ("posd_gateway_latency_seconds", "One authorization call to the gateway.", &s.gateway_latency),
            ("posd_payment_latency_seconds", "From the register's request to its answer.", &s.payment_latency),
        ] {
            histogram_family(e, name, help, histogram)?;
        }
        Ok(())
    }
}

/// Writes one histogram family. prometheus-client takes each bucket's own
/// count (it sums them up again) and the `+Inf` bucket last.
fn histogram_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(bound_ms, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = cumulative;
            (bound_ms as f64 / 1000.0, own)
        })
        .collect();
    buckets.push((f64::MAX, h.count.saturating_sub(below)));
    let sum = h.sum_us as f64 / 1e6;
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, h.count, &buckets, None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::{Histogram, SyncReport};

    /// The page of `snapshot`, with the API counts given.
    fn page_of(snapshot: Snapshot) -> String {
        encode(Page { snapshot, api: ApiCounts::default() })
    }

    fn lane(id: &str) -> LaneSnapshot {
        LaneSnapshot {
            id: id.into(),
            reader_connected: true,
            printer_connected: true,
            printer_ready: false,
            line_bytes_sent: 12,
            line_bytes_received: 34,
        }
    }

    /// The sample lines of a page (no comments).
    fn samples(page: &str) -> Vec<&str> {
        page.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_sample_keeps_its_name_and_the_page_ends_in_eof() {
        let snapshot = Snapshot {
            payments_by_status: vec![("captured".into(), 3), ("failed".into(), 1)],
            payment_writes: 7,
            store_writes: 9,
            store_commits: 4,
            unsynced_commits: 2,
            sync: Some(SyncReport {
                online: true,
                queue_depth: 5,
                quarantined: 0,
                totals: Vec::new(),
                oldest_age: Duration::from_millis(61_500),
                last_error: String::new(),
                paused: false,
                last_online_ms: None,
            }),
            refusing_payments: false,
            gateway_local_faults: 6,
            lanes: vec![lane("lane-1")],
            ..Snapshot::default()
        };
        let page = encode(Page { snapshot, api: ApiCounts { open: 1, refused: 17, timed_out: 2, accept_errors: 3 } });
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
        let page = page_of(Snapshot::default());
        assert!(!page.contains("posd_offline_queue_depth"), "{page}");
        assert!(!page.contains("posd_gateway_online"), "{page}");
        assert!(page.contains("posd_database_failed 0"), "{page}");
    }

    /// A lane id with a quote, a backslash and a line feed stays inside its
    /// label value, escaped; every other line of the page is intact.
    #[test]
    fn lane_labels_are_escaped() {
        let id = "till \"7\" \\ back\nroom";
        let page = page_of(Snapshot { lanes: vec![lane(id)], ..Snapshot::default() });
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
        let page = page_of(Snapshot { payments_by_status: vec![("captured".into(), 1)], ..Snapshot::default() });
        assert!(page.contains("posd_payments{status=\"captured\"} 1\n"), "{page}");
        let page = page_of(Snapshot { payments_by_status: vec![("a\\\"\n".into(), 1)], ..Snapshot::default() });
        assert!(page.contains("posd_payments{status=\"a\\\\\\\"\\n\"} 1\n"), "{page}");
    }

    /// The buckets keep their bounds (5 ms to 10 s); counts are cumulative
    /// and agree with `_count`.
    #[test]
    fn latency_buckets_keep_their_bounds() {
        let gateway = Histogram::default();
        gateway.observe(Duration::from_millis(7));
        gateway.observe(Duration::from_micros(5_100));
        gateway.observe(Duration::from_millis(300));
        gateway.observe(Duration::from_secs(20));
        let page = page_of(Snapshot { gateway_latency: gateway.snapshot(), ..Snapshot::default() });
        let buckets: Vec<&str> =
            samples(&page).into_iter().filter(|l| l.starts_with("posd_gateway_latency_seconds_bucket")).collect();
        assert_eq!(
            buckets,
            [
                // 5.1 ms is above 5 ms: bounds are exact, not whole milliseconds.
                "posd_gateway_latency_seconds_bucket{le=\"0.005\"} 0",
                "posd_gateway_latency_seconds_bucket{le=\"0.01\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"0.025\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"0.05\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"0.1\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"0.25\"} 2",
                "posd_gateway_latency_seconds_bucket{le=\"0.5\"} 3",
                "posd_gateway_latency_seconds_bucket{le=\"1.0\"} 3",
                "posd_gateway_latency_seconds_bucket{le=\"2.5\"} 3",
                "posd_gateway_latency_seconds_bucket{le=\"10.0\"} 3",
                "posd_gateway_latency_seconds_bucket{le=\"+Inf\"} 4",
            ]
        );
        assert!(page.contains("posd_gateway_latency_seconds_count 4\n"), "{page}");
        let sum: f64 = samples(&page)
            .into_iter()
            .find_map(|l| l.strip_prefix("posd_gateway_latency_seconds_sum "))
            .expect("a _sum sample")
            .parse()
            .unwrap();
        assert!((sum - 20.3121).abs() < 1e-9, "{page}");
    }
}
