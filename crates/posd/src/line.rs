//! A card device's line, shared by the native reader (`lane`) and the ZVT
//! terminal (`zvt`), and by the printer's reconnecting: how posd reaches the
//! device, opening the line with its framing, the backoff between attempts,
//! and what the device reported about itself. Imports no other posd module.

use std::sync::Arc;
use std::time::Duration;

use pos_link::transport::{SerialSettings, open_serial};
use pos_link::{LineCounters, Link, SerialLink, SerialTiming, TcpLink};

/// How posd reaches a reader.
#[derive(Debug, Clone)]
pub enum ReaderLine {
    Serial(SerialSettings),
    Tcp(String),
    /// A nexo terminal's URL: reached by one HTTPS request at a time
    /// (`nexo::line`), never opened as a framed line.
    Https(String),
    /// A device served in the same process (the simulator): framed as TCP.
    InProcess(InProcessLine),
}

/// Opens one connection to a device served in the same process: one end of
/// an in-memory pipe, or an error as a device that cannot be reached gives.
pub type DialDevice = Arc<dyn Fn() -> std::io::Result<tokio::io::DuplexStream> + Send + Sync>;

/// A line to a device in the same process; posd's configuration never
/// makes one.
#[derive(Clone)]
pub struct InProcessLine {
    pub name: String,
    pub dial: DialDevice,
}

impl std::fmt::Debug for InProcessLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InProcessLine({:?})", self.name)
    }
}

impl std::fmt::Display for ReaderLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReaderLine::Serial(s) => write!(f, "serial {} @ {} baud", s.path.display(), s.baud),
            ReaderLine::Tcp(a) => write!(f, "tcp {a}"),
            ReaderLine::Https(url) => f.write_str(url),
            ReaderLine::InProcess(l) => write!(f, "in-process {}", l.name),
        }
    }
}

/// A card device as it last reported itself (identity, health) and whether
/// its line is up now.
#[derive(Debug, Clone, Default)]
pub struct ReaderState {
    pub connected: bool,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub healthy: bool,
    pub detail: String,
    /// Times the device connected since posd started: a disconnect and
    /// reconnect between two looks still shows.
    pub connections: u64,
}

impl ReaderState {
    /// The device identified itself (a repeated identification is not a new connection).
    pub fn connect(&mut self, identified: ReaderState) {
        let connections = self.connections + u64::from(!self.connected);
        *self = ReaderState { connected: true, connections, ..identified };
    }

    /// The line went down, or never came up.
    pub fn lose(&mut self, detail: String) {
        *self = ReaderState { detail, connections: self.connections, ..ReaderState::default() };
    }
}

/// Opens a card device's line (the native reader's or a ZVT terminal's:
/// both use the same framing).
pub(crate) async fn open(line: &ReaderLine, counters: &Arc<LineCounters>) -> Result<Link, String> {
    match line {
        ReaderLine::Serial(s) => {
            let port = open_serial(s).map_err(|e| e.to_string())?;
            Ok(Link::spawn_counted(port, SerialLink::new(SerialTiming::default()), counters.clone()))
        }
        ReaderLine::Tcp(addr) => {
            let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))?
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Ok(Link::spawn_counted(stream, TcpLink::new(), counters.clone()))
        }
        ReaderLine::Https(url) => {
            Err(format!("{url} is a nexo terminal, reached by HTTPS requests, not a framed line"))
        }
        ReaderLine::InProcess(l) => {
            let pipe = (l.dial)().map_err(|e| format!("cannot reach {}: {e}", l.name))?;
            Ok(Link::spawn_counted(pipe, TcpLink::new(), counters.clone()))
        }
    }
}

/// When to open a device line again: after 200 ms, doubling up to 5 s
/// while opening fails or links die young, and from 200 ms again once a link
/// has stayed up for 10 s.
pub(crate) struct Reconnect {
    delay: Duration,
    opened: Option<tokio::time::Instant>,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(5);
    const STABLE: Duration = Duration::from_secs(10);

    /// A link is open (its life is measured from now).
    pub(crate) fn opened(&mut self) {
        self.opened = Some(tokio::time::Instant::now());
    }

    /// How long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        if self.opened.take().is_some_and(|at| at.elapsed() >= Self::STABLE) {
            self.delay = Self::FIRST;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::LONGEST);
        delay
    }

    /// Waits before the next attempt.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { delay: Self::FIRST, opened: None }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Reconnect;

    /// The delays `wait` takes, on tokio's paused clock.
    async fn waits(r: &mut Reconnect, n: usize, up_for: Duration) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            r.opened();
            tokio::time::sleep(up_for).await;
            let t = tokio::time::Instant::now();
            r.wait().await;
            out.push(t.elapsed().as_millis() as u64);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn links_that_die_young_back_off_and_a_stable_one_starts_over() {
        let mut r = Reconnect::default();
        assert_eq!(waits(&mut r, 7, Duration::ZERO).await, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(waits(&mut r, 2, Duration::from_secs(10)).await, [200, 200], "after 10 s up");
        assert_eq!(waits(&mut r, 3, Duration::from_secs(9)).await, [400, 800, 1600], "9 s is young");
    }
}
