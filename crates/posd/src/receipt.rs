//! Receipts: what a payment's customer and merchant copies say, as ESC/POS.

use pos_engine::Status;
use pos_escpos::{Align, Receipt, Width};

use crate::store::{PaymentRecord, RefundStatus};

/// The store's lines around every receipt, and the paper.
#[derive(Debug, Clone)]
pub struct ReceiptSettings {
    pub header: Vec<String>,
    pub footer: Vec<String>,
    pub tz: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Copy {
    Customer,
    Merchant,
}

impl Copy {
    pub fn name(self) -> &'static str {
        match self {
            Copy::Customer => "customer",
            Copy::Merchant => "merchant",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Copy::Customer => "Customer copy",
            Copy::Merchant => "Merchant copy",
        }
    }
}

/// What the receipt is for: the sale's outcome, or an operation on it.
fn title(rec: &PaymentRecord) -> &'static str {
    match rec.status {
        Status::Declined | Status::OfflineDeclined => "DECLINED",
        Status::Voided | Status::Reversed => "VOID",
        Status::Canceled => "CANCELED",
        Status::Failed | Status::Expired | Status::Quarantined => "NOT PAID",
        _ if rec.status.is_approved() => "SALE",
        _ => "PENDING",
    }
}

fn entry_mode(v: i32) -> &'static str {
    match v {
        1 => "chip",
        2 => "contactless",
        3 => "swipe",
        4 => "manual entry",
        _ => "",
    }
}

/// The store's header lines, with the demo and reprint markings.
fn header(r: &mut Receipt, s: &ReceiptSettings, demo: bool, reprint: bool) {
    r.align(Align::Center).bold(true);
    for (i, line) in s.header.iter().enumerate() {
        if i == 0 {
            r.size(2, 2).line(line).size(1, 1);
        } else {
            r.line(line);
        }
    }
    r.bold(false);
    if demo {
        r.bold(true).line("*** DEMO - NO MONEY MOVED ***").bold(false);
    }
    if reprint {
        r.line("* REPRINT *");
    }
}

fn footer(r: &mut Receipt, s: &ReceiptSettings) {
    for line in &s.footer {
        r.line(line);
    }
    r.feed(3).cut();
}

/// A payment's receipt. Refunds are listed with their own amounts. A
/// payment terminal's own receipt lines (ZVT), when it sent any, are
/// printed as sent instead of posd's card details.
pub fn payment_receipt(
    s: &ReceiptSettings,
    width: Width,
    rec: &PaymentRecord,
    refunds: &[crate::store::RefundRecord],
    copy: Copy,
    reprint: bool,
    terminal_lines: &[String],
) -> Receipt {
    let mut r = Receipt::new(width);
    header(&mut r, s, rec.demo, reprint);
    if !terminal_lines.is_empty() {
        r.feed(1).align(Align::Left);
        for line in terminal_lines {
            r.line(line);
        }
        r.rule('-').align(Align::Center).line(copy.label());
        footer(&mut r, s);
        return r;
    }
    r.feed(1).size(2, 1).bold(true).line(title(rec)).bold(false).size(1, 1);
    if rec.offline && rec.status.is_approved() {
        r.line("OFFLINE - approved by the terminal,");
        r.line("sent to the bank later");
    }
    r.align(Align::Left).rule('-');
    let at = jiff::Timestamp::from_millisecond(rec.created_at_ms)
        .map(|t| s.tz.to_datetime(t).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    r.columns2("Date", &at);
    r.columns2("Terminal", &rec.terminal_id);
    r.columns2("Transaction", &rec.id);
    if let Some(card) = &rec.card {
        r.columns2("Card", &card.masked_pan);
        r.columns2("Brand", &card.brand.to_uppercase());
        let mode = entry_mode(card.entry_mode);
        if !mode.is_empty() {
            r.columns2("Entry", mode);
        }
        if !card.aid.is_empty() {
            r.columns2("AID", &card.aid);
        }
        if !card.application_label.is_empty() {
            r.columns2("Application", &card.application_label);
        }
    }
    if !rec.auth_code.is_empty() {
        r.columns2("Auth code", &rec.auth_code);
    }
    if !rec.order_reference.is_empty() {
        r.columns2("Order", &rec.order_reference);
    }
    r.rule('-').bold(true).size(1, 2);
    r.columns2("TOTAL", &pos_engine::money::format(rec.amount_minor, &rec.currency));
    r.size(1, 1).bold(false);
    for refund in refunds.iter().filter(|f| f.status == RefundStatus::Succeeded) {
        r.columns2("Refunded", &format!("-{}", pos_engine::money::format(refund.amount_minor, &refund.currency)));
    }
    if !rec.status.is_approved() && !rec.reason_message.is_empty() {
        r.line(&rec.reason_message);
    }
    let signature = rec.card.as_ref().is_some_and(|c| c.verification == 3);
    if copy == Copy::Merchant && signature && rec.status.is_approved() {
        r.feed(2).line("Signature:").feed(2).rule('_');
    }
    r.feed(1).align(Align::Center).line(copy.label());
    footer(&mut r, s);
    r
}

/// The end-of-day slip: the batch's totals per currency, and the payment
/// terminal's own slip lines (ZVT) as sent.
pub fn end_of_day_slip(
    s: &ReceiptSettings,
    width: Width,
    b: &pos_proto::terminal::BatchSummary,
    terminal_lines: &[String],
) -> Receipt {
    let mut r = Receipt::new(width);
    header(&mut r, s, false, false);
    r.feed(1).size(2, 1).bold(true).line("END OF DAY").bold(false).size(1, 1);
    r.align(Align::Left).rule('-');
    let at = b
        .closed_at
        .as_ref()
        .and_then(|t| jiff::Timestamp::from_second(t.seconds).ok())
        .map(|t| s.tz.to_datetime(t).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    r.columns2("Date", &at);
    r.columns2("Terminal", &b.terminal_id);
    r.columns2("Batch", &b.batch_id);
    r.rule('-');
    if b.totals.is_empty() {
        r.line("Nothing to settle");
    }
    for t in &b.totals {
        r.columns2(&format!("Payments ({})", t.count), &pos_engine::money::format(t.captured_minor, &t.currency));
        if t.refunded_minor != 0 {
            r.columns2("Refunds", &format!("-{}", pos_engine::money::format(t.refunded_minor, &t.currency)));
        }
        r.bold(true).columns2("NET", &pos_engine::money::format(t.captured_minor - t.refunded_minor, &t.currency));
        r.bold(false);
    }
    if b.offline_unsent > 0 {
        r.line(&format!("{} offline payments not yet forwarded", b.offline_unsent));
    }
    if !terminal_lines.is_empty() {
        r.rule('-');
        for line in terminal_lines {
            r.line(line);
        }
    }
    r.rule('-');
    footer(&mut r, s);
    r
}
