//! A ZVT payment terminal: the far end of posd's ZVT lanes, over a PTY
//! (serial framing, ACK/NAK) or TCP (bare APDUs).
//!
//! It authorizes by itself, as a real terminal does with its acquirer: the
//! scenario decides the outcome (approve, decline, customer cancel, offline
//! approval, "initialisation required", busy, slow), and line faults (dropped
//! ACK, corrupted CRC, two APDUs in one TCP segment, a disconnect
//! mid-payment) test the register's side of the protocol. It keeps a journal
//! and a batch, so reversal, refund, end-of-day and Repeat Receipt answer
//! from what really happened. A result the register never acknowledges is
//! reversed automatically, as real terminals do (unless told to keep it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_link::LinkError;
use pos_zvt::message::{Abort, Completion, Intermediate, Password, PrintLine, Registration, WithPassword, config};
use pos_zvt::tlv::{self, Tlv};
use pos_zvt::{Bmp, Bmps, Message};

use crate::line::{Described, Line, LineFaults};
use crate::transcript::Dir;

/// How the next transactions end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Approve,
    /// The issuer declines with this result code.
    Decline(u8),
    /// The customer presses cancel on the terminal.
    CustomerCancel,
    /// Approved offline by the terminal (payment type 0x40).
    Offline,
    /// Every command is refused with 84 A0 (receiver not ready).
    Busy,
    /// Intermediate statuses keep coming, `slow_steps` of them.
    Slow,
    /// The line goes dead after the first intermediate status.
    Disconnect,
    /// The result (04 0F) goes out, then the line goes dead before the
    /// register's 80 00 can arrive.
    DropAfterResult,
    /// Result code 0x51: the terminal must be initialised first.
    InitRequired,
}

impl Scenario {
    pub fn parse(words: &[&str]) -> Result<Scenario, String> {
        Ok(match words {
            ["approve"] => Scenario::Approve,
            ["decline"] => Scenario::Decline(0x05),
            ["decline", code] => Scenario::Decline(
                u8::from_str_radix(code, 16).map_err(|_| format!("decline code must be hex, not {code:?}"))?,
            ),
            ["cancel"] => Scenario::CustomerCancel,
            ["offline"] => Scenario::Offline,
            ["busy"] => Scenario::Busy,
            ["slow"] => Scenario::Slow,
            ["disconnect"] => Scenario::Disconnect,
            ["drop-after-result"] => Scenario::DropAfterResult,
            ["init-required"] => Scenario::InitRequired,
            other => {
                return Err(format!(
                    "unknown scenario {other:?}; one of: approve, decline [HEX], cancel, offline, busy, slow, disconnect, drop-after-result, init-required"
                ));
            }
        })
    }
}

/// How receipts reach the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipts {
    /// 06 D1, one line each.
    Lines,
    /// 06 D3 when the register permitted it at registration, else lines.
    Block,
    /// The terminal prints them itself.
    None,
}

#[derive(Debug, Clone)]
pub struct ZvtOptions {
    pub password: Password,
    pub terminal_id: u32,
    /// Test card shown on results (masked, as terminals send it).
    pub masked_pan: String,
    pub card_name: String,
    /// Wait for the register's 80 00 (T3).
    pub t3: Duration,
    /// Between the human steps of a payment (card, PIN, host).
    pub step: Duration,
    /// Intermediate statuses sent in the slow scenario, one per `step`.
    pub slow_steps: u32,
    pub receipts: Receipts,
    /// Keep a result the register never acknowledged instead of reversing it.
    pub keep_unconfirmed: bool,
    /// Answer Repeat Receipt (06 20); some terminals do not support it.
    pub repeat_receipt: bool,
}

