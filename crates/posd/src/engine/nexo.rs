//! Payments, refunds, reversals and end of day on a nexo terminal (issue
//! #23): the thin driver of `pos_engine::nexo` (`NexoPayment`, `AfterSale`),
//! as `engine/terminal` is of `TerminalPayment` for ZVT.
//!
//! The terminal is reached through [`NexoDevice`], implemented by
//! [`NexoTerminal`] (one HTTPS POST per exchange, encrypted, its answer
//! checked against the request), so the driver runs in one process with a
//! fake terminal under tokio's paused clock in tests.
//!
//! This file holds the seam and what every nexo driver shares: the
//! machines' settings and the mapping of `pos-nexo`'s messages to the
//! machines' plain structs (`Answer`, `StatusAnswer`) and to what the store
//! keeps (the card as the terminal masked it, its receipts), used by both
//! drivers. `payment` runs a payment and settles one in doubt at start-up;
//! `after_sale` runs voids, refunds, end of day and the reversals posd owes
//! (at once for the payment driver, and in the reversal worker's nexo pass).

use std::future::Future;
use std::time::Duration;

use pos_engine::nexo::{self as machine, Answer, Condition, PoiTransaction, StatusAnswer, TerminalResult};
use pos_nexo::codes::{DocumentQualifier, EntryMode, MessageCategory, ResultType};
use pos_nexo::payment::{PaymentReceipt, PaymentResponse};
use pos_nexo::receipt::Receipt;
use pos_nexo::reversal::ReversalResponse;
use pos_nexo::status::{StatusOutcome, TransactionStatusRequest};
use pos_nexo::{
    Decimal, MessageReference, RequestBody, Response, ResponseBody, SaleToPoiResponse, ServiceId,
    TransactionIdentification,
};
use pos_proto::terminal as pb;

use super::Engine;
use crate::nexo::terminal::{NexoError, NexoTerminal};
use crate::store::{CardInfo, TerminalData, TerminalResult as StoredResult};

mod after_sale;
mod payment;
#[cfg(test)]
mod tests;

/// What the engine needs of a lane's nexo terminal.
pub(crate) trait NexoDevice: Sync {
    /// The lane's SaleID (stable across restarts; ServiceIDs are unique per
    /// SaleID).
    fn sale_id(&self) -> &str;
    /// Sends `body` under `service_id` and returns the terminal's answer to
    /// it; [`NexoError`] keeps "not sent" (nothing left posd), "refused"
    /// (nothing booked) and "in doubt" (settle by TransactionStatus) apart.
    fn exchange(
        &self,
        service_id: &ServiceId,
        body: RequestBody,
    ) -> impl Future<Output = Result<SaleToPoiResponse, NexoError>> + Send;
}

impl NexoDevice for NexoTerminal {
    fn sale_id(&self) -> &str {
        NexoTerminal::sale_id(self)
    }

    fn exchange(
        &self,
        service_id: &ServiceId,
        body: RequestBody,
    ) -> impl Future<Output = Result<SaleToPoiResponse, NexoError>> + Send {
        NexoTerminal::exchange(self, service_id, body)
    }
}

/// The least time the TransactionStatus queries of one request in doubt
/// span before it is left to a person: longer than a payment lasts at the
/// terminal (about 150 s), so one the customer is still at is not given up
/// early.
const STATUS_SPAN: Duration = Duration::from_secs(180);

impl Engine {
    /// What the nexo machines run with: the engine's status backoff, and at
    /// least as many queries as [`STATUS_SPAN`] needs at that backoff.
    pub(super) fn nexo_settings(&self) -> machine::Settings {
        let backoff = self.settings.status_backoff.max(Duration::from_millis(100));
        let mut attempts = self.settings.status_attempts.max(1);
        // Query n waits n backoffs: the waits before `attempts` answers sum
        // to backoff × attempts × (attempts - 1) / 2.
        while backoff.saturating_mul(attempts.saturating_mul(attempts - 1) / 2) < STATUS_SPAN {
            attempts += 1;
        }
        machine::Settings { status_attempts: attempts, status_backoff: backoff }
    }
}

