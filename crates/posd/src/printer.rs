//! One lane's receipt printer: keeps the line open (reopening it with backoff
//! after an unplug), follows the printer's status (automatic status back and
//! real-time queries), and prints jobs one at a time, each bounded in time
//! and confirmed by the printer (`GS r 1`), never faster than the line
//! carries bytes.

use std::path::PathBuf;
use std::time::Duration;

use pos_escpos::cmd;
use pos_escpos::status::{Reply, ReplyParser, apply_real_time};
use pos_escpos::{PaperLevel, PrinterState};
use pos_link::transport::{SerialSettings, open_serial};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout};

use crate::line::Reconnect;

/// How posd reaches a printer.
#[derive(Debug, Clone)]
pub enum PrinterLine {
    /// RS-232 or USB-serial, with its flow control.
    Serial(SerialSettings),
    /// The USB printer class device (`/dev/usb/lp0`).
    Usb(PathBuf),
    /// A network printer (port 9100).
    Tcp(String),
}

impl std::fmt::Display for PrinterLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrinterLine::Serial(s) => write!(f, "serial {} @ {} baud", s.path.display(), s.baud),
            PrinterLine::Usb(p) => write!(f, "usb {}", p.display()),
            PrinterLine::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// The printer as the register sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrinterStatus {
    /// The line is open and the printer answered.
    pub connected: bool,
    pub state: PrinterState,
    /// Why it is not connected, in words.
    pub detail: String,
}

impl PrinterStatus {
    /// The condition in words: "ready", "paper near end", or the fault.
    pub fn describe(&self) -> String {
        if !self.connected {
            return format!("not connected: {}", self.detail);
        }
        match self.state.fault() {
            Some(f) => f.to_string(),
            None if self.state.paper == PaperLevel::NearEnd => "ready; paper near end".into(),
            None => "ready".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrintError {
    #[error("the printer is not connected ({0})")]
    NotConnected(String),
    #[error("{0}")]
    Fault(String),
    #[error("the printer did not confirm the job within {0:?}")]
    Timeout(Duration),
    #[error("the printer line failed: {0}")]
    Line(String),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Job {
    bytes: Vec<u8>,
    /// Real-time commands (a drawer pulse): written at once, whatever the
    /// printer's state, with no end-of-job confirmation.
    real_time: bool,
    reply: oneshot::Sender<Result<(), PrintError>>,
}

/// A lane's printer.
pub struct Printer {
    pub line: PrinterLine,
    /// The paper's width in characters.
    pub width: pos_escpos::Width,
    jobs: mpsc::Sender<Job>,
    status: watch::Receiver<PrinterStatus>,
}

/// How long a status query may take before the printer counts as silent.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl Printer {
    pub fn spawn(line: PrinterLine, width: pos_escpos::Width) -> Printer {
        let (jobs, rx) = mpsc::channel(8);
        let (status_tx, status) =
            watch::channel(PrinterStatus { detail: "not opened yet".into(), ..Default::default() });
        tokio::spawn(run(line.clone(), rx, status_tx));
        Printer { line, width, jobs, status }
    }

    pub fn status(&self) -> PrinterStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<PrinterStatus> {
        self.status.clone()
    }

    /// Prints one job; the result says whether the printer confirmed it.
    pub async fn print(&self, bytes: Vec<u8>) -> Result<(), PrintError> {
        self.submit(bytes, false).await
    }

    /// Sends real-time commands (a drawer pulse) at once: they act even
    /// when the printer is out of paper or offline.
    pub async fn real_time(&self, bytes: Vec<u8>) -> Result<(), PrintError> {
        self.submit(bytes, true).await
    }

    async fn submit(&self, bytes: Vec<u8>, real_time: bool) -> Result<(), PrintError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { bytes, real_time, reply })
            .await
            .map_err(|_| PrintError::NotConnected("the printer task stopped".into()))?;
        rx.await.map_err(|_| PrintError::NotConnected("the printer task stopped".into()))?
    }
}

async fn open(line: &PrinterLine) -> std::io::Result<Box<dyn Stream>> {
    match line {
        PrinterLine::Serial(s) => Ok(Box::new(open_serial(s)?)),
        PrinterLine::Usb(p) => Ok(Box::new(tokio::fs::OpenOptions::new().read(true).write(true).open(p).await?)),
        PrinterLine::Tcp(a) => {
            let s = timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(a))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 3 s"))??;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
    }
}

/// Bytes per second the line carries (a serial line: baud / 10).
fn line_rate(line: &PrinterLine) -> Option<u64> {
    match line {
        PrinterLine::Serial(s) => Some(u64::from(s.baud / 10).max(1)),
        _ => None,
    }
}

async fn run(line: PrinterLine, mut jobs: mpsc::Receiver<Job>, status: watch::Sender<PrinterStatus>) {
    let mut reconnect = Reconnect::default();
    loop {
        let detail = match open(&line).await {
            Ok(stream) => {
                reconnect.opened();
                tracing::info!(%line, "printer line open");
                let reason = session(&line, stream, &mut jobs, &status).await;
                tracing::warn!(%line, %reason, "printer line closed");
                status.send_modify(|s| *s = PrinterStatus { detail: reason.clone(), ..Default::default() });
                reason
            }
            Err(e) => {
                let detail = format!("cannot open {line}: {e}");
                status.send_if_modified(|s| {
                    let changed = s.connected || s.detail != detail;
                    *s = PrinterStatus { detail: detail.clone(), ..Default::default() };
                    changed
                });
                detail
            }
        };
        // Until the line is open again, jobs fail at once, with the reason.
        let deadline = tokio::time::sleep(reconnect.next_delay());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased; // branches in a fixed order: a simulated run replays exactly
                () = &mut deadline => break,
                job = jobs.recv() => match job {
                    Some(j) => { let _ = j.reply.send(Err(PrintError::NotConnected(detail.clone()))); }
                    None => return,
                },
            }
        }
    }
}

