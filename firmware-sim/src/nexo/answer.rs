//! What the simulated terminal answers to a payment: the decision a
//! scenario stands for, and the PaymentResponse built from it, with the
//! card as the terminal shows it (Adyen's `411111 **** 1111`), the approval
//! code and both receipts in Adyen's URL-encoded key/name/value lines.

use pos_nexo::codes::{DocumentQualifier, EntryMode, ErrorCondition, OutputFormat, PaymentInstrumentType, ResultType};
use pos_nexo::payment::{
    AmountsResp, CardData, OutputContent, OutputText, PaymentAcquirerData, PaymentInstrumentData, PaymentReceipt,
    PaymentRequest, PaymentResponse, PaymentResult, PoiData,
};
use pos_nexo::{Decimal, Response, TransactionIdentification};

/// The test card the simulated customer presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// As the terminal masks it: first six, `****`, last four.
    pub masked_pan: &'static str,
    pub brand: &'static str,
    pub entry_mode: EntryMode,
}

/// The names [`card`] knows.
pub const CARDS: &str = "visa, mc, maestro";

/// A named test card (public test card numbers, masked).
pub fn card(name: &str) -> Result<Card, String> {
    Ok(match name {
        "visa" => Card { masked_pan: "411111 **** 1111", brand: "visa", entry_mode: EntryMode::Icc },
        "mc" => Card { masked_pan: "541333 **** 9999", brand: "mc", entry_mode: EntryMode::Contactless },
        "maestro" => Card { masked_pan: "675940 **** 0008", brand: "maestro", entry_mode: EntryMode::Icc },
        other => return Err(format!("unknown card {other:?}; one of {CARDS}")),
    })
}

/// How a payment ended at the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub response: Response,
    /// Minor units the acquirer authorized: `Some` when booked.
    pub authorized: Option<i64>,
    /// The card was read (the answer carries it, and receipts).
    pub card_read: bool,
    /// The cashier's copy needs the customer's signature.
    pub signature: bool,
}

impl Decision {
    pub fn approved(requested: i64) -> Decision {
        Decision { response: Response::success(), authorized: Some(requested), card_read: true, signature: false }
    }

    /// Declined or stopped with `condition`; `reason` for `AdditionalResponse`.
    pub fn failed(condition: ErrorCondition, card_read: bool, reason: Option<&str>) -> Decision {
        let mut response = Response::failure(condition);
        response.additional_response = reason.map(|r| format!("refusalReason={}", form_encode(r)));
        Decision { response, authorized: None, card_read, signature: false }
    }

    /// Part of `requested` approved (half of it, at least one minor unit).
    pub fn partial(requested: i64) -> Decision {
        let response = Response { result: ResultType::Partial, error_condition: None, additional_response: None };
        Decision { response, authorized: Some((requested / 2).max(1)), card_read: true, signature: false }
    }
}

/// The PaymentResponse for `request` ended as `decision`, under the
/// terminal's transaction `poi` of terminal `poi_id`.
pub fn payment_response(
    request: &PaymentRequest,
    decision: &Decision,
    card: &Card,
    poi: TransactionIdentification,
    poi_id: &str,
) -> PaymentResponse {
    let amounts = &request.payment_transaction.amounts_req;
    let currency = amounts.currency.as_str();
    let psp = poi.transaction_id.split('.').nth(1).unwrap_or_default().to_owned();
    let mut response = decision.response.clone();
    if response.additional_response.is_none() {
        response.additional_response = Some(format!("pspReference={psp}"));
    }
    let payment_result = decision.card_read.then(|| PaymentResult {
        payment_type: Some(request.payment_type()),
        amounts_resp: Some(AmountsResp {
            currency: Some(currency.to_owned()),
            authorized_amount: Some(
                decision.authorized.and_then(|a| Decimal::from_minor(a, currency).ok()).unwrap_or_default(),
            ),
            tip_amount: amounts.tip_amount,
            cash_back_amount: amounts.cash_back_amount,
        }),
        payment_instrument_data: Some(PaymentInstrumentData {
            payment_instrument_type: Some(PaymentInstrumentType::Card),
            card_data: Some(CardData {
                masked_pan: Some(card.masked_pan.to_owned()),
                payment_brand: Some(card.brand.to_owned()),
                entry_mode: vec![card.entry_mode.clone()],
                card_country_code: None,
            }),
        }),
        payment_acquirer_data: Some(PaymentAcquirerData {
            approval_code: decision.authorized.map(|_| approval_code(&psp)),
            acquirer_transaction_id: Some(TransactionIdentification {
                transaction_id: psp.clone(),
                time_stamp: poi.time_stamp.clone(),
            }),
            merchant_id: Some("FirmwareSimShop".into()),
            acquirer_poi_id: Some(poi_id.to_owned()),
        }),
        online_flag: Some(true),
    });
    let payment_receipt = if decision.card_read { receipts(request, decision, card, &poi, poi_id) } else { Vec::new() };
    PaymentResponse {
        response,
        sale_data: Some(request.sale_data.clone()),
        poi_data: Some(PoiData { poi_transaction_id: poi, poi_reconciliation_id: None }),
        payment_result,
        payment_receipt,
    }
}

