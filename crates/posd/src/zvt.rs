//! The register (ECR) side of ZVT: one task per lane keeps the line to the
//! payment terminal up, registers on every connect, and runs one command at
//! a time (payment, refund, reversal, end-of-day, Repeat Receipt).
//!
//! The protocol's decisions are pos-zvt's ([`pos_zvt::ecr`]): this module is
//! the tokio driver around its [`Exchange`]. It owns the [`Link`], decodes
//! APDUs (an undecodable one is logged and ignored), sends what the session
//! wants sent, sleeps until its deadline, logs its notices, and hands a
//! command's course to the caller as [`ZvtEvent`]s.
//!
//! The rule that protects money: a Status-Information (04 0F) is handed to
//! the caller, who stores it, and only the caller's confirmation sends
//! `80 00` — the terminal counts a payment done once it sees that
//! acknowledgement. Without the confirmation (storage failed, no answer
//! within `commit_bound`, or nobody listening) posd answers `84 66` ("goods
//! not issued") and the terminal reverses.
//!
//! Timers (all configurable, so tests run them scaled down): T3 for the
//! terminal's `80 00` to a command, T4 from the `80 00` to the end of the
//! command, restarted by every 04 FF and 04 0F (an 04 FF that announces a
//! longer timeout extends it). The session counts them on tokio's clock
//! (its instants converted), so a paused clock drives them in tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_link::{LineCounters, Link, LinkError};
use pos_zvt::ecr::{self, EcrEvent, Exchange, Notice};
use pos_zvt::message::{Password, WithPassword};
use pos_zvt::{Bmps, Message};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use pos_zvt::ecr::{Ending, Outcome, Verdict, judge, safe_pan};

use crate::line::{ReaderLine, ReaderState, Reconnect, open};

#[derive(Debug, Clone)]
pub struct ZvtSettings {
    pub line: ReaderLine,
    pub password: Password,
    /// ISO 4217 number of the lane's currency.
    pub currency: u16,
    /// Wait for the terminal's 80 00 to a command (T3).
    pub t3: Duration,
    /// From 80 00 to the end of the command, restarted by 04 FF / 04 0F (T4).
    pub t4: Duration,
    /// Longest wait for the engine to store a result before answering 84.
    pub commit_bound: Duration,
}

/// What the caller hears while a command runs.
#[derive(Debug)]
pub enum ZvtEvent {
    /// An intermediate status (04 FF).
    Progress { code: u8, text: String },
    /// A Status-Information. Answer on `confirm`: `true` once it is stored
    /// (posd sends 80 00), `false` if it cannot be (posd sends 84 66).
    Result { outcome: Outcome, confirm: oneshot::Sender<bool> },
    /// The 80 00 for the last result reached the terminal.
    Confirmed,
    /// posd answered the last result with 84 66 ("goods not issued"), and
    /// the terminal got it: it reverses that result.
    Refused,
    /// A receipt, as lines (06 D1 up to the last line, or one 06 D3),
    /// each scrubbed ([`pos_mask::scrub`]).
    Receipt(Vec<String>),
    /// The command is over.
    Done(Ending),
}

struct Job {
    command: Message,
    events: mpsc::UnboundedSender<ZvtEvent>,
    abort: mpsc::Receiver<()>,
}

/// One lane's payment terminal.
pub struct ZvtTerminal {
    lane: String,
    pub settings: ZvtSettings,
    jobs: mpsc::Sender<Job>,
}

/// Asks the terminal to abort the running command (06 B0); it may refuse
/// once the card is being authorized.
pub struct AbortHandle(mpsc::Sender<()>);

impl AbortHandle {
    pub fn abort(&self) {
        let _ = self.0.try_send(());
    }
}

impl ZvtTerminal {
    pub fn spawn(
        lane: String,
        settings: ZvtSettings,
        state: Arc<Mutex<ReaderState>>,
        line_bytes: Arc<LineCounters>,
    ) -> Arc<ZvtTerminal> {
        let (jobs, rx) = mpsc::channel(4);
        let t = Arc::new(ZvtTerminal { lane: lane.clone(), settings: settings.clone(), jobs });
        tokio::spawn(run(lane, settings, rx, state, line_bytes));
        t
    }