impl Default for ZvtOptions {
    fn default() -> Self {
        Self {
            password: pos_zvt::message::DEFAULT_PASSWORD,
            terminal_id: 52_523_535,
            masked_pan: "672559******1000".into(),
            card_name: "girocard".into(),
            t3: Duration::from_secs(5),
            step: Duration::from_millis(300),
            slow_steps: 10,
            receipts: Receipts::Block,
            keep_unconfirmed: false,
            repeat_receipt: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sale,
    Refund,
    /// Reversal of the sale with this receipt number.
    Reversal(u16),
    /// The terminal's own reversal of an unconfirmed result.
    AutoReversal(u16),
}

#[derive(Debug, Clone)]
pub struct Txn {
    pub kind: Kind,
    pub receipt_no: u16,
    pub trace: u32,
    pub amount: u64,
    pub currency: u16,
    pub offline: bool,
    pub reversed: bool,
    pub auth_code: String,
}

#[derive(Debug, Default)]
struct State {
    registered: Option<(u8, bool)>,
    currency: u16,
    next_receipt: u16,
    next_trace: u32,
    journal: Vec<Txn>,
    /// Journal positions since the last end-of-day.
    batch_start: usize,
}

/// Named moments of a sale at which a fault can be armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The register's Authorization arrived.
    Start,
    /// The result (04 0F) is about to go out.
    Result,
    /// The receipt is about to go out (after the register confirmed the result).
    Receipt,
    /// The Completion (06 0F) is about to go out.
    Completion,
}

impl Step {
    pub fn parse(s: &str) -> Result<Step, String> {
        match s {
            "start" => Ok(Step::Start),
            "result" => Ok(Step::Result),
            "receipt" => Ok(Step::Receipt),
            "completion" => Ok(Step::Completion),
            other => Err(format!("unknown ZVT step {other:?}; one of start, result, receipt, completion")),
        }
    }
}

/// One sale as a scenario file describes it: how it ends, and faults at
/// named steps (a line fault's name, or `disconnect`: the line drops there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcome: Scenario,
    pub faults: Vec<(Step, String)>,
}

pub struct Terminal {
    pub opts: ZvtOptions,
    scenario: Mutex<Scenario>,
    /// The next sales, in order; then `scenario` for every later one.
    planned: Mutex<std::collections::VecDeque<Plan>>,
    /// The running sale's faults still to fire.
    armed: Mutex<Vec<(Step, String)>>,
    state: Mutex<State>,
    pub faults: Arc<Mutex<LineFaults>>,
    /// Called when the register confirms (80 00) an approved result, before
    /// the terminal books it (the deterministic simulator checks there that
    /// posd stored the result first).
    on_confirmed: Mutex<Option<Confirmed>>,
}

/// See [`Terminal::on_confirmed`].
pub type Confirmed = Arc<dyn Fn(&Txn) + Send + Sync>;

/// Why a transaction stopped early.
enum Stop {
    /// The line failed or the register went away.
    Line(LinkError),
    /// The scenario drops the line.
    Disconnect,
    /// The register registered again in the middle of a transaction (it
    /// restarted): the transaction ends and the registration is served.
    Reset(Registration),
}

impl From<LinkError> for Stop {
    fn from(e: LinkError) -> Self {
        Stop::Line(e)
    }
}

/// The register's answer to a message that needs one.
enum Answer {
    Ack,
    Nak(u8),
    /// No 80 00 within T3.
    Silent,
    /// The register asked to abort (06 B0).
    Abort,
}

impl Terminal {
    pub fn new(opts: ZvtOptions, scenario: Scenario) -> Arc<Terminal> {
        let state = State { currency: 978, next_receipt: 1, next_trace: 1, ..State::default() };
        Arc::new(Terminal {
            opts,
            scenario: Mutex::new(scenario),
            planned: Mutex::default(),
            armed: Mutex::default(),
            state: Mutex::new(state),
            faults: Arc::new(Mutex::new(LineFaults::default())),
            on_confirmed: Mutex::default(),
        })
    }

    /// Calls `watch` with each approved result the register confirms, as it
    /// confirms it (replacing the one before).
    pub fn on_confirmed(&self, watch: Confirmed) {
        *self.on_confirmed.lock().unwrap() = Some(watch);
    }

    pub fn scenario(&self) -> Scenario {
        *self.scenario.lock().unwrap()
    }

    /// The next sales' outcomes and faults (a scenario file).
    pub fn plan(&self, plans: Vec<Plan>) {
        *self.planned.lock().unwrap() = plans.into();
    }

    /// How this transaction ends: a sale takes the next plan (and its
    /// faults) when there is one.
    fn outcome_of(&self, kind: Kind) -> Scenario {
        if kind == Kind::Sale
            && let Some(plan) = self.planned.lock().unwrap().pop_front()
        {
            *self.armed.lock().unwrap() = plan.faults;
            return plan.outcome;
        }
        self.armed.lock().unwrap().clear();
        self.scenario()
    }

