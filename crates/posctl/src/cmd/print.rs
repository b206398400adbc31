//! How posctl shows posd's answers: payments and refunds as a line of text
//! or as JSON, and the names of posd's enums and timestamps in both.

use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};

use crate::money;

pub(crate) fn print_payment(p: &pb::Payment, json: bool) {
    if json {
        outln!("{:#}", payment_json(p));
    } else {
        outln!("{}", summary(p));
    }
}

pub(crate) fn enum_name(name: Result<&str, prost::UnknownEnumValue>, prefix: &str) -> String {
    name.map(|n| n.trim_start_matches(prefix).to_lowercase()).unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn status_name(v: i32) -> String {
    enum_name(pb::PaymentStatus::try_from(v).map(|s| s.as_str_name()), "PAYMENT_STATUS_")
}

/// A protobuf timestamp in RFC 3339, UTC (`2026-12-07T04:27:29.5Z`: the
/// fraction only as long as it needs); empty when there is none, or when it
/// falls before year 0, which RFC 3339 cannot write.
pub(crate) fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    /// 0000-01-01T00:00:00Z in seconds since the Unix epoch.
    const YEAR_0: i64 = -62_167_219_200;
    let Some(t) = t else { return String::new() };
    jiff::Timestamp::from_second(t.seconds)
        .and_then(|d| d.checked_add(jiff::SignedDuration::from_nanos(i64::from(t.nanos))))
        .ok()
        .filter(|d| d.as_second() >= YEAR_0)
        .map(|d| d.to_string())
        .unwrap_or_default()
}

pub(crate) fn refund_status(r: &pb::Refund) -> String {
    enum_name(pb::RefundStatus::try_from(r.status).map(|s| s.as_str_name()), "REFUND_STATUS_")
}

/// A refund on one line: id, amount, status and why it failed.
fn refund_line(r: &pb::Refund) -> String {
    let amount = r.amount.as_ref().map(|m| money::format_amount(m.amount_minor, &m.currency)).unwrap_or_default();
    let why = r.failure.as_ref().map(|f| format!(": {} {}", f.code, f.message)).unwrap_or_default();
    format!("{}  {amount}  {}{why}", r.refund_id, refund_status(r).to_uppercase())
}

pub(crate) fn print_refund(r: &pb::Refund, json: bool) {
    if json {
        outln!("{:#}", refund_json(r));
    } else {
        outln!("{}", refund_line(r));
    }
}

fn refund_json(r: &pb::Refund) -> Value {
    json!({
        "refund_id": r.refund_id,
        "idempotency_key": r.idempotency_key,
        "payment_id": r.payment_id,
        "amount_minor": r.amount.as_ref().map(|m| m.amount_minor),
        "currency": r.amount.as_ref().map(|m| m.currency.clone()),
        "status": refund_status(r),
        "failure": r.failure.as_ref().map(|f| json!({"code": f.code, "message": f.message})),
        "reason": r.reason,
        "created_at": rfc3339(r.created_at.as_ref()),
        "updated_at": rfc3339(r.updated_at.as_ref()),
    })
}

/// What `posctl payment ID` shows under the summary: the gateway's key and
/// reference, the refunds, and what a payment terminal reported.
pub(crate) fn detail_lines(p: &pb::Payment) -> Vec<String> {
    let mut lines = Vec::new();
    if !p.gateway_key.is_empty() || !p.gateway_reference.is_empty() {
        let mut line = format!("  gateway key {}", p.gateway_key);
        if !p.gateway_reference.is_empty() {
            line += &format!("  reference {}", p.gateway_reference);
        }
        lines.push(line);
    }
    for r in &p.refunds {
        lines.push(format!("  refund {}", refund_line(r)));
    }
    if let Some(t) = &p.terminal {
        let mut line = format!("  payment terminal {}", t.terminal_tid);
        if t.receipt_no != 0 {
            line += &format!("  receipt {}", t.receipt_no);
        }
        if t.trace != 0 {
            line += &format!("  trace {}", t.trace);
        }
        if t.offline {
            line += "  approved offline by the terminal";
        }
        lines.push(line);
    }
    lines
}