/// One open line: returns why it ended.
async fn session(
    line: &PrinterLine,
    stream: Box<dyn Stream>,
    jobs: &mut mpsc::Receiver<Job>,
    status: &watch::Sender<PrinterStatus>,
) -> String {
    let (mut rx, mut tx) = tokio::io::split(stream);
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Reply>();
    let reader = tokio::spawn(async move {
        let mut parser = ReplyParser::default();
        let mut buf = [0u8; 256];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => return "the printer closed the line".to_string(),
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Some(r) = parser.push(b)
                            && replies_tx.send(r).is_err()
                        {
                            return "stopped".into();
                        }
                    }
                }
                Err(e) => return format!("read failed: {e}"),
            }
        }
    });
    let mut io = Session { tx: &mut tx, replies: &mut replies, status, rate: line_rate(line) };
    let result = async {
        io.write(&cmd::asb(0x0f)).await?;
        io.query().await?;
        loop {
            tokio::select! {
                biased; // branches in a fixed order: a simulated run replays exactly
                job = io.replies.recv() => match job {
                    Some(r) => io.note(r),
                    None => return Err("the printer line closed".to_string()),
                },
                job = jobs.recv() => {
                    let Some(job) = job else { return Ok(()) };
                    let result = if job.real_time {
                        timeout(STATUS_TIMEOUT, io.write(&job.bytes))
                            .await
                            .map_err(|_| PrintError::Line("the printer holds the line (flow control)".into()))
                            .and_then(|r| r.map_err(PrintError::Line))
                    } else {
                        io.print(&job.bytes).await
                    };
                    let broken = matches!(result, Err(PrintError::Line(_)));
                    let _ = job.reply.send(result.clone());
                    if broken {
                        return Err(result.err().map(|e| e.to_string()).unwrap_or_default());
                    }
                }
            }
        }
    }
    .await;
    reader.abort();
    match result {
        Ok(()) => "posd is stopping".into(),
        Err(e) => e,
    }
}