    /// Arms the running sale's faults for `step`; `Err` when the line drops here.
    fn at(&self, link: &Line, step: Step) -> Result<(), Stop> {
        let due: Vec<String> = {
            let mut armed = self.armed.lock().unwrap();
            let (due, rest) = armed.drain(..).partition(|(s, _)| *s == step);
            *armed = rest;
            due.into_iter().map(|(_, f)| f).collect()
        };
        for f in due {
            tracing::warn!(?step, fault = %f, "zvt: scenario fault");
            link.note(&format!("scenario fault at {step:?}: {f}"));
            if f == "disconnect" {
                return Err(Stop::Disconnect);
            }
            if let Err(e) = self.faults.lock().unwrap().arm(&f) {
                tracing::warn!(error = %e, "zvt: planned fault ignored");
            }
        }
        Ok(())
    }

    pub fn journal(&self) -> Vec<Txn> {
        self.state.lock().unwrap().journal.clone()
    }

    pub fn status_line(&self) -> String {
        let s = self.state.lock().unwrap();
        format!(
            "scenario {:?}; {} planned; {}; {} transactions ({} in the batch); {}",
            self.scenario(),
            self.planned.lock().unwrap().len(),
            if s.registered.is_some() { "registered" } else { "not registered" },
            s.journal.len(),
            s.journal.len() - s.batch_start,
            self.faults.lock().unwrap()
        )
    }

    /// A technician command: `scenario ...`, `fault drop-ack|bad-crc|coalesce|silent|none`, `status`.
    pub fn command(&self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(()),
            ["scenario", rest @ ..] => {
                *self.scenario.lock().unwrap() = Scenario::parse(rest)?;
                Ok(())
            }
            ["fault", which] => self.faults.lock().unwrap().arm(which),
            _ => Err(format!(
                "unknown command {line:?}; try: scenario NAME, fault drop-ack|bad-crc|coalesce|silent|none, status"
            )),
        }
    }
}

/// Serves one register connection until the line ends; returns why.
pub async fn serve(mut link: Line, t: Arc<Terminal>) -> String {
    loop {
        let apdu = match link.recv().await {
            Ok(a) => a,
            Err(e) => return e.to_string(),
        };
        let msg = match Message::decode(&apdu) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "zvt: undecodable APDU");
                if let Err(e) = send(&link, Message::Nak(0x9A)).await {
                    return e.to_string();
                }
                continue;
            }
        };
        tracing::info!(command = msg.name(), "zvt: command");
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match handle(&mut link, &t, msg).await {
                Ok(()) => {}
                Err(Stop::Line(e)) => return e.to_string(),
                Err(Stop::Disconnect) => return "the scenario dropped the line".into(),
                // The transaction ended; serve the new registration.
                Err(Stop::Reset(r)) => next = Some(Message::Registration(r)),
            }
        }
    }
}

async fn send(link: &Line, m: Message) -> Result<(), LinkError> {
    link.send(m.encode().expect("the simulator builds valid messages")).await
}

/// Sends a message that the register must acknowledge and waits (T3).
async fn send_for_ack(link: &mut Line, t: &Terminal, m: Message) -> Result<Answer, Stop> {
    send(link, m).await?;
    let deadline = tokio::time::Instant::now() + t.opts.t3;
    loop {
        let apdu = match tokio::time::timeout_at(deadline, link.recv()).await {
            Err(_) => return Ok(Answer::Silent),
            Ok(r) => r?,
        };
        match Message::decode(&apdu) {
            Ok(Message::Ack) | Ok(Message::Nak(0x00)) => return Ok(Answer::Ack),
            Ok(Message::Nak(code)) => return Ok(Answer::Nak(code)),
            Ok(Message::AbortRequest) => {
                tracing::info!("zvt: the register asked to abort (06 B0)");
                return Ok(Answer::Abort);
            }
            Ok(Message::Registration(r)) => {
                tracing::warn!("zvt: the register registered again mid-transaction; ending the transaction");
                return Err(Stop::Reset(r));
            }
            Ok(other) => tracing::warn!(got = other.name(), "zvt: expected 80 00 from the register"),
            Err(e) => tracing::warn!(error = %e, "zvt: undecodable APDU while waiting for 80 00"),
        }
    }
}

