//! The simulator's SQLite ledger: one row per transaction key.
//!
//! Keys are never pruned, so they outlive the longest offline expiry plus
//! quarantine of any posd; a reversed key stays as a tombstone.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub key: String,
    pub terminal_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// `approved`, `declined`, `reversed` or `voided`.
    pub status: String,
    pub captured: bool,
    /// Amount captured (the whole amount for automatic capture).
    pub captured_minor: i64,
    /// Amount refunded so far.
    pub refunded_minor: i64,
    pub decline_code: String,
    pub decline_message: String,
    pub auth_code: String,
    pub gateway_reference: String,
    pub masked_pan: String,
    pub brand: String,
    pub entry_mode: String,
    /// True for a key first seen in a reversal (never authorized here).
    pub tombstone: bool,
    /// Digest of the authorization's parameters, to refuse a reused key.
    #[serde(skip)]
    pub request_digest: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A refund decision kept for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefund {
    pub succeeded: bool,
    pub decline_code: String,
    pub decline_message: String,
    /// The charge's refunded total after this refund.
    pub refunded_after: i64,
    /// The charge refunded.
    pub key: String,
    pub amount_minor: i64,
}

pub struct Ledger {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charges (
    key TEXT PRIMARY KEY,
    terminal_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('approved', 'declined', 'reversed', 'voided')),
    captured INTEGER NOT NULL,
    captured_minor INTEGER NOT NULL DEFAULT 0,
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    decline_code TEXT NOT NULL,
    decline_message TEXT NOT NULL,
    auth_code TEXT NOT NULL,
    gateway_reference TEXT NOT NULL,
    masked_pan TEXT NOT NULL,
    brand TEXT NOT NULL,
    entry_mode TEXT NOT NULL,
    tombstone INTEGER NOT NULL,
    request_digest TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    refund_key TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    decline_code TEXT NOT NULL,
    decline_message TEXT NOT NULL,
    refunded_after INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_keys (
    batch_key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS terminal_records (
    record_key TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS card_blobs (
    digest TEXT PRIMARY KEY,
    key TEXT NOT NULL
);
";

fn row_to_charge(r: &Row<'_>) -> rusqlite::Result<Charge> {
    Ok(Charge {
        key: r.get(0)?,
        terminal_id: r.get(1)?,
        amount_minor: r.get(2)?,
        currency: r.get(3)?,
        status: r.get(4)?,
        captured: r.get(5)?,
        decline_code: r.get(6)?,
        decline_message: r.get(7)?,
        auth_code: r.get(8)?,
        gateway_reference: r.get(9)?,
        masked_pan: r.get(10)?,
        brand: r.get(11)?,
        entry_mode: r.get(12)?,
        tombstone: r.get(13)?,
        request_digest: r.get(14)?,
        created_at: r.get(15)?,
        captured_minor: r.get(16)?,
        refunded_minor: r.get(17)?,
    })
}

const COLUMNS: &str = "key, terminal_id, amount_minor, currency, status, captured, decline_code, decline_message, \
                       auth_code, gateway_reference, masked_pan, brand, entry_mode, tombstone, request_digest, created_at, \
                       captured_minor, refunded_minor";

impl Ledger {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Opens an existing ledger for reading (the `ledger` subcommand).
    pub fn open_read_only(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    pub fn get(&self, key: &str) -> rusqlite::Result<Option<Charge>> {
        self.conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM charges WHERE key = ?1"))?
            .query_row([key], row_to_charge)
            .optional()
    }

    pub fn all(&self) -> rusqlite::Result<Vec<Charge>> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLUMNS} FROM charges ORDER BY created_at, key"))?;
        stmt.query_map([], row_to_charge)?.collect()
    }

    /// Runs `f` in one transaction (one disk sync for a whole batch).
    pub fn batch<R>(&mut self, f: impl FnOnce(&mut Ledger) -> R) -> rusqlite::Result<R> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = f(self);
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(r)
    }

    /// Records a new charge and the card blob it used, atomically.
    pub fn insert(&mut self, c: &Charge, blob_digest: Option<&str>) -> rusqlite::Result<()> {
        let tx = self.conn.savepoint()?;
        tx.execute(
            &format!("INSERT INTO charges ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"),
            params![
                c.key,
                c.terminal_id,
                c.amount_minor,
                c.currency,
                c.status,
                c.captured,
                c.decline_code,
                c.decline_message,
                c.auth_code,
                c.gateway_reference,
                c.masked_pan,
                c.brand,
                c.entry_mode,
                c.tombstone,
                c.request_digest,
                c.created_at,
                c.captured_minor,
                c.refunded_minor
            ],
        )?;
        if let Some(d) = blob_digest {
            tx.execute("INSERT OR IGNORE INTO card_blobs (digest, key) VALUES (?1, ?2)", params![d, c.key])?;
        }
        tx.commit()
    }

    /// The key a card blob was first used under, if any.
    pub fn blob_owner(&self, digest: &str) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT key FROM card_blobs WHERE digest = ?1", [digest], |r| r.get(0)).optional()
    }

    pub fn set_status(&mut self, key: &str, status: &str) -> rusqlite::Result<()> {
        self.conn.execute("UPDATE charges SET status = ?2 WHERE key = ?1", params![key, status])?;
        Ok(())
    }

    pub fn set_captured(&mut self, key: &str, amount: i64) -> rusqlite::Result<()> {
        self.conn
            .execute("UPDATE charges SET captured = 1, captured_minor = ?2 WHERE key = ?1", params![key, amount])?;
        Ok(())
    }

