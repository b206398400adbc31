//! A simulated ESC/POS receipt printer: accepts any encoder's ESC/POS,
//! renders each job (up to a cut, or the end of the connection) to text and
//! PNG, answers real-time status (DLE EOT) and automatic status back (ASB)
//! on the same line as a real printer, keeps a receive buffer with XON/XOFF
//! flow control, and takes faults (paper near-end/out, cover open, offline)
//! at run time.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pos_escpos::cmd::{DLE, XOFF, XON};
use pos_escpos::decode::{Decoder, Op};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::paper::Paper;

#[derive(Debug, Clone)]
pub struct PrinterOptions {
    /// Font A columns: 32 (58 mm), 42 or 48 (80 mm).
    pub columns: u32,
    /// Where jobs are saved as job-NNNN.txt and job-NNNN.png.
    pub out: PathBuf,
    /// Receive buffer in bytes; what arrives while it is full is lost.
    pub buffer: usize,
    /// Bytes printed per second (None: as fast as they come).
    pub print_rate: Option<u32>,
    /// Send XOFF when the buffer is nearly full and XON once it drained.
    pub xon_xoff: bool,
}

impl Default for PrinterOptions {
    fn default() -> Self {
        Self { columns: 48, out: PathBuf::from("."), buffer: 4096, print_rate: None, xon_xoff: false }
    }
}

/// The printer's condition, set by a technician (or a test) at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Condition {
    pub paper_near_end: bool,
    pub paper_out: bool,
    pub cover_open: bool,
    pub offline: bool,
    pub drawer_open: bool,
    /// Paper runs out after this many more printed lines.
    pub paper_out_after_lines: Option<u32>,
}

/// `b` when `on`, else nothing: one flag of a status byte.
fn bit(on: bool, b: u8) -> u8 {
    if on { b } else { 0 }
}

impl Condition {
    /// Printing stops while any of these holds.
    fn stopped(&self) -> bool {
        self.paper_out || self.cover_open || self.offline
    }

    fn real_time(&self, n: u8) -> u8 {
        0x12 | match n {
            1 => bit(self.drawer_open, 0x04) | bit(self.stopped(), 0x08),
            2 => bit(self.cover_open, 0x04) | bit(self.paper_out, 0x20),
            4 => bit(self.paper_near_end, 0x0c) | bit(self.paper_out, 0x60),
            _ => 0,
        }
    }

    fn paper_byte(&self) -> u8 {
        bit(self.paper_near_end, 0x03) | bit(self.paper_out, 0x0c)
    }

    fn asb(&self) -> [u8; 4] {
        [
            0x10 | bit(self.drawer_open, 0x04) | bit(self.stopped(), 0x08) | bit(self.cover_open, 0x20),
            0,
            self.paper_byte(),
            0,
        ]
    }

