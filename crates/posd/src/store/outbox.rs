//! The outbox: payments approved offline waiting to be forwarded to the
//! gateway, their totals, and the operations that may reach the gateway more
//! than once (each noted before its first attempt leaves).

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::events::{EventKind, EventRecord, NewEvent, insert_event};
use super::history::audit_in;
use super::payments::{COLUMNS, PaymentRecord, row_to_payment};
use super::{Store, StoreError, exec};

/// The outbox's totals, for limits and sync status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub count: u32,
    pub quarantined: u32,
    /// (currency, total minor units), sorted by currency.
    pub totals: Vec<(String, i64)>,
    /// Oldest payment waiting for the link (quarantined ones wait for a person).
    pub oldest_queued_at_ms: Option<i64>,
}

/// The outbox's next FIFO position (served by the `payments_queue` index).
pub(super) const NEXT_QUEUE_SEQ: &str =
    "SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM payments WHERE queue_seq IS NOT NULL";

/// Queued payments past `?1` (queued before it) whose forwarding may have
/// reached the gateway, with their card data still kept.
const OVERDUE: &str = "status = 'offline_approved' AND forward_attempts > 0 AND queued_at_ms < ?1 \
    AND encrypted_card IS NOT NULL";

/// The write of [`Store::drop_overdue_card_data`].
fn drop_overdue_card_data_in(
    tx: &Connection,
    queued_before_ms: i64,
    why: &str,
    at_ms: i64,
) -> Result<Vec<EventRecord>, StoreError> {
    let overdue: Vec<(String, String)> = tx
        .prepare_cached(&format!("SELECT id, terminal_id FROM payments WHERE {OVERDUE} ORDER BY queue_seq"))?
        .query_map([queued_before_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut events = Vec::with_capacity(overdue.len());
    for (id, terminal_id) in overdue {
        exec(tx, "UPDATE payments SET encrypted_card = NULL WHERE id = ?1", [&id])?;
        let cause = format!("card data deleted: {why}; the gateway's record under the payment's key decides");
        audit_in(tx, &id, at_ms, &cause)?;
        let message = format!(
            "payment {id}: {why}; its card data is deleted and posd asks the gateway whether it holds the payment \
             (captured if it does, expired if not)"
        );
        let event = NewEvent { kind: EventKind::ForwardOverdue, terminal_id, payment_id: id, message };
        events.push(insert_event(tx, &event, at_ms)?);
    }
    Ok(events)
}

text_enum! {
    /// Operations that may be sent to the gateway more than once, each under a
    /// key of its own (a refund's refund key; a capture's or void's payment
    /// key) (`gateway_sends.kind`).
    pub enum SendKind ("send kind") {
        Refund = "refund",
        Capture = "capture",
        Void = "void",
    }
}

impl Store {
    /// The next queued payments to forward, in FIFO order, with their card data.
    pub fn outbox_batch(&self, limit: usize) -> Result<Vec<(PaymentRecord, Vec<u8>)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS}, encrypted_card FROM payments WHERE status = 'offline_approved' ORDER BY queue_seq LIMIT +?1"
        ))?;
        let rows = stmt.query_map([limit as i64], |r| {
            let blob: Option<Vec<u8>> = r.get(30)?;
            Ok((row_to_payment(r)?, blob.unwrap_or_default()))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued payments older than `queued_before_ms` that may expire: never
    /// sent (one whose forwarding may have reached the gateway is asked about
    /// instead, see [`Store::drop_overdue_card_data`]), or quarantined
    /// (refused by the gateway).
    pub fn queued_before(&self, queued_before_ms: i64) -> Result<Vec<PaymentRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM payments WHERE queued_at_ms < ?1 AND \
             ((status = 'offline_approved' AND forward_attempts = 0) OR status = 'quarantined') ORDER BY queue_seq"
        ))?;
        let rows = stmt.query_map([queued_before_ms], row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the card data of queued payments queued before
    /// `queued_before_ms` whose forwarding may have reached the gateway
    /// (they were claimed for sending at least once): past the expiry age a
    /// payment is never sent again, only asked about by its key. Each gets an
    /// audit entry and a `forward_overdue` event (at `at_ms`), all in one
    /// commit.
    ///
    /// The forwarder calls it every round: when no payment is overdue (a
    /// read finds none) nothing is committed.
    pub async fn drop_overdue_card_data(
        self: &Arc<Self>,
        queued_before_ms: i64,
        why: &str,
        at_ms: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let any: bool = self
            .reader()
            .prepare_cached(&format!("SELECT EXISTS (SELECT 1 FROM payments WHERE {OVERDUE})"))?
            .query_row([queued_before_ms], |r| r.get(0))?;
        if !any {
            return Ok(Vec::new());
        }
        let why = why.to_string();
        self.write(move |tx| drop_overdue_card_data_in(tx, queued_before_ms, &why, at_ms)).await
    }

    /// Totals of the unsent offline payments.
    pub fn queue_summary(&self) -> Result<QueueSummary, StoreError> {
        let reader = self.reader();
        // Both queries in one read transaction: the same commit's totals.
        let conn = reader.unchecked_transaction()?;
        const UNSENT: &str = "status IN ('offline_approved', 'forwarding', 'quarantined')";
        let (count, quarantined, oldest): (u32, u32, Option<i64>) = conn
            .prepare_cached(&format!(
                "SELECT COUNT(*), COALESCE(SUM(status = 'quarantined'), 0), \
                 MIN(CASE WHEN status = 'quarantined' THEN NULL ELSE queued_at_ms END) FROM payments WHERE {UNSENT}"
            ))?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT currency, SUM(amount_minor) FROM payments WHERE {UNSENT} GROUP BY currency ORDER BY currency"
        ))?;
        let totals = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(QueueSummary { count, quarantined, totals, oldest_queued_at_ms: oldest })
    }

    /// Unsent offline payments of one card (by the reader's fingerprint).
    pub fn queued_for_card(&self, fingerprint: &str) -> Result<u32, StoreError> {
        Ok(self
            .reader()
            .prepare_cached(
                "SELECT COUNT(*) FROM payments WHERE status IN ('offline_approved', 'forwarding', 'quarantined') \
                 AND card_fingerprint = ?1",
            )?
            .query_row([fingerprint], |r| r.get(0))?)
    }

    /// Records, before an attempt leaves, that the operation may reach the
    /// gateway. Returns true when an earlier attempt may already have (then
    /// this attempt's "not sent" settles nothing). Only the first attempt
    /// costs a commit, which notes it as first sent at `at_ms`.
    pub async fn note_send(
        self: &Arc<Self>,
        kind: SendKind,
        key: &str,
        payment_id: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        if self.sent_before(kind, key)? {
            return Ok(true);
        }
        let (key, payment_id) = (key.to_string(), payment_id.to_string());
        self.write(move |tx| {
            let inserted = exec(
                tx,
                "INSERT OR IGNORE INTO gateway_sends (kind, op_key, payment_id, first_sent_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind, key, payment_id, at_ms],
            )?;
            Ok(inserted == 0)
        })
        .await
    }

    /// Takes back the note of [`Store::note_send`] after the attempt that
    /// made it was not sent (its connect failed): nothing can be at the
    /// gateway, and the next attempt is a first one again.
    pub async fn forget_send(self: &Arc<Self>, kind: SendKind, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |tx| {
            exec(tx, "DELETE FROM gateway_sends WHERE kind = ?1 AND op_key = ?2", params![kind, key])?;
            Ok(())
        })
        .await
    }

    /// Captures and voids that may have reached the gateway while their
    /// payment is still AUTHORIZED here (the answer was lost and the register
    /// did not ask again), oldest first, with when each was first sent.
    pub fn after_sale_in_doubt(&self) -> Result<Vec<(SendKind, PaymentRecord, i64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS}, gateway_sends.kind, gateway_sends.first_sent_at_ms FROM gateway_sends \
             JOIN payments ON payments.id = gateway_sends.payment_id \
             WHERE gateway_sends.kind IN ('capture', 'void') AND payments.status = 'authorized' \
             ORDER BY gateway_sends.first_sent_at_ms LIMIT 100"
        ))?;
        let n = COLUMNS.split(',').count();
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(n)?;
            Ok((kind, row_to_payment(r)?, r.get::<_, i64>(n + 1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, rec, at) = row?;
            if let Some(kind) = SendKind::parse(&kind) {
                out.push((kind, rec, at));
            }
        }
        Ok(out)
    }

    /// Whether an attempt of the operation may have reached the gateway.
    pub fn sent_before(&self, kind: SendKind, key: &str) -> Result<bool, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM gateway_sends WHERE kind = ?1 AND op_key = ?2")?;
        Ok(stmt.exists(params![kind, key])?)
    }
}
