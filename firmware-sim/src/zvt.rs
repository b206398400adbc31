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

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use pos_link::{Link, LinkError};
use pos_zvt::message::{Abort, Completion, Intermediate, Password, PrintLine, Registration, WithPassword, config};
use pos_zvt::tlv::{self, Tlv};
use pos_zvt::{Bmp, Bmps, Message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
            ["init-required"] => Scenario::InitRequired,
            other => {
                return Err(format!(
                    "unknown scenario {other:?}; one of: approve, decline [HEX], cancel, offline, busy, slow, disconnect, init-required"
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

/// Line faults armed by a technician; each fires once.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineFaults {
    /// Serial: the next frame from the register gets no ACK.
    pub drop_ack: bool,
    /// Serial: the next frame to the register has a wrong CRC.
    pub bad_crc: bool,
    /// TCP: the next 80 00 waits for the APDU after it and leaves in the same segment.
    pub coalesce: bool,
}

pub struct Terminal {
    pub opts: ZvtOptions,
    scenario: Mutex<Scenario>,
    state: Mutex<State>,
    pub faults: Arc<Mutex<LineFaults>>,
}

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
            state: Mutex::new(state),
            faults: Arc::new(Mutex::new(LineFaults::default())),
        })
    }

    pub fn scenario(&self) -> Scenario {
        *self.scenario.lock().unwrap()
    }

    pub fn journal(&self) -> Vec<Txn> {
        self.state.lock().unwrap().journal.clone()
    }

    pub fn status_line(&self) -> String {
        let s = self.state.lock().unwrap();
        let f = *self.faults.lock().unwrap();
        format!(
            "scenario {:?}; {}; {} transactions ({} in the batch); faults: drop-ack {}, bad-crc {}, coalesce {}",
            self.scenario(),
            if s.registered.is_some() { "registered" } else { "not registered" },
            s.journal.len(),
            s.journal.len() - s.batch_start,
            f.drop_ack,
            f.bad_crc,
            f.coalesce
        )
    }

    /// A technician command: `scenario ...`, `fault drop-ack|bad-crc|coalesce`, `status`.
    pub fn command(&self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(()),
            ["scenario", rest @ ..] => {
                *self.scenario.lock().unwrap() = Scenario::parse(rest)?;
                Ok(())
            }
            ["fault", which] => {
                let mut f = self.faults.lock().unwrap();
                match *which {
                    "drop-ack" => f.drop_ack = true,
                    "bad-crc" => f.bad_crc = true,
                    "coalesce" => f.coalesce = true,
                    "none" => *f = LineFaults::default(),
                    other => return Err(format!("unknown fault {other:?}; one of drop-ack, bad-crc, coalesce, none")),
                }
                Ok(())
            }
            _ => Err(format!(
                "unknown command {line:?}; try: scenario NAME, fault drop-ack|bad-crc|coalesce|none, status"
            )),
        }
    }
}