    /// Applies a technician's command: "paper ok|near-end|out", "paper
    /// out-after-lines N", "cover open|closed", "offline", "online",
    /// "drawer open|closed".
    pub fn command(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["paper", "ok"] => (self.paper_near_end, self.paper_out) = (false, false),
            ["paper", "near-end"] => (self.paper_near_end, self.paper_out) = (true, false),
            ["paper", "out"] => self.paper_out = true,
            ["paper", "out-after-lines", n] => {
                self.paper_out_after_lines = Some(n.parse().map_err(|_| format!("not a number: {n}"))?)
            }
            ["cover", "open"] => self.cover_open = true,
            ["cover", "closed"] => self.cover_open = false,
            ["offline"] => self.offline = true,
            ["online"] => self.offline = false,
            ["drawer", "open"] => self.drawer_open = true,
            ["drawer", "closed"] => self.drawer_open = false,
            _ => {
                return Err(format!(
                    "unknown command {line:?}; try: paper ok|near-end|out, paper out-after-lines N, \
                     cover open|closed, offline, online, drawer open|closed, status"
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paper = if self.paper_out {
            "out"
        } else if self.paper_near_end {
            "near-end"
        } else {
            "ok"
        };
        write!(
            f,
            "paper {paper}, cover {}, {}, drawer {}",
            if self.cover_open { "open" } else { "closed" },
            if self.offline { "offline" } else { "online" },
            if self.drawer_open { "open" } else { "closed" }
        )
    }
}

/// The printer, shared by its connections and its control port.
pub struct Printer {
    pub opts: PrinterOptions,
    pub condition: watch::Sender<Condition>,
    jobs: AtomicU64,
    /// Bytes lost because they arrived while the buffer was full.
    pub overflowed: AtomicU64,
    pub xoff_sent: AtomicU64,
}

impl Printer {
    pub fn new(opts: PrinterOptions) -> Arc<Printer> {
        Arc::new(Printer {
            opts,
            condition: watch::Sender::new(Condition::default()),
            jobs: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            xoff_sent: AtomicU64::new(0),
        })
    }

    /// A technician command on the printer's condition (see [`Condition::command`]).
    pub fn command(&self, line: &str) -> Result<(), String> {
        let mut result = Ok(());
        self.condition.send_if_modified(|c| {
            let before = *c;
            result = c.command(line);
            *c != before
        });
        result
    }

    pub fn status_line(&self) -> String {
        format!(
            "{}; {} jobs; {} bytes lost to overflow; {} XOFF sent",
            *self.condition.borrow(),
            self.jobs.load(Ordering::SeqCst),
            self.overflowed.load(Ordering::SeqCst),
            self.xoff_sent.load(Ordering::SeqCst)
        )
    }

    /// Saves a finished job and announces it on stdout.
    fn save(&self, paper: &mut Paper) -> std::io::Result<()> {
        let n = self.jobs.fetch_add(1, Ordering::SeqCst) + 1;
        let text_path = self.opts.out.join(format!("job-{n:04}.txt"));
        std::fs::write(&text_path, paper.text())?;
        std::fs::write(self.opts.out.join(format!("job-{n:04}.png")), paper.png())?;
        println!("firmware-sim printer job {n} saved {}", text_path.display());
        Ok(())
    }
}

/// A chunk's meaning for the transcript: the text in it and how many
/// command bytes came with it (from posd), or the status bytes (to posd).
pub fn describe(dir: crate::transcript::Dir, bytes: &[u8]) -> crate::line::Described {
    if dir == crate::transcript::Dir::Out {
        return format!("status {} byte(s)", bytes.len()).into();
    }
    let mut texts = Vec::new();
    let mut current = String::new();
    let mut commands = 0;
    for &b in bytes {
        if (0x20..0x7F).contains(&b) {
            current.push(char::from(b));
        } else {
            commands += 1;
            if current.trim().len() > 1 {
                texts.push(format!("{:?}", current.trim()));
            }
            current.clear();
        }
    }
    if current.trim().len() > 1 {
        texts.push(format!("{:?}", current.trim()));
    }
    format!(
        "{} bytes: {} and {commands} other bytes",
        bytes.len(),
        if texts.is_empty() { "no text".into() } else { texts.join(" ") }
    )
    .into()
}

/// Serves one host connection until it closes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, printer: Arc<Printer>) -> std::io::Result<()> {
    let (mut rx, mut tx) = tokio::io::split(stream);
    let opts = printer.opts.clone();
    let mut cond_rx = printer.condition.subscribe();
    let mut buffer: VecDeque<u8> = VecDeque::with_capacity(opts.buffer);
    let mut decoder = Decoder::new();
    let mut ops: VecDeque<Op> = VecDeque::new();
    let mut paper = Paper::new(opts.columns);
    let mut asb_mask = 0u8;
    let mut throttled = false;
    // A real-time command split across reads.
    let mut rt_tail: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let tick = Duration::from_millis(10);
    let mut timer = tokio::time::interval(tick);
    // Bytes the print head may take now (it earns print_rate per second).
    let mut credit = 0f64;
    let mut last = tokio::time::Instant::now();
    let mut open = true;
    while open || !buffer.is_empty() || !ops.is_empty() {
        let condition = *printer.condition.borrow();
        tokio::select! {
            biased; // branches in a fixed order: a simulated run replays exactly
            r = rx.read(&mut chunk), if open => {
                let n = r?;
                if n == 0 {
                    open = false;
                    continue;
                }
                let mut bytes = std::mem::take(&mut rt_tail);
                bytes.extend_from_slice(&chunk[..n]);
                // Real-time commands act at once, wherever they are.
                let mut kept = Vec::with_capacity(bytes.len());
                let mut i = 0;
                while i < bytes.len() {
                    // DLE DC4 1 m t: a drawer pulse in real time, even offline or out of paper.
                    if bytes[i] == DLE && bytes.get(i + 1) == Some(&0x14) && bytes.get(i + 2).is_none_or(|&f| f == 1) {
                        if i + 4 >= bytes.len() {
                            rt_tail = bytes[i..].to_vec();
                            break;
                        }
                        printer.condition.send_modify(|c| c.drawer_open = true);
                        tracing::info!("printer: drawer kicked open (real time)");
                        i += 5;
                        continue;
                    }
                    if bytes[i] == DLE && i + 1 < bytes.len() && matches!(bytes[i + 1], 0x04 | 0x05) {
                        if i + 2 >= bytes.len() {
                            rt_tail = bytes[i..].to_vec();
                            break;
                        }
                        let (c, n) = (bytes[i + 1], bytes[i + 2]);
                        if c == 0x04 {
                            tx.write_all(&[condition.real_time(n)]).await?;
                        } else if n == 2 {
                            // Recover after clearing the buffers: the rest of
                            // the job is dropped; what was printed is torn off.
                            buffer.clear();
                            ops.clear();
                            decoder = Decoder::new();
                            if paper.printed {
                                printer.save(&mut paper)?;
                            }
                            paper = Paper::new(opts.columns);
                        }
                        i += 3;
                        continue;
                    }
                    kept.push(bytes[i]);
                    i += 1;
                }
                let room = opts.buffer.saturating_sub(buffer.len());
                if kept.len() > room {
                    printer.overflowed.fetch_add((kept.len() - room) as u64, Ordering::SeqCst);
                    tracing::warn!(lost = kept.len() - room, "printer: receive buffer overflow");
                }
                buffer.extend(kept.into_iter().take(room));
            }
            _ = cond_rx.changed() => {
                if asb_mask != 0 {
                    let asb = printer.condition.borrow().asb();
                    tx.write_all(&asb).await?;
                }
            }
            _ = timer.tick(), if opts.print_rate.is_some() => {}
            // Nothing to read (closed): let the loop drain what is left.
            () = std::future::ready(()), if !open => {}
        }
        // Print: move bytes from the buffer through the decoder, at the
        // printer's pace, while nothing stops it.
        let now = tokio::time::Instant::now();
        let allowance = match opts.print_rate {
            Some(rate) => {
                credit = (credit + now.duration_since(last).as_secs_f64() * f64::from(rate)).min(f64::from(rate));
                credit as usize
            }
            None => usize::MAX,
        };
        last = now;
        if !printer.condition.borrow().stopped() {
            let take = allowance.min(buffer.len());
            credit -= take as f64;
            if take > 0 {
                let bytes: Vec<u8> = buffer.drain(..take).collect();
                ops.extend(decoder.push(&bytes));
            }
        }
        while !printer.condition.borrow().stopped() {
            let Some(op) = ops.pop_front() else { break };
            match &op {
                Op::TransmitStatus(_) => {
                    let paper = printer.condition.borrow().paper_byte();
                    tx.write_all(&[paper]).await?
                }
                Op::AsbEnable(mask) => {
                    asb_mask = *mask;
                    if asb_mask != 0 {
                        let asb = printer.condition.borrow().asb();
                        tx.write_all(&asb).await?;
                    }
                }
                Op::DrawerKick { .. } => {
                    printer.condition.send_modify(|c| c.drawer_open = true);
                    tracing::info!("printer: drawer kicked open");
                }
                Op::Cut { .. } => {
                    if paper.printed {
                        printer.save(&mut paper)?;
                    }
                    paper = Paper::new(opts.columns);
                }
                Op::LineFeed => {
                    paper.apply(&op);
                    printer.condition.send_if_modified(|c| match c.paper_out_after_lines {
                        Some(0 | 1) => {
                            c.paper_out_after_lines = None;
                            c.paper_out = true;
                            true
                        }
                        Some(n) => {
                            c.paper_out_after_lines = Some(n - 1);
                            false
                        }
                        None => false,
                    });
                }
                _ => paper.apply(&op),
            }
        }
        if opts.xon_xoff {
            let high = opts.buffer.saturating_sub((opts.buffer / 4).clamp(16, 128));
            if !throttled && buffer.len() >= high {
                tx.write_all(&[XOFF]).await?;
                printer.xoff_sent.fetch_add(1, Ordering::SeqCst);
                throttled = true;
            } else if throttled && buffer.len() <= opts.buffer / 4 {
                tx.write_all(&[XON]).await?;
                throttled = false;
            }
        }
        if !open && printer.condition.borrow().stopped() {
            // The host is gone and the printer cannot go on: what is left is lost.
            break;
        }
    }
    if paper.printed {
        printer.save(&mut paper)?;
    }
    Ok(())
}

/// Serves the control port: one command per line, answered with the state.
pub async fn control(listener: tokio::net::TcpListener, printer: Arc<Printer>) {
    crate::control::serve(listener, printer, |printer, line| {
        if line.trim() != "status" {
            printer.command(line)?;
        }
        Ok(printer.status_line())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_replies_follow_the_condition() {
        let mut c = Condition::default();
        assert_eq!([c.real_time(1), c.real_time(2), c.real_time(3), c.real_time(4)], [0x12; 4]);
        assert_eq!(c.asb(), [0x10, 0, 0, 0]);
        c.command("paper near-end").unwrap();
        assert_eq!(c.real_time(4), 0x1e);
        assert_eq!(c.asb()[2], 0x03);
        c.command("paper out").unwrap();
        c.command("cover open").unwrap();
        assert_eq!(c.real_time(1), 0x1a, "offline while it cannot print");
        assert_eq!(c.real_time(2), 0x36);
        assert_eq!(c.asb(), [0x38, 0, 0x0f, 0]);
        let mut s = pos_escpos::PrinterState::default();
        pos_escpos::status::apply_real_time(&mut s, 2, c.real_time(2)).unwrap();
        assert!(s.cover_open && s.paper == pos_escpos::PaperLevel::Out);
        assert!(c.command("paper sideways").is_err());
    }
}
