//! What the benchmark and soak binaries read off a running posd: its memory
//! and file descriptors from `/proc`, its Prometheus metrics, and the moment
//! it tells systemd it is ready.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Bytes this process has handed to `write`-family calls so far (`wchar` of
/// `/proc/self/io`): for SQLite, its WAL frames and checkpoints.
pub fn written_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    let line = text.lines().find_map(|l| l.strip_prefix("wchar:")).expect("wchar in /proc/self/io");
    line.trim().parse().expect("wchar is a number")
}

/// One scrape of posd's `/metrics`: every sample by its full name with labels,
/// e.g. `posd_card_line_bytes_total{lane="lane-1",direction="out"}`.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// Fetches `http://ADDR/metrics` (ADDR as posd printed it, `/metrics` optional).
    pub fn scrape(addr: &str) -> Metrics {
        let host = addr.trim_start_matches("http://").trim_end_matches("/metrics");
        let mut s = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("metrics at {host}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(name, v)| Some((name.to_string(), v.parse().ok()?)))
            .collect();
        Metrics(samples)
    }

    pub fn get(&self, name: &str) -> f64 {
        *self.0.get(name).unwrap_or_else(|| panic!("posd's metrics have no {name}"))
    }

    /// `self - earlier` for one sample.
    pub fn delta(&self, earlier: &Metrics, name: &str) -> f64 {
        self.get(name) - earlier.get(name)
    }
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "no samples");
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Starts posd with `NOTIFY_SOCKET` set and returns it once it has sent
/// `READY=1`, with the time from spawning to that message.
pub fn start_until_ready(mut cmd: Command, socket_dir: &Path, log: &Path) -> (Child, Duration) {
    let socket_path = socket_dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    cmd.env("NOTIFY_SOCKET", &socket_path).stdout(Stdio::null()).stderr(log_file).stdin(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
        {
            let took = started.elapsed();
            let _ = std::fs::remove_file(&socket_path);
            return (child, took);
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "posd exited ({st}) before it was ready; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(started.elapsed() < crate::PATIENCE, "posd sent no READY=1 within {:?}", crate::PATIENCE);
    }
}

/// Asks a process to stop (SIGTERM) and waits for it.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&v[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let me = std::process::id();
        let rss = rss_kib(me);
        assert!(rss > 0);
        assert!(proc_status_kib(me, "VmHWM").unwrap() >= rss, "the peak is at least what is resident now");
        assert!(open_fds(me) >= 3, "stdin, stdout and stderr at least");
    }
}
