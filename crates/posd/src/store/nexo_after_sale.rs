//! What a void, refund or owed reversal on a nexo terminal keeps: the
//! ServiceID each attempt goes out under, written with the record it belongs
//! to in the commit that moves the lane's counter past it, before the
//! request leaves; and the reversals themselves (`nexo_reversals`,
//! migration 12), a void the register asked for or one posd owes (a partial
//! approval, an approval after the register's cancel).
//!
//! A ServiceID is read first ([`Store::next_service_id`]: the lane is held,
//! so nothing takes it meanwhile) and taken in the commit that uses it
//! ([`take_service_id_in`]), which fails if the counter moved elsewhere.

use std::sync::Arc;

use pos_nexo::ServiceId;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::events::{EventRecord, insert_event};
use super::payments::{Applied, apply_in};
use super::{NewEvent, Store, StoreError, Update, exec};

text_enum! {
    /// Why a nexo payment is reversed (`nexo_reversals.kind`).
    pub enum ReversalKind ("nexo reversal kind") {
        /// The register asked for a void.
        Void = "void",
        /// posd owes it: the terminal booked what posd does not accept.
        Owed = "owed",
    }
}

text_enum! {
    /// Where one reversal attempt stands (`nexo_reversals.status`).
    pub enum ReversalStatus ("nexo reversal status") {
        /// Its ServiceID is committed; it may be at the terminal.
        Pending = "pending",
        /// The terminal reversed the payment.
        Booked = "booked",
        /// The terminal did not (or never had it).
        Failed = "failed",
    }
}

/// One reversal attempt of a nexo payment: a ReversalRequest of its POI
/// transaction, under the lane's SaleID and its own ServiceID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexoReversal {
    pub sale_id: String,
    pub service_id: ServiceId,
    pub payment_id: String,
    pub kind: ReversalKind,
    /// Its SaleTransactionID (its own key, not the payment's).
    pub sale_transaction_id: String,
    pub poi_transaction_id: String,
    pub poi_time_stamp: String,
    /// What the terminal booked and is reversed (all of it).
    pub amount_minor: i64,
    pub status: ReversalStatus,
    /// How it was settled.
    pub message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const REVERSAL_COLUMNS: &str = "sale_id, service_id, payment_id, kind, sale_transaction_id, poi_transaction_id, \
    poi_time_stamp, amount_minor, status, message, created_at_ms, updated_at_ms";

/// A row as read, its ServiceID not yet checked.
type RawReversal = (String, NexoReversal);

fn row_to_reversal(r: &Row<'_>) -> rusqlite::Result<RawReversal> {
    let service_id: String = r.get(1)?;
    Ok((
        service_id,
        NexoReversal {
            sale_id: r.get(0)?,
            service_id: ServiceId::from_counter(0),
            payment_id: r.get(2)?,
            kind: r.get(3)?,
            sale_transaction_id: r.get(4)?,
            poi_transaction_id: r.get(5)?,
            poi_time_stamp: r.get(6)?,
            amount_minor: r.get(7)?,
            status: r.get(8)?,
            message: r.get(9)?,
            created_at_ms: r.get(10)?,
            updated_at_ms: r.get(11)?,
        },
    ))
}

/// A row with its stored ServiceID checked.
fn checked((text, mut reversal): RawReversal) -> Result<NexoReversal, StoreError> {
    reversal.service_id = ServiceId::parse(&text).map_err(|_| StoreError::Corrupt(text))?;
    reversal.poi_transaction_id = super::nexo::read_reference(&reversal.poi_transaction_id)?;
    Ok(reversal)
}

/// Moves the counter of `sale_id` past `expected` in the caller's
/// transaction; fails (and so rolls the write back) unless `expected` is the
/// counter's next ServiceID.
pub(super) fn take_service_id_in(conn: &Connection, sale_id: &str, expected: &ServiceId) -> Result<(), StoreError> {
    let taken = super::nexo::reserve_service_id_in(conn, sale_id)?;
    if &taken != expected {
        return Err(StoreError::Unusable(format!(
            "ServiceID {expected} of {sale_id} was taken by another request (the counter is at {taken}); nothing \
             was sent under it"
        )));
    }
    Ok(())
}