/// Serves one register connection until the line ends; returns why.
pub async fn serve(mut link: Link, t: Arc<Terminal>) -> String {
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

async fn send(link: &Link, m: Message) -> Result<(), LinkError> {
    link.send(m.encode().expect("the simulator builds valid messages")).await
}

/// Sends a message that the register must acknowledge and waits (T3).
async fn send_for_ack(link: &mut Link, t: &Terminal, m: Message) -> Result<Answer, Stop> {
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
async fn pause(link: &mut Link, d: Duration) -> Result<bool, Stop> {
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

fn wrong_password(link: &Link, got: Password, t: &Terminal) -> Option<impl Future<Output = Result<(), LinkError>>> {
    (got != t.opts.password).then(|| send(link, Message::Nak(0x9A)))
}

async fn handle(link: &mut Link, t: &Arc<Terminal>, msg: Message) -> Result<(), Stop> {
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

async fn register(link: &mut Link, t: &Terminal, r: Registration) -> Result<(), Stop> {
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
async fn transaction(link: &mut Link, t: &Terminal, kind: Kind, amount: u64) -> Result<(), Stop> {
    let scenario = t.scenario();
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
            // Once: the terminal comes back as it was.
            *t.scenario.lock().unwrap() = Scenario::Approve;
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
    let answer = match send_for_ack(link, t, result).await {
        Ok(a) => a,
        Err(e) => {
            // The register vanished after the result went out: unconfirmed.
            if rc == 0 {
                if t.opts.keep_unconfirmed {
                    t.state.lock().unwrap().journal.push(txn);
                } else {
                    auto_reverse(t, txn);
                }
            }
            return Err(e);
        }
    };
    match answer {
        Answer::Ack => {}
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
                if t.opts.keep_unconfirmed {
                    t.state.lock().unwrap().journal.push(txn);
                } else {
                    auto_reverse(t, txn);
                }
            }
            return Ok(());
        }
    }
    if rc == 0 {
        t.state.lock().unwrap().journal.push(txn.clone());
    }
    send_receipts(link, t, &receipt_lines(t, &txn, rc)).await?;
    if rc == 0 {
        send_for_ack(link, t, completion()).await?;
    } else {
        send_for_ack(link, t, abort(rc)).await?;
    }
    Ok(())
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
async fn send_receipts(link: &mut Link, t: &Terminal, lines: &[String]) -> Result<(), Stop> {
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

async fn reversal(link: &mut Link, t: &Terminal, w: WithPassword) -> Result<(), Stop> {
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

async fn end_of_day(link: &mut Link, t: &Terminal) -> Result<(), Stop> {
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
async fn repeat_receipt(link: &mut Link, t: &Terminal) -> Result<(), Stop> {
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

/// Technician commands, one per line (see [`Terminal::command`]).
pub async fn control(listener: tokio::net::TcpListener, t: Arc<Terminal>) {
    crate::control::serve(listener, t, |t, line| t.command(line).map(|()| t.status_line())).await;
}

/// The terminal's side of the line, with the armed faults applied to what
/// it writes: a dropped link-level ACK, a corrupted frame CRC (serial), or
/// an `80 00` held back to share a segment with the next APDU (TCP).
pub struct FaultyIo<S> {
    inner: S,
    faults: Arc<Mutex<LineFaults>>,
    serial: bool,
    /// Serial frame tracking: inside a frame, after a DLE, CRC bytes left.
    in_frame: bool,
    after_dle: bool,
    crc_left: u8,
    /// TCP: a held-back 80 00.
    held: Vec<u8>,
    /// Bytes of the current write still to pass on (after manipulation).
    pending: Vec<u8>,
    /// How many input bytes `pending` stands for.
    pending_input: usize,
}

impl<S> FaultyIo<S> {
    pub fn new(inner: S, faults: Arc<Mutex<LineFaults>>, serial: bool) -> Self {
        FaultyIo {
            inner,
            faults,
            serial,
            in_frame: false,
            after_dle: false,
            crc_left: 0,
            held: Vec::new(),
            pending: Vec::new(),
            pending_input: 0,
        }
    }

    fn transform(&mut self, buf: &[u8]) -> Vec<u8> {
        let mut f = self.faults.lock().unwrap();
        if !self.serial {
            if buf == [0x80, 0x00, 0x00] && f.coalesce && self.held.is_empty() {
                f.coalesce = false;
                tracing::warn!("zvt: holding 80 00 back to send it with the next APDU");
                self.held = buf.to_vec();
                return Vec::new();
            }
            let mut out = std::mem::take(&mut self.held);
            out.extend_from_slice(buf);
            return out;
        }
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            if self.crc_left > 0 {
                self.crc_left -= 1;
                if self.crc_left == 0 {
                    self.in_frame = false;
                    if f.bad_crc {
                        f.bad_crc = false;
                        tracing::warn!("zvt: sending a frame with a corrupted CRC");
                        out.push(b ^ 0xFF);
                        continue;
                    }
                }
                out.push(b);
                continue;
            }
            if !self.in_frame {
                if b == 0x06 && !self.after_dle && f.drop_ack {
                    f.drop_ack = false;
                    tracing::warn!("zvt: dropping a link-level ACK");
                    continue;
                }
                if self.after_dle && b == 0x02 {
                    self.in_frame = true;
                }
                self.after_dle = b == 0x10 && !self.after_dle;
                out.push(b);
                continue;
            }
            if self.after_dle {
                self.after_dle = false;
                if b == 0x03 {
                    self.crc_left = 2;
                }
            } else if b == 0x10 {
                self.after_dle = true;
            }
            out.push(b);
        }
        out
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultyIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultyIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            this.pending = this.transform(buf);
            this.pending_input = buf.len();
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(n)) => {
                    this.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut this.pending_input)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse() {
        assert_eq!(Scenario::parse(&["decline", "51"]), Ok(Scenario::Decline(0x51)));
        assert_eq!(Scenario::parse(&["init-required"]), Ok(Scenario::InitRequired));
        assert!(Scenario::parse(&["nonsense"]).unwrap_err().contains("one of"));
    }

    #[test]
    fn faults_fire_once_on_the_right_bytes() {
        let faults = Arc::new(Mutex::new(LineFaults { drop_ack: true, bad_crc: true, coalesce: false }));
        let mut io = FaultyIo::new((), faults.clone(), true);
        let frame = pos_link::frame::encode_frame(&[0x80, 0x00, 0x00]);
        // An ACK, then a frame: the ACK is dropped, the frame's last CRC byte flipped.
        let out = io.transform(&[&[0x06][..], &frame].concat());
        assert_eq!(out.len(), frame.len());
        assert_eq!(&out[..frame.len() - 1], &frame[..frame.len() - 1]);
        assert_ne!(out.last(), frame.last());
        // Fired once: the next ACK and frame pass untouched.
        assert_eq!(io.transform(&[&[0x06][..], &frame].concat()), [&[0x06][..], &frame].concat());
        let f = *faults.lock().unwrap();
        assert!(!f.drop_ack && !f.bad_crc);
    }
}
