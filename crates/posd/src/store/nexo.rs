//! What nexo terminals need kept: the ServiceID counter per SaleID, and the
//! SaleID and ServiceID each payment went to its terminal under.
//!
//! A ServiceID is reserved inside the commit of the write that uses it
//! ([`reserve_service_id_in`], e.g. by `Data::NexoStart` with the transition
//! that starts a payment on the terminal): a write that fails takes its
//! reservation with it, and one that commits leaves the counter past it, so
//! no two requests of a SaleID share a ServiceID, across restarts too.

use std::sync::Arc;

use pos_nexo::ServiceId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, exec};

/// Reserves the next ServiceID of `sale_id` in the caller's transaction.
pub(super) fn reserve_service_id_in(conn: &Connection, sale_id: &str) -> Result<ServiceId, StoreError> {
    exec(
        conn,
        "INSERT INTO nexo_service_ids (sale_id, last) VALUES (?1, 1) \
         ON CONFLICT (sale_id) DO UPDATE SET last = last + 1",
        params![sale_id],
    )?;
    let last: i64 = conn
        .prepare_cached("SELECT last FROM nexo_service_ids WHERE sale_id = ?1")?
        .query_row([sale_id], |r| r.get(0))?;
    Ok(ServiceId::from_counter(last.unsigned_abs()))
}

/// Fails the commit when the reservation gave another ServiceID than the one
/// the request goes out under (`expected`, read before the commit).
pub(super) fn check_reserved(reserved: &ServiceId, expected: Option<&str>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != reserved.as_str() => Err(StoreError::Corrupt(format!(
            "ServiceID {reserved} reserved where {expected} was read before; another request took one meanwhile"
        ))),
        _ => Ok(()),
    }
}

/// A stored ServiceID, checked.
fn service_id(text: String) -> Result<ServiceId, StoreError> {
    ServiceId::parse(&text).map_err(|_| StoreError::Corrupt(text))
}

impl Store {
    /// Reserves the next ServiceID of `sale_id` in a synced commit of its
    /// own (a request that refers to no stored row, such as a
    /// TransactionStatus or an end of day).
    pub async fn reserve_service_id(self: &Arc<Self>, sale_id: &str) -> Result<ServiceId, StoreError> {
        let sale_id = sale_id.to_string();
        self.write(move |conn| reserve_service_id_in(conn, &sale_id)).await
    }

    /// The ServiceID the next reservation for `sale_id` gives (the counter
    /// as stored, not moved): what a request goes out under once the commit
    /// that takes it is in (`Data::NexoStart`, an owed reversal with
    /// `Data::NexoResult`, a void's or refund's record). The lane is held
    /// meanwhile, so nothing else takes it.
    pub fn next_service_id(&self, sale_id: &str) -> Result<ServiceId, StoreError> {
        let last: Option<i64> = self
            .reader()
            .prepare_cached("SELECT last FROM nexo_service_ids WHERE sale_id = ?1")?
            .query_row([sale_id], |r| r.get(0))
            .optional()?;
        Ok(ServiceId::from_counter(last.unwrap_or(0).unsigned_abs() + 1))
    }

    /// The SaleID and ServiceID a payment went to its nexo terminal under;
    /// `None` when it never did.
    pub fn nexo_service(&self, payment_id: &str) -> Result<Option<(String, ServiceId)>, StoreError> {
        let found: Option<(Option<String>, Option<String>)> = self
            .reader()
            .prepare_cached("SELECT nexo_sale_id, nexo_service_id FROM payments WHERE id = ?1")?
            .query_row([payment_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            Some((Some(sale_id), Some(id))) => Ok(Some((sale_id, service_id(id)?))),
            _ => Ok(None),
        }
    }
}

/// A terminal's transaction reference as stored. Adyen's POITransactionID
/// carries a 16-digit PSP reference that may pass the Luhn check, and posd's
/// files never hold a run of digits a card-number scan would take for a PAN
/// (ARCHITECTURE.md, invariants); the reference is not card data and must
/// stay exact (a reversal names it), so it is kept base32-encoded (RFC 4648:
/// letters and the digits 2-7, no run a scan could match) and decoded on
/// reading.
pub(super) fn stored_reference(reference: &str) -> String {
    data_encoding::BASE32_NOPAD.encode(reference.as_bytes())
}

/// The reference [`stored_reference`] stored.
pub(super) fn read_reference(stored: &str) -> Result<String, StoreError> {
    data_encoding::BASE32_NOPAD
        .decode(stored.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("a stored terminal transaction reference is not base32: {stored:?}"))
        })
}
