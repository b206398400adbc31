//! Prometheus text metrics on an optional loopback address: payments by
//! status, the offline queue, device and gateway states, and latency
//! histograms (card reader, gateway, end to end). It renders a
//! [`Snapshot`] the engine makes; it does not read the engine itself.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::telemetry::{HistogramSnapshot, Snapshot};

/// A histogram in the exposition format.
fn render_histogram(h: &HistogramSnapshot, name: &str, help: &str, out: &mut String) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    for (bound, n) in &h.buckets {
        out.push_str(&format!("{name}_bucket{{le=\"{}\"}} {n}\n", *bound as f64 / 1000.0));
    }
    let count = h.count;
    out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
    out.push_str(&format!("{name}_sum {}\n", h.sum_us as f64 / 1e6));
    out.push_str(&format!("{name}_count {count}\n"));
}

/// The metrics text.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    out.push_str("# HELP posd_payments Payments in the database by status.\n# TYPE posd_payments gauge\n");
    for (status, n) in &s.payments_by_status {
        out.push_str(&format!("posd_payments{{status=\"{status}\"}} {n}\n"));
    }
    let (writes, commits) = (s.store_writes, s.store_commits);
    out.push_str(
        "# HELP posd_store_payment_writes_total New payments and single state changes committed (the forwarder's batches not counted).\n",
    );
    out.push_str(&format!(
        "# TYPE posd_store_payment_writes_total counter\nposd_store_payment_writes_total {}\n",
        s.payment_writes
    ));
    out.push_str(
        "# HELP posd_store_writes_total Writes committed through the group commit: payment writes, events, audit entries, refunds and records.\n",
    );
    out.push_str(&format!("# TYPE posd_store_writes_total counter\nposd_store_writes_total {writes}\n"));
    out.push_str(
        "# HELP posd_store_commits_total Synced commits that carried them; writes of several lanes share one.\n",
    );
    out.push_str(&format!("# TYPE posd_store_commits_total counter\nposd_store_commits_total {commits}\n"));
    out.push_str(
        "# HELP posd_store_unsynced_commits_total Commits without a sync of their own (state whose loss is harmless); the next synced commit makes them durable.\n",
    );
    out.push_str(&format!(
        "# TYPE posd_store_unsynced_commits_total counter\nposd_store_unsynced_commits_total {}\n",
        s.unsynced_commits
    ));
    if let Some(q) = &s.sync {
        out.push_str("# HELP posd_offline_queue_depth Offline approvals not yet settled with the gateway.\n");
        out.push_str(&format!("# TYPE posd_offline_queue_depth gauge\nposd_offline_queue_depth {}\n", q.queue_depth));
        out.push_str("# HELP posd_offline_oldest_age_seconds Age of the oldest unsent offline payment.\n");
        out.push_str(&format!(
            "# TYPE posd_offline_oldest_age_seconds gauge\nposd_offline_oldest_age_seconds {}\n",
            q.oldest_age.as_secs()
        ));
        out.push_str("# HELP posd_gateway_online 1 while the central gateway answers.\n");
        out.push_str(&format!("# TYPE posd_gateway_online gauge\nposd_gateway_online {}\n", u8::from(q.online)));
    }
    out.push_str(
        "# HELP posd_database_failed 1 while posd refuses new payments because its database failed (it restarts itself once the database works again).\n",
    );
    out.push_str(&format!(
        "# TYPE posd_database_failed gauge\nposd_database_failed {}\n",
        u8::from(s.refusing_payments)
    ));
    let api = &crate::listen::COUNTS;
    for (name, kind, help, value) in [
        ("posd_api_connections", "gauge", "Connections to the register API open now.", &api.open),
        (
            "posd_api_connections_refused_total",
            "counter",
            "Connections closed at once because [api] max_connections were open.",
            &api.refused,
        ),
        (
            "posd_api_handshake_timeouts_total",
            "counter",
            "Connections closed for sending nothing (or not finishing TLS) within [api] handshake_timeout.",
            &api.timed_out,
        ),
        (
            "posd_api_accept_errors_total",
            "counter",
            "Failed accepts of API connections (descriptors or memory exhausted); posd backs off.",
            &api.accept_errors,
        ),
    ] {
        let value = value.load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out.push_str(
        "# HELP posd_gateway_local_faults_total Connections to the gateway that failed for a reason on the lane PC (descriptors, memory, TLS), not the network; the payments concerned failed, none was approved offline.\n",
    );
    out.push_str(&format!(
        "# TYPE posd_gateway_local_faults_total counter\nposd_gateway_local_faults_total {}\n",
        s.gateway_local_faults
    ));
    out.push_str(
        "# HELP posd_reader_connected 1 while a lane's card reader is connected.\n# TYPE posd_reader_connected gauge\n",
    );
    out.push_str(
        "# HELP posd_printer_connected 1 while a lane's printer answers; posd_printer_ready 1 while it can print.\n",
    );
    out.push_str("# TYPE posd_printer_connected gauge\n");
    for lane in &s.lanes {
        out.push_str(&format!("posd_reader_connected{{lane=\"{}\"}} {}\n", lane.id, u8::from(lane.reader_connected)));
        out.push_str(&format!("posd_printer_connected{{lane=\"{}\"}} {}\n", lane.id, u8::from(lane.printer_connected)));
        out.push_str(&format!("posd_printer_ready{{lane=\"{}\"}} {}\n", lane.id, u8::from(lane.printer_ready)));
    }
    out.push_str(
        "# HELP posd_card_line_bytes_total Bytes on a lane's card device line (frames, ACKs), by direction.\n",
    );
    out.push_str("# TYPE posd_card_line_bytes_total counter\n");
    for lane in &s.lanes {
        let (sent, received) = (lane.line_bytes_sent, lane.line_bytes_received);
        out.push_str(&format!("posd_card_line_bytes_total{{lane=\"{}\",direction=\"out\"}} {sent}\n", lane.id));
        out.push_str(&format!("posd_card_line_bytes_total{{lane=\"{}\",direction=\"in\"}} {received}\n", lane.id));
    }
    let reader_help = "From asking the reader for a card to its result.";
    render_histogram(&s.reader_latency, "posd_reader_latency_seconds", reader_help, &mut out);
    let gateway_help = "One authorization call to the gateway.";
    render_histogram(&s.gateway_latency, "posd_gateway_latency_seconds", gateway_help, &mut out);
    let payment_help = "From the register's request to its answer.";
    render_histogram(&s.payment_latency, "posd_payment_latency_seconds", payment_help, &mut out);
    out
}

/// Serves `GET /metrics` until the process ends, rendering what `snapshot`
/// reads at each request.
pub async fn serve<F>(listener: tokio::net::TcpListener, snapshot: F)
where
    F: Fn() -> Snapshot + Clone + Send + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let response = if request.starts_with("GET /metrics ") {
                let body = render(&snapshot());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
