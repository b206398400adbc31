//! The register (ECR) side of ZVT: one task per lane keeps the line to the
//! payment terminal up, registers on every connect, and runs one command at
//! a time (payment, refund, reversal, end-of-day, Repeat Receipt).
//!
//! A command's course comes back as [`ZvtEvent`]s. The rule that protects
//! money is in [`exchange`]: a Status-Information (04 0F) is handed to the
//! caller, who stores it, and only the caller's confirmation sends `80 00`
//! — the terminal counts a payment done once it sees that acknowledgement.
//! Without the confirmation (storage failed) posd answers `84 66` ("goods not
//! issued") and the terminal reverses.
//!
//! Timers (all configurable, so tests run them scaled down): T3 for the
//! terminal's `80 00` to a command, T4 from the `80 00` to the end of the
//! command, restarted by every 04 FF and 04 0F (an 04 FF that announces a
//! longer timeout extends it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_link::{LineCounters, Link, LinkError};
use pos_mask::scrub;
use pos_zvt::message::{Password, WithPassword, config};
use pos_zvt::{Bmps, Message, codes};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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

/// What a command's Status-Information (04 0F) said; the terminal's texts
/// in it are scrubbed ([`pos_mask::scrub`]) and its masked card number
/// held to the one masking rule ([`safe_pan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// BMP 27; `None` when the terminal sent none (nothing to go by).
    pub result_code: Option<u8>,
    pub amount: Option<u64>,
    pub receipt_no: Option<u16>,
    pub trace: Option<u32>,
    /// First 6 / last 4 at most, as the terminal masked it.
    pub masked_pan: String,
    pub card_name: String,
    pub auth_code: String,
    /// Payment type 0x40: approved offline by the terminal.
    pub offline: bool,
    pub terminal_tid: String,
    /// BMP 3C, for logs.
    pub text: String,
}

impl Outcome {
    pub fn approved(&self) -> bool {
        self.result_code == Some(0)
    }

    fn from_fields(f: &Bmps) -> Outcome {
        Outcome {
            result_code: f.result_code(),
            amount: f.amount(),
            receipt_no: f.receipt_no(),
            trace: f.trace(),
            masked_pan: f.masked_pan().filter(|p| !p.is_empty()).map(|p| safe_pan(&p)).unwrap_or_default(),
            card_name: scrub(&f.card_name().unwrap_or_default()),
            auth_code: scrub(&f.auth_code().unwrap_or_default()),
            offline: f.payment_type() == Some(0x40),
            terminal_tid: f.terminal_id().map(|t| format!("{t:08}")).unwrap_or_default(),
            text: scrub(&f.additional_text().unwrap_or_default()),
        }
    }
}

