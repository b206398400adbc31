//! `ReversalRequest` / `ReversalResponse`: void or refund a terminal payment,
//! in full or in part (`ReversedAmount`), referenced by the terminal's
//! `POITransactionID`. The amount is in the original payment's currency
//! (the message does not repeat it).

use serde::{Deserialize, Serialize};

use crate::amount::Decimal;
use crate::codes::ReversalReason;
use crate::message::{Response, TransactionIdentification};
use crate::payment::{PaymentReceipt, PoiData, SaleData};

/// `ReversalRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReversalRequest {
    #[serde(rename = "OriginalPOITransaction")]
    pub original_poi_transaction: OriginalPoiTransaction,
    /// posd sends `MerchantCancel`.
    #[serde(rename = "ReversalReason")]
    pub reversal_reason: ReversalReason,
    /// Absent: the whole amount.
    #[serde(rename = "ReversedAmount", default, skip_serializing_if = "Option::is_none")]
    pub reversed_amount: Option<Decimal>,
    #[serde(rename = "SaleData", default, skip_serializing_if = "Option::is_none")]
    pub sale_data: Option<SaleData>,
}

/// `OriginalPOITransaction`: the terminal transaction a reversal refers to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OriginalPoiTransaction {
    #[serde(rename = "SaleID", default, skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<String>,
    #[serde(rename = "POIID", default, skip_serializing_if = "Option::is_none")]
    pub poi_id: Option<String>,
    #[serde(rename = "POITransactionID", default)]
    pub poi_transaction_id: TransactionIdentification,
}

/// `ReversalResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReversalResponse {
    #[serde(rename = "Response")]
    pub response: Response,
    #[serde(rename = "POIData", default, skip_serializing_if = "Option::is_none")]
    pub poi_data: Option<PoiData>,
    #[serde(rename = "OriginalPOITransaction", default, skip_serializing_if = "Option::is_none")]
    pub original_poi_transaction: Option<OriginalPoiTransaction>,
    #[serde(rename = "ReversedAmount", default, skip_serializing_if = "Option::is_none")]
    pub reversed_amount: Option<Decimal>,
    #[serde(rename = "PaymentReceipt", default, skip_serializing_if = "Vec::is_empty")]
    pub payment_receipt: Vec<PaymentReceipt>,
}
