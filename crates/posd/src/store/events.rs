//! The register's event stream: events appended (alone or in a
//! transition's commit) and read back by cursor. Events are written with a
//! kind this posd knows ([`EventKind`]) and read back forgivingly
//! ([`StoredEventKind`]): a kind a newer posd wrote before a downgrade reaches
//! the register as its text instead of breaking the stream.

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::{Store, StoreError, exec};

/// One entry of the register's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub cursor: i64,
    pub at_ms: i64,
    pub kind: StoredEventKind,
    pub terminal_id: String,
    pub payment_id: String,
    pub message: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub terminal_id: String,
    pub payment_id: String,
    pub message: String,
}

text_enum! {
    /// What an event of the register's stream tells (`events.kind`; the
    /// register gets the text, `TerminalEvent.kind`).
    pub enum EventKind ("event kind") {
        /// The gateway is reachable again.
        Online = "online",
        /// The gateway cannot be reached.
        Offline = "offline",
        ApprovedOffline = "approved_offline",
        Forwarded = "forwarded",
        ForwardFailed = "forward_failed",
        ForwardingPaused = "forwarding_paused",
        ForwardOverdue = "forward_overdue",
        OfflineDeclined = "offline_declined",
        Quarantined = "quarantined",
        Requeued = "requeued",
        Expired = "expired",
        QueueAgeAlert = "queue_age_alert",
        QueueAgeStop = "queue_age_stop",
        ShutdownWithUnsent = "shutdown_with_unsent",
        PaymentCanceledOnStop = "payment_canceled_on_stop",
        PaymentParkedOnStop = "payment_parked_on_stop",
        DatabaseRecovered = "database_recovered",
        ReaderConnected = "reader_connected",
        ReaderDisconnected = "reader_disconnected",
        PrinterReady = "printer_ready",
        PrinterFault = "printer_fault",
        PrinterPaperNearEnd = "printer_paper_near_end",
        PrinterDisconnected = "printer_disconnected",
        ReceiptPrinted = "receipt_printed",
        ReceiptFailed = "receipt_failed",
        SlipPrinted = "slip_printed",
        SlipFailed = "slip_failed",
        AuthorizationExpired = "authorization_expired",
        BatchClosed = "batch_closed",
        RefundSucceeded = "refund_succeeded",
        RefundFailed = "refund_failed",
        RefundOutcomeUnknown = "refund_outcome_unknown",
        RefundResolved = "refund_resolved",
        TerminalApprovedOffline = "terminal_approved_offline",
        TerminalOutcomeUnknown = "terminal_outcome_unknown",
        TerminalConfirmationLost = "terminal_confirmation_lost",
        TerminalRefundUnknown = "terminal_refund_unknown",
        PaymentResolved = "payment_resolved",
        RecordRefused = "record_refused",
        GatewayRefundSettled = "gateway_refund_settled",
        GatewayDisputeOpened = "gateway_dispute_opened",
        GatewaySettlementClosed = "gateway_settlement_closed",
        /// A gateway event of a kind posd does not know.
        GatewayEvent = "gateway_event",
    }
}

/// A stored event's kind as read back: one this posd knows, or the text of
/// one it does not (a newer posd wrote it, and posd was downgraded since),
/// which the register gets as it is. Events are only written with an
/// [`EventKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEventKind {
    Known(EventKind),
    /// The stored text, which names no [`EventKind`].
    Other(String),
}

impl StoredEventKind {
    /// The text the database holds for it (the register's `TerminalEvent.kind`).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(kind) => kind.as_str(),
            Self::Other(text) => text,
        }
    }
}

impl From<EventKind> for StoredEventKind {
    fn from(kind: EventKind) -> Self {
        Self::Known(kind)
    }
}

impl std::fmt::Display for StoredEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::FromSql for StoredEventKind {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        Ok(EventKind::parse(text).map_or_else(|| Self::Other(text.to_string()), Self::Known))
    }
}

impl Store {
    /// Appends an event that concerns no payment transition, as happened at
    /// `at_ms`.
    pub async fn append_event(self: &Arc<Self>, e: &NewEvent, at_ms: i64) -> Result<EventRecord, StoreError> {
        let e = e.clone();
        self.write(move |conn| insert_event(conn, &e, at_ms)).await
    }

    /// True when an event of `kind` about `payment_id` whose message starts
    /// with `prefix` was recorded (e.g. a receipt already printed).
    pub fn has_event(&self, kind: EventKind, payment_id: &str, prefix: &str) -> Result<bool, StoreError> {
        let conn = self.reader();
        let n: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM events WHERE kind = ?1 AND payment_id = ?2 \
                 AND substr(message, 1, length(?3)) = ?3",
            )?
            .query_row(params![kind, payment_id, prefix], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// Events with a cursor above `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT cursor, at_ms, kind, terminal_id, payment_id, message FROM events WHERE cursor > ?1 ORDER BY cursor LIMIT +?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok(EventRecord {
                cursor: r.get(0)?,
                at_ms: r.get(1)?,
                kind: r.get(2)?,
                terminal_id: r.get(3)?,
                payment_id: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest event's cursor (0 when there is none).
    pub fn last_event_cursor(&self) -> Result<i64, StoreError> {
        Ok(self.reader().prepare_cached("SELECT COALESCE(MAX(cursor), 0) FROM events")?.query_row([], |r| r.get(0))?)
    }
}

/// Appends event `e`, as happened at `at_ms`, in the caller's write.
pub(super) fn insert_event(conn: &Connection, e: &NewEvent, at_ms: i64) -> Result<EventRecord, StoreError> {
    exec(
        conn,
        "INSERT INTO events (at_ms, kind, terminal_id, payment_id, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at_ms, e.kind, e.terminal_id, e.payment_id, e.message],
    )?;
    Ok(EventRecord {
        cursor: conn.last_insert_rowid(),
        at_ms,
        kind: e.kind.into(),
        terminal_id: e.terminal_id.clone(),
        payment_id: e.payment_id.clone(),
        message: e.message.clone(),
    })
}
