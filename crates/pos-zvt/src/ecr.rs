//! The register (ECR) side of one ZVT command, without I/O: messages and
//! instants in; messages to send, events and a deadline out (the shape of
//! `pos_link::LinkCore`, one level up).
//!
//! An [`Exchange`] runs one command to its end:
//! - the command goes out; once it is delivered T3 runs: the terminal
//!   accepts it (`80 00`, with data on some terminals) or refuses it
//!   (`84 xx`, [`Ending::Refused`]). A terminal message instead means it has
//!   started. The end of an earlier command (06 0F, 06 1E: a terminal still
//!   finishing what it did before the register restarted) is acknowledged
//!   and not taken for this command's.
//! - from the acceptance T4 runs until Completion (06 0F) or Abort (06 1E).
//!   An intermediate status (04 FF) restarts it, for longer when its timeout
//!   byte (BCD minutes) announces more; a Status-Information (04 0F)
//!   restarts it too.
//! - a Status-Information is handed to the caller as [`EcrEvent::Result`];
//!   only the caller's [`Exchange::result_stored`] answers it: `80 00` once
//!   stored, `84 66` ("goods not issued", the terminal reverses) if not.
//!   The terminal counts a payment done once it sees that `80 00`.
//! - print lines (06 D1) are gathered up to the last line and a text block
//!   (06 D3) is taken whole, each as one [`EcrEvent::Receipt`]; everything
//!   else the terminal sends is acknowledged.
//! - an abort request from the register sends 06 B0 once, and not after a
//!   result came (it would be too late).
//!
//! The driver loop: hand every decoded message to
//! [`handle_message`](Exchange::handle_message), send what
//! [`poll_transmit`](Exchange::poll_transmit) returns and report its fate
//! ([`sent`](Exchange::sent) or [`send_failed`](Exchange::send_failed))
//! before anything else, call [`handle_timeout`](Exchange::handle_timeout)
//! once [`poll_timeout`](Exchange::poll_timeout) passes, and act on
//! [`poll_event`](Exchange::poll_event) until [`EcrEvent::Done`]. While a
//! message waits to be delivered or a result waits for the caller's
//! decision no timer runs; what the terminal sends meanwhile is kept and
//! handled, in order, afterwards.
//!
//! Between commands, [`reply_to_unasked`] says what to answer to a message
//! nobody asked for; [`registration`] and [`registered`] are the
//! registration posd sends on every connect and what its ending means.

use std::collections::VecDeque;
use std::fmt::Display;
use std::time::{Duration, Instant};

use pos_mask::scrub;

use crate::message::{Password, config};
use crate::{Bmps, Message, bcd, codes};

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

    /// The outcome a Status-Information's fields give.
    pub fn from_fields(f: &Bmps) -> Outcome {
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
    pos_mask::well_masked(pan)
}

/// Whether the card number in these fields is one [`safe_pan`] has to mask
/// again (the terminal did not mask it as first 6 / last 4).
fn pan_remasked(f: &Bmps) -> bool {
    f.masked_pan().is_some_and(|p| !p.is_empty() && !pos_mask::is_well_masked(&p))
}

/// How a command ended.
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

/// What the session reports to its driver while a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcrEvent {
    /// An intermediate status (04 FF).
    Progress { code: u8, text: String },
    /// A Status-Information. Nothing else happens until the caller answers
    /// with [`Exchange::result_stored`].
    Result(Outcome),
    /// The 80 00 for the last result reached the terminal.
    Confirmed,
    /// The 84 66 for the last result reached the terminal: it reverses that
    /// result.
    Refused,
    /// A receipt, as lines (06 D1 up to the last line, or one 06 D3), each
    /// scrubbed ([`pos_mask::scrub`]).
    Receipt(Vec<String>),
    /// Something worth a log line; it changes nothing.
    Notice(Notice),
    /// The command is over; nothing follows.
    Done(Ending),
}

