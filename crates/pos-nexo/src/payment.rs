//! `PaymentRequest` / `PaymentResponse`: a sale (`PaymentType` Normal, the
//! default) or an unreferenced refund (`Refund`), and what the terminal
//! answers: the result, the amounts, the card as the terminal masked it, the
//! acquirer's approval, the terminal's transaction id and its receipts.

use serde::{Deserialize, Serialize};

use crate::amount::{AmountError, Decimal};
use crate::codes::{DocumentQualifier, EntryMode, OutputFormat, PaymentInstrumentType, PaymentType};
use crate::message::{Response, TransactionIdentification};

/// `PaymentRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    #[serde(rename = "SaleData")]
    pub sale_data: SaleData,
    #[serde(rename = "PaymentTransaction")]
    pub payment_transaction: PaymentTransaction,
    #[serde(rename = "PaymentData", default, skip_serializing_if = "Option::is_none")]
    pub payment_data: Option<PaymentData>,
}

impl PaymentRequest {
    /// The payment type asked for (`Normal` when absent).
    pub fn payment_type(&self) -> PaymentType {
        self.payment_data.as_ref().and_then(|d| d.payment_type.clone()).unwrap_or(PaymentType::Normal)
    }
}

/// `SaleData`: the Sale system's side of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SaleData {
    /// posd's id for the transaction (the payment's gateway key) and its time.
    #[serde(rename = "SaleTransactionID", default)]
    pub sale_transaction_id: TransactionIdentification,
    #[serde(rename = "SaleReferenceID", default, skip_serializing_if = "Option::is_none")]
    pub sale_reference_id: Option<String>,
    #[serde(rename = "OperatorID", default, skip_serializing_if = "Option::is_none")]
    pub operator_id: Option<String>,
    /// Adyen: `key=value&...` options for the acquirer, e.g.
    /// `tenderOption=AskGratuity` or `tenderOption=AllowPartialAuthorisation`.
    #[serde(rename = "SaleToAcquirerData", default, skip_serializing_if = "Option::is_none")]
    pub sale_to_acquirer_data: Option<String>,
    #[serde(rename = "SaleToPOIData", default, skip_serializing_if = "Option::is_none")]
    pub sale_to_poi_data: Option<String>,
}

/// `PaymentTransaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTransaction {
    #[serde(rename = "AmountsReq")]
    pub amounts_req: AmountsReq,
}

/// `AmountsReq`: what the register asks for, in major units of `Currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountsReq {
    #[serde(rename = "Currency")]
    pub currency: String,
    #[serde(rename = "RequestedAmount", default, skip_serializing_if = "Option::is_none")]
    pub requested_amount: Option<Decimal>,
    #[serde(rename = "TipAmount", default, skip_serializing_if = "Option::is_none")]
    pub tip_amount: Option<Decimal>,
    #[serde(rename = "CashBackAmount", default, skip_serializing_if = "Option::is_none")]
    pub cash_back_amount: Option<Decimal>,
}

impl AmountsReq {
    /// `requested` minor units of `currency`.
    pub fn new(currency: &str, requested: i64) -> Result<AmountsReq, AmountError> {
        Ok(AmountsReq {
            currency: currency.to_owned(),
            requested_amount: Some(Decimal::from_minor(requested, currency)?),
            tip_amount: None,
            cash_back_amount: None,
        })
    }
}

/// `PaymentData`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaymentData {
    #[serde(rename = "PaymentType", default, skip_serializing_if = "Option::is_none")]
    pub payment_type: Option<PaymentType>,
}

/// `PaymentResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResponse {
    #[serde(rename = "Response")]
    pub response: Response,
    #[serde(rename = "SaleData", default, skip_serializing_if = "Option::is_none")]
    pub sale_data: Option<SaleData>,
    #[serde(rename = "POIData", default, skip_serializing_if = "Option::is_none")]
    pub poi_data: Option<PoiData>,
    #[serde(rename = "PaymentResult", default, skip_serializing_if = "Option::is_none")]
    pub payment_result: Option<PaymentResult>,
    #[serde(rename = "PaymentReceipt", default, skip_serializing_if = "Vec::is_empty")]
    pub payment_receipt: Vec<PaymentReceipt>,
}

/// `POIData`: the terminal's side of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoiData {
    /// What a reversal refers to.
    #[serde(rename = "POITransactionID", default)]
    pub poi_transaction_id: TransactionIdentification,
    #[serde(rename = "POIReconciliationID", default, skip_serializing_if = "Option::is_none")]
    pub poi_reconciliation_id: Option<String>,
}