/// Records an owed reversal in the caller's transaction (with the payment's
/// answer that makes it owed), its ServiceID taken there.
pub(super) fn owe_reversal_in(conn: &Connection, r: &NexoReversal) -> Result<(), StoreError> {
    take_service_id_in(conn, &r.sale_id, &r.service_id)?;
    insert_reversal_in(conn, r)
}

fn insert_reversal_in(conn: &Connection, r: &NexoReversal) -> Result<(), StoreError> {
    exec(
        conn,
        &format!(
            "INSERT INTO nexo_reversals ({REVERSAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            r.sale_id,
            r.service_id.as_str(),
            r.payment_id,
            r.kind,
            r.sale_transaction_id,
            super::nexo::stored_reference(&r.poi_transaction_id),
            r.poi_time_stamp,
            r.amount_minor,
            r.status,
            r.message,
            r.created_at_ms,
            r.updated_at_ms
        ],
    )?;
    Ok(())
}

impl Store {
    /// A pending refund goes to its nexo terminal under `service_id` of
    /// `sale_id`: kept with it, the counter moved past it, in one synced
    /// commit.
    pub async fn start_nexo_refund(
        self: &Arc<Self>,
        refund_id: &str,
        sale_id: &str,
        service_id: &ServiceId,
    ) -> Result<(), StoreError> {
        let (id, sale_id, service_id) = (refund_id.to_string(), sale_id.to_string(), service_id.clone());
        self.write(move |conn| {
            take_service_id_in(conn, &sale_id, &service_id)?;
            let kept = exec(
                conn,
                "UPDATE refunds SET nexo_sale_id = ?2, nexo_service_id = ?3 WHERE id = ?1 AND status = 'pending'",
                params![id, sale_id, service_id.as_str()],
            )?;
            if kept != 1 {
                return Err(StoreError::NotFound(format!("{id} (as a pending refund)")));
            }
            Ok(())
        })
        .await
    }

