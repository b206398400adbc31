//! Asking about an earlier request, and stopping one: `TransactionStatusRequest`
//! (how a payment whose answer was lost is settled) and `AbortRequest` (the
//! register cancels while the terminal waits for the card).
//!
//! A TransactionStatus answer of `Failure` / `InProgress` means "still
//! running, ask again"; `Failure` / `NotFound` means the terminal never booked
//! the request; `Success` carries the original answer in
//! `RepeatedMessageResponse`.

use serde::{Deserialize, Serialize};

use crate::codes::{DocumentQualifier, ErrorCondition, ResultType};
use crate::message::{MessageHeader, MessageReference, Response};
use crate::payment::PaymentResponse;
use crate::reversal::ReversalResponse;

/// `TransactionStatusRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransactionStatusRequest {
    /// The request asked about; absent: the last one.
    #[serde(rename = "MessageReference", default, skip_serializing_if = "Option::is_none")]
    pub message_reference: Option<MessageReference>,
    #[serde(rename = "ReceiptReprintFlag", default, skip_serializing_if = "Option::is_none")]
    pub receipt_reprint_flag: Option<bool>,
    #[serde(rename = "DocumentQualifier", default, skip_serializing_if = "Vec::is_empty")]
    pub document_qualifier: Vec<DocumentQualifier>,
}

/// `TransactionStatusResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionStatusResponse {
    #[serde(rename = "Response")]
    pub response: Response,
    #[serde(rename = "MessageReference", default, skip_serializing_if = "Option::is_none")]
    pub message_reference: Option<MessageReference>,
    #[serde(rename = "RepeatedMessageResponse", default, skip_serializing_if = "Option::is_none")]
    pub repeated_message_response: Option<RepeatedMessageResponse>,
}

/// What a TransactionStatus answer says about the request it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome<'a> {
    /// The terminal still runs it: ask again later.
    InProgress,
    /// The terminal does not know it: never booked.
    NotFound,
    /// The original answer, repeated.
    Repeated(&'a PaymentResponse),
    /// Anything else (another failure, a success without a payment answer):
    /// not settled by this answer.
    Unsettled,
}

impl TransactionStatusResponse {
    /// What this answer says about a payment asked for.
    pub fn payment_outcome(&self) -> StatusOutcome<'_> {
        match (&self.response.result, &self.response.error_condition) {
            (ResultType::Failure, Some(ErrorCondition::InProgress)) => StatusOutcome::InProgress,
            (ResultType::Failure, Some(ErrorCondition::NotFound)) => StatusOutcome::NotFound,
            (ResultType::Success, _) => match self.repeated_payment() {
                Some(payment) => StatusOutcome::Repeated(payment),
                None => StatusOutcome::Unsettled,
            },
            _ => StatusOutcome::Unsettled,
        }
    }

    /// The repeated PaymentResponse, if there is one.
    pub fn repeated_payment(&self) -> Option<&PaymentResponse> {
        self.repeated_message_response.as_ref()?.repeated_response_message_body.payment_response.as_ref()
    }
}

/// `RepeatedMessageResponse`: the answer to the request asked about, with
/// its own header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatedMessageResponse {
    #[serde(rename = "MessageHeader")]
    pub message_header: MessageHeader,
    #[serde(rename = "RepeatedResponseMessageBody")]
    pub repeated_response_message_body: RepeatedResponseMessageBody,
}

/// `RepeatedResponseMessageBody`: one of the repeatable answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepeatedResponseMessageBody {
    #[serde(rename = "PaymentResponse", default, skip_serializing_if = "Option::is_none")]
    pub payment_response: Option<PaymentResponse>,
    #[serde(rename = "ReversalResponse", default, skip_serializing_if = "Option::is_none")]
    pub reversal_response: Option<ReversalResponse>,
}

/// `AbortRequest`: stop the referenced request. It has no answer of its own;
/// the aborted request ends with `Failure` / `Aborted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    #[serde(rename = "MessageReference")]
    pub message_reference: MessageReference,
    /// posd sends `MerchantAbort`.
    #[serde(rename = "AbortReason", default)]
    pub abort_reason: String,
}

/// The abort reason posd sends.
pub const MERCHANT_ABORT: &str = "MerchantAbort";
