//! Records, engine and telemetry types to and from the register API's protobuf types.

use pos_engine::Status;
use pos_engine::payment::Stage as ReaderStage;
use pos_proto::terminal as pb;
use prost_types::Timestamp;

use crate::store::{CardInfo, HistoryEntry, PaymentRecord, RefundStatus};

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn millis(t: &Timestamp) -> i64 {
    t.seconds * 1000 + (t.nanos as i64) / 1_000_000
}

/// The seconds a `google.protobuf.Timestamp` may hold: 0001-01-01T00:00:00Z
/// to 9999-12-31T23:59:59Z.
pub const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// Unix milliseconds of a timestamp a client sent; `None` when it is not a
/// time (seconds out of [`TIMESTAMP_SECONDS`], nanos out of 0 to 999,999,999).
pub fn checked_millis(t: &Timestamp) -> Option<i64> {
    (TIMESTAMP_SECONDS.contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos)).then(|| millis(t))
}

pub fn status(s: Status) -> pb::PaymentStatus {
    use pb::PaymentStatus as P;
    match s {
        Status::Created => P::Created,
        Status::Collecting => P::Collecting,
        Status::CardRead => P::CardRead,
        Status::Authorizing => P::Authorizing,
        Status::Confirming => P::Confirming,
        Status::Unknown => P::Unknown,
        Status::Authorized => P::Authorized,
        Status::Captured => P::Captured,
        Status::Declined => P::Declined,
        Status::Canceled => P::Canceled,
        Status::Failed => P::Failed,
        Status::ReversalPending => P::ReversalPending,
        Status::Reversed => P::Reversed,
        Status::OfflineApproved => P::OfflineApproved,
        Status::Forwarding => P::Forwarding,
        Status::OfflineDeclined => P::OfflineDeclined,
        Status::Quarantined => P::Quarantined,
        Status::Expired => P::Expired,
        Status::Voided => P::Voided,
    }
}

pub fn status_from_proto(p: pb::PaymentStatus) -> Option<Status> {
    Status::ALL.into_iter().find(|s| status(*s) == p)
}

/// The stage the register shows for a status.
pub fn stage(s: Status) -> pb::PaymentStage {
    use pb::PaymentStage as S;
    match s {
        Status::Created | Status::Collecting => S::PresentCard,
        Status::CardRead | Status::Authorizing | Status::Confirming | Status::Unknown => S::Authorizing,
        Status::Authorized | Status::Captured => S::Approved,
        Status::OfflineApproved | Status::Forwarding | Status::Quarantined => S::Approved,
        Status::Declined | Status::OfflineDeclined => S::Declined,
        Status::Canceled | Status::Voided => S::Canceled,
        Status::Failed | Status::ReversalPending | Status::Reversed | Status::Expired => S::Failed,
    }
}

/// The reader's progress as the card-reader payment machine knows it.
pub fn reader_stage(s: pos_proto::reader::Stage) -> ReaderStage {
    use pos_proto::reader::Stage as R;
    match s {
        R::PresentCard | R::Unspecified => ReaderStage::PresentCard,
        R::Reading | R::RemoveCard => ReaderStage::Reading,
        R::PinEntry => ReaderStage::PinEntry,
    }
}

/// What the register is shown for a stage of the card-reader payment machine.
pub fn payment_stage(s: ReaderStage) -> pb::PaymentStage {
    match s {
        ReaderStage::PresentCard => pb::PaymentStage::PresentCard,
        ReaderStage::Reading => pb::PaymentStage::Reading,
        ReaderStage::PinEntry => pb::PaymentStage::PinEntry,
        ReaderStage::Authorizing => pb::PaymentStage::Authorizing,
        ReaderStage::Failed => pb::PaymentStage::Failed,
    }
}

pub fn entry_mode(r: i32) -> pb::EntryMode {
    use pos_proto::reader::EntryMode as R;
    match R::try_from(r).unwrap_or(R::Unspecified) {
        R::Unspecified => pb::EntryMode::Unspecified,
        R::Chip => pb::EntryMode::Chip,
        R::Contactless => pb::EntryMode::Contactless,
        R::Swipe => pb::EntryMode::Swipe,
        R::Manual => pb::EntryMode::Manual,
    }
}

pub fn gateway_entry_mode(m: pb::EntryMode) -> pos_proto::gateway::EntryMode {
    use pos_proto::gateway::EntryMode as G;
    match m {
        pb::EntryMode::Unspecified => G::Unspecified,
        pb::EntryMode::Chip => G::Chip,
        pb::EntryMode::Contactless => G::Contactless,
        pb::EntryMode::Swipe => G::Swipe,
        pb::EntryMode::Manual => G::Manual,
    }
}