/// What the store keeps of a terminal's answer besides the machine's
/// [`Answer`]: how the card was read, and the receipts as lines.
#[derive(Debug, Clone, Default)]
pub(super) struct Extras {
    entry: Vec<EntryMode>,
    lines: Vec<String>,
}

impl Extras {
    pub(super) fn of_payment(p: &PaymentResponse) -> Extras {
        let entry = p.payment_result.as_ref().and_then(|r| r.card()).map(|c| c.entry_mode.clone()).unwrap_or_default();
        Extras { entry, lines: receipt_lines(&p.payment_receipt) }
    }
}

/// The machine's view of a PaymentResponse to a request in `currency`.
pub(super) fn payment_answer(p: &PaymentResponse, currency: &str) -> Answer {
    let result = p.payment_result.as_ref();
    let card = result.and_then(|r| r.card());
    let amounts = result.and_then(|r| r.amounts_resp.as_ref());
    Answer {
        result: terminal_result(&p.response),
        condition: condition(&p.response),
        message: message(&p.response),
        authorized_minor: amounts.and_then(|a| a.authorized_amount.map(|d| minor(d, a.currency.as_deref(), currency))),
        poi_transaction: p.poi_data.as_ref().and_then(|d| poi_transaction(&d.poi_transaction_id)),
        approval_code: result
            .and_then(|r| r.payment_acquirer_data.as_ref())
            .and_then(|a| a.approval_code.as_deref())
            .map(pos_mask::scrub)
            .unwrap_or_default(),
        masked_pan: card.and_then(|c| c.masked_pan.as_deref()).map(masked_pan).unwrap_or_default(),
        brand: card.and_then(|c| c.payment_brand.as_deref()).map(pos_mask::scrub).unwrap_or_default(),
        signature_required: p.payment_receipt.iter().any(|r| r.required_signature_flag),
    }
}

/// The machine's view of a ReversalResponse (its `ReversedAmount` as the
/// amount) of a payment in `currency`.
pub(super) fn reversal_answer(r: &ReversalResponse, currency: &str) -> Answer {
    Answer {
        result: terminal_result(&r.response),
        condition: condition(&r.response),
        message: message(&r.response),
        authorized_minor: r.reversed_amount.map(|d| minor(d, None, currency)),
        poi_transaction: r.poi_data.as_ref().and_then(|d| poi_transaction(&d.poi_transaction_id)),
        signature_required: r.payment_receipt.iter().any(|r| r.required_signature_flag),
        ..Answer::default()
    }
}

fn terminal_result(response: &Response) -> TerminalResult {
    match response.result {
        ResultType::Success => TerminalResult::Success,
        ResultType::Partial => TerminalResult::Partial,
        _ => TerminalResult::Failure,
    }
}

/// The `ErrorCondition`; one posd does not know is kept by name, scrubbed.
fn condition(response: &Response) -> Option<Condition> {
    response.error_condition.as_ref().map(|c| match Condition::parse(c.as_str()) {
        Condition::Other(name) => Condition::Other(pos_mask::scrub_with_limit(&name, 64)),
        known => known,
    })
}

/// The terminal's text for the register: Adyen's `refusalReason` or
/// `message` in `AdditionalResponse`, or a plain text there; scrubbed.
fn message(response: &Response) -> String {
    if let Some(said) = response.additional("refusalReason").or_else(|| response.additional("message")) {
        return pos_mask::scrub_with_limit(&said, 160);
    }
    match response.additional_response.as_deref() {
        Some(text) if !text.contains('=') => pos_mask::scrub_with_limit(text, 160),
        _ => String::new(),
    }
}

/// An amount the terminal answered, in minor units of `ours`. One that
/// cannot be read so (another currency, more decimals than it has) counts
/// as nothing approved: the machine then reverses whatever was booked.
fn minor(amount: Decimal, theirs: Option<&str>, ours: &str) -> u64 {
    if let Some(theirs) = theirs.filter(|c| *c != ours) {
        tracing::error!(currency = %pos_mask::scrub(theirs), expected = %ours, "the nexo terminal answered in another currency");
        return 0;
    }
    match amount.to_minor(ours) {
        Ok(minor) => u64::try_from(minor).unwrap_or(0),
        Err(e) => {
            tracing::error!(error = %e, "the nexo terminal answered an amount posd cannot read");
            0
        }
    }
}