/// Waits `d`, unless the register asks to abort (06 B0) meanwhile.
async fn pause(link: &mut Line, d: Duration) -> Result<bool, Stop> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, link.recv()).await {
            Err(_) => return Ok(false),
            Ok(r) => match Message::decode(&r?) {
                Ok(Message::AbortRequest) => {
                    tracing::info!("zvt: the register asked to abort (06 B0)");
                    send(link, Message::Ack).await?;
                    return Ok(true);
                }
                Ok(Message::Registration(r)) => {
                    tracing::warn!("zvt: the register registered again mid-transaction; ending the transaction");
                    return Err(Stop::Reset(r));
                }
                _ => {}
            },
        }
    }
}

fn intermediate(status: u8) -> Message {
    Message::Intermediate(Intermediate { status, timeout: None, fields: Bmps::default() })
}

fn abort(rc: u8) -> Message {
    Message::Abort(Abort { result_code: rc, fields: Bmps::default() })
}

fn completion() -> Message {
    Message::Completion(Completion { software: None, fields: [Bmp::payment_type(0x00)].into_iter().collect() })
}

fn wrong_password(link: &Line, got: Password, t: &Terminal) -> Option<impl Future<Output = Result<(), LinkError>>> {
    (got != t.opts.password).then(|| send(link, Message::Nak(0x9A)))
}

async fn handle(link: &mut Line, t: &Arc<Terminal>, msg: Message) -> Result<(), Stop> {
    if t.scenario() == Scenario::Busy && !matches!(msg, Message::Ack | Message::Nak(_)) {
        send(link, Message::Nak(0xA0)).await?;
        return Ok(());
    }
    match msg {
        Message::Registration(r) => register(link, t, r).await,
        Message::Authorization(f) => {
            let amount = f.amount().unwrap_or(0);
            transaction(link, t, Kind::Sale, amount).await
        }
        Message::Refund(w) => {
            if let Some(nak) = wrong_password(link, w.password, t) {
                return Ok(nak.await?);
            }
            transaction(link, t, Kind::Refund, w.fields.amount().unwrap_or(0)).await
        }
        Message::Reversal(w) => {
            if let Some(nak) = wrong_password(link, w.password, t) {
                return Ok(nak.await?);
            }
            reversal(link, t, w).await
        }
        Message::EndOfDay(w) => {
            if let Some(nak) = wrong_password(link, w.password, t) {
                return Ok(nak.await?);
            }
            end_of_day(link, t).await
        }
        Message::RepeatReceipt(w) => {
            if let Some(nak) = wrong_password(link, w.password, t) {
                return Ok(nak.await?);
            }
            repeat_receipt(link, t).await
        }
        Message::StatusEnquiry(_) => {
            send(link, Message::Ack).await?;
            let c = Completion { software: Some(("firmware-sim ZVT 1.0".into(), 0x00)), fields: Bmps::default() };
            send_for_ack(link, t, Message::Completion(c)).await?;
            Ok(())
        }
        Message::Diagnosis(_) => {
            send(link, Message::Ack).await?;
            send_for_ack(link, t, completion()).await?;
            Ok(())
        }
        Message::LogOff => {
            t.state.lock().unwrap().registered = None;
            Ok(send(link, Message::Ack).await?)
        }
        // Nothing runs: nothing to abort.
        Message::AbortRequest => Ok(send(link, Message::Ack).await?),
        Message::Ack | Message::Nak(_) => Ok(()),
        other => {
            tracing::warn!(command = other.name(), "zvt: not supported");
            Ok(send(link, Message::Nak(0x83)).await?)
        }
    }
}

async fn register(link: &mut Line, t: &Terminal, r: Registration) -> Result<(), Stop> {
    if r.password != t.opts.password {
        return Ok(send(link, Message::Nak(0x9A)).await?);
    }
    let permits_block = r.fields.tlv().and_then(Result::ok).is_some_and(|items| {
        tlv::Tlv::find(&items, 0x26).is_some_and(|list| match &list.value {
            tlv::Value::Constructed(entries) => {
                entries.iter().any(|e| e.tag == 0x0A && e.bytes() == Some(&[0x06, 0xD3]))
            }
            tlv::Value::Primitive(_) => false,
        })
    });
    {
        let mut s = t.state.lock().unwrap();
        s.registered = Some((r.config, permits_block));
        if let Some(c) = r.currency.and_then(|c| pos_zvt::bcd::decode(&c)) {
            s.currency = c as u16;
        }
    }
    send(link, Message::Ack).await?;
    let fields: Bmps =
        [Bmp::payment_type(0x00), Bmp::terminal_id(t.opts.terminal_id), Bmp::currency(978)].into_iter().collect();
    send_for_ack(link, t, Message::Completion(Completion { software: None, fields })).await?;
    Ok(())
}