pub fn wallet(r: i32) -> pb::Wallet {
    use pos_proto::reader::Wallet as R;
    match R::try_from(r).unwrap_or(R::None) {
        R::None => pb::Wallet::None,
        R::ApplePay => pb::Wallet::ApplePay,
        R::GooglePay => pb::Wallet::GooglePay,
    }
}

pub fn verification(r: i32) -> pb::CardholderVerification {
    use pb::CardholderVerification as C;
    use pos_proto::reader::Verification as R;
    match R::try_from(r).unwrap_or(R::Unspecified) {
        R::Unspecified => C::Unspecified,
        R::OnlinePin => C::OnlinePin,
        R::OfflinePin => C::OfflinePin,
        R::Signature => C::Signature,
        R::NoCvm => C::NoCvm,
        R::ConsumerDevice => C::ConsumerDevice,
    }
}

fn card(c: &CardInfo) -> pb::Card {
    pb::Card {
        masked_pan: c.masked_pan.clone(),
        brand: c.brand.clone(),
        entry_mode: c.entry_mode,
        wallet: c.wallet,
        aid: c.aid.clone(),
        application_label: c.application_label.clone(),
        verification: c.verification,
    }
}

pub fn payment(r: &PaymentRecord, history: &[HistoryEntry]) -> pb::Payment {
    let (decline, failure) = match r.status {
        Status::Declined | Status::OfflineDeclined => {
            (Some(pb::Decline { code: r.reason_code.clone(), message: r.reason_message.clone() }), None)
        }
        Status::Failed
        | Status::ReversalPending
        | Status::Reversed
        | Status::Canceled
        | Status::Quarantined
        | Status::Expired
        | Status::Voided => {
            (None, Some(pb::Failure { code: r.reason_code.clone(), message: r.reason_message.clone() }))
        }
        _ => (None, None),
    };
    pb::Payment {
        payment_id: r.id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        order_reference: r.order_reference.clone(),
        terminal_id: r.terminal_id.clone(),
        amount: Some(pb::Money { amount_minor: r.amount_minor, currency: r.currency.clone() }),
        capture_mode: if r.manual_capture { pb::CaptureMode::Manual } else { pb::CaptureMode::Automatic } as i32,
        status: status(r.status) as i32,
        card: r.card.as_ref().map(card),
        decline,
        failure,
        auth_code: r.auth_code.clone(),
        gateway_reference: r.gateway_reference.clone(),
        demo: r.demo,
        created_at: Some(timestamp(r.created_at_ms)),
        updated_at: Some(timestamp(r.updated_at_ms)),
        history: history
            .iter()
            .map(|h| pb::PaymentTransition {
                at: Some(timestamp(h.at_ms)),
                from: h.from.map_or(pb::PaymentStatus::Unspecified as i32, |s| status(s) as i32),
                to: status(h.to) as i32,
                cause: h.cause.clone(),
            })
            .collect(),
        approved: r.status.is_approved(),
        offline: r.offline,
        captured_minor: r.captured_minor,
        refunded_minor: 0,
        refunds: vec![],
        terminal: None,
        gateway_key: r.gateway_key.clone(),
    }
}

/// What a payment terminal reported, for the register.
pub fn terminal(t: &crate::store::TerminalResult) -> pb::TerminalAuthorization {
    pb::TerminalAuthorization {
        receipt_no: t.receipt_no.map_or(0, u32::from),
        trace: t.trace.unwrap_or(0),
        terminal_tid: t.terminal_tid.clone(),
        offline: t.offline,
        receipt_lines: t.lines.clone(),
        poi_transaction_id: t.poi_transaction_id.clone(),
        poi_time_stamp: t.poi_time_stamp.clone(),
        // The payment's, from the store beside the result (`api`).
        sale_id: String::new(),
        service_id: String::new(),
    }
}

