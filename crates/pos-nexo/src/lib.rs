//! nexo Retailer "Sale to POI" as Adyen terminals speak it locally (the
//! Terminal API), without I/O: posd is the Sale system, the terminal the POI;
//! one JSON document per HTTPS POST, blocking until the transaction ends.
//! This crate is what goes into and comes out of that POST; the driver that
//! sends it lives in posd.
//!
//! # Layout
//! - [`message`]: the envelope ([`SaleToPoiRequest`], [`SaleToPoiResponse`])
//!   with its [`MessageHeader`] and one body, and the parts every message
//!   shares ([`Response`], [`MessageReference`], [`TransactionIdentification`]).
//! - [`payment`], [`status`], [`reversal`], [`diagnosis`], [`reconciliation`]:
//!   the requests and responses posd needs (pay and refund, TransactionStatus
//!   and Abort, Reversal, Diagnosis, Reconciliation).
//! - [`codes`]: the data dictionary's code lists, each with `Other(String)`.
//! - [`amount`]: [`Decimal`], amounts in major units, exactly to and from
//!   integer minor units.
//! - [`crypto`]: NexoCrypto v1, the local encryption ([`Key`]).
//! - [`receipt`]: the terminal's receipts as scrubbed lines.
//! - [`service_id`]: [`ServiceId`], checked and made from a counter.
//!
//! # Invariants
//! - Field names are the data dictionary's, with its casing (`POIID`,
//!   `SaleID`, `ServiceID`, `MaskedPan`), checked against the reference
//!   library's (`@adyen/api-library`) typings. Reading is lenient (unknown
//!   fields ignored, unknown code values and bodies kept as `Other`); writing
//!   is exact.
//! - No float anywhere: an amount is read from its literal digits and written
//!   as a decimal literal; too many decimals for the currency, negative
//!   numbers and exponents are refused, never rounded.
//! - Decryption verifies the padding and the HMAC over the plaintext in
//!   constant time and reports any failure as the one `CryptoError::Refused`.
//! - No secret in `Debug`: a [`Key`] shows its identifier and version only.
//! - Receipt text from a terminal passes `pos_mask::scrub` before it becomes
//!   a [`receipt::ReceiptLine`]; card data beyond `CardData` (expiry,
//!   tokens) is never read.
//! - No I/O, no clock, no random numbers: the caller passes each nonce.

pub mod amount;
pub mod codes;
pub mod crypto;
pub mod diagnosis;
pub mod message;
pub mod payment;
pub mod receipt;
pub mod reconciliation;
pub mod reversal;
pub mod service_id;
pub mod status;

pub use amount::{AmountError, Decimal};
pub use crypto::{CryptoError, Key, KeyError};
pub use message::{
    MessageHeader, MessageReference, RequestBody, Response, ResponseBody, SaleToPoiRequest, SaleToPoiResponse,
    TransactionIdentification,
};
pub use service_id::{ServiceId, ServiceIdError};
