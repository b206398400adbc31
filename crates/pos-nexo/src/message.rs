//! The envelope: `{"SaleToPOIRequest": {"MessageHeader": ..., "<Name>Request": ...}}`
//! and its `SaleToPOIResponse` twin, the header, and the parts every
//! message shares (`Response`, `MessageReference`, `TransactionIdentification`).
//!
//! Reading is lenient: unknown fields are ignored, a message body this crate
//! does not model is kept by name (`Other`), and optional fields are `Option`.
//! Writing is exact: the data dictionary's field names and casing (`POIID`,
//! `SaleID`, `ServiceID`), absent options left out.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codes::{ErrorCondition, MessageCategory, MessageClass, MessageType, ResultType};
use crate::diagnosis::{DiagnosisRequest, DiagnosisResponse};
use crate::payment::{PaymentRequest, PaymentResponse};
use crate::reconciliation::{ReconciliationRequest, ReconciliationResponse};
use crate::reversal::{ReversalRequest, ReversalResponse};
use crate::service_id::ServiceId;
use crate::status::{AbortRequest, TransactionStatusRequest, TransactionStatusResponse};

/// The protocol version posd writes in its headers.
pub const PROTOCOL_VERSION: &str = "3.0";

/// The document key of a request (Sale system → POI).
pub const REQUEST_KEY: &str = "SaleToPOIRequest";
/// The document key of a response (POI → Sale system).
pub const RESPONSE_KEY: &str = "SaleToPOIResponse";

/// `MessageHeader`: who is talking about which request. The answer mirrors
/// the request's header with `MessageType` `Response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageHeader {
    #[serde(rename = "ProtocolVersion", default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(rename = "MessageClass")]
    pub message_class: MessageClass,
    #[serde(rename = "MessageCategory")]
    pub message_category: MessageCategory,
    #[serde(rename = "MessageType")]
    pub message_type: MessageType,
    /// 1–10 alphanumerics, unique per request and SaleID ([`ServiceId`]).
    #[serde(rename = "ServiceID", default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(rename = "SaleID", default, skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<String>,
    #[serde(rename = "POIID", default)]
    pub poi_id: String,
    #[serde(rename = "DeviceID", default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

impl MessageHeader {
    /// The header of a service request from the Sale system `sale_id` to the
    /// terminal `poi_id`.
    pub fn request(category: MessageCategory, service_id: &ServiceId, sale_id: &str, poi_id: &str) -> MessageHeader {
        MessageHeader {
            protocol_version: Some(PROTOCOL_VERSION.to_owned()),
            message_class: MessageClass::Service,
            message_category: category,
            message_type: MessageType::Request,
            service_id: Some(service_id.as_str().to_owned()),
            sale_id: Some(sale_id.to_owned()),
            poi_id: poi_id.to_owned(),
            device_id: None,
        }
    }

    /// The header answering this one: the same fields, `MessageType` `Response`.
    pub fn response(&self) -> MessageHeader {
        MessageHeader { message_type: MessageType::Response, ..self.clone() }
    }
}

/// `MessageReference`: names an earlier request (by SaleID and ServiceID)
/// for TransactionStatus and Abort.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageReference {
    #[serde(rename = "MessageCategory", default, skip_serializing_if = "Option::is_none")]
    pub message_category: Option<MessageCategory>,
    #[serde(rename = "ServiceID", default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(rename = "SaleID", default, skip_serializing_if = "Option::is_none")]
    pub sale_id: Option<String>,
    #[serde(rename = "POIID", default, skip_serializing_if = "Option::is_none")]
    pub poi_id: Option<String>,
    #[serde(rename = "DeviceID", default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

impl MessageReference {
    /// The payment request `service_id` of `sale_id`.
    pub fn payment(service_id: &ServiceId, sale_id: &str) -> MessageReference {
        MessageReference {
            message_category: Some(MessageCategory::Payment),
            service_id: Some(service_id.as_str().to_owned()),
            sale_id: Some(sale_id.to_owned()),
            ..MessageReference::default()
        }
    }
}

/// `TransactionIdentification`: a transaction's id and time stamp (ISO 8601),
/// as the Sale system (`SaleTransactionID`) or the terminal (`POITransactionID`)
/// named it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransactionIdentification {
    #[serde(rename = "TransactionID", default)]
    pub transaction_id: String,
    #[serde(rename = "TimeStamp", default)]
    pub time_stamp: String,
}

/// `Response`: the outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(rename = "Result")]
    pub result: ResultType,
    #[serde(rename = "ErrorCondition", default, skip_serializing_if = "Option::is_none")]
    pub error_condition: Option<ErrorCondition>,
    /// Adyen: URL-encoded `key=value&...` details (see [`Response::additional`]).
    #[serde(rename = "AdditionalResponse", default, skip_serializing_if = "Option::is_none")]
    pub additional_response: Option<String>,
}

impl Response {
    /// Result `Success`.
    pub fn success() -> Response {
        Response { result: ResultType::Success, error_condition: None, additional_response: None }
    }