    /// The digest of a terminal record already stored under this key.
    pub fn terminal_record(&self, record_key: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row("SELECT digest FROM terminal_records WHERE record_key = ?1", [record_key], |r| r.get(0))
            .optional()
    }

    pub fn insert_terminal_record(&mut self, record_key: &str, digest: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO terminal_records (record_key, digest) VALUES (?1, ?2)",
            params![record_key, digest],
        )?;
        Ok(())
    }

    /// A refund already decided under this key.
    pub fn refund(&self, refund_key: &str) -> rusqlite::Result<Option<StoredRefund>> {
        self.conn
            .query_row(
                "SELECT succeeded, decline_code, decline_message, refunded_after, key, amount_minor FROM refunds WHERE refund_key = ?1",
                [refund_key],
                |r| {
                    Ok(StoredRefund {
                        succeeded: r.get(0)?,
                        decline_code: r.get(1)?,
                        decline_message: r.get(2)?,
                        refunded_after: r.get(3)?,
                        key: r.get(4)?,
                        amount_minor: r.get(5)?,
                    })
                },
            )
            .optional()
    }

    /// Records a refund decision, and the charge's new refunded total, atomically.
    #[allow(clippy::too_many_arguments)]
    pub fn record_refund(
        &mut self,
        refund_key: &str,
        key: &str,
        amount: i64,
        succeeded: bool,
        code: &str,
        message: &str,
        refunded_after: i64,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.savepoint()?;
        tx.execute(
            "INSERT INTO refunds (refund_key, key, amount_minor, succeeded, decline_code, decline_message, refunded_after) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![refund_key, key, amount, succeeded, code, message, refunded_after],
        )?;
        if succeeded {
            tx.execute("UPDATE charges SET refunded_minor = ?2 WHERE key = ?1", params![key, refunded_after])?;
        }
        tx.commit()
    }

    /// Puts every captured, unbatched charge of a terminal into a new batch;
    /// returns (currency, count, captured, refunded) per currency.
    /// Closes the terminal's batch under `batch_id`; with a `batch_key`
    /// seen before, returns that close's batch instead (closing nothing
    /// new). Returns the batch id and its totals.
    #[allow(clippy::type_complexity)]
    pub fn close_batch(
        &mut self,
        terminal_id: &str,
        batch_id: &str,
        batch_key: &str,
    ) -> rusqlite::Result<(String, Vec<(String, u32, i64, i64)>)> {
        let tx = self.conn.savepoint()?;
        let earlier: Option<String> = if batch_key.is_empty() {
            None
        } else {
            tx.query_row("SELECT batch_id FROM batch_keys WHERE batch_key = ?1", [batch_key], |r| r.get(0))
                .optional()?
        };
        let batch_id = match earlier {
            Some(id) => id,
            None => {
                tx.execute(
                    "UPDATE charges SET batch_id = ?2 WHERE terminal_id = ?1 AND status = 'approved' AND captured = 1 AND batch_id IS NULL",
                    params![terminal_id, batch_id],
                )?;
                if !batch_key.is_empty() {
                    tx.execute(
                        "INSERT INTO batch_keys (batch_key, batch_id) VALUES (?1, ?2)",
                        params![batch_key, batch_id],
                    )?;
                }
                batch_id.to_string()
            }
        };
        let totals = {
            let mut stmt = tx.prepare(
                "SELECT currency, COUNT(*), SUM(captured_minor), SUM(refunded_minor) FROM charges WHERE batch_id = ?1 \
                 GROUP BY currency ORDER BY currency",
            )?;
            stmt.query_map([&batch_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((batch_id, totals))
    }

    pub fn mark_reversed(&mut self, key: &str) -> rusqlite::Result<()> {
        self.conn.execute("UPDATE charges SET status = 'reversed' WHERE key = ?1", [key])?;
        Ok(())
    }
}

/// A notification the gateway sends about a charge (a webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEventRow {
    pub sequence: i64,
    pub event_id: String,
    pub kind: String,
    pub key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub message: String,
}

fn row_to_event(r: &Row<'_>) -> rusqlite::Result<GatewayEventRow> {
    Ok(GatewayEventRow {
        sequence: r.get(0)?,
        event_id: r.get(1)?,
        kind: r.get(2)?,
        key: r.get(3)?,
        amount_minor: r.get(4)?,
        currency: r.get(5)?,
        message: r.get(6)?,
    })
}

impl Ledger {
    /// Appends an event; `event_id` is new, or a redelivery of an old one.
    pub fn append_event(&mut self, e: &GatewayEventRow) -> rusqlite::Result<i64> {
        self.conn.execute(
            "INSERT INTO gateway_events (event_id, kind, key, amount_minor, currency, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.event_id, e.kind, e.key, e.amount_minor, e.currency, e.message],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn events_after(&self, after: i64) -> rusqlite::Result<Vec<GatewayEventRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, event_id, kind, key, amount_minor, currency, message FROM gateway_events WHERE seq > ?1 ORDER BY seq LIMIT 500",
        )?;
        stmt.query_map([after], row_to_event)?.collect()
    }

    /// Every distinct event once, in first-delivery order (for redelivery).
    pub fn distinct_events(&self) -> rusqlite::Result<Vec<GatewayEventRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT MIN(seq), event_id, kind, key, amount_minor, currency, message FROM gateway_events GROUP BY event_id ORDER BY MIN(seq)",
        )?;
        stmt.query_map([], row_to_event)?.collect()
    }
}