/// A PAN as posd may keep it, whatever the terminal sent (BMP 22 decoded
/// from its E-nibble masking): held to the one masking rule,
/// [`pos_mask::well_masked`] (first 6 and last 4 digits with `*` between
/// kept; a whole card number masked so; anything else masked fully).
pub fn safe_pan(pan: &str) -> String {
    if !pos_mask::is_well_masked(pan) {
        tracing::warn!("the payment terminal sent a card number not masked as first 6 / last 4; masking it");
    }
    pos_mask::well_masked(pan)
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Completion (06 0F), with the terminal's id when it gave one.
    Completed { terminal_id: String },
    /// Abort (06 1E) with a result code.
    Aborted { code: u8, text: String },
    /// The terminal refused the command (84 xx): it did not start.
    Refused { code: u8, text: String },
    /// The line failed or a timer ran out. `started`: the terminal had
    /// accepted the command, so it may have done something.
    Lost { message: String, started: bool },
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
                job = jobs.recv() => {
                    let Some(mut job) = job else { return };
                    tracing::info!(%lane, command = job.command.name(), "payment terminal command");
                    let ending = exchange(&mut link, &s, &job.command, &job.events, Some(&mut job.abort)).await;
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
                        let reply = match decoded {
                            Ok(Message::Ack | Message::Nak(_)) => None,
                            Ok(Message::StatusInformation(_)) => Some(Message::Nak(0x66)),
                            _ => Some(Message::Ack),
                        };
                        if let Some(r) = reply
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
        match recv_until(link, Instant::now() + QUIET).await? {
            None => return Ok(()),
            Some(Message::Ack | Message::Nak(_)) => {}
            // A result nobody waits for is not booked.
            Some(m @ Message::StatusInformation(_)) => {
                tracing::warn!(message = m.name(), "stale terminal message refused (84 66)");
                send(link, &Message::Nak(0x66)).await.map_err(|e| e.to_string())?;
            }
            Some(m) => {
                tracing::info!(message = m.name(), "stale terminal message acknowledged");
                send(link, &Message::Ack).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

async fn send(link: &Link, m: &Message) -> Result<(), LinkError> {
    let bytes = m.encode().map_err(|e| LinkError::Io(format!("cannot encode {}: {e}", m.name())))?;
    link.send(bytes).await
}

/// Registration with the config posd needs: the ECR prints payment and
/// administration receipts, wants intermediate statuses, controls payments,
/// and permits Print Text Block (06 D3). Returns the terminal's id.
async fn register(link: &mut Link, s: &ZvtSettings) -> Result<String, String> {
    let bits = config::ECR_PRINTS_PAYMENT
        | config::ECR_PRINTS_ADMIN
        | config::INTERMEDIATE_STATUS
        | config::ECR_CONTROLS_PAYMENT;
    let command = Message::registration(s.password, bits, s.currency, &[[0x06, 0xD3]]);
    if let Err(e) = command.encode() {
        return Err(format!("cannot build the registration: {e}"));
    }
    let (events, _rx) = mpsc::unbounded_channel();
    match exchange(link, s, &command, &events, None).await {
        Ending::Completed { terminal_id } => Ok(terminal_id),
        Ending::Aborted { code, text } | Ending::Refused { code, text } => {
            Err(format!("the terminal answered {code:02X}: {text}"))
        }
        Ending::Lost { message, .. } => Err(message),
    }
}

/// Runs one command to its end. Every terminal message is answered with
/// 80 00 — a Status-Information only after the caller confirmed it stored
/// it.
async fn exchange(
    link: &mut Link,
    s: &ZvtSettings,
    command: &Message,
    events: &mpsc::UnboundedSender<ZvtEvent>,
    mut abort: Option<&mut mpsc::Receiver<()>>,
) -> Ending {
    let lost = |message: String, started: bool| Ending::Lost { message, started };
    if let Err(e) = send(link, command).await {
        return lost(format!("sending {} failed: {e}", command.name()), false);
    }
    // T3: the terminal accepts (80 00, with data on some terminals) or
    // refuses (84 xx). A terminal message instead means it has started.
    // The end of an earlier command (06 0F, 06 1E: a terminal still
    // finishing what it did before posd restarted) is acknowledged and not
    // taken for this command's.
    let t3 = Instant::now() + s.t3;
    let mut first = loop {
        match recv_until(link, t3).await {
            Err(e) => return lost(e, false),
            Ok(None) => {
                return lost(format!("the terminal did not accept {} within {:?} (T3)", command.name(), s.t3), false);
            }
            Ok(Some(Message::Ack | Message::Nak(0x00))) => break None,
            Ok(Some(Message::Vendor(r))) if (r.class, r.instr) == (0x80, 0x00) => break None,
            Ok(Some(Message::Nak(code))) => return Ending::Refused { code, text: codes::result_text(code) },
            Ok(Some(stale @ (Message::Completion(_) | Message::Abort(_)))) => {
                tracing::warn!(message = stale.name(), "the end of an earlier command; acknowledged");
                if let Err(e) = send(link, &Message::Ack).await {
                    return lost(format!("acknowledging the terminal failed: {e}"), false);
                }
            }
            Ok(Some(other)) => break Some(other),
        }
    };
    let mut t4 = Instant::now() + s.t4;
    let mut print_lines: Vec<String> = Vec::new();
    // Also set once a result came: an abort request would come too late.
    let mut aborted = false;
    loop {
        let got = tokio::select! {
            r = async { Ok(first.take()) }, if first.is_some() => r,
            r = recv_until(link, t4), if first.is_none() => r,
            Some(()) = async { abort.as_mut()?.recv().await }, if !aborted => {
                aborted = true;
                tracing::info!("asking the payment terminal to abort");
                if let Err(e) = send(link, &Message::AbortRequest).await {
                    return lost(format!("sending the abort failed: {e}"), true);
                }
                continue;
            }
        };
        let msg = match got {
            Err(e) => return lost(e, true),
            Ok(None) => {
                return lost(format!("the terminal did not finish {} within {:?} (T4)", command.name(), s.t4), true);
            }
            Ok(Some(m)) => m,
        };
        // The answer to our abort request, not a message to acknowledge.
        if matches!(msg, Message::Ack | Message::Nak(_)) {
            continue;
        }
        let mut reply = Message::Ack;
        match msg {
            Message::Intermediate(i) => {
                // The timeout byte is BCD minutes; it may only extend T4.
                let announced = i
                    .timeout
                    .and_then(|t| pos_zvt::bcd::decode(&[t]))
                    .map_or(Duration::ZERO, |m| Duration::from_secs(m * 60));
                t4 = Instant::now() + s.t4.max(announced);
                let _ = events.send(ZvtEvent::Progress { code: i.status, text: codes::intermediate_text(i.status) });
            }
            Message::StatusInformation(f) => {
                t4 = Instant::now() + s.t4;
                aborted = true;
                let outcome = Outcome::from_fields(&f);
                let (confirm, answer) = oneshot::channel();
                // Nobody listening (the caller went away) means nobody
                // stores it: the terminal must not book it.
                let stored = events.send(ZvtEvent::Result { outcome, confirm }).is_ok()
                    && matches!(tokio::time::timeout(s.commit_bound, answer).await, Ok(Ok(true)));
                if !stored {
                    tracing::error!("the terminal's result could not be stored; answering 84 66 (goods not issued)");
                    reply = Message::Nak(0x66);
                }
                if let Err(e) = send(link, &reply).await {
                    return lost(format!("confirming the result failed: {e}"), true);
                }
                let _ = events.send(if stored { ZvtEvent::Confirmed } else { ZvtEvent::Refused });
                continue;
            }
            Message::PrintLine(p) => {
                if p.attribute != 0xFF {
                    print_lines.push(scrub(p.text.trim_end()));
                }
                if p.is_last() {
                    let _ = events.send(ZvtEvent::Receipt(std::mem::take(&mut print_lines)));
                }
            }
            Message::PrintTextBlock(f) => {
                let lines = f.text_lines().and_then(Result::ok).unwrap_or_default();
                let _ = events.send(ZvtEvent::Receipt(lines.iter().map(|l| scrub(l.trim_end())).collect()));
            }
            Message::Completion(c) => {
                if let Err(e) = send(link, &reply).await {
                    return lost(format!("acknowledging the completion failed: {e}"), true);
                }
                if !print_lines.is_empty() {
                    let _ = events.send(ZvtEvent::Receipt(print_lines));
                }
                let terminal_id = c.fields.terminal_id().map(|t| format!("{t:08}")).unwrap_or_default();
                return Ending::Completed { terminal_id };
            }
            Message::Abort(a) => {
                let _ = send(link, &reply).await;
                return Ending::Aborted { code: a.result_code, text: codes::result_text(a.result_code) };
            }
            other => tracing::info!(message = other.name(), "payment terminal message acknowledged and ignored"),
        }
        if let Err(e) = send(link, &reply).await {
            return lost(format!("acknowledging the terminal failed: {e}"), true);
        }
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

/// What the terminal's answer to Repeat Receipt says about a payment whose
/// outcome posd does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The terminal booked it: this is its result.
    Booked(Outcome),
    /// The terminal shows it did not book it.
    NotBooked(String),
    /// The terminal's answer does not settle it.
    Undetermined(String),
}

/// Judges the terminal's last transaction (`last`: `None` when it has none)
/// against what posd knows: the receipt number it stored for this payment
/// (`stored`), or else the terminal's last receipt number posd saw before
/// the payment started (`before`).
///
/// A 04 0F does not say whether it is a sale or the terminal's reversal of
/// one, so a receipt is taken for this payment only when it is the one
/// stored, or the very next number after `before` with this amount: a sale
/// the terminal reversed by itself is followed by its reversal, two numbers
/// on. Everything else is left to a person, never guessed.
pub fn judge(amount: u64, stored: Option<u16>, before: Option<u16>, last: Option<&Outcome>) -> Verdict {
    let Some(last) = last else {
        return Verdict::Undetermined("the terminal repeated no result; check its journal".into());
    };
    let approved_amount = last.approved() && last.amount == Some(amount);
    match (stored, last.receipt_no) {
        (Some(s), Some(r)) if s == r && approved_amount => Verdict::Booked(last.clone()),
        (Some(s), Some(r)) => Verdict::Undetermined(format!(
            "the terminal's last transaction is receipt {r}, not this payment's receipt {s}; check the terminal's journal"
        )),
        (None, Some(r)) if before == Some(r) => Verdict::NotBooked(format!(
            "the terminal's last transaction is still receipt {r}, from before this payment; nothing was charged"
        )),
        (None, Some(r)) if approved_amount && before.is_some_and(|b| r == b % 9999 + 1) => {
            Verdict::Booked(last.clone())
        }
        (_, r) => Verdict::Undetermined(format!(
            "the terminal's last transaction (receipt {}) cannot be matched to this payment; check the terminal's journal",
            r.map_or("unknown".into(), |r| r.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(receipt: u16, amount: u64) -> Outcome {
        Outcome { result_code: Some(0), amount: Some(amount), receipt_no: Some(receipt), ..Outcome::default() }
    }

    #[test]
    fn only_the_terminal_s_own_record_settles_a_doubt() {
        // Result stored, terminal shows the same receipt: booked.
        assert!(matches!(judge(1234, Some(7), None, Some(&sale(7, 1234))), Verdict::Booked(_)));
        // Result stored, terminal shows a later receipt (its auto-reversal): not guessed.
        assert!(matches!(judge(1234, Some(7), None, Some(&sale(8, 1234))), Verdict::Undetermined(_)));
        // Nothing stored, the terminal's last receipt is the one before: not booked.
        assert!(matches!(judge(1234, None, Some(6), Some(&sale(6, 500))), Verdict::NotBooked(_)));
        // Nothing stored, a new receipt with our amount: booked.
        assert!(matches!(judge(1234, None, Some(6), Some(&sale(7, 1234))), Verdict::Booked(_)));
        // A new receipt with another amount: not guessed.
        assert!(matches!(judge(1234, None, Some(6), Some(&sale(7, 999))), Verdict::Undetermined(_)));
        // A sale the terminal reversed by itself (receipt 7) and its reversal
        // (receipt 8, same amount): never taken for a booked sale.
        assert!(matches!(judge(1234, None, Some(6), Some(&sale(8, 1234))), Verdict::Undetermined(_)));
        // Without a receipt number from before, nothing new is guessed.
        assert!(matches!(judge(1234, None, None, Some(&sale(1, 1234))), Verdict::Undetermined(_)));
        // No result repeated: left to a person, even with a stored result.
        assert!(matches!(judge(1234, None, None, None), Verdict::Undetermined(_)));
        assert!(matches!(judge(1234, Some(7), None, None), Verdict::Undetermined(_)));
        // The receipt number after 9999 is 1.
        assert!(matches!(judge(1234, None, Some(9999), Some(&sale(1, 1234))), Verdict::Booked(_)));
    }

    #[test]
    fn pans_are_cut_to_first_six_and_last_four() {
        assert_eq!(safe_pan("6725904411001000014"), "672590*********0014");
        assert_eq!(safe_pan("559883******8074"), "559883******8074");
        assert_eq!(safe_pan("12345"), "*****");
        // Masked another way, or showing middle digits: masked fully.
        assert_eq!(safe_pan("5598831234568074"), "559883******8074");
        assert_eq!(safe_pan("5598831234******"), "****************");
        // Grouped, a whole card number is masked as scrub masks it; masked
        // another way (last 4 only), or 10 digits, nothing is shown.
        assert_eq!(safe_pan("5598 8312 3456 8074"), "559883******8074");
        assert_eq!(safe_pan("************8074"), "****************");
        assert_eq!(safe_pan("5598831234"), "**********");
    }
}