    /// Result `Failure` for `condition`.
    pub fn failure(condition: ErrorCondition) -> Response {
        Response { result: ResultType::Failure, error_condition: Some(condition), additional_response: None }
    }

    /// One entry of an URL-encoded `AdditionalResponse` (`refusalReason`,
    /// `pspReference`, ...), decoded and scrubbed (`pos_mask::scrub`).
    pub fn additional(&self, key: &str) -> Option<String> {
        let text = self.additional_response.as_deref()?;
        crate::receipt::form_pairs(text).find(|(k, _)| k == key).map(|(_, v)| pos_mask::scrub(&v))
    }
}

/// `SaleToPOIRequest`: a request from the Sale system, in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleToPoiRequest {
    pub header: MessageHeader,
    pub body: RequestBody,
}

/// `SaleToPOIResponse`: a terminal's answer, in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleToPoiResponse {
    pub header: MessageHeader,
    pub body: ResponseBody,
}

/// The request in a `SaleToPOIRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    Payment(Box<PaymentRequest>),
    TransactionStatus(Box<TransactionStatusRequest>),
    Abort(Box<AbortRequest>),
    Reversal(Box<ReversalRequest>),
    Diagnosis(Box<DiagnosisRequest>),
    Reconciliation(Box<ReconciliationRequest>),
    /// A request this crate does not model, by name (`DisplayRequest`); its
    /// content is not kept (written back as `{}`).
    Other(String),
}

/// The response in a `SaleToPOIResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    Payment(Box<PaymentResponse>),
    TransactionStatus(Box<TransactionStatusResponse>),
    Reversal(Box<ReversalResponse>),
    Diagnosis(Box<DiagnosisResponse>),
    Reconciliation(Box<ReconciliationResponse>),
    /// A response this crate does not model, by name (`EventNotification`);
    /// its content is not kept (written back as `{}`).
    Other(String),
}

impl ResponseBody {
    /// The body's `Response`, for the bodies this crate models.
    pub fn response(&self) -> Option<&Response> {
        match self {
            ResponseBody::Payment(b) => Some(&b.response),
            ResponseBody::TransactionStatus(b) => Some(&b.response),
            ResponseBody::Reversal(b) => Some(&b.response),
            ResponseBody::Diagnosis(b) => Some(&b.response),
            ResponseBody::Reconciliation(b) => Some(&b.response),
            ResponseBody::Other(_) => None,
        }
    }
}

/// What the envelope code needs of a body enum.
trait Body: Sized {
    /// The document key (`SaleToPOIRequest` / `SaleToPOIResponse`).
    const DOCUMENT: &'static str;
    fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
    /// Reads the value under `key` if `key` names a body this crate models;
    /// `None` (nothing read) otherwise.
    fn read<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Option<Self>, A::Error>;
    fn other(name: String) -> Self;
}

/// Keys beside the body in a message.
fn is_body_name(key: &str) -> bool {
    !matches!(key, "MessageHeader" | "SecurityTrailer" | "NexoBlob")
}

/// An empty JSON object, for an `Other` body.
fn empty() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

impl Body for RequestBody {
    const DOCUMENT: &'static str = REQUEST_KEY;

    fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        match self {
            RequestBody::Payment(b) => map.serialize_entry("PaymentRequest", b),
            RequestBody::TransactionStatus(b) => map.serialize_entry("TransactionStatusRequest", b),
            RequestBody::Abort(b) => map.serialize_entry("AbortRequest", b),
            RequestBody::Reversal(b) => map.serialize_entry("ReversalRequest", b),
            RequestBody::Diagnosis(b) => map.serialize_entry("DiagnosisRequest", b),
            RequestBody::Reconciliation(b) => map.serialize_entry("ReconciliationRequest", b),
            RequestBody::Other(name) => map.serialize_entry(name.as_str(), &empty()),
        }
    }

    fn read<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Option<Self>, A::Error> {
        Ok(Some(match key {
            "PaymentRequest" => RequestBody::Payment(map.next_value()?),
            "TransactionStatusRequest" => RequestBody::TransactionStatus(map.next_value()?),
            "AbortRequest" => RequestBody::Abort(map.next_value()?),
            "ReversalRequest" => RequestBody::Reversal(map.next_value()?),
            "DiagnosisRequest" => RequestBody::Diagnosis(map.next_value()?),
            "ReconciliationRequest" => RequestBody::Reconciliation(map.next_value()?),
            _ => return Ok(None),
        }))
    }

    fn other(name: String) -> Self {
        RequestBody::Other(name)
    }
}

impl Body for ResponseBody {
    const DOCUMENT: &'static str = RESPONSE_KEY;

    fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        match self {
            ResponseBody::Payment(b) => map.serialize_entry("PaymentResponse", b),
            ResponseBody::TransactionStatus(b) => map.serialize_entry("TransactionStatusResponse", b),
            ResponseBody::Reversal(b) => map.serialize_entry("ReversalResponse", b),
            ResponseBody::Diagnosis(b) => map.serialize_entry("DiagnosisResponse", b),
            ResponseBody::Reconciliation(b) => map.serialize_entry("ReconciliationResponse", b),
            ResponseBody::Other(name) => map.serialize_entry(name.as_str(), &empty()),
        }
    }

    fn read<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Option<Self>, A::Error> {
        Ok(Some(match key {
            "PaymentResponse" => ResponseBody::Payment(map.next_value()?),
            "TransactionStatusResponse" => ResponseBody::TransactionStatus(map.next_value()?),
            "ReversalResponse" => ResponseBody::Reversal(map.next_value()?),
            "DiagnosisResponse" => ResponseBody::Diagnosis(map.next_value()?),
            "ReconciliationResponse" => ResponseBody::Reconciliation(map.next_value()?),
            _ => return Ok(None),
        }))
    }

    fn other(name: String) -> Self {
        ResponseBody::Other(name)
    }
}

/// The inside of a document: the header, then the body's one entry.
struct Inner<'a, B> {
    header: &'a MessageHeader,
    body: &'a B,
}

impl<B: Body> Serialize for Inner<'_, B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("MessageHeader", self.header)?;
        self.body.serialize_entry(&mut map)?;
        map.end()
    }
}

fn serialize_document<S: Serializer, B: Body>(
    serializer: S,
    header: &MessageHeader,
    body: &B,
) -> Result<S::Ok, S::Error> {
    let mut document = serializer.serialize_map(Some(1))?;
    document.serialize_entry(B::DOCUMENT, &Inner { header, body })?;
    document.end()
}

impl Serialize for SaleToPoiRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_document(serializer, &self.header, &self.body)
    }
}

impl Serialize for SaleToPoiResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_document(serializer, &self.header, &self.body)
    }
}

/// The inside of a document, read.
struct Message<B> {
    header: MessageHeader,
    body: B,
}

struct MessageVisitor<B>(PhantomData<B>);

impl<'de, B: Body> Visitor<'de> for MessageVisitor<B> {
    type Value = Message<B>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the object inside {}", B::DOCUMENT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut header: Option<MessageHeader> = None;
        let mut body: Option<B> = None;
        let mut other: Option<String> = None;
        let mut encrypted = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "MessageHeader" {
                if header.is_some() {
                    return Err(A::Error::duplicate_field("MessageHeader"));
                }
                header = Some(map.next_value()?);
                continue;
            }
            let read = if body.is_none() { B::read(&key, &mut map)? } else { None };
            match read {
                Some(b) => body = Some(b),
                None => {
                    map.next_value::<IgnoredAny>()?;
                    encrypted |= key == "NexoBlob";
                    if other.is_none() && is_body_name(&key) {
                        other = Some(key);
                    }
                }
            }
        }
        let header = header.ok_or_else(|| A::Error::missing_field("MessageHeader"))?;
        let body = match (body, other) {
            (Some(body), _) => body,
            (None, Some(name)) => B::other(name),
            (None, None) if encrypted => {
                return Err(A::Error::custom("an encrypted message (NexoBlob): decrypt it first"));
            }
            (None, None) => return Err(A::Error::custom("a message without a body")),
        };
        Ok(Message { header, body })
    }
}

impl<'de, B: Body> Deserialize<'de> for Message<B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor(PhantomData))
    }
}

struct DocumentVisitor<B>(PhantomData<B>);

impl<'de, B: Body> Visitor<'de> for DocumentVisitor<B> {
    type Value = Message<B>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} document", B::DOCUMENT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut message: Option<Message<B>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == B::DOCUMENT && message.is_none() {
                message = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        message.ok_or_else(|| A::Error::missing_field(B::DOCUMENT))
    }
}

impl<'de> Deserialize<'de> for SaleToPoiRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Message { header, body } = deserializer.deserialize_map(DocumentVisitor::<RequestBody>(PhantomData))?;
        Ok(SaleToPoiRequest { header, body })
    }
}

impl<'de> Deserialize<'de> for SaleToPoiResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Message { header, body } = deserializer.deserialize_map(DocumentVisitor::<ResponseBody>(PhantomData))?;
        Ok(SaleToPoiResponse { header, body })
    }
}

macro_rules! body_from {
    ($enum:ident :: $variant:ident ($ty:ty)) => {
        impl From<$ty> for $enum {
            fn from(body: $ty) -> Self {
                $enum::$variant(Box::new(body))
            }
        }
    };
}

body_from!(RequestBody::Payment(PaymentRequest));
body_from!(RequestBody::TransactionStatus(TransactionStatusRequest));
body_from!(RequestBody::Abort(AbortRequest));
body_from!(RequestBody::Reversal(ReversalRequest));
body_from!(RequestBody::Diagnosis(DiagnosisRequest));
body_from!(RequestBody::Reconciliation(ReconciliationRequest));
body_from!(ResponseBody::Payment(PaymentResponse));
body_from!(ResponseBody::TransactionStatus(TransactionStatusResponse));
body_from!(ResponseBody::Reversal(ReversalResponse));
body_from!(ResponseBody::Diagnosis(DiagnosisResponse));
body_from!(ResponseBody::Reconciliation(ReconciliationResponse));