struct Session<'a, W: AsyncWrite + Unpin> {
    tx: &'a mut W,
    replies: &'a mut mpsc::UnboundedReceiver<Reply>,
    status: &'a watch::Sender<PrinterStatus>,
    /// Bytes per second of a serial line; writes are paced to it.
    rate: Option<u64>,
}

impl<W: AsyncWrite + Unpin> Session<'_, W> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self.rate {
            // Small paced chunks: the printer's XOFF (or CTS) stops the line
            // within a few bytes, never after a burst it has no room for.
            // After a stall (XOFF, CTS low) the schedule restarts from now:
            // catching up would burst faster than the line runs.
            Some(rate) => {
                for chunk in bytes.chunks(16) {
                    self.tx.write_all(chunk).await.map_err(|e| format!("write failed: {e}"))?;
                    let due = Instant::now() + Duration::from_micros(chunk.len() as u64 * 1_000_000 / rate);
                    tokio::time::sleep_until(due).await;
                }
            }
            None => self.tx.write_all(bytes).await.map_err(|e| format!("write failed: {e}"))?,
        }
        self.tx.flush().await.map_err(|e| format!("write failed: {e}"))
    }

    /// Applies an unsolicited reply (ASB) to the status.
    fn note(&mut self, r: Reply) {
        if let Reply::Asb(state) = r {
            self.publish(state);
        }
    }

    /// The printer answered with `state`; watchers hear only of changes.
    fn publish(&self, state: PrinterState) {
        self.status.send_if_modified(|s| {
            let next = PrinterStatus { connected: true, state, detail: String::new() };
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    /// Asks DLE EOT 1, 2, 3 and 4 and publishes the result. A printer that
    /// does not answer is not connected, whatever the line says.
    async fn query(&mut self) -> Result<PrinterState, String> {
        let mut state = PrinterState::default();
        for n in 1..=4u8 {
            // Real-time requests bypass a stopped line on real printers; a
            // line held by XOFF for longer than this is a silent printer.
            timeout(STATUS_TIMEOUT, self.write(&cmd::status_request(n)))
                .await
                .map_err(|_| "the printer holds the line (flow control) and does not answer".to_string())??;
            let deadline = Instant::now() + STATUS_TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                    Err(_) => {
                        return Err(format!("the printer did not answer a status request within {STATUS_TIMEOUT:?}"));
                    }
                    Ok(None) => return Err("the printer line closed".into()),
                    Ok(Some(Reply::RealTime(b))) => {
                        // The only place a printer's bytes become text (the
                        // printer sends no text of its own): scrubbed like
                        // any device text.
                        apply_real_time(&mut state, n, b).map_err(|e| pos_mask::scrub(&e.to_string()))?;
                        break;
                    }
                    Ok(Some(other)) => self.note(other),
                }
            }
        }
        self.publish(state);
        Ok(state)
    }

    async fn print(&mut self, bytes: &[u8]) -> Result<(), PrintError> {
        let state = self.query().await.map_err(PrintError::Line)?;
        if let Some(fault) = state.fault() {
            return Err(PrintError::Fault(fault.to_string()));
        }
        // Bounded by what the line can carry, plus the printing itself.
        let carry = self.rate.map_or(Duration::ZERO, |r| Duration::from_millis(bytes.len() as u64 * 1000 / r));
        let bound = Duration::from_secs(10) + carry;
        let deadline = Instant::now() + bound;
        let mut job = bytes.to_vec();
        job.extend_from_slice(&cmd::END_OF_JOB);
        let sent = tokio::time::timeout_at(deadline, self.write(&job)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(PrintError::Line(e)),
            Err(_) => return self.abandon(PrintError::Timeout(bound)).await,
        }
        loop {
            match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Err(_) => return self.abandon(PrintError::Timeout(bound)).await,
                Ok(None) => return Err(PrintError::Line("the printer line closed".into())),
                Ok(Some(Reply::EndOfJob(paper))) => {
                    let state = self.status.borrow().state;
                    self.publish(PrinterState { paper, ..state });
                    return Ok(());
                }
                Ok(Some(Reply::Asb(state))) => {
                    self.note(Reply::Asb(state));
                    if let Some(fault) = state.fault() {
                        return self.abandon(PrintError::Fault(fault.to_string())).await;
                    }
                }
                Ok(Some(Reply::RealTime(_))) => {}
            }
        }
    }

    /// Gives a job up: clears what the printer still holds of it (so it does
    /// not print half a receipt once the fault clears), and names the cause.
    async fn abandon(&mut self, why: PrintError) -> Result<(), PrintError> {
        let _ = timeout(STATUS_TIMEOUT, self.write(&cmd::RECOVER)).await;
        let named = match self.query().await {
            Ok(state) => state.fault().map(|f| PrintError::Fault(f.to_string())),
            Err(e) => Some(PrintError::Line(e)),
        };
        Err(named.unwrap_or(why))
    }
}

