//! What posd reports about itself, as plain data: the latency histograms the
//! engine records into, the offline queue's state ([`SyncReport`]) and a
//! [`Snapshot`] of everything the metrics page shows. A leaf: it imports no
//! other posd module, so `metrics` and `convert` read it without depending
//! on the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds.
const BOUNDS_MS: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        for (bound, bucket) in BOUNDS_MS.iter().zip(&self.buckets) {
            if us <= bound * 1000 {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts now: the buckets first, then the count and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = BOUNDS_MS.iter().zip(&self.buckets).map(|(b, n)| (*b, n.load(Ordering::Relaxed))).collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A [`Histogram`]'s counts at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket: its upper bound in milliseconds, and the observations at
    /// or below it (cumulative, as Prometheus counts them).
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    /// The sum of all observations, in microseconds.
    pub sum_us: u64,
}

/// The latencies the engine records.
#[derive(Default)]
pub struct Latencies {
    /// From asking the reader for a card to its card result.
    pub reader: Histogram,
    /// One authorization call to the gateway.
    pub gateway: Histogram,
    /// From the register's request to its answer.
    pub end_to_end: Histogram,
}

/// The queue as the register sees it.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub online: bool,
    pub queue_depth: u32,
    pub quarantined: u32,
    pub totals: Vec<(String, i64)>,
    pub oldest_age: Duration,
    pub last_error: String,
    pub paused: bool,
    pub last_online_ms: Option<i64>,
}

/// Everything the metrics page shows, read at one moment (the engine makes
/// it: `Engine::telemetry`).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Payments in the database by status; empty when they cannot be counted.
    pub payments_by_status: Vec<(String, i64)>,
    /// New payments and single state changes committed.
    pub payment_writes: u64,
    /// Writes committed through the group commit, and the synced commits
    /// that carried them.
    pub store_writes: u64,
    pub store_commits: u64,
    /// Commits without a sync of their own.
    pub unsynced_commits: u64,
    /// The offline queue; `None` when it cannot be read.
    pub sync: Option<SyncReport>,
    /// posd refuses new payments because its database failed.
    pub refusing_payments: bool,
    /// Connections to the gateway that failed for a reason on the lane PC.
    pub gateway_local_faults: u64,
    pub lanes: Vec<LaneSnapshot>,
    /// See [`Latencies`].
    pub reader_latency: HistogramSnapshot,
    pub gateway_latency: HistogramSnapshot,
    pub payment_latency: HistogramSnapshot,
}

/// One lane in a [`Snapshot`].
#[derive(Debug, Clone, Default)]
pub struct LaneSnapshot {
    pub id: String,
    pub reader_connected: bool,
    pub printer_connected: bool,
    /// Connected and able to print.
    pub printer_ready: bool,
    /// Bytes on the card device's line, out and in.
    pub line_bytes_sent: u64,
    pub line_bytes_received: u64,
}