pub(crate) fn summary(p: &pb::Payment) -> String {
    let amount = p.amount.as_ref().map(|m| money::format_amount(m.amount_minor, &m.currency)).unwrap_or_default();
    let demo = if p.demo { "  [DEMO]" } else { "" };
    let card = p.card.as_ref().map(|c| format!("  {} {}", c.brand, c.masked_pan)).unwrap_or_default();
    let outcome = if p.approved && p.offline && p.auth_code.is_empty() {
        "APPROVED OFFLINE (queued for the gateway)".to_string()
    } else if p.approved && p.offline {
        format!("APPROVED OFFLINE, forwarded, auth {}", p.auth_code)
    } else if p.approved {
        format!("APPROVED (online) auth {}", p.auth_code)
    } else if let Some(d) = &p.decline {
        format!("DECLINED {}: {}", d.code, d.message)
    } else if let Some(f) = &p.failure {
        format!("{} {}: {}", status_name(p.status).to_uppercase(), f.code, f.message)
    } else {
        status_name(p.status).to_uppercase()
    };
    let refunded = match &p.amount {
        Some(m) if p.refunded_minor > 0 => {
            format!("  refunded {}", money::format_amount(p.refunded_minor, &m.currency))
        }
        _ => String::new(),
    };
    format!("{}  {amount}  {outcome}{refunded}{card}{demo}", p.payment_id)
}

pub(crate) fn payment_json(p: &pb::Payment) -> Value {
    let card = p.card.as_ref().map(|c| {
        json!({
            "masked_pan": c.masked_pan,
            "brand": c.brand,
            "entry_mode": enum_name(pb::EntryMode::try_from(c.entry_mode).map(|e| e.as_str_name()), "ENTRY_MODE_"),
            "wallet": enum_name(pb::Wallet::try_from(c.wallet).map(|e| e.as_str_name()), "WALLET_"),
            "aid": c.aid,
            "application_label": c.application_label,
            "verification": enum_name(pb::CardholderVerification::try_from(c.verification).map(|e| e.as_str_name()), "CARDHOLDER_VERIFICATION_"),
        })
    });
    json!({
        "payment_id": p.payment_id,
        "idempotency_key": p.idempotency_key,
        "order_reference": p.order_reference,
        "terminal_id": p.terminal_id,
        "amount_minor": p.amount.as_ref().map(|m| m.amount_minor),
        "currency": p.amount.as_ref().map(|m| m.currency.clone()),
        "status": status_name(p.status),
        "approved": p.approved,
        "offline": p.offline,
        "captured_minor": p.captured_minor,
        "refunded_minor": p.refunded_minor,
        "capture_mode": enum_name(pb::CaptureMode::try_from(p.capture_mode).map(|e| e.as_str_name()), "CAPTURE_MODE_"),
        "card": card,
        "decline": p.decline.as_ref().map(|d| json!({"code": d.code, "message": d.message})),
        "failure": p.failure.as_ref().map(|f| json!({"code": f.code, "message": f.message})),
        "auth_code": p.auth_code,
        "gateway_key": p.gateway_key,
        "gateway_reference": p.gateway_reference,
        "demo": p.demo,
        "created_at": rfc3339(p.created_at.as_ref()),
        "updated_at": rfc3339(p.updated_at.as_ref()),
        "history": p.history.iter().map(|h| json!({
            "at": rfc3339(h.at.as_ref()),
            "from": (h.from != 0).then(|| status_name(h.from)),
            "to": status_name(h.to),
            "cause": h.cause,
        })).collect::<Vec<_>>(),
        "refunds": p.refunds.iter().map(refund_json).collect::<Vec<_>>(),
        "terminal": p.terminal.as_ref().map(|t| json!({
            "terminal_tid": t.terminal_tid,
            "receipt_no": (t.receipt_no != 0).then_some(t.receipt_no),
            "trace": (t.trace != 0).then_some(t.trace),
            "offline": t.offline,
            "receipt_lines": t.receipt_lines,
            // nexo terminals.
            "poi_transaction_id": (!t.poi_transaction_id.is_empty()).then_some(&t.poi_transaction_id),
            "poi_time_stamp": (!t.poi_time_stamp.is_empty()).then_some(&t.poi_time_stamp),
            "sale_id": (!t.sale_id.is_empty()).then_some(&t.sale_id),
            "service_id": (!t.service_id.is_empty()).then_some(&t.service_id),
            "approval_code": (!t.service_id.is_empty() && !p.auth_code.is_empty()).then_some(&p.auth_code),
        })),
    })
}