/// A refused request that never became a transaction (busy, a bad
/// header, a ServiceID used before): no POIData, nothing journaled.
pub fn payment_refused(request: &PaymentRequest, condition: ErrorCondition) -> PaymentResponse {
    PaymentResponse {
        response: Response::failure(condition),
        sale_data: Some(request.sale_data.clone()),
        poi_data: None,
        payment_result: None,
        payment_receipt: Vec::new(),
    }
}

/// Six digits from the acquirer's reference.
fn approval_code(psp: &str) -> String {
    let digits: String = psp.chars().filter(char::is_ascii_digit).collect();
    format!("{:0>6}", &digits[digits.len().saturating_sub(6)..])
}

/// The cashier's and the customer's copy.
fn receipts(
    request: &PaymentRequest,
    decision: &Decision,
    card: &Card,
    poi: &TransactionIdentification,
    poi_id: &str,
) -> Vec<PaymentReceipt> {
    let currency = request.payment_transaction.amounts_req.currency.as_str();
    let requested = request.payment_transaction.amounts_req.requested_amount.unwrap_or_default();
    let amount = match decision.authorized {
        Some(a) => money(a, currency),
        None => money(requested.to_minor(currency).unwrap_or(0), currency),
    };
    let (date, time) = poi.time_stamp.split_once('T').unwrap_or((poi.time_stamp.as_str(), ""));
    let time = time.get(..8).unwrap_or(time);
    let last4 = card.masked_pan.get(card.masked_pan.len().saturating_sub(4)..).unwrap_or_default();
    let verdict = match decision.response.result {
        ResultType::Success => ("approved", "APPROVED"),
        ResultType::Partial => ("approved", "PARTIALLY APPROVED"),
        _ => ("declined", "DECLINED"),
    };
    let title = if request.payment_type() == pos_nexo::codes::PaymentType::Refund { "REFUND" } else { "SALE" };
    let copy = |qualifier: DocumentQualifier, signature: bool| {
        let mut lines = vec![
            line("header1", "firmware-sim nexo", ""),
            line("filler", "", ""),
            line("txdate", "Date", date),
            line("txtime", "Time", time),
            line("tid", "Terminal", poi_id),
            line("filler", "", ""),
            line("preferredName", "Card", card.brand),
            line("pan", "PAN", &format!("**** {last4}")),
            line("txRef", "Ref.", &poi.transaction_id),
            line("txtype", "Type", title),
            line("totalAmount", "TOTAL", &amount),
            line(verdict.0, verdict.1, ""),
        ];
        if signature {
            lines.push(line("signatureTitle", "Signature", ""));
            lines.push(line("filler", "", ""));
            lines.push(line("signatureLine", "______________________", ""));
        }
        lines.push(match qualifier {
            DocumentQualifier::CashierReceipt => line("merchantTitle", "MERCHANT COPY", ""),
            _ => line("cardHolderHeader", "CARDHOLDER COPY", ""),
        });
        PaymentReceipt {
            document_qualifier: qualifier,
            required_signature_flag: signature,
            output_content: OutputContent { output_format: OutputFormat::Text, output_text: lines },
        }
    };
    vec![copy(DocumentQualifier::CashierReceipt, decision.signature), copy(DocumentQualifier::CustomerReceipt, false)]
}

/// `EUR 12.50`.
fn money(minor: i64, currency: &str) -> String {
    let exponent = pos_nexo::amount::exponent(currency).unwrap_or(2);
    let unit = 10i64.pow(exponent);
    if exponent == 0 {
        return format!("{currency} {minor}");
    }
    format!("{currency} {}.{:0width$}", minor / unit, minor % unit, width = exponent as usize)
}

/// One receipt line as Adyen writes it: `key=..&name=..&value=..`, each
/// URL-encoded, empty parts left out.
pub fn line(key: &str, name: &str, value: &str) -> OutputText {
    let mut text = format!("key={}", form_encode(key));
    if !name.is_empty() {
        text += &format!("&name={}", form_encode(name));
    }
    if !value.is_empty() {
        text += &format!("&value={}", form_encode(value));
    }
    OutputText { text, character_style: None, end_of_line_flag: Some(true) }
}

/// URL form encoding: letters, digits and `-_.` stay, a space is `+`,
/// every other byte `%XX`.
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out += &format!("%{b:02X}"),
        }
    }
    out
}