/// A sale or refund: card, PIN, host, result, receipts, completion.
async fn transaction(link: &mut Line, t: &Terminal, kind: Kind, amount: u64) -> Result<(), Stop> {
    let scenario = t.outcome_of(kind);
    t.at(link, Step::Start)?;
    if scenario == Scenario::Busy {
        // A planned busy sale: refused like every command of a busy terminal.
        send(link, Message::Nak(0xA0)).await?;
        return Ok(());
    }
    send(link, Message::Ack).await?;
    if scenario == Scenario::InitRequired {
        send_for_ack(link, t, abort(pos_zvt::codes::INITIALISATION_REQUIRED)).await?;
        return Ok(());
    }
    if amount == 0 {
        send_for_ack(link, t, abort(0x9A)).await?;
        return Ok(());
    }
    // Insert card.
    if matches!(send_for_ack(link, t, intermediate(0x0A)).await?, Answer::Abort) || pause(link, t.opts.step).await? {
        send_for_ack(link, t, abort(0x6C)).await?;
        return Ok(());
    }
    match scenario {
        Scenario::Disconnect => {
            // Once: the terminal comes back approving (a planned disconnect
            // leaves the standing outcome alone).
            let mut standing = t.scenario.lock().unwrap();
            if *standing == Scenario::Disconnect {
                *standing = Scenario::Approve;
            }
            return Err(Stop::Disconnect);
        }
        Scenario::CustomerCancel => {
            send_for_ack(link, t, abort(0x6C)).await?;
            return Ok(());
        }
        Scenario::Slow => {
            for _ in 0..t.opts.slow_steps {
                send_for_ack(link, t, intermediate(0x17)).await?;
                if pause(link, t.opts.step).await? {
                    send_for_ack(link, t, abort(0x6C)).await?;
                    return Ok(());
                }
            }
        }
        _ => {}
    }
    // PIN, then the host.
    send_for_ack(link, t, intermediate(0x01)).await?;
    pause(link, t.opts.step).await?;
    send_for_ack(link, t, intermediate(0x04)).await?;
    // A line dropped here drops before the result: nothing was booked.
    t.at(link, Step::Result)?;
    let rc = match scenario {
        Scenario::Decline(rc) => rc,
        _ => 0x00,
    };
    let txn = {
        let mut s = t.state.lock().unwrap();
        let txn = Txn {
            kind,
            receipt_no: s.next_receipt,
            trace: s.next_trace,
            amount,
            currency: s.currency,
            offline: scenario == Scenario::Offline,
            reversed: false,
            auth_code: format!("{:06}", 100_000 + s.next_trace),
        };
        s.next_trace += 1;
        if rc == 0 {
            s.next_receipt = s.next_receipt % 9999 + 1;
        }
        txn
    };
    let result = status_information(t, &txn, rc);
    if scenario == Scenario::DropAfterResult {
        if link.can_drop_acks() {
            // The line dies before posd's confirmation gets through: the
            // 80 00 that follows the result is not ACKed (the fault drops
            // the ACK the link sends), however fast posd answers and however
            // slowly this task gets to close the line.
            t.faults.lock().unwrap().drop_ack = true;
            let sent = send(link, result).await;
            if sent.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), link.recv()).await;
            }
            // Whatever happened, the next sale starts without the fault.
            t.faults.lock().unwrap().drop_ack = false;
            sent?;
        } else {
            send(link, result).await?;
        }
        tracing::warn!("zvt: dropping the line after the result (scenario)");
        keep_or_reverse_unconfirmed(t, txn);
        return Err(Stop::Disconnect);
    }
    let answer = match send_for_ack(link, t, result).await {
        Ok(a) => a,
        Err(e) => {
            // The register vanished after the result went out: unconfirmed.
            if rc == 0 {
                keep_or_reverse_unconfirmed(t, txn);
            }
            return Err(e);
        }
    };
    match answer {
        Answer::Ack => {
            if rc == 0
                && let Some(watch) = t.on_confirmed.lock().unwrap().clone()
            {
                watch(&txn);
            }
        }
        Answer::Nak(code) => {
            // "Goods not issued": the terminal reverses at once.
            tracing::warn!(code, "zvt: the register refused the result; reversing");
            if rc == 0 {
                auto_reverse(t, txn);
            }
            send_for_ack(link, t, abort(0x6C)).await?;
            return Ok(());
        }
        Answer::Silent | Answer::Abort => {
            tracing::warn!("zvt: the register did not confirm the result");
            if rc == 0 {
                keep_or_reverse_unconfirmed(t, txn);
            }
            return Ok(());
        }
    }
    if rc == 0 {
        t.state.lock().unwrap().journal.push(txn.clone());
    }
    t.at(link, Step::Receipt)?;
    send_receipts(link, t, &receipt_lines(t, &txn, rc)).await?;
    t.at(link, Step::Completion)?;
    if rc == 0 {
        send_for_ack(link, t, completion()).await?;
    } else {
        send_for_ack(link, t, abort(rc)).await?;
    }
    Ok(())
}