/// The terminal's id of a transaction, kept exactly: a reversal must name
/// it as the terminal wrote it (Adyen's hold long digit runs that masking
/// would change). Only one that is not short printable ASCII is scrubbed.
fn poi_transaction(id: &TransactionIdentification) -> Option<PoiTransaction> {
    let exact = |text: &str| {
        if text.len() <= 64 && text.bytes().all(|b| b.is_ascii_graphic()) {
            text.to_string()
        } else {
            pos_mask::scrub_with_limit(text, 64)
        }
    };
    (!id.transaction_id.is_empty())
        .then(|| PoiTransaction { transaction_id: exact(&id.transaction_id), timestamp: exact(&id.time_stamp) })
}

/// The terminal's masked PAN held to the one masking rule
/// ([`pos_mask::well_masked`]): Adyen writes `411111 **** 1111`, which is
/// first 6 and last 4 once the spaces are gone.
fn masked_pan(text: &str) -> String {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !pos_mask::is_well_masked(&compact) {
        tracing::error!("the nexo terminal sent a card number not masked to first 6 and last 4; masking it");
    }
    pos_mask::well_masked(&compact)
}

/// The register API's entry mode for the terminal's first `EntryMode`.
fn entry_mode(entry: &[EntryMode]) -> pb::EntryMode {
    match entry.first() {
        Some(EntryMode::Icc | EntryMode::SynchronousIcc) => pb::EntryMode::Chip,
        Some(EntryMode::Contactless | EntryMode::Tapped | EntryMode::Rfid | EntryMode::Mobile) => {
            pb::EntryMode::Contactless
        }
        Some(EntryMode::MagStripe) => pb::EntryMode::Swipe,
        Some(EntryMode::Keyed | EntryMode::Manual) => pb::EntryMode::Manual,
        _ => pb::EntryMode::Unspecified,
    }
}

/// The receipts as the store keeps a terminal's lines (as ZVT's are): the
/// customer's copy first, then the cashier's, then any other, an empty entry
/// between two receipts; a blank line is one space, so it never reads as
/// that separator. A line is its name and value, scrubbed.
fn receipt_lines(receipts: &[PaymentReceipt]) -> Vec<String> {
    let rank = |q: &DocumentQualifier| match q {
        DocumentQualifier::CustomerReceipt => 0,
        DocumentQualifier::CashierReceipt => 1,
        _ => 2,
    };
    let mut decoded: Vec<Receipt> = receipts.iter().map(Receipt::decode).collect();
    decoded.sort_by_key(|r| rank(&r.qualifier));
    let mut lines = Vec::new();
    for receipt in decoded {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        for line in &receipt.lines {
            let parts: Vec<&str> =
                [line.name.as_deref(), line.value.as_deref()].into_iter().flatten().filter(|p| !p.is_empty()).collect();
            let text = pos_mask::scrub(&parts.join(": ").replace(['\n', '\r'], " "));
            lines.push(if text.trim().is_empty() { " ".to_string() } else { text });
        }
    }
    lines
}

/// What a transition stores of a terminal's answer: the card as far as it
/// tells it (a signature asked for shows as the cardholder verification
/// `SIGNATURE`), the approval code, the POI transaction and the receipts.
pub(super) fn terminal_data(answer: &Answer, extras: Option<&Extras>) -> TerminalData {
    let entry = extras.map_or(&[][..], |e| &e.entry[..]);
    let card = (!answer.masked_pan.is_empty() || !answer.brand.is_empty()).then(|| {
        let verification = if answer.signature_required {
            pb::CardholderVerification::Signature
        } else {
            pb::CardholderVerification::Unspecified
        };
        let info = CardInfo {
            masked_pan: answer.masked_pan.clone(),
            brand: answer.brand.clone(),
            entry_mode: entry_mode(entry) as i32,
            verification: verification as i32,
            ..CardInfo::default()
        };
        (info, vec![])
    });
    let poi = answer.poi_transaction.clone().unwrap_or_default();
    TerminalData {
        card,
        auth_code: (!answer.approval_code.is_empty()).then(|| answer.approval_code.clone()),
        result: StoredResult {
            result_code: if answer.booked() { 0 } else { 0xFF },
            lines: extras.map(|e| e.lines.clone()).unwrap_or_default(),
            poi_transaction_id: poi.transaction_id,
            poi_time_stamp: poi.timestamp,
            ..StoredResult::default()
        },
    }
}

