//! Receipts: what a payment's customer and merchant copies say, as ESC/POS.

use pos_engine::Status;
use pos_escpos::{Align, Receipt, Width};

use crate::store::PaymentRecord;

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

/// A payment's receipt. Refunds are listed with their own amounts.
pub fn payment_receipt(
    s: &ReceiptSettings,
    width: Width,
    rec: &PaymentRecord,
    refunds: &[crate::store::RefundRecord],
    copy: Copy,
    reprint: bool,
) -> Receipt {
    let mut r = Receipt::new(width);
    r.align(Align::Center).bold(true);
    for (i, line) in s.header.iter().enumerate() {
        if i == 0 {
            r.size(2, 2).line(line).size(1, 1);
        } else {
            r.line(line);
        }
    }
    r.bold(false);
    if rec.demo {
        r.bold(true).line("*** DEMO - NO MONEY MOVED ***").bold(false);
    }
    if reprint {
        r.line("* REPRINT *");
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
    for refund in refunds.iter().filter(|f| f.status == "succeeded") {
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
    for line in &s.footer {
        r.line(line);
    }
    r.feed(3).cut();
    r
}
