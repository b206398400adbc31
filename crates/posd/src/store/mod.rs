//! SQLite: the source of truth for payments and their audit log.
//!
//! WAL journal with `synchronous=FULL`: a transition is on disk when
//! [`Store::apply`] resolves. Writes go through one connection (the group
//! commit's), reads through a second one (`query_only`): under WAL a read
//! never waits for a commit's sync. Migrations are versioned with
//! `PRAGMA user_version`.
//! A bound `LIMIT` is written `LIMIT +?N`: SQLite plans around the value
//! bound to a bare `LIMIT ?N`, so it re-prepares such a statement at every
//! bind, which makes the statement cache useless for it; the unary `+` keeps
//! the value out of the plan.
//! [`StateLock`] keeps a second posd off the same state directory.
//!
//! This module holds [`Store`] (opening the database, its connections, `meta`)
//! and [`StoreError`]; one file per concern holds the rest:
//! - `text`: the values kept as text (device and record kinds, refund
//!   statuses, event kinds) as enums, and how they are read and written;
//! - `schema`: the migrations (their SQL in `sql/`) and the tables;
//! - `group`: the group commit every synced write of a lane goes through;
//! - `payments`: payments, their transitions, reads and listings, and a payment
//!   terminal's results; `history`: a payment's audit log;
//! - `refunds`; `events`: the register's event stream;
//! - `outbox`: offline payments waiting to be forwarded, and the operations
//!   that may reach the gateway more than once;
//! - `gateway`: records for the gateway's ledger, its events, end of day;
//! - `nexo`: the ServiceID counter per SaleID and each payment's ServiceID;
//!   `nexo_after_sale`: the ServiceIDs of nexo refunds, and reversals of nexo
//!   payments (voids, and those posd owes);
//! - `probe`: whether a failed database works again, and how a failure answers;
//! - `lock`: the state directory's lock and the marker of a database to keep.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pos_engine::Status;
use rusqlite::{Connection, OptionalExtension, params};

// First: the modules after them use their `text_enum!` and `append_history!`.
#[macro_use]
mod text;
#[macro_use]
mod history;

mod events;
mod gateway;
mod group;
mod lock;
mod nexo;
mod nexo_after_sale;
mod outbox;
mod payments;
mod probe;
mod refunds;
mod schema;

pub use events::{EventKind, EventRecord, NewEvent, StoredEventKind};
pub use gateway::{GatewayRecord, RecordKind};
pub use group::Durability;
pub use history::HistoryEntry;
pub use lock::{INITIALIZED_MARKER, StateLock, check_database_kept, mark_initialized};
pub use nexo_after_sale::{NexoReversal, ReversalKind, ReversalSettled, ReversalStatus, Settled};
pub use outbox::{QueueSummary, SendKind};
pub use payments::{
    Applied, CardInfo, Data, DeviceKind, Inserted, ListFilter, PaymentRecord, TerminalData, TerminalResult, Update,
};
pub use probe::{DatabaseFailure, PROBE_FREE_BYTES};
pub use refunds::{RefundRecord, RefundStatus, Reservation};
pub use text::UnknownText;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("payment {id} is {actual}, not {expected}; transition refused")]
    Conflict { id: String, expected: Status, actual: Status },
    #[error("no payment {0}")]
    NotFound(String),
    #[error("database holds an unknown status {0:?}")]
    Corrupt(String),
    #[error("database not usable: {0}")]
    Unusable(String),
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const SET_META: &str =
    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

pub struct Store {
    /// The connection every write goes through (see [`Store::write`]).
    conn: Mutex<Connection>,
    /// The connection for reads, opened `query_only`: under WAL it reads the
    /// last commit without waiting for one in progress (or its sync).
    reader: Mutex<Connection>,
    path: PathBuf,
    max_page_count: Option<u64>,
    /// Writes waiting to share the next commit (see [`Store::write`]).
    group: Mutex<group::Group>,
    commits: AtomicU64,
    /// Commits of writes that asked for no sync of their own.
    unsynced_commits: AtomicU64,
    /// The writer connection is at `synchronous=NORMAL` (its last batch was
    /// deferred); changed only under the writer's lock.
    at_normal: AtomicBool,
    /// The simulator's planted bug: synced writes commit at NORMAL.
    planted_normal: AtomicBool,
    /// See [`Store::set_commit_yields`].
    commit_yields: std::sync::atomic::AtomicU32,
    writes: AtomicU64,
    /// Of the writes, new payments and state changes.
    payment_writes: AtomicU64,
}

impl Store {
    /// Opens (creating and migrating) the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// Opens with an optional cap on the database size in pages.
    pub fn open_with(path: &Path, max_page_count: Option<u64>) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "SQLite refused WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;")?;
        schema::migrate(&mut conn, path)?;
        if let Some(max) = max_page_count {
            let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| r.get(0))?;
        }
        // Opened after the migrations, on the database they left in WAL mode.
        let reader = Connection::open(path)?;
        reader.set_prepared_statement_cache_capacity(64);
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        // A write sent here by mistake fails (SQLITE_READONLY) instead of
        // bypassing the group commit.
        reader.execute_batch("PRAGMA query_only=ON")?;
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            path: path.to_path_buf(),
            max_page_count,
            group: Mutex::default(),
            commits: AtomicU64::new(0),
            unsynced_commits: AtomicU64::new(0),
            at_normal: AtomicBool::new(false),
            planted_normal: AtomicBool::new(false),
            commit_yields: std::sync::atomic::AtomicU32::new(0),
            writes: AtomicU64::new(0),
            payment_writes: AtomicU64::new(0),
        })
    }

    /// The writing connection: for the group commit (and the checkpoint).
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reading connection (`query_only`): every read outside a write.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The simulator's planted bug: every commit at `synchronous=NORMAL`,
    /// so a power cut can undo commits posd acted on. posd never calls it.
    pub(crate) fn plant_synchronous_normal(&self) {
        self.planted_normal.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The simulator's stand-in for the time a commit takes: before a
    /// commit starts, other tasks get to run this many times (and queue
    /// their writes into it), as they would on other workers while a disk
    /// syncs. posd's commits never yield (0).
    pub fn set_commit_yields(&self, yields: u32) {
        self.commit_yields.store(yields, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a `meta` value, in a synced commit through the group commit.
    /// The nullable number `sql` selects for the row `id`: `None` when the row
    /// or the value is missing.
    fn nullable_of(&self, sql: &str, id: &str) -> Result<Option<i64>, StoreError> {
        let value = self.reader().prepare_cached(sql)?.query_row([id], |r| r.get(0)).optional()?;
        Ok(value.flatten())
    }

    pub async fn set_meta(self: &Arc<Self>, key: &str, value: i64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |conn| {
            exec(conn, SET_META, params![key, value])?;
            Ok(())
        })
        .await
    }

    /// Moves the WAL into the database and truncates it, so deleted card
    /// data does not linger there (secure_delete wipes it in the database).
    /// On the writing connection, outside a transaction; it syncs, so async
    /// callers run it on the blocking pool.
    pub fn checkpoint(&self) {
        let conn = self.conn();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }
}

/// Executes a statement through the connection's statement cache (the
/// forwarder runs the same few statements thousands of times).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

#[cfg(test)]
mod tests;