/// A result the register never confirmed: kept as booked, or reversed, as
/// the terminal is set up.
fn keep_or_reverse_unconfirmed(t: &Terminal, txn: Txn) {
    if t.opts.keep_unconfirmed {
        t.state.lock().unwrap().journal.push(txn);
    } else {
        auto_reverse(t, txn);
    }
}

/// The journal keeps the unconfirmed result, reversed, and the reversal
/// under the next receipt number.
fn auto_reverse(t: &Terminal, mut txn: Txn) {
    let mut s = t.state.lock().unwrap();
    txn.reversed = true;
    let reversal = Txn { kind: Kind::AutoReversal(txn.receipt_no), receipt_no: s.next_receipt, ..txn.clone() };
    s.next_receipt = s.next_receipt % 9999 + 1;
    s.journal.push(txn);
    s.journal.push(reversal);
}

fn status_information(t: &Terminal, txn: &Txn, rc: u8) -> Message {
    let mut fields = vec![
        Bmp::result_code(rc),
        Bmp::amount(txn.amount),
        Bmp::currency(txn.currency),
        Bmp::trace(txn.trace),
        Bmp::time(12, 0, 0),
        Bmp::date(11, 26),
        Bmp::terminal_id(t.opts.terminal_id),
        Bmp::masked_pan(&t.opts.masked_pan),
        Bmp::card_type(0x05),
        Bmp::card_name(&t.opts.card_name),
        Bmp::payment_type(if txn.offline { 0x40 } else { 0x60 }),
    ];
    if rc == 0 {
        fields.push(Bmp::receipt_no(txn.receipt_no));
        fields.push(Bmp::auth_code(&txn.auth_code));
    }
    Message::StatusInformation(fields.into_iter().collect())
}

fn receipt_lines(t: &Terminal, txn: &Txn, rc: u8) -> Vec<String> {
    let title = match txn.kind {
        Kind::Sale => "Kartenzahlung",
        Kind::Refund => "Gutschrift",
        Kind::Reversal(_) | Kind::AutoReversal(_) => "Storno",
    };
    let euros = format!("EUR {},{:02}", txn.amount / 100, txn.amount % 100);
    let mut lines = vec![
        format!("{title:^24}"),
        format!("Terminal-ID {:>12}", t.opts.terminal_id),
        format!("Trace-Nr. {:>14}", txn.trace),
        format!("{} {:>width$}", t.opts.card_name, t.opts.masked_pan, width = 23 - t.opts.card_name.len()),
        format!("Betrag {euros:>17}"),
    ];
    if rc == 0 {
        lines.push(format!("Beleg-Nr. {:>14}", txn.receipt_no));
        lines.push(format!("Autor.-Nr. {:>13}", txn.auth_code));
        lines.push(if txn.offline { "Zahlung offline erfolgt".into() } else { "Zahlung erfolgt".into() });
    } else {
        lines.push(format!("Abgelehnt ({rc:02X})"));
    }
    lines
}

/// Sends a receipt the way the register asked for at registration.
async fn send_receipts(link: &mut Line, t: &Terminal, lines: &[String]) -> Result<(), Stop> {
    let registered = t.state.lock().unwrap().registered;
    let Some((config_byte, permits_block)) = registered else { return Ok(()) };
    if config_byte & config::ECR_PRINTS_PAYMENT == 0 || t.opts.receipts == Receipts::None {
        return Ok(());
    }
    if t.opts.receipts == Receipts::Block && permits_block {
        let body = Tlv::constructed(0x25, lines.iter().map(|l| Tlv::primitive(0x07, l.as_bytes())).collect());
        let block = Bmp::tlv(&[Tlv::primitive(0x1F07, [0x02]), body]).expect("short receipt");
        send_for_ack(link, t, Message::PrintTextBlock([block].into_iter().collect())).await?;
        return Ok(());
    }
    for (i, line) in lines.iter().enumerate() {
        let attribute = if i + 1 == lines.len() { 0x81 } else { 0x00 };
        send_for_ack(link, t, Message::PrintLine(PrintLine { attribute, text: line.clone() })).await?;
    }
    Ok(())
}

