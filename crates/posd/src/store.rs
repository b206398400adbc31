//! SQLite: the source of truth for payments and their audit log.
//!
//! WAL journal with `synchronous=FULL`: a transition is on disk when
//! [`Store::apply`] returns. Migrations are versioned with `PRAGMA user_version`.
//! [`StateLock`] keeps a second posd off the same state directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use pos_engine::{Status, Transition};
use rusqlite::{Connection, OptionalExtension, Row, params};

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
}

/// Card details posd may keep: never the PAN beyond first 6 / last 4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardInfo {
    pub masked_pan: String,
    pub brand: String,
    /// `pos.terminal.v1.EntryMode` value.
    pub entry_mode: i32,
    pub wallet: i32,
    pub aid: String,
    pub application_label: String,
    pub verification: i32,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: String,
    pub idempotency_key: String,
    pub order_reference: String,
    pub terminal_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub manual_capture: bool,
    pub status: Status,
    /// posd's key for the gateway (UUIDv7), stored before the first send.
    pub gateway_key: String,
    pub card: Option<CardInfo>,
    pub reason_code: String,
    pub reason_message: String,
    pub auth_code: String,
    pub gateway_reference: String,
    pub demo: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub from: Status,
    pub to: Status,
    pub cause: String,
}

/// Data stored together with a transition.
#[derive(Debug, Default)]
pub struct Update {
    pub card: Option<(CardInfo, Vec<u8>)>,
    pub auth_code: Option<String>,
    pub gateway_reference: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub terminal_id: Option<String>,
    pub statuses: Vec<Status>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Continue after this (created_at_ms, id), newest first.
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const MIGRATIONS: &[&str] = &["
CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    order_reference TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    manual_capture INTEGER NOT NULL,
    status TEXT NOT NULL,
    gateway_key TEXT NOT NULL UNIQUE,
    masked_pan TEXT,
    brand TEXT,
    entry_mode INTEGER,
    wallet INTEGER,
    aid TEXT,
    application_label TEXT,
    verification INTEGER,
    card_fingerprint TEXT,
    -- Reader-encrypted card data; NULL outside CARD_READ / AUTHORIZING.
    encrypted_card BLOB,
    reason_code TEXT NOT NULL DEFAULT '',
    reason_message TEXT NOT NULL DEFAULT '',
    auth_code TEXT NOT NULL DEFAULT '',
    gateway_reference TEXT NOT NULL DEFAULT '',
    demo INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX payments_by_terminal ON payments (terminal_id, created_at_ms);
CREATE INDEX payments_by_created ON payments (created_at_ms, id);
CREATE INDEX payments_by_status ON payments (status);
CREATE TABLE payment_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    at_ms INTEGER NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, seq);
"];

const COLUMNS: &str = "id, idempotency_key, order_reference, terminal_id, amount_minor, currency, manual_capture, status, \
    gateway_key, masked_pan, brand, entry_mode, wallet, aid, application_label, verification, card_fingerprint, \
    reason_code, reason_message, auth_code, gateway_reference, demo, created_at_ms, updated_at_ms";

fn status_col(r: &Row<'_>, i: usize) -> rusqlite::Result<Status> {
    let s: String = r.get(i)?;
    Status::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(StoreError::Corrupt(s)))
    })
}