/// What the driver logs for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The end of an earlier command (the message's name) came during T3;
    /// it is acknowledged and not taken for this command's.
    StaleEnd(&'static str),
    /// The register asked to abort: 06 B0 goes out.
    AbortRequested,
    /// The caller could not store the result: 84 66 goes out.
    NotStored,
    /// A message (its name) the session has no use for; acknowledged.
    Ignored(&'static str),
    /// The terminal sent a card number not masked as first 6 / last 4;
    /// the outcome has it masked ([`safe_pan`]).
    PanRemasked,
}

/// What a handed-out message is for, and so what its delivery (or its
/// failure) means.
#[derive(Debug)]
enum Purpose {
    /// The command itself: its delivery starts T3.
    Command,
    /// 80 00 to the end of an earlier command, during T3.
    StaleAck,
    /// 06 B0.
    AbortRequest,
    /// 80 00 to an intermediate status, a print line, a text block or
    /// anything else the terminal sent during T4.
    Ack,
    /// The answer to a result: 80 00 when stored, 84 66 when not.
    ResultAnswer { stored: bool },
    /// 80 00 to the Completion; the command is over once it is delivered.
    CompletionAck { terminal_id: String },
    /// 80 00 to the Abort; the command is over, delivered or not.
    AbortAck { code: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The command waits to be delivered.
    Sending,
    /// T3: waiting for the terminal to accept the command.
    Accepting,
    /// T4: accepted (or started), until Completion or Abort.
    Running,
    Done,
}

/// One command, from sending it to its [`Ending`].
#[derive(Debug)]
pub struct Exchange {
    name: &'static str,
    t3: Duration,
    t4: Duration,
    phase: Phase,
    /// T3 or T4, whichever runs.
    deadline: Option<Instant>,
    /// The next message for `poll_transmit`.
    transmit: Option<(Message, Purpose)>,
    /// Handed out by `poll_transmit`, not yet reported `sent` or `send_failed`.
    in_flight: Option<Purpose>,
    /// A result was handed to the caller; `result_stored` answers it.
    deciding: bool,
    /// Messages that came while the session was busy, in order.
    backlog: VecDeque<Message>,
    /// The register asked to abort; 06 B0 goes out once T4 runs and the
    /// session is free.
    abort_wanted: bool,
    /// 06 B0 went out, or a result came: no abort request any more.
    abort_settled: bool,
    /// Print lines up to the last one.
    print_lines: Vec<String>,
    events: VecDeque<EcrEvent>,
}

impl Exchange {
    /// A session for `command`: it is the first message to send. T3 runs
    /// from its delivery, T4 from the terminal's acceptance.
    pub fn start(command: Message, t3: Duration, t4: Duration) -> Exchange {
        Exchange {
            name: command.name(),
            t3,
            t4,
            phase: Phase::Sending,
            deadline: None,
            transmit: Some((command, Purpose::Command)),
            in_flight: None,
            deciding: false,
            backlog: VecDeque::new(),
            abort_wanted: false,
            abort_settled: false,
            print_lines: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The next message to send. Report its fate with [`sent`](Self::sent)
    /// or [`send_failed`](Self::send_failed) before anything else: until
    /// then there is no next one.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        let (message, purpose) = self.transmit.take()?;
        self.in_flight = Some(purpose);
        Some(message)
    }

    /// The message from [`poll_transmit`](Self::poll_transmit) reached the terminal.
    pub fn sent(&mut self, now: Instant) {
        let Some(purpose) = self.in_flight.take() else { return };
        match purpose {
            Purpose::Command => {
                self.phase = Phase::Accepting;
                self.deadline = Some(now + self.t3);
            }
            Purpose::StaleAck | Purpose::AbortRequest | Purpose::Ack => {}
            Purpose::ResultAnswer { stored } => {
                self.events.push_back(if stored { EcrEvent::Confirmed } else { EcrEvent::Refused });
            }
            Purpose::CompletionAck { terminal_id } => {
                if !self.print_lines.is_empty() {
                    self.events.push_back(EcrEvent::Receipt(std::mem::take(&mut self.print_lines)));
                }
                self.finish(Ending::Completed { terminal_id });
            }
            Purpose::AbortAck { code } => self.finish(aborted(code)),
        }
        self.advance(now);
    }

    /// The message from [`poll_transmit`](Self::poll_transmit) could not be
    /// sent: the command is lost (but for the acknowledgement of an Abort,
    /// which ends it anyway).
    pub fn send_failed(&mut self, error: impl Display) {
        let Some(purpose) = self.in_flight.take() else { return };
        let message = match purpose {
            Purpose::Command => format!("sending {} failed: {error}", self.name),
            Purpose::StaleAck | Purpose::Ack => format!("acknowledging the terminal failed: {error}"),
            Purpose::AbortRequest => format!("sending the abort failed: {error}"),
            Purpose::ResultAnswer { .. } => format!("confirming the result failed: {error}"),
            Purpose::CompletionAck { .. } => format!("acknowledging the completion failed: {error}"),
            Purpose::AbortAck { code } => {
                self.finish(aborted(code));
                return;
            }
        };
        self.lose(message);
    }

    /// A message from the terminal.
    pub fn handle_message(&mut self, message: Message, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.backlog.push_back(message);
        self.advance(now);
    }

    /// Reading from the line failed: the command is lost.
    pub fn line_failed(&mut self, error: impl Display) {
        if self.phase != Phase::Done {
            self.lose(format!("line to the terminal failed: {error}"));
        }
    }

    /// The register asks to abort the command. 06 B0 goes out once T4 runs
    /// and nothing else is under way, and never once a result came.
    pub fn abort_requested(&mut self, now: Instant) {
        if self.phase != Phase::Done && !self.abort_settled {
            self.abort_wanted = true;
        }
        self.advance(now);
    }

    /// The caller's answer to [`EcrEvent::Result`]: `stored` sends 80 00,
    /// otherwise 84 66.
    pub fn result_stored(&mut self, stored: bool, now: Instant) {
        if !self.deciding {
            return;
        }
        self.deciding = false;
        if !stored {
            self.events.push_back(EcrEvent::Notice(Notice::NotStored));
        }
        let answer = if stored { Message::Ack } else { Message::Nak(0x66) };
        self.transmit = Some((answer, Purpose::ResultAnswer { stored }));
        self.advance(now);
    }

    /// Called at or after the instant [`poll_timeout`](Self::poll_timeout) gave.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.busy() || self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.phase {
            Phase::Accepting => {
                self.lose(format!("the terminal did not accept {} within {:?} (T3)", self.name, self.t3));
            }
            Phase::Running => {
                self.lose(format!("the terminal did not finish {} within {:?} (T4)", self.name, self.t4));
            }
            Phase::Sending | Phase::Done => {}
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next:
    /// T3's or T4's end, unless a message waits to be delivered or a result
    /// waits for the caller.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.busy() { None } else { self.deadline }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EcrEvent> {
        self.events.pop_front()
    }

    /// A message waits to be sent or delivered, or a result for the caller.
    fn busy(&self) -> bool {
        self.transmit.is_some() || self.in_flight.is_some() || self.deciding
    }

    /// Acts on what waits (an abort request, then the backlog) while nothing
    /// else is under way.
    fn advance(&mut self, now: Instant) {
        while matches!(self.phase, Phase::Accepting | Phase::Running) && !self.busy() {
            if self.phase == Phase::Running && self.abort_wanted && !self.abort_settled {
                self.abort_wanted = false;
                self.abort_settled = true;
                self.events.push_back(EcrEvent::Notice(Notice::AbortRequested));
                self.transmit = Some((Message::AbortRequest, Purpose::AbortRequest));
            } else if let Some(message) = self.backlog.pop_front() {
                match self.phase {
                    Phase::Accepting => self.accepting(message, now),
                    _ => self.running(message, now),
                }
            } else {
                break;
            }
        }
    }

    /// A message during T3.
    fn accepting(&mut self, message: Message, now: Instant) {
        match message {
            Message::Ack | Message::Nak(0x00) => self.run(now),
            Message::Vendor(r) if (r.class, r.instr) == (0x80, 0x00) => self.run(now),
            Message::Nak(code) => self.finish(Ending::Refused { code, text: codes::result_text(code) }),
            stale @ (Message::Completion(_) | Message::Abort(_)) => {
                self.events.push_back(EcrEvent::Notice(Notice::StaleEnd(stale.name())));
                self.transmit = Some((Message::Ack, Purpose::StaleAck));
            }
            // The terminal has started: this is the command's first message.
            other => {
                self.run(now);
                self.running(other, now);
            }
        }
    }

    /// The terminal accepted (or started) the command: T4 runs.
    fn run(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.deadline = Some(now + self.t4);
    }

    /// A message during T4.
    fn running(&mut self, message: Message, now: Instant) {
        let ack = |purpose| Some((Message::Ack, purpose));
        self.transmit = match message {
            // The answer to our abort request, not a message to acknowledge.
            Message::Ack | Message::Nak(_) => None,
            Message::Intermediate(i) => {
                // The timeout byte is BCD minutes; it may only extend T4.
                let announced =
                    i.timeout.and_then(|t| bcd::decode(&[t])).map_or(Duration::ZERO, |m| Duration::from_secs(m * 60));
                self.deadline = Some(now + self.t4.max(announced));
                self.events.push_back(EcrEvent::Progress { code: i.status, text: codes::intermediate_text(i.status) });
                ack(Purpose::Ack)
            }
            Message::StatusInformation(f) => {
                self.deadline = Some(now + self.t4);
                // An abort request would come too late now.
                self.abort_settled = true;
                if pan_remasked(&f) {
                    self.events.push_back(EcrEvent::Notice(Notice::PanRemasked));
                }
                self.events.push_back(EcrEvent::Result(Outcome::from_fields(&f)));
                self.deciding = true;
                None
            }
            Message::PrintLine(p) => {
                if p.attribute != 0xFF {
                    self.print_lines.push(scrub(p.text.trim_end()));
                }
                if p.is_last() {
                    self.events.push_back(EcrEvent::Receipt(std::mem::take(&mut self.print_lines)));
                }
                ack(Purpose::Ack)
            }
            Message::PrintTextBlock(f) => {
                let lines = f.text_lines().and_then(Result::ok).unwrap_or_default();
                self.events.push_back(EcrEvent::Receipt(lines.iter().map(|l| scrub(l.trim_end())).collect()));
                ack(Purpose::Ack)
            }
            Message::Completion(c) => {
                let terminal_id = c.fields.terminal_id().map(|t| format!("{t:08}")).unwrap_or_default();
                ack(Purpose::CompletionAck { terminal_id })
            }
            Message::Abort(a) => ack(Purpose::AbortAck { code: a.result_code }),
            other => {
                self.events.push_back(EcrEvent::Notice(Notice::Ignored(other.name())));
                ack(Purpose::Ack)
            }
        };
    }

    /// The line failed or a timer ran out; `started` once T4 runs.
    fn lose(&mut self, message: String) {
        let started = self.phase == Phase::Running;
        self.finish(Ending::Lost { message, started });
    }

    fn finish(&mut self, ending: Ending) {
        self.phase = Phase::Done;
        self.deadline = None;
        self.transmit = None;
        self.in_flight = None;
        self.deciding = false;
        self.backlog.clear();
        self.events.push_back(EcrEvent::Done(ending));
    }
}

fn aborted(code: u8) -> Ending {
    Ending::Aborted { code, text: codes::result_text(code) }
}

/// What to answer to a message nobody asked for (between commands, or a
/// stale one after registration); `None` for an APDU that did not decode.
/// 80 00 and 84 xx need no answer; a result nobody waits for is not booked
/// (84 66, "goods not issued"); anything else gets 80 00.
pub fn reply_to_unasked(message: Option<&Message>) -> Option<Message> {
    match message {
        Some(Message::Ack | Message::Nak(_)) => None,
        Some(Message::StatusInformation(_)) => Some(Message::Nak(0x66)),
        _ => Some(Message::Ack),
    }
}

/// The registration posd sends on every connect: the ECR prints payment and
/// administration receipts, wants intermediate statuses, controls payments,
/// and permits Print Text Block (06 D3).
pub fn registration(password: Password, currency: u16) -> Message {
    let bits = config::ECR_PRINTS_PAYMENT
        | config::ECR_PRINTS_ADMIN
        | config::INTERMEDIATE_STATUS
        | config::ECR_CONTROLS_PAYMENT;
    Message::registration(password, bits, currency, &[[0x06, 0xD3]])
}

/// What a registration's ending means: the terminal's id, or why it failed.
pub fn registered(ending: Ending) -> Result<String, String> {
    match ending {
        Ending::Completed { terminal_id } => Ok(terminal_id),
        Ending::Aborted { code, text } | Ending::Refused { code, text } => {
            Err(format!("the terminal answered {code:02X}: {text}"))
        }
        Ending::Lost { message, .. } => Err(message),
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
