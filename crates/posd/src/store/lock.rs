//! The state directory: the lock that keeps a second posd off it, and the
//! marker that tells a database lost from a new install.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// An exclusive lock on the state directory, held for the life of the process.
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
    pub path: PathBuf,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("posd.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open lock file {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock, path }),
            Err((_, errno)) => anyhow::bail!(
                "another posd is already running on state directory {} (lock {}: {errno}); refusing to start",
                state_dir.display(),
                path.display()
            ),
        }
    }
}

/// Written beside the database once its first commit is on disk: from then
/// on, a `posd.db` that is missing or empty means the database was lost, not
/// that this is a new install.
pub const INITIALIZED_MARKER: &str = "posd.db.initialized";

const MARKER_TEXT: &str = "posd keeps its database, posd.db, in this directory.\n\
    While this file exists, posd refuses to start when posd.db is missing or empty, instead of starting\n\
    over with an empty database. To start over on purpose, delete this file.\n";

/// Refuses a state directory that lost its database: [`INITIALIZED_MARKER`]
/// is there, and `posd.db` is missing, empty (0 bytes) or holds none of
/// posd's tables. Opening it would make a new, empty database, and the
/// payments, the offline queue not yet forwarded and the audit log would be
/// gone without a word.
pub fn check_database_kept(state_dir: &Path) -> anyhow::Result<()> {
    let marker = state_dir.join(INITIALIZED_MARKER);
    let held = marker.try_exists().map_err(|e| anyhow::anyhow!("cannot look for {}: {e}", marker.display()))?;
    if !held {
        return Ok(());
    }
    let db = state_dir.join("posd.db");
    let lost = match std::fs::metadata(&db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
        Err(e) => anyhow::bail!("cannot read {}: {e}", db.display()),
        Ok(m) if m.len() == 0 => "is empty (0 bytes)",
        Ok(_) => match holds_posd_tables(&db) {
            Ok(false) => "holds none of posd's tables",
            // Not readable as a database at all: opening it says what is wrong.
            Ok(true) | Err(_) => return Ok(()),
        },
    };
    anyhow::bail!(
        "{db} {lost}, but this state directory held posd's database before ({marker} exists). posd refuses to \
         start with a new, empty database: the payments, the offline queue not yet forwarded and the audit log \
         would be lost without a word.\n\
         To restore: copy the latest `posd backup` file to {db} (delete {db}-wal and {db}-shm if they are there), \
         owned by posd's user, and start posd again.\n\
         To start with an empty database on purpose: delete {marker}, and start posd again.",
        db = db.display(),
        marker = marker.display(),
    )
}

/// Whether `db` holds posd's schema (a version, and the payments table).
fn holds_posd_tables(db: &Path) -> rusqlite::Result<bool> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let payments: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'payments')",
        [],
        |r| r.get(0),
    )?;
    Ok(version > 0 && payments)
}

/// Writes [`INITIALIZED_MARKER`] once the database is on disk: after
/// [`Store::open`](super::Store::open) committed the schema (`synchronous=FULL`: the commit is
/// synced), the directory is synced, so the database's and its WAL's names
/// are durable too; then the marker and the directory again. A posd killed
/// during its very first start finds no marker and starts over; one that
/// finds the marker has a database to keep.
///
/// The database files themselves are never opened here: closing a second
/// descriptor of `posd.db` in this process would drop SQLite's POSIX locks
/// on it, and another process (`posd check-queue`) would then take the WAL
/// for abandoned and stop seeing posd's commits (SQLite's "how to corrupt",
/// section 2.2).
pub fn mark_initialized(state_dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let marker = state_dir.join(INITIALIZED_MARKER);
    if marker.try_exists().unwrap_or(false) {
        return Ok(());
    }
    let failed = |path: &Path, e: std::io::Error| anyhow::anyhow!("cannot sync {}: {e}", path.display());
    File::open(state_dir).and_then(|d| d.sync_all()).map_err(|e| failed(state_dir, e))?;
    let mut f = File::create(&marker).map_err(|e| failed(&marker, e))?;
    f.write_all(MARKER_TEXT.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| failed(&marker, e))?;
    File::open(state_dir).and_then(|d| d.sync_all()).map_err(|e| failed(state_dir, e))?;
    tracing::info!(marker = %marker.display(), "database initialized");
    Ok(())
}