/// A printer served in this process, for the engine's tests: the engine
/// holds a [`Printer`] as it does in production, and its jobs reach a
/// `FakePrinter` instead of the printer task.
#[cfg(test)]
pub mod fake {
    use std::sync::{Arc, Mutex};

    use tokio::sync::{mpsc, watch};

    use super::{Job, PrintError, Printer, PrinterLine, PrinterStatus};

    /// What the printer was sent and acted on.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Sent {
        /// A job it printed and confirmed.
        Job(Vec<u8>),
        /// Real-time commands (a drawer pulse).
        RealTime(Vec<u8>),
    }

    /// The device side of [`Printer::in_process`]. It answers each job as
    /// the printer task does in the state it is given: not connected,
    /// refused with the reason; a fault (cover open, paper out, offline),
    /// a job refused with it while real-time commands still act; ready,
    /// printed. It keeps what it acted on.
    pub struct FakePrinter {
        status: watch::Sender<PrinterStatus>,
        sent: Arc<Mutex<Vec<Sent>>>,
    }

    impl Printer {
        /// A printer of `width` whose jobs the returned [`FakePrinter`]
        /// answers; it starts connected and ready.
        pub fn in_process(width: pos_escpos::Width) -> (Printer, FakePrinter) {
            let (jobs, mut rx) = mpsc::channel::<Job>(8);
            let (status_tx, status) = watch::channel(PrinterStatus { connected: true, ..Default::default() });
            let sent = Arc::new(Mutex::new(Vec::new()));
            let fake = FakePrinter { status: status_tx, sent: sent.clone() };
            let now = status.clone();
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    let printer = now.borrow().clone();
                    let result = if !printer.connected {
                        Err(PrintError::NotConnected(printer.detail))
                    } else if job.real_time {
                        sent.lock().unwrap().push(Sent::RealTime(job.bytes));
                        Ok(())
                    } else if let Some(fault) = printer.state.fault() {
                        Err(PrintError::Fault(fault.to_string()))
                    } else {
                        sent.lock().unwrap().push(Sent::Job(job.bytes));
                        Ok(())
                    };
                    let _ = job.reply.send(result);
                }
            });
            (Printer { line: PrinterLine::Tcp("in-process".into()), width, jobs, status }, fake)
        }
    }

    impl FakePrinter {
        /// What the printer reports from now on, and how it answers jobs.
        pub fn set(&self, status: PrinterStatus) {
            self.status.send_replace(status);
        }

        /// Everything it acted on, in order.
        pub fn sent(&self) -> Vec<Sent> {
            self.sent.lock().unwrap().clone()
        }
    }
}