/// `PaymentResult`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaymentResult {
    #[serde(rename = "PaymentType", default, skip_serializing_if = "Option::is_none")]
    pub payment_type: Option<PaymentType>,
    #[serde(rename = "AmountsResp", default, skip_serializing_if = "Option::is_none")]
    pub amounts_resp: Option<AmountsResp>,
    #[serde(rename = "PaymentInstrumentData", default, skip_serializing_if = "Option::is_none")]
    pub payment_instrument_data: Option<PaymentInstrumentData>,
    #[serde(rename = "PaymentAcquirerData", default, skip_serializing_if = "Option::is_none")]
    pub payment_acquirer_data: Option<PaymentAcquirerData>,
    #[serde(rename = "OnlineFlag", default, skip_serializing_if = "Option::is_none")]
    pub online_flag: Option<bool>,
}

impl PaymentResult {
    /// The card data, if the terminal sent any.
    pub fn card(&self) -> Option<&CardData> {
        self.payment_instrument_data.as_ref()?.card_data.as_ref()
    }
}

/// `AmountsResp`: what was authorized, in major units of `Currency`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AmountsResp {
    #[serde(rename = "Currency", default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(rename = "AuthorizedAmount", default, skip_serializing_if = "Option::is_none")]
    pub authorized_amount: Option<Decimal>,
    #[serde(rename = "TipAmount", default, skip_serializing_if = "Option::is_none")]
    pub tip_amount: Option<Decimal>,
    #[serde(rename = "CashBackAmount", default, skip_serializing_if = "Option::is_none")]
    pub cash_back_amount: Option<Decimal>,
}

/// `PaymentInstrumentData`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaymentInstrumentData {
    #[serde(rename = "PaymentInstrumentType", default, skip_serializing_if = "Option::is_none")]
    pub payment_instrument_type: Option<PaymentInstrumentType>,
    #[serde(rename = "CardData", default, skip_serializing_if = "Option::is_none")]
    pub card_data: Option<CardData>,
}

/// `CardData`, as far as posd keeps it. Whatever else a terminal sends
/// (`SensitiveCardData` with the expiry date, tokens) is not read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CardData {
    /// The terminal's masked PAN (Adyen: `411111 **** 1111`); read it through
    /// `pos_mask::well_masked` or `scrub` before it is kept.
    #[serde(rename = "MaskedPan", default, skip_serializing_if = "Option::is_none")]
    pub masked_pan: Option<String>,
    #[serde(rename = "PaymentBrand", default, skip_serializing_if = "Option::is_none")]
    pub payment_brand: Option<String>,
    #[serde(rename = "EntryMode", default, skip_serializing_if = "Vec::is_empty")]
    pub entry_mode: Vec<EntryMode>,
    #[serde(rename = "CardCountryCode", default, skip_serializing_if = "Option::is_none")]
    pub card_country_code: Option<String>,
}

/// `PaymentAcquirerData`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PaymentAcquirerData {
    #[serde(rename = "ApprovalCode", default, skip_serializing_if = "Option::is_none")]
    pub approval_code: Option<String>,
    #[serde(rename = "AcquirerTransactionID", default, skip_serializing_if = "Option::is_none")]
    pub acquirer_transaction_id: Option<TransactionIdentification>,
    #[serde(rename = "MerchantID", default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    #[serde(rename = "AcquirerPOIID", default, skip_serializing_if = "Option::is_none")]
    pub acquirer_poi_id: Option<String>,
}

/// `PaymentReceipt`: one receipt (cashier's or customer's copy) as the
/// terminal formatted it; `receipt::Receipt::decode` reads its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    #[serde(rename = "DocumentQualifier")]
    pub document_qualifier: DocumentQualifier,
    /// The customer must sign this copy.
    #[serde(rename = "RequiredSignatureFlag", default)]
    pub required_signature_flag: bool,
    #[serde(rename = "OutputContent")]
    pub output_content: OutputContent,
}

/// `OutputContent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputContent {
    #[serde(rename = "OutputFormat")]
    pub output_format: OutputFormat,
    #[serde(rename = "OutputText", default, skip_serializing_if = "Vec::is_empty")]
    pub output_text: Vec<OutputText>,
}

/// `OutputText`: one line (Adyen: URL-encoded `key=..&name=..&value=..`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputText {
    #[serde(rename = "Text", default)]
    pub text: String,
    #[serde(rename = "CharacterStyle", default, skip_serializing_if = "Option::is_none")]
    pub character_style: Option<String>,
    #[serde(rename = "EndOfLineFlag", default, skip_serializing_if = "Option::is_none")]
    pub end_of_line_flag: Option<bool>,
}