async fn reversal(link: &mut Line, t: &Terminal, w: WithPassword) -> Result<(), Stop> {
    send(link, Message::Ack).await?;
    let wanted = w.fields.receipt_no();
    let found = {
        let s = t.state.lock().unwrap();
        let batch = &s.journal[s.batch_start..];
        batch.iter().find(|x| Some(x.receipt_no) == wanted && x.kind == Kind::Sale).cloned()
    };
    let Some(original) = found else {
        send_for_ack(link, t, abort(0xB5)).await?;
        return Ok(());
    };
    if original.reversed {
        send_for_ack(link, t, abort(0xB4)).await?;
        return Ok(());
    }
    let txn = {
        let mut s = t.state.lock().unwrap();
        let txn = Txn {
            kind: Kind::Reversal(original.receipt_no),
            receipt_no: s.next_receipt,
            trace: s.next_trace,
            ..original.clone()
        };
        s.next_receipt = s.next_receipt % 9999 + 1;
        s.next_trace += 1;
        txn
    };
    match send_for_ack(link, t, status_information(t, &txn, 0)).await? {
        Answer::Ack => {}
        _ => return Ok(()),
    }
    {
        let mut s = t.state.lock().unwrap();
        if let Some(o) = s.journal.iter_mut().find(|x| x.receipt_no == original.receipt_no && x.kind == Kind::Sale) {
            o.reversed = true;
        }
        s.journal.push(txn.clone());
    }
    send_receipts(link, t, &receipt_lines(t, &txn, 0)).await?;
    send_for_ack(link, t, completion()).await?;
    Ok(())
}

async fn end_of_day(link: &mut Line, t: &Terminal) -> Result<(), Stop> {
    send(link, Message::Ack).await?;
    send_for_ack(link, t, intermediate(0x17)).await?;
    let (count, total, refunds) = {
        let s = t.state.lock().unwrap();
        let batch = &s.journal[s.batch_start..];
        let sales: Vec<&Txn> = batch.iter().filter(|x| x.kind == Kind::Sale && !x.reversed).collect();
        let refunds: u64 = batch.iter().filter(|x| x.kind == Kind::Refund).map(|x| x.amount).sum();
        (sales.len(), sales.iter().map(|x| x.amount).sum::<u64>(), refunds)
    };
    let net = total.saturating_sub(refunds);
    let result: Bmps = [
        Bmp::result_code(0),
        Bmp::amount(net),
        Bmp::currency(978),
        Bmp::trace(0),
        Bmp::time(23, 0, 0),
        Bmp::date(11, 26),
    ]
    .into_iter()
    .collect();
    if !matches!(send_for_ack(link, t, Message::StatusInformation(result)).await?, Answer::Ack) {
        return Ok(());
    }
    {
        let mut s = t.state.lock().unwrap();
        s.batch_start = s.journal.len();
    }
    let lines = vec![
        format!("{:^24}", "Kassenschnitt"),
        format!("Terminal-ID {:>12}", t.opts.terminal_id),
        format!("Umsaetze {count:>15}"),
        format!("Summe EUR {:>11},{:02}", total / 100, total % 100),
        format!("Gutschriften EUR {:>4},{:02}", refunds / 100, refunds % 100),
        "Kassenschnitt erfolgreich".into(),
    ];
    send_receipts(link, t, &lines).await?;
    send_for_ack(link, t, completion()).await?;
    Ok(())
}

