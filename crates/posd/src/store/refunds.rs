//! Refunds: reserving one against the captured amount, settling it, and
//! reading them back.

use std::sync::Arc;

use pos_engine::Status;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::events::{EventRecord, NewEvent, insert_event};
use super::history::audit_in;
use super::{Store, StoreError, exec};

/// A refund of (part of) a captured payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: String,
    pub idempotency_key: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub refund_key: String,
    pub status: RefundStatus,
    pub reason: String,
    pub failure_code: String,
    pub failure_message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

text_enum! {
    /// Where a refund stands (`refunds.status`).
    pub enum RefundStatus ("refund status") {
        /// Reserved against the captured amount; its outcome is not known yet.
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// What reserving a refund found.
#[derive(Debug)]
pub enum Reservation {
    /// Recorded as pending: send it.
    Created(RefundRecord),
    /// The idempotency key is known: this refund.
    Existing(RefundRecord),
    /// More than the captured amount would be refunded.
    Exceeds { captured: i64, committed: i64 },
    /// The payment is not captured.
    NotCaptured(Status),
}

const REFUND_COLUMNS: &str = "id, idempotency_key, payment_id, amount_minor, currency, refund_key, status, reason, \
    failure_code, failure_message, created_at_ms, updated_at_ms";

fn row_to_refund(r: &Row<'_>) -> rusqlite::Result<RefundRecord> {
    Ok(RefundRecord {
        id: r.get(0)?,
        idempotency_key: r.get(1)?,
        payment_id: r.get(2)?,
        amount_minor: r.get(3)?,
        currency: r.get(4)?,
        refund_key: r.get(5)?,
        status: r.get(6)?,
        reason: r.get(7)?,
        failure_code: r.get(8)?,
        failure_message: r.get(9)?,
        created_at_ms: r.get(10)?,
        updated_at_ms: r.get(11)?,
    })
}

impl Store {
    /// Records, before a refund goes to the payment terminal, the lane's last
    /// receipt number then (-1: none known): what the terminal's answers
    /// about it are judged against, and the sign that it may have been sent.
    pub async fn set_refund_receipt_before(self: &Arc<Self>, id: &str, before: i64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |tx| {
            exec(tx, "UPDATE refunds SET zvt_receipt_before = ?2 WHERE id = ?1", params![id, before])?;
            Ok(())
        })
        .await
    }

    /// What [`Store::set_refund_receipt_before`] recorded; `None` when the
    /// refund never started on a terminal.
    pub fn refund_receipt_before(&self, id: &str) -> Result<Option<i64>, StoreError> {
        self.nullable_of("SELECT zvt_receipt_before FROM refunds WHERE id = ?1", id)
    }

    /// Records a refund as pending if the payment is captured and the
    /// captured amount covers it with every pending and succeeded refund; or
    /// returns the refund already under the idempotency key.
    pub async fn reserve_refund(self: &Arc<Self>, r: &RefundRecord) -> Result<Reservation, StoreError> {
        let r = r.clone();
        self.write(move |tx| reserve_refund_in(tx, r)).await
    }

    /// Settles a pending refund at `at_ms`, with its event, in one commit (a
    /// refund settled already is returned as it stands, without an event):
    /// succeeded without a `failure`, failed with its code and message. With
    /// `record`, a succeeded refund also queues its record for the gateway's
    /// ledger (a payment terminal's refund); with `audit`, an entry in the
    /// payment's history (who settled the refund, and how); both in the same
    /// commit.
    pub async fn finish_refund(
        self: &Arc<Self>,
        id: &str,
        failure: Option<(&str, &str)>,
        event: &NewEvent,
        record: bool,
        audit: Option<&str>,
        at_ms: i64,
    ) -> Result<(RefundRecord, Option<EventRecord>), StoreError> {
        let succeeded = failure.is_none();
        let audit = audit.map(str::to_string);
        let (id, event) = (id.to_string(), event.clone());
        let (code, message) = failure.map(|(c, m)| (c.to_string(), m.to_string())).unwrap_or_default();
        self.write(move |tx| {
            let settled = exec(
                tx,
                "UPDATE refunds SET status = ?2, failure_code = ?3, failure_message = ?4, updated_at_ms = ?5 \
                 WHERE id = ?1 AND status = 'pending'",
                params![
                    id,
                    if succeeded { RefundStatus::Succeeded } else { RefundStatus::Failed },
                    code,
                    message,
                    at_ms
                ],
            )? == 1;
            // Settled before (a same-key call and start-up raced): that
            // settlement and its event stand.
            let event = if settled { Some(insert_event(tx, &event, at_ms)?) } else { None };
            if let (Some(e), Some(cause)) = (&event, &audit) {
                audit_in(tx, &e.payment_id, at_ms, cause)?;
            }
            if settled && succeeded && record {
                exec(
                    tx,
                    "INSERT OR IGNORE INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
                     SELECT refund_key, payment_id, 'refund', amount_minor, currency, ?2 FROM refunds WHERE id = ?1",
                    params![id, at_ms],
                )?;
            }
            let r = tx.query_row(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"), [&id], row_to_refund)?;
            Ok((r, event))
        })
        .await
    }

    pub fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = ?1 ORDER BY created_at_ms, id"
        ))?;
        let rows = stmt.query_map([payment_id], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One refund by its id.
    pub fn refund(&self, id: &str) -> Result<Option<RefundRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"))?;
        Ok(stmt.query_row([id], row_to_refund).optional()?)
    }

    /// Refunds made in `[start, end)`.
    pub fn refunds_between(&self, start_ms: i64, end_ms: i64) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE created_at_ms >= ?1 AND created_at_ms < ?2 ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([start_ms, end_ms], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Refunds whose outcome is not known yet (sent again at start-up).
    pub fn pending_refunds(&self) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'pending' ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The write of [`Store::reserve_refund`].
fn reserve_refund_in(tx: &Connection, r: RefundRecord) -> Result<Reservation, StoreError> {
    if let Some(existing) = tx
        .query_row(
            &format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE idempotency_key = ?1"),
            [&r.idempotency_key],
            row_to_refund,
        )
        .optional()?
    {
        return Ok(Reservation::Existing(existing));
    }
    let (status, captured): (String, i64) = tx
        .query_row("SELECT status, captured_minor FROM payments WHERE id = ?1", [&r.payment_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(r.payment_id.clone()))?;
    let status = Status::parse(&status).ok_or(StoreError::Corrupt(status))?;
    if status != Status::Captured {
        return Ok(Reservation::NotCaptured(status));
    }
    let committed: i64 = tx.query_row(
        "SELECT COALESCE(SUM(amount_minor), 0) FROM refunds WHERE payment_id = ?1 AND status != 'failed'",
        [&r.payment_id],
        |row| row.get(0),
    )?;
    if r.amount_minor <= 0 || committed + r.amount_minor > captured {
        return Ok(Reservation::Exceeds { captured, committed });
    }
    exec(
        tx,
        &format!("INSERT INTO refunds ({REFUND_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            r.id,
            r.idempotency_key,
            r.payment_id,
            r.amount_minor,
            r.currency,
            r.refund_key,
            r.status,
            r.reason,
            r.failure_code,
            r.failure_message,
            r.created_at_ms,
            r.updated_at_ms
        ],
    )?;
    Ok(Reservation::Created(r))
}