    /// Runs a command; its course arrives on the returned channel and ends
    /// with [`ZvtEvent::Done`].
    pub async fn run(&self, command: Message) -> (mpsc::UnboundedReceiver<ZvtEvent>, AbortHandle) {
        let (events, rx) = mpsc::unbounded_channel();
        let (abort_tx, abort) = mpsc::channel(1);
        let job = Job { command, events: events.clone(), abort };
        if self.jobs.send(job).await.is_err() {
            let message = format!("the terminal task of {} has stopped", self.lane);
            let _ = events.send(ZvtEvent::Done(Ending::Lost { message, started: false }));
        }
        (rx, AbortHandle(abort_tx))
    }

    pub fn with_password(&self, fields: Bmps) -> WithPassword {
        WithPassword { password: self.settings.password, fields }
    }
}

async fn run(
    lane: String,
    s: ZvtSettings,
    mut jobs: mpsc::Receiver<Job>,
    state: Arc<Mutex<ReaderState>>,
    line_bytes: Arc<LineCounters>,
) {
    let mut reconnect = Reconnect::default();
    let mut last_error = String::new();
    loop {
        let connected = match open(&s.line, &line_bytes).await {
            Ok(mut link) => match register(&mut link, &s).await {
                Ok(identity) => Ok((link, identity)),
                Err(e) => Err(format!("registration failed: {e}")),
            },
            Err(e) => Err(e),
        };
        let (mut link, identity) = match connected {
            Ok(c) => c,
            Err(e) => {
                if e != last_error {
                    tracing::warn!(%lane, error = %e, "payment terminal unavailable; retrying");
                    last_error = e.clone();
                }
                state.lock().unwrap().lose(e.clone());
                // A command for a terminal that is not there did not start.
                while let Ok(job) = jobs.try_recv() {
                    let message = format!("the payment terminal is not connected ({e})");
                    let _ = job.events.send(ZvtEvent::Done(Ending::Lost { message, started: false }));
                }
                reconnect.wait().await;
                continue;
            }
        };
        reconnect.opened();
        last_error.clear();
        // ZVT has no message ids: what the terminal still sends for earlier
        // commands (registrations repeated while it was busy, the end of a
        // transaction from before a restart) must not be taken for the next
        // command's answers. Acknowledge it until the line is quiet.
        if let Err(e) = drain(&mut link).await {
            tracing::warn!(%lane, error = %e, "payment terminal line failed after registration");
            reconnect.wait().await;
            continue;
        }
        tracing::info!(%lane, line = %s.line, terminal = %identity, "payment terminal registered");
        state.lock().unwrap().connect(ReaderState {
            serial: identity,
            model: "ZVT payment terminal".into(),
            healthy: true,
            ..ReaderState::default()
        });
        let reason = loop {
            tokio::select! {
                biased; // branches in a fixed order: a simulated run replays exactly
                job = jobs.recv() => {
                    let Some(mut job) = job else { return };
                    tracing::info!(%lane, command = job.command.name(), "payment terminal command");
                    let ending = exchange(&mut link, &s, job.command, &job.events, Some(&mut job.abort)).await;
                    tracing::info!(%lane, ?ending, "payment terminal command ended");
                    let lost = matches!(&ending, Ending::Lost { .. });
                    let reason = match &ending {
                        Ending::Lost { message, .. } => message.clone(),
                        _ => String::new(),
                    };
                    let _ = job.events.send(ZvtEvent::Done(ending));
                    if lost {
                        break reason;
                    }
                }
                got = link.recv() => match got {
                    // Something unasked (a terminal-initiated status): acknowledge it.
                    Ok(apdu) => {
                        let decoded = Message::decode(&apdu);
                        let name = decoded.as_ref().map(|m| m.name()).unwrap_or("undecodable");
                        tracing::info!(%lane, message = name, "payment terminal sent something unasked");
                        // A result nobody asked for is not booked: "goods not issued".
                        if let Some(r) = ecr::reply_to_unasked(decoded.as_ref().ok())
                            && let Err(e) = send(&link, &r).await
                        {
                            break e.to_string();
                        }
                    }
                    Err(e) => break e.to_string(),
                },
            }
        };
        tracing::warn!(%lane, %reason, "payment terminal line down");
        state.lock().unwrap().lose(reason);
        reconnect.wait().await;
    }
}

/// How long the line must stay quiet after registration before commands run.
const QUIET: Duration = Duration::from_millis(150);

async fn drain(link: &mut Link) -> Result<(), String> {
    loop {
        let Some(m) = recv_until(link, Instant::now() + QUIET).await? else { return Ok(()) };
        let Some(reply) = ecr::reply_to_unasked(Some(&m)) else { continue };
        if let Message::Nak(_) = reply {
            // A result nobody waits for is not booked.
            tracing::warn!(message = m.name(), "stale terminal message refused (84 66)");
        } else {
            tracing::info!(message = m.name(), "stale terminal message acknowledged");
        }
        send(link, &reply).await.map_err(|e| e.to_string())?;
    }
}