/// Text for the register's display.
pub fn status_message(r: &PaymentRecord) -> String {
    let demo = if r.demo { " (DEMO)" } else { "" };
    match r.status {
        Status::Created | Status::Collecting => format!("Present card{demo}"),
        Status::CardRead | Status::Authorizing | Status::Confirming => format!("Authorizing{demo}"),
        Status::Unknown => format!("Outcome unknown: posd is settling it; do not take this payment again{demo}"),
        Status::Authorized | Status::Captured if r.offline => format!("Approved (offline, forwarded){demo}"),
        Status::Authorized | Status::Captured => format!("Approved{demo}"),
        Status::OfflineApproved | Status::Forwarding => format!("Approved OFFLINE{demo}"),
        Status::Quarantined => format!("Approved OFFLINE; held for review: {}{demo}", r.reason_message),
        Status::Declined => format!("Declined: {}{demo}", r.reason_message),
        Status::OfflineDeclined => {
            format!("Approved offline, then declined by the gateway: {}{demo}", r.reason_message)
        }
        Status::Canceled => format!("Canceled{demo}"),
        Status::Voided => format!("Voided{demo}"),
        Status::Expired => format!("Approved offline, expired unsent{demo}"),
        Status::Failed | Status::ReversalPending | Status::Reversed => format!("Not paid: {}{demo}", r.reason_message),
    }
}

pub fn event(e: &crate::store::EventRecord) -> pb::TerminalEvent {
    pb::TerminalEvent {
        cursor: e.cursor as u64,
        at: Some(timestamp(e.at_ms)),
        kind: e.kind.as_str().to_string(),
        terminal_id: e.terminal_id.clone(),
        payment_id: e.payment_id.clone(),
        message: e.message.clone(),
    }
}

pub fn sync_status(r: &crate::telemetry::SyncReport) -> pb::SyncStatus {
    pb::SyncStatus {
        online: r.online,
        queue_depth: r.queue_depth,
        stored_totals: r
            .totals
            .iter()
            .map(|(currency, amount_minor)| pb::Money { amount_minor: *amount_minor, currency: currency.clone() })
            .collect(),
        oldest_age_s: r.oldest_age.as_secs(),
        last_error: r.last_error.clone(),
        paused: r.paused,
        quarantined: r.quarantined,
        last_online_at: r.last_online_ms.map(timestamp),
    }
}

pub fn refund(r: &crate::store::RefundRecord) -> pb::Refund {
    let status = match r.status {
        RefundStatus::Pending => pb::RefundStatus::Pending,
        RefundStatus::Succeeded => pb::RefundStatus::Succeeded,
        RefundStatus::Failed => pb::RefundStatus::Failed,
    };
    pb::Refund {
        refund_id: r.id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        payment_id: r.payment_id.clone(),
        amount: Some(pb::Money { amount_minor: r.amount_minor, currency: r.currency.clone() }),
        status: status as i32,
        failure: (r.status == RefundStatus::Failed)
            .then(|| pb::Failure { code: r.failure_code.clone(), message: r.failure_message.clone() }),
        reason: r.reason.clone(),
        created_at: Some(timestamp(r.created_at_ms)),
        updated_at: Some(timestamp(r.updated_at_ms)),
    }
}

/// Adds a payment's refunds and refunded total.
pub fn with_refunds(mut p: pb::Payment, refunds: &[crate::store::RefundRecord]) -> pb::Payment {
    p.refunded_minor = refunds.iter().filter(|r| r.status == RefundStatus::Succeeded).map(|r| r.amount_minor).sum();
    p.refunds = refunds.iter().map(refund).collect();
    p
}

/// A progress event of a payment.
pub fn payment_event(
    r: &PaymentRecord,
    stage: pb::PaymentStage,
    message: String,
    payment: pb::Payment,
) -> pb::PaymentEvent {
    pb::PaymentEvent {
        payment_id: r.id.clone(),
        stage: stage as i32,
        message,
        payment: Some(payment),
        at: Some(timestamp(crate::store::now_ms())),
    }
}

/// A lane's printer as the API shows it (`None`: no printer configured).
pub fn printer_status(p: Option<&crate::printer::PrinterStatus>) -> pb::PrinterStatus {
    let Some(p) = p else {
        return pb::PrinterStatus { detail: "no printer configured".into(), ..Default::default() };
    };
    let paper = match (p.connected, p.state.paper) {
        (false, _) => pb::PaperLevel::Unspecified,
        (true, pos_escpos::PaperLevel::Ok) => pb::PaperLevel::Ok,
        (true, pos_escpos::PaperLevel::NearEnd) => pb::PaperLevel::NearEnd,
        (true, pos_escpos::PaperLevel::Out) => pb::PaperLevel::Out,
    };
    pb::PrinterStatus {
        configured: true,
        connected: p.connected,
        ready: p.connected && p.state.ready(),
        paper: paper as i32,
        cover_open: p.state.cover_open,
        drawer_open: p.state.drawer_pin3_high,
        detail: p.describe(),
    }
}
