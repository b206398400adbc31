//! `ReconciliationRequest` / `ReconciliationResponse`: end of day, the
//! terminal's totals per brand and transaction type.

use serde::{Deserialize, Serialize};

use crate::amount::Decimal;
use crate::codes::{ErrorCondition, PaymentInstrumentType, ReconciliationType, TransactionType};
use crate::message::Response;

/// `ReconciliationRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationRequest {
    /// posd sends `SaleReconciliation`.
    #[serde(rename = "ReconciliationType")]
    pub reconciliation_type: ReconciliationType,
    #[serde(rename = "POIReconciliationID", default, skip_serializing_if = "Option::is_none")]
    pub poi_reconciliation_id: Option<String>,
}

/// `ReconciliationResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationResponse {
    #[serde(rename = "Response")]
    pub response: Response,
    #[serde(rename = "ReconciliationType", default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_type: Option<ReconciliationType>,
    #[serde(rename = "POIReconciliationID", default, skip_serializing_if = "Option::is_none")]
    pub poi_reconciliation_id: Option<String>,
    #[serde(rename = "TransactionTotals", default, skip_serializing_if = "Vec::is_empty")]
    pub transaction_totals: Vec<TransactionTotals>,
}

/// `TransactionTotals`: the totals of one group (brand, acquirer, currency).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransactionTotals {
    #[serde(rename = "PaymentInstrumentType", default, skip_serializing_if = "Option::is_none")]
    pub payment_instrument_type: Option<PaymentInstrumentType>,
    #[serde(rename = "AcquirerID", default, skip_serializing_if = "Option::is_none")]
    pub acquirer_id: Option<String>,
    #[serde(rename = "CardBrand", default, skip_serializing_if = "Option::is_none")]
    pub card_brand: Option<String>,
    #[serde(rename = "PaymentCurrency", default, skip_serializing_if = "Option::is_none")]
    pub payment_currency: Option<String>,
    #[serde(rename = "ErrorCondition", default, skip_serializing_if = "Option::is_none")]
    pub error_condition: Option<ErrorCondition>,
    #[serde(rename = "PaymentTotals", default, skip_serializing_if = "Vec::is_empty")]
    pub payment_totals: Vec<PaymentTotals>,
}

/// `PaymentTotals`: count and amount of one transaction type, in major units
/// of the group's `PaymentCurrency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTotals {
    #[serde(rename = "TransactionType")]
    pub transaction_type: TransactionType,
    #[serde(rename = "TransactionCount", default)]
    pub transaction_count: u64,
    #[serde(rename = "TransactionAmount", default)]
    pub transaction_amount: Decimal,
}