    /// The SaleID and ServiceID a refund went to its nexo terminal under;
    /// `None` when it never did.
    pub fn nexo_refund_service(&self, refund_id: &str) -> Result<Option<(String, ServiceId)>, StoreError> {
        let found: Option<(Option<String>, Option<String>)> = self
            .reader()
            .prepare_cached("SELECT nexo_sale_id, nexo_service_id FROM refunds WHERE id = ?1")?
            .query_row([refund_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            Some((Some(sale_id), Some(id))) => {
                let service_id = ServiceId::parse(&id).map_err(|_| StoreError::Corrupt(id))?;
                Ok(Some((sale_id, service_id)))
            }
            _ => Ok(None),
        }
    }

    /// Records a reversal attempt as pending, its ServiceID taken, in one
    /// synced commit, before it is sent.
    pub async fn start_reversal(self: &Arc<Self>, r: &NexoReversal) -> Result<(), StoreError> {
        let r = r.clone();
        self.write(move |conn| {
            take_service_id_in(conn, &r.sale_id, &r.service_id)?;
            insert_reversal_in(conn, &r)
        })
        .await
    }

    /// Records a reversal posd owes in a commit of its own (the payment
    /// driver records it with the answer that makes it owed, through
    /// [`owe_reversal_in`]).
    pub async fn owe_reversal(self: &Arc<Self>, r: &NexoReversal) -> Result<(), StoreError> {
        let r = r.clone();
        self.write(move |conn| owe_reversal_in(conn, &r)).await
    }

    /// Settles a pending reversal attempt, in one synced commit with its
    /// event and, when given (the payment reversed), the payment's
    /// transition. One settled before is returned as it stands, and nothing
    /// else is written.
    pub async fn settle_reversal(
        self: &Arc<Self>,
        sale_id: &str,
        service_id: &ServiceId,
        settled: Settled,
        at_ms: i64,
    ) -> Result<ReversalSettled, StoreError> {
        let (sale_id, service_id) = (sale_id.to_string(), service_id.as_str().to_string());
        self.write(move |conn| {
            let Settled { booked, message, event, payment } = settled;
            let status = if booked { ReversalStatus::Booked } else { ReversalStatus::Failed };
            let moved = exec(
                conn,
                "UPDATE nexo_reversals SET status = ?3, message = ?4, updated_at_ms = ?5 \
                 WHERE sale_id = ?1 AND service_id = ?2 AND status = 'pending'",
                params![sale_id, service_id, status, message, at_ms],
            )? == 1;
            let (mut applied, mut event_record) = (None, None);
            if moved {
                if let Some((transition, update)) = payment {
                    let payment_id = reversal_in(conn, &sale_id, &service_id)?.payment_id;
                    applied = Some(apply_in(conn, &payment_id, &transition, update, at_ms)?);
                }
                event_record = event.map(|e| insert_event(conn, &e, at_ms)).transpose()?;
            }
            let reversal = reversal_in(conn, &sale_id, &service_id)?;
            Ok(ReversalSettled { reversal, now: moved, applied, event: event_record })
        })
        .await
    }

    /// A payment's reversal attempts, oldest first.
    pub fn reversals_of(&self, payment_id: &str) -> Result<Vec<NexoReversal>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REVERSAL_COLUMNS} FROM nexo_reversals WHERE payment_id = ?1 ORDER BY rowid"
        ))?;
        let rows = stmt.query_map([payment_id], row_to_reversal)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(checked).collect()
    }

    /// What is open on the lane of `sale_id`, oldest first: every pending
    /// attempt (void or owed), and of each payment that owes a reversal and
    /// has no attempt pending, its last attempt (failed: to be made again).
    /// A booked attempt of either kind ends what a payment owes: both
    /// reverse its whole POI transaction.
    pub fn open_reversals(&self, sale_id: &str) -> Result<Vec<NexoReversal>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REVERSAL_COLUMNS} FROM nexo_reversals r WHERE sale_id = ?1 AND (status = 'pending' OR (\
             kind = 'owed' AND rowid = (SELECT MAX(rowid) FROM nexo_reversals l WHERE l.payment_id = r.payment_id \
             AND l.kind = 'owed') AND NOT EXISTS (SELECT 1 FROM nexo_reversals b WHERE b.payment_id = r.payment_id \
             AND b.status = 'booked'))) ORDER BY rowid"
        ))?;
        let rows = stmt.query_map([sale_id], row_to_reversal)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(checked).collect()
    }

    /// One reversal attempt.
    pub fn reversal(&self, sale_id: &str, service_id: &ServiceId) -> Result<Option<NexoReversal>, StoreError> {
        let conn = self.reader();
        let found = conn
            .prepare_cached(&format!(
                "SELECT {REVERSAL_COLUMNS} FROM nexo_reversals WHERE sale_id = ?1 AND service_id = ?2"
            ))?
            .query_row(params![sale_id, service_id.as_str()], row_to_reversal)
            .optional()?;
        found.map(checked).transpose()
    }

    /// Pending refunds that went to the nexo terminal of `sale_id` (may be
    /// booked there), oldest first.
    pub fn pending_nexo_refunds(&self, sale_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM refunds WHERE status = 'pending' AND nexo_sale_id = ?1 AND nexo_service_id IS NOT NULL \
             ORDER BY created_at_ms, id",
        )?;
        let rows = stmt.query_map([sale_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn reversal_in(conn: &Connection, sale_id: &str, service_id: &str) -> Result<NexoReversal, StoreError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {REVERSAL_COLUMNS} FROM nexo_reversals WHERE sale_id = ?1 AND service_id = ?2"
        ))?
        .query_row(params![sale_id, service_id], row_to_reversal)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("nexo reversal {service_id} of {sale_id}")))?;
    checked(raw)
}

/// How a reversal attempt is settled (see [`Store::settle_reversal`]).
#[derive(Debug)]
pub struct Settled {
    pub booked: bool,
    pub message: String,
    pub event: Option<NewEvent>,
    /// The payment's transition, committed only if this settles the attempt.
    pub payment: Option<(pos_engine::Transition, Update)>,
}

/// What [`Store::settle_reversal`] committed.
#[derive(Debug)]
pub struct ReversalSettled {
    /// The attempt as it now stands.
    pub reversal: NexoReversal,
    /// Settled by this call (not before).
    pub now: bool,
    /// The payment's transition, when one was committed.
    pub applied: Option<Applied>,
    pub event: Option<EventRecord>,
}