/// A TransactionStatusRequest about the request of `category` that went
/// out under `service_id` from `sale_id`, its receipts asked for again.
pub(super) fn status_request(service_id: &str, sale_id: &str, category: MessageCategory) -> RequestBody {
    let reference = MessageReference {
        message_category: Some(category),
        service_id: Some(service_id.to_string()),
        sale_id: Some(sale_id.to_string()),
        ..MessageReference::default()
    };
    TransactionStatusRequest {
        message_reference: Some(reference),
        receipt_reprint_flag: Some(true),
        document_qualifier: vec![DocumentQualifier::CashierReceipt, DocumentQualifier::CustomerReceipt],
    }
    .into()
}

/// What a TransactionStatus exchange says about a payment in `currency`,
/// and the repeated answer's extras when it repeated one.
pub(super) fn payment_status(
    answer: Result<SaleToPoiResponse, NexoError>,
    currency: &str,
) -> (StatusAnswer, Option<Extras>) {
    let response = match answer {
        Ok(response) => response,
        Err(e) => return (StatusAnswer::Unanswered { message: e.to_string() }, None),
    };
    let ResponseBody::TransactionStatus(status) = &response.body else {
        let message = "the terminal answered the TransactionStatusRequest with another message".to_string();
        return (StatusAnswer::Unanswered { message }, None);
    };
    match status.payment_outcome() {
        StatusOutcome::InProgress => (StatusAnswer::InProgress, None),
        StatusOutcome::NotFound => (StatusAnswer::NotFound, None),
        StatusOutcome::Repeated(p) => {
            (StatusAnswer::Repeated(payment_answer(p, currency)), Some(Extras::of_payment(p)))
        }
        StatusOutcome::Unsettled => (StatusAnswer::Unanswered { message: unsettled(&status.response) }, None),
    }
}

/// What a TransactionStatus exchange says about a reversal of a payment in
/// `currency`.
pub(super) fn reversal_status(answer: Result<SaleToPoiResponse, NexoError>, currency: &str) -> StatusAnswer {
    let response = match answer {
        Ok(response) => response,
        Err(e) => return StatusAnswer::Unanswered { message: e.to_string() },
    };
    let ResponseBody::TransactionStatus(status) = &response.body else {
        let message = "the terminal answered the TransactionStatusRequest with another message".to_string();
        return StatusAnswer::Unanswered { message };
    };
    let r = &status.response;
    match (&r.result, r.error_condition.as_ref().map(|c| c.as_str())) {
        (ResultType::Failure, Some("InProgress")) => StatusAnswer::InProgress,
        (ResultType::Failure, Some("NotFound")) => StatusAnswer::NotFound,
        (ResultType::Success, _) => {
            let repeated = status.repeated_message_response.as_ref();
            match repeated.and_then(|m| m.repeated_response_message_body.reversal_response.as_ref()) {
                Some(reversal) => StatusAnswer::Repeated(reversal_answer(reversal, currency)),
                None => StatusAnswer::Unanswered { message: unsettled(r) },
            }
        }
        _ => StatusAnswer::Unanswered { message: unsettled(r) },
    }
}

/// Why a TransactionStatus answer settles nothing.
fn unsettled(r: &Response) -> String {
    let condition = r.error_condition.as_ref().map_or("no ErrorCondition", |c| c.as_str());
    pos_mask::scrub(&format!("the terminal's TransactionStatus answer tells nothing ({}, {condition})", r.result))
}
