//! A failing database: how a failure answers callers ([`DatabaseFailure`]),
//! and the probe that tells when the database works again.

use std::path::Path;

use rusqlite::{Connection, params};

use super::schema::TABLES;
use super::{SET_META, Store, StoreError};

/// How a failing database answers callers (the API's `DatabaseFailure::status`).
/// The engine keeps the first failure of an episode
/// (`Engine::database_failure`), and every call that meets the database
/// failing (its own write or read, or the refusal of a new payment) is
/// answered as that failure until posd restarts once the database works
/// again: a full disk is `DATABASE_FULL` from the first failed write to the
/// restart, whatever later writes and reads report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFailure {
    /// Out of space: the disk, or `max_page_count`.
    Full,
    /// Another program holds the database locked past posd's busy timeout.
    Locked,
    /// Anything else: an I/O error, a damaged file.
    Failed,
}

impl DatabaseFailure {
    pub fn of(e: &StoreError) -> Self {
        use rusqlite::ErrorCode;
        match e {
            StoreError::Db(rusqlite::Error::SqliteFailure(f, _)) => match f.code {
                ErrorCode::DiskFull => Self::Full,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Self::Locked,
                _ => Self::Failed,
            },
            _ => Self::Failed,
        }
    }
}

/// Free space the database's file system must have before [`Store::probe`]
/// calls the database usable again.
pub const PROBE_FREE_BYTES: u64 = 8 << 20;

impl Store {
    /// Checks that the database works again after a failure: its file
    /// system has [`PROBE_FREE_BYTES`] free, its structure is sound
    /// (`quick_check`), every table is there, it can take new pages (a
    /// `max_page_count` cap fails here; the pages are rolled back), and a
    /// synced commit goes through (it records the time of the check,
    /// `at_ms`, in `meta`). It runs on a connection of its own with a short
    /// busy timeout, so posd's reads go on meanwhile.
    pub fn probe(&self, at_ms: i64) -> Result<(), StoreError> {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let fs = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| StoreError::Unusable(format!("cannot read the free space of {}: {e}", dir.display())))?;
        let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
        if free < PROBE_FREE_BYTES {
            return Err(StoreError::Unusable(format!(
                "{} KiB free on {}; posd needs {} MiB",
                free >> 10,
                dir.display(),
                PROBE_FREE_BYTES >> 20
            )));
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(std::time::Duration::from_millis(500))?;
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        if let Some(max) = self.max_page_count {
            let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| r.get(0))?;
        }
        let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if verdict != "ok" {
            return Err(StoreError::Unusable(format!("quick_check: {verdict}")));
        }
        for table in TABLES {
            conn.prepare(&format!("SELECT * FROM {table} LIMIT 0"))?;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch("CREATE TABLE store_probe (b BLOB); INSERT INTO store_probe VALUES (zeroblob(65536));")?;
        tx.rollback()?;
        conn.execute(SET_META, params!["store_probe_ms", at_ms])?;
        Ok(())
    }
}
