//! What posd keeps of its exchanges with the gateway: records for the
//! gateway's ledger (payment terminals' sales, reversals and refunds), the
//! gateway's events applied once, and a lane's end of day under way.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, named_params, params};

use super::events::{EventKind, EventRecord, NewEvent, insert_event};
use super::{Store, StoreError, exec};

/// A record waiting for (or sent to) the gateway's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub seq: i64,
    pub record_key: String,
    pub payment_id: String,
    pub kind: RecordKind,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at_ms: i64,
}

text_enum! {
    /// What a record for the gateway's ledger books (`gateway_records.kind`).
    pub enum RecordKind ("gateway record kind") {
        /// A payment a payment terminal approved.
        Sale = "sale",
        /// A payment terminal's payment reversed.
        Reversal = "reversal",
        /// A payment terminal's refund.
        Refund = "refund",
    }
}

impl Store {
    /// Records for the gateway's ledger not yet acknowledged, oldest first.
    pub fn pending_records(&self, limit: usize) -> Result<Vec<GatewayRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, record_key, payment_id, kind, amount_minor, currency, created_at_ms FROM gateway_records \
             WHERE sent_at_ms IS NULL AND refused = 0 ORDER BY seq LIMIT +?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(GatewayRecord {
                seq: r.get(0)?,
                record_key: r.get(1)?,
                payment_id: r.get(2)?,
                kind: r.get(3)?,
                amount_minor: r.get(4)?,
                currency: r.get(5)?,
                created_at_ms: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The gateway acknowledged the record (`error` empty; at `at_ms`), or the
    /// attempt failed; a `refused` record is not sent again.
    pub async fn record_attempt(
        self: &Arc<Self>,
        seq: i64,
        error: &str,
        refused: bool,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let error = error.to_string();
        // Every attempt counts. Acknowledged: sent at `at_ms`, the last error
        // kept; otherwise the error is the last one, and a refusal is final.
        let sent = error.is_empty() && !refused;
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE gateway_records SET attempts = attempts + 1, \
                 sent_at_ms = CASE WHEN :sent THEN :at ELSE sent_at_ms END, \
                 last_error = CASE WHEN :sent THEN last_error ELSE :error END, \
                 refused = CASE WHEN :refused THEN 1 ELSE refused END \
                 WHERE seq = :seq",
                named_params! {":seq": seq, ":sent": sent, ":at": at_ms, ":error": error, ":refused": refused},
            )?;
            Ok(())
        })
        .await
    }

    /// Applies a gateway event once, received at `at_ms`: records its id and
    /// appends the register event, in one commit; a redelivery only advances
    /// the cursor.
    pub async fn apply_gateway_event(
        self: &Arc<Self>,
        e: &pos_proto::gateway::GatewayEvent,
        at_ms: i64,
    ) -> Result<Option<EventRecord>, StoreError> {
        let e = e.clone();
        self.write(move |tx| apply_gateway_event_in(tx, &e, at_ms)).await
    }

    /// The key of the lane's end of day under way with the gateway, and
    /// whether an earlier attempt may have sent it; otherwise `candidate`,
    /// committed as the lane's key (started at `at_ms`) before the first
    /// attempt leaves.
    pub async fn begin_close(
        self: &Arc<Self>,
        terminal: &str,
        candidate: &str,
        at_ms: i64,
    ) -> Result<(String, bool), StoreError> {
        let (terminal, candidate) = (terminal.to_string(), candidate.to_string());
        self.write(move |tx| {
            let earlier: Option<String> = tx
                .query_row("SELECT batch_key FROM batch_closes WHERE terminal_id = ?1", [&terminal], |r| r.get(0))
                .optional()?;
            if let Some(key) = earlier {
                return Ok((key, true));
            }
            exec(
                tx,
                "INSERT INTO batch_closes (terminal_id, batch_key, started_at_ms) VALUES (?1, ?2, ?3)",
                params![terminal, candidate, at_ms],
            )?;
            Ok((candidate, false))
        })
        .await
    }

    /// Ends the lane's end of day: with `event` (the gateway answered), its
    /// event (at `at_ms`) in the same commit; without (the first attempt was
    /// not sent), just the key.
    pub async fn end_close(
        self: &Arc<Self>,
        terminal: &str,
        event: Option<NewEvent>,
        at_ms: i64,
    ) -> Result<Option<EventRecord>, StoreError> {
        let terminal = terminal.to_string();
        self.write(move |tx| {
            exec(tx, "DELETE FROM batch_closes WHERE terminal_id = ?1", [&terminal])?;
            event.map(|e| insert_event(tx, &e, at_ms)).transpose()
        })
        .await
    }
}

/// The write of [`Store::apply_gateway_event`].
fn apply_gateway_event_in(
    tx: &Connection,
    e: &pos_proto::gateway::GatewayEvent,
    at_ms: i64,
) -> Result<Option<EventRecord>, StoreError> {
    let inserted = exec(
        tx,
        "INSERT OR IGNORE INTO gateway_events (event_id, sequence, kind, transaction_key, received_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.event_id, e.sequence as i64, e.kind, e.transaction_key, at_ms],
    )? == 1;
    exec(
        tx,
        "INSERT INTO meta (key, value) VALUES ('gateway_event_sequence', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
        [e.sequence as i64],
    )?;
    let event = if inserted {
        let payment: Option<(String, String)> = tx
            .query_row("SELECT id, terminal_id FROM payments WHERE gateway_key = ?1", [&e.transaction_key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (payment_id, terminal_id) = payment.unwrap_or_default();
        let kind = match e.kind.as_str() {
            "refund_settled" => EventKind::GatewayRefundSettled,
            "dispute_opened" => EventKind::GatewayDisputeOpened,
            "settlement_closed" => EventKind::GatewaySettlementClosed,
            _ => EventKind::GatewayEvent,
        };
        let message = format!("{} ({}): {}", e.kind, e.event_id, e.message);
        Some(insert_event(tx, &NewEvent { kind, terminal_id, payment_id, message }, at_ms)?)
    } else {
        None
    };
    Ok(event)
}
