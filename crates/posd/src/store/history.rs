//! A payment's audit log: its newest entries in the payment's row (a JSON
//! array), the older ones of a long history in `payment_events`.

use std::sync::Arc;

use pos_engine::Status;
use rusqlite::{Connection, OptionalExtension, named_params, params};

use super::payments::status_col;
use super::{Store, StoreError, exec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    /// `None` for the entry that created the payment.
    pub from: Option<Status>,
    pub to: Status,
    pub cause: String,
}

/// The SET clause appending an audit entry to a payment's in-row history:
/// at `:at`, from status `$from` to `$to` (SQL expressions), because
/// `:cause`. The entry is spliced in before the closing bracket, so the
/// history is not parsed again on every state change.
macro_rules! append_history {
    ($from:literal, $to:literal) => {
        concat!(
            "history = substr(history, 1, length(history) - 1) || CASE WHEN history = '[]' THEN '' ELSE ',' END \
             || json_array(:at - created_at_ms, ",
            $from,
            ", ",
            $to,
            ", :cause) || ']'"
        )
    };
}

/// The most audit text a payment's row holds; past it, the entries move to
/// `payment_events`. A payment's life takes 5 to 10 entries, 300 to 800
/// bytes, so only long ones (a forwarding retried many times) move, and the
/// history never takes a row past a page, whatever its causes' length.
pub(super) const HISTORY_IN_ROW_BYTES: i64 = 2048;

/// An audit cause as the history keeps it: control characters JSON would
/// write as `\u00XX` become U+FFFD, so their digits cannot join digits after
/// them into a run a card-number scan reports (causes carry text from
/// gateways, terminals and people).
pub(super) fn audit_text(cause: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c < ' ' && !matches!(c, '\n' | '\t' | '\r' | '\u{8}' | '\u{c}');
    if cause.contains(escaped) { cause.replace(escaped, "\u{fffd}").into() } else { cause.into() }
}

/// Appends an audit entry to payment `id`'s history, with its status left as
/// it is.
pub(super) fn audit_in(tx: &Connection, id: &str, at_ms: i64, cause: &str) -> Result<(), StoreError> {
    let bytes: i64 = tx
        .prepare_cached(concat!(
            "UPDATE payments SET ",
            append_history!("status", "status"),
            " WHERE id = :id RETURNING octet_length(history)"
        ))?
        .query_row(named_params! {":id": id, ":at": at_ms, ":cause": audit_text(cause)}, |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    move_long_history(tx, id, bytes)
}

/// Once payment `id`'s in-row history is longer than
/// [`HISTORY_IN_ROW_BYTES`] (`bytes`), moves its entries to `payment_events`,
/// after the payment's entries there.
pub(super) fn move_long_history(tx: &Connection, id: &str, bytes: i64) -> Result<(), StoreError> {
    if bytes <= HISTORY_IN_ROW_BYTES {
        return Ok(());
    }
    let last: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM payment_events WHERE payment_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    exec(
        tx,
        "INSERT INTO payment_events (payment_id, seq, at_ms, from_status, to_status, cause) \
         SELECT p.id, ?2 + 1 + h.key, p.created_at_ms + (h.value ->> 0), h.value ->> 1, h.value ->> 2, h.value ->> 3 \
         FROM payments p, json_each(p.history) h WHERE p.id = ?1",
        params![id, last],
    )?;
    exec(tx, "UPDATE payments SET history = '[]' WHERE id = ?1", [id])?;
    Ok(())
}

impl Store {
    /// Adds an audit line, at `at_ms`, to a payment's log without changing
    /// its status.
    pub async fn audit(self: &Arc<Self>, payment_id: &str, cause: &str, at_ms: i64) -> Result<(), StoreError> {
        let (id, cause) = (payment_id.to_string(), cause.to_string());
        self.write(move |conn| audit_in(conn, &id, at_ms, &cause)).await
    }

    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.reader();
        // The entries moved out of the row first, then the row's own.
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, from_status, to_status, cause FROM ( \
               SELECT 0 AS part, seq AS n, at_ms, from_status, to_status, cause \
               FROM payment_events WHERE payment_id = ?1 \
               UNION ALL \
               SELECT 1, h.key, p.created_at_ms + (h.value ->> 0), h.value ->> 1, h.value ->> 2, h.value ->> 3 \
               FROM payments p, json_each(p.history) h WHERE p.id = ?1 \
             ) ORDER BY part, n",
        )?;
        let rows = stmt.query_map([id], |r| {
            let from: String = r.get(1)?;
            Ok(HistoryEntry {
                at_ms: r.get(0)?,
                from: if from.is_empty() { None } else { Some(status_col(r, 1)?) },
                to: status_col(r, 2)?,
                cause: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