/// The last transaction's result and receipt again.
async fn repeat_receipt(link: &mut Line, t: &Terminal) -> Result<(), Stop> {
    if !t.opts.repeat_receipt {
        return Ok(send(link, Message::Nak(0x83)).await?);
    }
    send(link, Message::Ack).await?;
    let last = t.state.lock().unwrap().journal.last().cloned();
    let Some(txn) = last else {
        send_for_ack(link, t, abort(0x83)).await?;
        return Ok(());
    };
    let mut result = status_information(t, &txn, 0);
    if let (Message::StatusInformation(f), Kind::AutoReversal(of) | Kind::Reversal(of)) = (&mut result, txn.kind) {
        f.fields.push(Bmp::new(0x3C, format!("STORNO {of}").into_bytes()));
    }
    if !matches!(send_for_ack(link, t, result).await?, Answer::Ack) {
        return Ok(());
    }
    send_receipts(link, t, &receipt_lines(t, &txn, 0)).await?;
    send_for_ack(link, t, completion()).await?;
    Ok(())
}

/// A frame's meaning for the transcript. Fields that hold card data
/// (tracks, chip data) are blanked in the frame shown; the masked card
/// number is kept, and the transcript masks anything that still looks like
/// a card number.
pub fn describe(_dir: Dir, apdu: &[u8]) -> Described {
    let msg = match Message::decode(apdu) {
        Ok(m) => m,
        Err(e) => return format!("undecodable: {e}").into(),
    };
    let name = msg.name();
    let fields = |b: &Bmps| {
        let mut parts = Vec::new();
        if let Some(rc) = b.result_code() {
            parts.push(format!("result {rc:02X} {}", pos_zvt::codes::result_text(rc)));
        }
        if let Some(a) = b.amount() {
            parts.push(format!("amount {a}"));
        }
        if let Some(pan) = b.masked_pan() {
            parts.push(format!("card {pan}"));
        }
        if let Some(n) = b.card_name() {
            parts.push(n);
        }
        if let Some(r) = b.receipt_no() {
            parts.push(format!("receipt {r}"));
        }
        if let Some(t) = b.trace() {
            parts.push(format!("trace {t}"));
        }
        if let Some(u) = &b.unparsed {
            parts.push(format!("{} bytes unparsed", u.bytes.len()));
        }
        parts.join(", ")
    };
    let meaning = match &msg {
        Message::StatusInformation(b) | Message::Authorization(b) => format!("{name}: {}", fields(b)),
        Message::Intermediate(i) => format!("{name}: {}", pos_zvt::codes::intermediate_text(i.status)),
        Message::Abort(a) => format!("{name}: {:02X} {}", a.result_code, pos_zvt::codes::result_text(a.result_code)),
        Message::Nak(code) => format!("{name} {code:02X}"),
        Message::PrintLine(p) => format!("{name}: {:?}", p.text),
        _ => name.to_string(),
    };
    let blanked = match msg {
        Message::StatusInformation(mut b) if b.fields.iter().any(|f| pos_zvt::bmp::is_sensitive(f.tag)) => {
            for f in b.fields.iter_mut().filter(|f| pos_zvt::bmp::is_sensitive(f.tag)) {
                f.data.fill(0xFF);
            }
            Message::StatusInformation(b).encode().ok()
        }
        _ => None,
    };
    Described { meaning, blanked, bcd: true }
}

/// Technician commands, one per line (see [`Terminal::command`]).
pub async fn control(listener: tokio::net::TcpListener, t: Arc<Terminal>) {
    crate::control::serve(listener, t, |t, line| t.command(line).map(|()| t.status_line())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcript_never_sees_track_data_and_knows_the_fields() {
        let fields: Bmps = [
            Bmp::result_code(0),
            Bmp::amount(1000),
            Bmp::masked_pan("424242******4242"),
            Bmp::new(0x23, vec![0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0xD3, 0x01, 0x22]),
        ]
        .into_iter()
        .collect();
        let apdu = Message::StatusInformation(fields).encode().unwrap();
        let d = describe(Dir::Out, &apdu);
        let shown = d.blanked.expect("track data blanked");
        assert_eq!(shown.len(), apdu.len());
        assert!(shown.ends_with(&[0xFF; 11]), "{shown:02X?}");
        assert!(d.bcd);
        assert!(d.meaning.contains("result 00") && d.meaning.contains("amount 1000"), "{}", d.meaning);
        assert!(d.meaning.contains("424242******4242"), "{}", d.meaning);
    }

    #[test]
    fn scenarios_parse() {
        assert_eq!(Scenario::parse(&["decline", "51"]), Ok(Scenario::Decline(0x51)));
        assert_eq!(Scenario::parse(&["init-required"]), Ok(Scenario::InitRequired));
        assert!(Scenario::parse(&["nonsense"]).unwrap_err().contains("one of"));
    }
}