async fn send(link: &Link, m: &Message) -> Result<(), LinkError> {
    let bytes = m.encode().map_err(|e| LinkError::Io(format!("cannot encode {}: {e}", m.name())))?;
    link.send(bytes).await
}

/// Registers with the config posd needs ([`ecr::registration`]). Returns
/// the terminal's id.
async fn register(link: &mut Link, s: &ZvtSettings) -> Result<String, String> {
    let command = ecr::registration(s.password, s.currency);
    if let Err(e) = command.encode() {
        return Err(format!("cannot build the registration: {e}"));
    }
    let (events, _rx) = mpsc::unbounded_channel();
    ecr::registered(exchange(link, s, command, &events, None).await)
}

/// Runs one command to its end ([`Exchange`]): every terminal message is
/// answered as the session says, a Status-Information only after the caller
/// confirmed it stored it.
async fn exchange(
    link: &mut Link,
    s: &ZvtSettings,
    command: Message,
    events: &mpsc::UnboundedSender<ZvtEvent>,
    mut abort: Option<&mut mpsc::Receiver<()>>,
) -> Ending {
    let mut session = Exchange::start(command, s.t3, s.t4);
    loop {
        while let Some(event) = session.poll_event() {
            let forward = match event {
                EcrEvent::Progress { code, text } => ZvtEvent::Progress { code, text },
                EcrEvent::Result(outcome) => {
                    let (confirm, answer) = oneshot::channel();
                    // Nobody listening (the caller went away) means nobody
                    // stores it: the terminal must not book it.
                    let stored = events.send(ZvtEvent::Result { outcome, confirm }).is_ok()
                        && matches!(tokio::time::timeout(s.commit_bound, answer).await, Ok(Ok(true)));
                    session.result_stored(stored, now());
                    continue;
                }
                EcrEvent::Confirmed => ZvtEvent::Confirmed,
                EcrEvent::Refused => ZvtEvent::Refused,
                EcrEvent::Receipt(lines) => ZvtEvent::Receipt(lines),
                EcrEvent::Notice(notice) => {
                    log_notice(notice);
                    continue;
                }
                EcrEvent::Done(ending) => return ending,
            };
            let _ = events.send(forward);
        }
        if let Some(message) = session.poll_transmit() {
            match send(link, &message).await {
                Ok(()) => session.sent(now()),
                Err(e) => session.send_failed(e),
            }
            continue;
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            // What already arrived is taken before a timer that ran out.
            biased;
            got = link.recv() => match got {
                Ok(apdu) => match Message::decode(&apdu) {
                    Ok(message) => session.handle_message(message, now()),
                    Err(e) => tracing::warn!(error = %e, "ignoring an undecodable APDU from the payment terminal"),
                },
                Err(e) => session.line_failed(e),
            },
            () = sleep_until(deadline) => session.handle_timeout(now()),
            Some(()) = async { abort.as_mut()?.recv().await } => session.abort_requested(now()),
        }
    }
}

/// The session's log lines.
fn log_notice(notice: Notice) {
    match notice {
        Notice::StaleEnd(name) => tracing::warn!(message = name, "the end of an earlier command; acknowledged"),
        Notice::AbortRequested => tracing::info!("asking the payment terminal to abort"),
        Notice::NotStored => {
            tracing::error!("the terminal's result could not be stored; answering 84 66 (goods not issued)");
        }
        Notice::Ignored(name) => tracing::info!(message = name, "payment terminal message acknowledged and ignored"),
        Notice::PanRemasked => {
            tracing::warn!("the payment terminal sent a card number not masked as first 6 / last 4; masking it");
        }
    }
}

/// Now on tokio's clock, as the session counts time.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Sleeps until the session's deadline; forever without one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// The next decodable message before `deadline`; `Ok(None)` at the deadline.
async fn recv_until(link: &mut Link, deadline: Instant) -> Result<Option<Message>, String> {
    loop {
        match tokio::time::timeout_at(deadline, link.recv()).await {
            Err(_) => return Ok(None),
            Ok(Err(e)) => return Err(format!("line to the terminal failed: {e}")),
            Ok(Ok(apdu)) => match Message::decode(&apdu) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable APDU from the payment terminal"),
            },
        }
    }
}