fn row_to_payment(r: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
    let masked_pan: Option<String> = r.get(9)?;
    let card = match masked_pan {
        None => None,
        Some(masked_pan) => Some(CardInfo {
            masked_pan,
            brand: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
            entry_mode: r.get::<_, Option<i32>>(11)?.unwrap_or_default(),
            wallet: r.get::<_, Option<i32>>(12)?.unwrap_or_default(),
            aid: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
            application_label: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
            verification: r.get::<_, Option<i32>>(15)?.unwrap_or_default(),
            fingerprint: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
        }),
    };
    Ok(PaymentRecord {
        id: r.get(0)?,
        idempotency_key: r.get(1)?,
        order_reference: r.get(2)?,
        terminal_id: r.get(3)?,
        amount_minor: r.get(4)?,
        currency: r.get(5)?,
        manual_capture: r.get(6)?,
        status: status_col(r, 7)?,
        gateway_key: r.get(8)?,
        card,
        reason_code: r.get(17)?,
        reason_message: r.get(18)?,
        auth_code: r.get(19)?,
        gateway_reference: r.get(20)?,
        demo: r.get(21)?,
        created_at_ms: r.get(22)?,
        updated_at_ms: r.get(23)?,
    })
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating and migrating) the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "SQLite refused WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
            tracing::info!(version = i + 1, "database migrated");
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a new payment in CREATED, with its first audit entry. Returns
    /// the existing payment instead when the idempotency key is taken.
    pub fn insert_or_get(&self, p: &PaymentRecord) -> Result<Result<PaymentRecord, PaymentRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(existing) = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM payments WHERE idempotency_key = ?1"),
                [&p.idempotency_key],
                row_to_payment,
            )
            .optional()?
        {
            return Ok(Err(existing));
        }
        tx.execute(
            "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
             manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
            params![
                p.id,
                p.idempotency_key,
                p.order_reference,
                p.terminal_id,
                p.amount_minor,
                p.currency,
                p.manual_capture,
                p.status.as_str(),
                p.gateway_key,
                p.demo,
                p.created_at_ms
            ],
        )?;
        tx.execute(
            "INSERT INTO payment_events (payment_id, at_ms, from_status, to_status, cause) VALUES (?1, ?2, '', ?3, ?4)",
            params![p.id, p.created_at_ms, p.status.as_str(), "payment requested by the register"],
        )?;
        tx.commit()?;
        Ok(Ok(p.clone()))
    }

    /// Commits one transition: the status (only if it is still `t.from`), its
    /// reason, the update's data, and an audit entry. Card data is dropped in
    /// the same commit when the new status may not keep it.
    pub fn apply(&self, id: &str, t: &Transition, update: Update) -> Result<PaymentRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: String = tx
            .query_row("SELECT status FROM payments WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let actual = Status::parse(&current).ok_or(StoreError::Corrupt(current))?;
        if actual != t.from {
            return Err(StoreError::Conflict { id: id.to_string(), expected: t.from, actual });
        }
        let now = now_ms();
        tx.execute(
            "UPDATE payments SET status = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![id, t.to.as_str(), now],
        )?;
        if let Some(r) = &t.reason {
            tx.execute(
                "UPDATE payments SET reason_code = ?2, reason_message = ?3 WHERE id = ?1",
                params![id, r.code, r.message],
            )?;
        }
        if let Some((c, blob)) = &update.card {
            tx.execute(
                "UPDATE payments SET masked_pan = ?2, brand = ?3, entry_mode = ?4, wallet = ?5, aid = ?6, \
                 application_label = ?7, verification = ?8, card_fingerprint = ?9, encrypted_card = ?10 WHERE id = ?1",
                params![
                    id,
                    c.masked_pan,
                    c.brand,
                    c.entry_mode,
                    c.wallet,
                    c.aid,
                    c.application_label,
                    c.verification,
                    c.fingerprint,
                    blob
                ],
            )?;
        }
        if let Some(a) = &update.auth_code {
            tx.execute("UPDATE payments SET auth_code = ?2 WHERE id = ?1", params![id, a])?;
        }
        if let Some(g) = &update.gateway_reference {
            tx.execute("UPDATE payments SET gateway_reference = ?2 WHERE id = ?1", params![id, g])?;
        }
        if !t.to.keeps_card_data() {
            tx.execute("UPDATE payments SET encrypted_card = NULL WHERE id = ?1", [id])?;
        }
        tx.execute(
            "INSERT INTO payment_events (payment_id, at_ms, from_status, to_status, cause) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, now, t.from.as_str(), t.to.as_str(), t.cause],
        )?;
        let rec = tx.query_row(&format!("SELECT {COLUMNS} FROM payments WHERE id = ?1"), [id], row_to_payment)?;
        tx.commit()?;
        Ok(rec)
    }

    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM payments WHERE id = ?1"), [id], row_to_payment)
            .optional()?)
    }

    pub fn get_by_key(&self, key: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM payments WHERE idempotency_key = ?1"), [key], row_to_payment)
            .optional()?)
    }

    /// The encrypted card data, while the payment still keeps it.
    pub fn encrypted_card(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT encrypted_card FROM payments WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .flatten())
    }

    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at_ms, from_status, to_status, cause FROM payment_events WHERE payment_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            let from: String = r.get(1)?;
            Ok(HistoryEntry {
                at_ms: r.get(0)?,
                from: Status::parse(&from).unwrap_or(Status::Created),
                to: status_col(r, 2)?,
                cause: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Payments, newest first.
    pub fn list(&self, f: &ListFilter) -> Result<Vec<PaymentRecord>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM payments WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = &f.terminal_id {
            args.push(t.clone().into());
            sql += &format!(" AND terminal_id = ?{}", args.len());
        }
        if !f.statuses.is_empty() {
            let mut marks = Vec::new();
            for s in &f.statuses {
                args.push(s.as_str().to_string().into());
                marks.push(format!("?{}", args.len()));
            }
            sql += &format!(" AND status IN ({})", marks.join(", "));
        }
        if let Some(a) = f.created_after_ms {
            args.push(a.into());
            sql += &format!(" AND created_at_ms >= ?{}", args.len());
        }
        if let Some(b) = f.created_before_ms {
            args.push(b.into());
            sql += &format!(" AND created_at_ms < ?{}", args.len());
        }
        if let Some((at, id)) = &f.after {
            args.push((*at).into());
            args.push(id.clone().into());
            sql += &format!(" AND (created_at_ms, id) < (?{}, ?{})", args.len() - 1, args.len());
        }
        args.push((f.limit as i64).into());
        sql += &format!(" ORDER BY created_at_ms DESC, id DESC LIMIT ?{}", args.len());
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Payments a restart must look at: not final, oldest first.
    pub fn unfinished(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        let unfinished: Vec<&str> =
            pos_engine::Status::ALL.iter().filter(|s| !s.is_final()).map(|s| s.as_str()).collect();
        let marks = (1..=unfinished.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM payments WHERE status IN ({marks}) ORDER BY created_at_ms, id"))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(unfinished), row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use pos_engine::{Input, next};

    fn sample(key: &str) -> PaymentRecord {
        PaymentRecord {
            id: format!("pay_{key}"),
            idempotency_key: key.into(),
            order_reference: "order-1".into(),
            terminal_id: "lane-1".into(),
            amount_minor: 1234,
            currency: "EUR".into(),
            manual_capture: false,
            status: Status::Created,
            gateway_key: format!("gw-{key}"),
            card: None,
            reason_code: String::new(),
            reason_message: String::new(),
            auth_code: String::new(),
            gateway_reference: String::new(),
            demo: false,
            created_at_ms: now_ms(),
            updated_at_ms: now_ms(),
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn same_key_returns_the_existing_payment() {
        let (_d, s) = open();
        assert!(s.insert_or_get(&sample("k")).unwrap().is_ok());
        let mut other = sample("k");
        other.id = "pay_other".into();
        assert_eq!(s.insert_or_get(&other).unwrap().unwrap_err().id, "pay_k");
    }

    #[test]
    fn card_data_is_deleted_in_the_commit_that_leaves_authorizing() {
        let (_d, s) = open();
        s.insert_or_get(&sample("k")).unwrap().unwrap();
        let mut st = Status::Created;
        for (input, update) in [
            (Input::Start, Update::default()),
            (Input::CardRead, Update { card: Some((CardInfo::default(), vec![1, 2, 3])), ..Default::default() }),
            (Input::Sending, Update::default()),
        ] {
            let t = next(st, &input).unwrap();
            st = s.apply("pay_k", &t, update).unwrap().status;
        }
        assert_eq!(s.encrypted_card("pay_k").unwrap(), Some(vec![1, 2, 3]));
        let t = next(st, &Input::Approved { captured: true }).unwrap();
        assert_eq!(s.apply("pay_k", &t, Update::default()).unwrap().status, Status::Captured);
        assert_eq!(s.encrypted_card("pay_k").unwrap(), None);
        let h = s.history("pay_k").unwrap();
        assert_eq!(h.iter().map(|e| e.to).collect::<Vec<_>>().last(), Some(&Status::Captured));
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn a_stale_transition_is_refused() {
        let (_d, s) = open();
        s.insert_or_get(&sample("k")).unwrap().unwrap();
        let t = next(Status::Created, &Input::Start).unwrap();
        s.apply("pay_k", &t, Update::default()).unwrap();
        assert!(matches!(s.apply("pay_k", &t, Update::default()), Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn migrations_are_idempotent_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        Store::open(&path).unwrap().insert_or_get(&sample("k")).unwrap().unwrap();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get("pay_k").unwrap().unwrap().amount_minor, 1234);
    }

    #[test]
    fn second_lock_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(err.contains("another posd"), "{err}");
    }

    #[test]
    fn list_pages_newest_first_with_filters() {
        let (_d, s) = open();
        for i in 0..5 {
            let mut p = sample(&format!("k{i}"));
            p.created_at_ms = 1000 + i;
            p.terminal_id = if i % 2 == 0 { "lane-1".into() } else { "lane-2".into() };
            s.insert_or_get(&p).unwrap().unwrap();
        }
        let page = s.list(&ListFilter { limit: 2, ..Default::default() }).unwrap();
        assert_eq!(page.iter().map(|p| p.idempotency_key.as_str()).collect::<Vec<_>>(), ["k4", "k3"]);
        let last = page.last().unwrap();
        let next_page = s
            .list(&ListFilter { limit: 2, after: Some((last.created_at_ms, last.id.clone())), ..Default::default() })
            .unwrap();
        assert_eq!(next_page.iter().map(|p| p.idempotency_key.as_str()).collect::<Vec<_>>(), ["k2", "k1"]);
        let lane1 =
            s.list(&ListFilter { limit: 10, terminal_id: Some("lane-1".into()), ..Default::default() }).unwrap();
        assert_eq!(lane1.len(), 3);
        let window = s
            .list(&ListFilter {
                limit: 10,
                created_after_ms: Some(1001),
                created_before_ms: Some(1003),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(window.len(), 2);
    }
}
