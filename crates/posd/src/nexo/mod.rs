//! The register side of nexo ("Sale to POI") for lanes whose payment
//! terminal speaks it locally, as Adyen terminals do (issue #23).
//!
//! - [`tls`]: who the terminal is (its chain against the lane's CA, its
//!   POIID in the certificate's common name; the URL's host is not checked).
//! - [`line`]: one HTTPS POST per request, with the one distinction money
//!   needs: a request that cannot have reached the terminal, against one
//!   that may have.
//! - [`terminal`]: one lane's terminal ([`terminal::NexoTerminal`]): the
//!   envelope, the encryption, the checks of every answer against its
//!   request, the exchange log, and the health check (DiagnosisRequest).
//!
//! The messages, the local encryption and the amounts are in the I/O-free
//! crate `pos-nexo`.

pub mod line;
pub mod terminal;
pub mod tls;
