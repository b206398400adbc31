//! SQLite: the source of truth for payments and their audit log.
//!
//! WAL journal with `synchronous=FULL`: a transition is on disk when
//! [`Store::apply`] resolves. Migrations are versioned with `PRAGMA user_version`.
//! [`StateLock`] keeps a second posd off the same state directory.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pos_engine::{Status, Transition};
use rusqlite::{Connection, OptionalExtension, Row, named_params, params};

mod schema;

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
    /// Approved offline (store-and-forward).
    pub offline: bool,
    /// Ageing-clock time it entered the outbox.
    pub queued_at_ms: Option<i64>,
    pub forward_attempts: i64,
    pub last_error: String,
    /// Amount captured (the whole amount for automatic capture).
    pub captured_minor: i64,
    /// The card device that took it: `reader` (the gateway authorizes) or
    /// [`DEVICE_ZVT`] (a payment terminal authorizes by itself).
    pub device: String,
}

/// `PaymentRecord::device` of a payment taken on a ZVT payment terminal.
pub const DEVICE_ZVT: &str = "zvt";

impl PaymentRecord {
    /// Taken on a payment terminal that authorizes by itself: refunds,
    /// reversals and recovery go to the terminal, not the gateway.
    pub fn on_terminal(&self) -> bool {
        self.device == DEVICE_ZVT
    }
}

/// What a payment terminal that authorizes by itself reported (no card
/// data beyond the masked PAN, which lives with the payment's card).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalResult {
    pub result_code: u8,
    pub receipt_no: Option<u16>,
    pub trace: Option<u32>,
    pub offline: bool,
    pub terminal_tid: String,
    /// The terminal's receipt lines as sent; receipts are separated by an
    /// empty string entry when more than one came.
    pub lines: Vec<String>,
}

/// A record waiting for (or sent to) the gateway's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub seq: i64,
    pub record_key: String,
    pub payment_id: String,
    /// `sale`, `reversal` or `refund`.
    pub kind: String,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at_ms: i64,
}

/// A refund of (part of) a captured payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub id: String,
    pub idempotency_key: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub refund_key: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub reason: String,
    pub failure_code: String,
    pub failure_message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
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

impl PaymentRecord {
    /// A new payment in CREATED: no card, no outcome, not queued.
    pub fn created(
        id: String,
        idempotency_key: String,
        gateway_key: String,
        terminal_id: String,
        amount_minor: i64,
        currency: String,
        now_ms: i64,
    ) -> Self {
        Self {
            id,
            idempotency_key,
            order_reference: String::new(),
            terminal_id,
            amount_minor,
            currency,
            manual_capture: false,
            status: Status::Created,
            gateway_key,
            card: None,
            reason_code: String::new(),
            reason_message: String::new(),
            auth_code: String::new(),
            gateway_reference: String::new(),
            demo: false,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            offline: false,
            queued_at_ms: None,
            forward_attempts: 0,
            last_error: String::new(),
            captured_minor: 0,
            device: "reader".into(),
        }
    }
}

/// One entry of the register's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub cursor: i64,
    pub at_ms: i64,
    pub kind: String,
    pub terminal_id: String,
    pub payment_id: String,
    pub message: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub terminal_id: String,
    pub payment_id: String,
    pub message: String,
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    /// `None` for the entry that created the payment.
    pub from: Option<Status>,
    pub to: Status,
    pub cause: String,
}

/// Data stored together with a transition.
#[derive(Debug, Default)]
pub struct Update {
    pub card: Option<(CardInfo, Vec<u8>)>,
    pub auth_code: Option<String>,
    pub gateway_reference: Option<String>,
    /// Entering the outbox: the ageing-clock time (sets the FIFO position once).
    pub queued_at_ms: Option<i64>,
    /// A forwarding attempt's error, kept for support.
    pub last_error: Option<String>,
    /// Entering CAPTURED: the amount captured (default: the whole amount).
    pub captured_minor: Option<i64>,
    /// An event for the register, appended in the same commit.
    pub event: Option<NewEvent>,
    /// A payment terminal's result, stored in the same commit.
    pub terminal: Option<TerminalResult>,
    /// A record for the gateway's ledger (`sale`, `reversal`), queued in the
    /// same commit.
    pub record: Option<&'static str>,
    /// A `meta` value set in the same commit (a lane's last terminal receipt).
    pub meta: Option<(String, i64)>,
    /// A second audit entry, after the transition's own, in the same commit
    /// (who made a person's decision).
    pub audit: Option<String>,
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
    /// Oldest first instead (work queues); `after` is not used with it.
    pub oldest_first: bool,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

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

/// Operations that may be sent to the gateway more than once, each under a
/// key of its own (a refund's refund key; a capture's or void's payment key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    Refund,
    Capture,
    Void,
}

impl SendKind {
    fn as_str(self) -> &'static str {
        match self {
            SendKind::Refund => "refund",
            SendKind::Capture => "capture",
            SendKind::Void => "void",
        }
    }
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
const HISTORY_IN_ROW_BYTES: i64 = 2048;

/// An audit cause as the history keeps it: control characters JSON would
/// write as `\u00XX` become U+FFFD, so their digits cannot join digits after
/// them into a run a card-number scan reports (causes carry text from
/// gateways, terminals and people).
fn audit_text(cause: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c < ' ' && !matches!(c, '\n' | '\t' | '\r' | '\u{8}' | '\u{c}');
    if cause.contains(escaped) { cause.replace(escaped, "\u{fffd}").into() } else { cause.into() }
}

/// Appends an audit entry to payment `id`'s history, with its status left as
/// it is.
fn audit_in(tx: &Connection, id: &str, at_ms: i64, cause: &str) -> Result<(), StoreError> {
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
fn move_long_history(tx: &Connection, id: &str, bytes: i64) -> Result<(), StoreError> {
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

const SET_META: &str =
    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The outbox's next FIFO position (served by the `payments_queue` index).
const NEXT_QUEUE_SEQ: &str = "SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM payments WHERE queue_seq IS NOT NULL";

const COLUMNS: &str = "id, idempotency_key, order_reference, terminal_id, amount_minor, currency, manual_capture, status, \
    gateway_key, masked_pan, brand, entry_mode, wallet, aid, application_label, verification, card_fingerprint, \
    reason_code, reason_message, auth_code, gateway_reference, demo, created_at_ms, updated_at_ms, offline, \
    queued_at_ms, forward_attempts, last_error, captured_minor, device";

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
        offline: r.get(24)?,
        queued_at_ms: r.get(25)?,
        forward_attempts: r.get(26)?,
        last_error: r.get(27)?,
        captured_minor: r.get(28)?,
        device: r.get(29)?,
    })
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    max_page_count: Option<u64>,
    /// Writes waiting to share the next commit (see [`Store::write`]).
    group: Mutex<Group>,
    commits: AtomicU64,
    writes: AtomicU64,
    /// Of the writes, new payments and state changes.
    payment_writes: AtomicU64,
}

/// Writes queued for the next group commit, and whether a caller is
/// committing batches now.
#[derive(Default)]
struct Group {
    queue: Vec<Box<dyn Job>>,
    leading: bool,
}

/// One caller's write inside a group commit.
trait Job: Send {
    /// Runs the write in the batch's transaction; `false` when it failed and
    /// its changes are to be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: with its own result once the batch committed, or
    /// with the error that kept the batch from committing.
    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>);
}

/// Hands a write's result to its caller, who waits on a channel (blocking
/// or async); dropped unsent, it tells the caller the write was abandoned.
type Reply<R> = Box<dyn FnOnce(Result<R, StoreError>) + Send>;

struct Write<F, R> {
    work: Option<F>,
    result: Option<Result<R, StoreError>>,
    reply: Reply<R>,
}

impl<F, R> Job for Write<F, R>
where
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let work = self.work.take().expect("a write runs once");
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>) {
        let Write { result, reply, .. } = *self;
        reply(match (failed, result) {
            (None, Some(result)) => result,
            // Nothing of the batch is on disk, whatever the write found.
            (Some(e), _) => Err(StoreError::Db(copy_error(e))),
            (None, None) => unreachable!("a committed batch ran every write"),
        });
    }
}

/// The same error for every write of a batch whose commit failed.
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => rusqlite::Error::SqliteFailure(*code, message.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// The error a caller gets when its queued write was dropped uncommitted.
fn abandoned<R>() -> Result<R, StoreError> {
    Err(StoreError::Db(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the write's group commit was abandoned".into()),
    )))
}

/// The duty to commit the queued writes, held by one caller (or one
/// blocking task) at a time. Dropped before the queue is empty (a panic
/// mid-batch, or a runtime that shut down before the blocking task ran), it
/// clears the flag so later writes find a leader; the writes it held are
/// dropped, and their callers get an error.
struct Leader<S: Deref<Target = Store>> {
    store: S,
    done: bool,
}

impl<S: Deref<Target = Store>> Leader<S> {
    fn new(store: S) -> Self {
        Self { store, done: false }
    }

    /// Commits batch after batch until no write is queued.
    fn commit_queued(mut self) {
        while let Some(batch) = self.take_batch() {
            self.store.commit_batch(batch);
        }
    }

    /// The writes queued now, for one commit; `None` when there are none,
    /// and the duty is given up.
    fn take_batch(&mut self) -> Option<Vec<Box<dyn Job>>> {
        let mut g = self.store.group.lock().unwrap_or_else(|e| e.into_inner());
        if g.queue.is_empty() {
            g.leading = false;
            self.done = true;
            return None;
        }
        Some(std::mem::take(&mut g.queue))
    }
}

impl<S: Deref<Target = Store>> Drop for Leader<S> {
    fn drop(&mut self) {
        if !self.done {
            let mut g = self.store.group.lock().unwrap_or_else(|e| e.into_inner());
            g.leading = false;
            g.queue.clear();
        }
    }
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
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            max_page_count,
            group: Mutex::default(),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            payment_writes: AtomicU64::new(0),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` in a synced commit, shared with the writes other lanes
    /// queue meanwhile (group commit): every write queued while a commit is
    /// in progress goes into the next one, each in its own savepoint. A write
    /// that fails is rolled back alone; a commit that fails fails every write
    /// in it. Alone, a write is one transaction and one commit.
    ///
    /// A write that finds no commit in progress is committed at once on the
    /// caller's worker, as a blocking call would (a commit takes a fraction of
    /// a millisecond, and a lone lane pays no thread hand-off). Writes that
    /// find one in progress wait without holding their workers, so the other
    /// lanes' tasks keep running and queue theirs; those are committed
    /// together on tokio's blocking pool. A caller that stops waiting does not
    /// stop the write: once queued, it commits or fails as if awaited.
    async fn write<R, F>(self: &Arc<Self>, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.enqueue(work, Box::new(move |r| drop(reply.send(r)))) {
            let mut leader = Leader::new(Arc::clone(self));
            if let Some(batch) = leader.take_batch() {
                self.commit_batch(batch);
            }
            // This worker is held for one commit at most.
            if let Some(batch) = leader.take_batch() {
                tokio::task::spawn_blocking(move || {
                    leader.store.commit_batch(batch);
                    leader.commit_queued();
                });
            }
        }
        answer.await.unwrap_or_else(|_| abandoned())
    }

    /// [`Store::write`] for threads outside the runtime (tests): the first
    /// caller to find no commit in progress commits the queue itself.
    #[cfg(test)]
    fn write_blocking<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.enqueue(work, Box::new(move |r| drop(reply.send(r)))) {
            Leader::new(self).commit_queued();
        }
        answer.recv().unwrap_or_else(|_| abandoned())
    }

    /// Queues a write for the next commit; true when no commit is in
    /// progress and the caller is to lead.
    fn enqueue<R, F>(&self, work: F, reply: Reply<R>) -> bool
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        g.queue.push(Box::new(Write { work: Some(work), result: None, reply }));
        !std::mem::replace(&mut g.leading, true)
    }

    fn commit_batch(&self, mut batch: Vec<Box<dyn Job>>) {
        let mut conn = self.conn();
        // How many writes the commit carries (a refused one is rolled back).
        let committed = (|| {
            let mut tx = conn.transaction()?;
            let mut kept = 0;
            if let [job] = batch.as_mut_slice() {
                if !job.run(&tx) {
                    return Ok(0);
                }
                kept = 1;
            } else {
                for job in &mut batch {
                    let mut sp = tx.savepoint()?;
                    if job.run(&sp) {
                        kept += 1;
                    } else {
                        sp.rollback()?;
                    }
                    sp.commit()?;
                }
            }
            if kept > 0 {
                tx.commit()?;
            }
            Ok(kept)
        })();
        drop(conn);
        if let Ok(kept @ 1..) = committed {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(kept, Ordering::Relaxed);
        }
        let failed = committed.as_ref().err();
        for job in batch {
            job.finish(failed);
        }
    }

    /// Writes committed through [`Store::write`] and the commits that carried
    /// them, since the store was opened: their ratio is the group commit's
    /// batch size. Refused writes (a stale transition) count in neither.
    pub fn write_counts(&self) -> (u64, u64) {
        (self.writes.load(Ordering::Relaxed), self.commits.load(Ordering::Relaxed))
    }

    /// Of [`Store::write_counts`]'s writes, new payments and state changes
    /// (each payment's share of the commits, apart from events, audit
    /// entries, refunds and records).
    pub fn payment_writes(&self) -> u64 {
        self.payment_writes.load(Ordering::Relaxed)
    }

    /// Counts a committed payment write.
    fn counted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_ok() {
            self.payment_writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Inserts a new payment in CREATED, with its first audit entry. Returns
    /// the existing payment instead when the idempotency key is taken.
    pub async fn insert_or_get(self: &Arc<Self>, p: &PaymentRecord, caller: &str) -> Result<Inserted, StoreError> {
        self.counted(self.write(insert_or_get_in(p, caller)).await)
    }

    #[cfg(test)]
    pub fn insert_or_get_blocking(&self, p: &PaymentRecord, caller: &str) -> Result<Inserted, StoreError> {
        self.write_blocking(insert_or_get_in(p, caller))
    }

    /// Inserts many new payments in one commit (bulk loads, such as the
    /// benchmarks' stored payments). A key already taken fails them all.
    pub fn insert_batch(&self, payments: &[PaymentRecord], caller: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for p in payments {
            insert_in(&tx, p, caller)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits one transition: the status (only if it is still `t.from`), its
    /// reason, the update's data, and an audit entry. Card data is dropped in
    /// the same commit when the new status may not keep it.
    pub async fn apply(self: &Arc<Self>, id: &str, t: &Transition, update: Update) -> Result<Applied, StoreError> {
        let (id, t) = (id.to_string(), t.clone());
        self.counted(self.write(move |conn| apply_in(conn, &id, &t, update)).await)
    }

    #[cfg(test)]
    pub fn apply_blocking(&self, id: &str, t: &Transition, update: Update) -> Result<Applied, StoreError> {
        let (id, t) = (id.to_string(), t.clone());
        self.write_blocking(move |conn| apply_in(conn, &id, &t, update))
    }

    /// Commits many transitions at once (one disk sync). A transition whose
    /// `from` is stale is skipped and reported; the others are committed.
    pub fn apply_batch(
        &self,
        items: Vec<(String, Transition, Update)>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let mut conn = self.conn();
        let mut tx = conn.transaction()?;
        let mut out = Vec::with_capacity(items.len());
        for (id, t, u) in items {
            let sp = tx.savepoint()?;
            match apply_in(&sp, &id, &t, u) {
                Ok(r) => {
                    sp.commit()?;
                    out.push(Ok(r));
                }
                Err(e @ (StoreError::Conflict { .. } | StoreError::NotFound(_))) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Appends an event that concerns no payment transition.
    pub async fn append_event(self: &Arc<Self>, e: &NewEvent) -> Result<EventRecord, StoreError> {
        let e = e.clone();
        self.write(move |conn| insert_event(conn, &e)).await
    }

    /// True when an event of `kind` about `payment_id` whose message starts
    /// with `prefix` was recorded (e.g. a receipt already printed).
    pub fn has_event(&self, kind: &str, payment_id: &str, prefix: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM events WHERE kind = ?1 AND payment_id = ?2 AND substr(message, 1, length(?3)) = ?3",
            params![kind, payment_id, prefix],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Events with a cursor above `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cursor, at_ms, kind, terminal_id, payment_id, message FROM events WHERE cursor > ?1 ORDER BY cursor LIMIT ?2",
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

    /// Records a refund as pending if the payment is captured and the
    /// captured amount covers it with every pending and succeeded refund; or
    /// returns the refund already under the idempotency key.
    pub async fn reserve_refund(self: &Arc<Self>, r: &RefundRecord) -> Result<Reservation, StoreError> {
        let r = r.clone();
        self.write(move |tx| reserve_refund_in(tx, r)).await
    }

    /// Settles a pending refund, with its event, in one commit (a refund
    /// settled already is returned as it stands, without an event). With `record`, a succeeded refund also
    /// queues its record for the gateway's ledger (a payment terminal's
    /// refund), in the same commit.
    pub async fn finish_refund(
        self: &Arc<Self>,
        id: &str,
        succeeded: bool,
        failure: Option<(&str, &str)>,
        event: &NewEvent,
        record: bool,
    ) -> Result<(RefundRecord, Option<EventRecord>), StoreError> {
        self.finish_refund_inner(id, succeeded, failure, event, record, None).await
    }

    /// [`Store::finish_refund`] with an audit entry in the payment's history,
    /// in the same commit (who settled the refund, and how).
    pub async fn finish_refund_audited(
        self: &Arc<Self>,
        id: &str,
        succeeded: bool,
        failure: Option<(&str, &str)>,
        event: &NewEvent,
        record: bool,
        audit: &str,
    ) -> Result<(RefundRecord, Option<EventRecord>), StoreError> {
        self.finish_refund_inner(id, succeeded, failure, event, record, Some(audit.to_string())).await
    }

    async fn finish_refund_inner(
        self: &Arc<Self>,
        id: &str,
        succeeded: bool,
        failure: Option<(&str, &str)>,
        event: &NewEvent,
        record: bool,
        audit: Option<String>,
    ) -> Result<(RefundRecord, Option<EventRecord>), StoreError> {
        let (id, event) = (id.to_string(), event.clone());
        let (code, message) = failure.map(|(c, m)| (c.to_string(), m.to_string())).unwrap_or_default();
        self.write(move |tx| {
            let settled = tx.execute(
                "UPDATE refunds SET status = ?2, failure_code = ?3, failure_message = ?4, updated_at_ms = ?5 \
                 WHERE id = ?1 AND status = 'pending'",
                params![id, if succeeded { "succeeded" } else { "failed" }, code, message, now_ms()],
            )? == 1;
            // Settled before (a same-key call and start-up raced): that
            // settlement and its event stand.
            let event = if settled { Some(insert_event(tx, &event)?) } else { None };
            if let (Some(e), Some(cause)) = (&event, &audit) {
                audit_in(tx, &e.payment_id, now_ms(), cause)?;
            }
            if settled && succeeded && record {
                tx.execute(
                    "INSERT OR IGNORE INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
                     SELECT refund_key, payment_id, 'refund', amount_minor, currency, ?2 FROM refunds WHERE id = ?1",
                    params![id, now_ms()],
                )?;
            }
            let r = tx.query_row(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"), [&id], row_to_refund)?;
            Ok((r, event))
        })
        .await
    }

    pub fn refunds_of(&self, payment_id: &str) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = ?1 ORDER BY created_at_ms, id"
        ))?;
        let rows = stmt.query_map([payment_id], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One refund by its id.
    pub fn refund(&self, id: &str) -> Result<Option<RefundRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1"))?;
        Ok(stmt.query_row([id], row_to_refund).optional()?)
    }

    /// Refunds made in `[start, end)`.
    pub fn refunds_between(&self, start_ms: i64, end_ms: i64) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE created_at_ms >= ?1 AND created_at_ms < ?2 ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([start_ms, end_ms], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Refunds whose outcome is not known yet (sent again at start-up).
    pub fn pending_refunds(&self) -> Result<Vec<RefundRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'pending' ORDER BY created_at_ms"
        ))?;
        let rows = stmt.query_map([], row_to_refund)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records, before an attempt leaves, that the operation may reach the
    /// gateway. Returns true when an earlier attempt may already have (then
    /// this attempt's "not sent" settles nothing). Only the first attempt
    /// costs a commit.
    pub async fn note_send(self: &Arc<Self>, kind: SendKind, key: &str, payment_id: &str) -> Result<bool, StoreError> {
        if self.sent_before(kind, key)? {
            return Ok(true);
        }
        let (key, payment_id) = (key.to_string(), payment_id.to_string());
        self.write(move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO gateway_sends (kind, op_key, payment_id, first_sent_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind.as_str(), key, payment_id, now_ms()],
            )?;
            Ok(inserted == 0)
        })
        .await
    }

    /// The key of the lane's end of day under way with the gateway, and
    /// whether an earlier attempt may have sent it; otherwise `candidate`,
    /// committed as the lane's key before the first attempt leaves.
    pub async fn begin_close(self: &Arc<Self>, terminal: &str, candidate: &str) -> Result<(String, bool), StoreError> {
        let (terminal, candidate) = (terminal.to_string(), candidate.to_string());
        self.write(move |tx| {
            let earlier: Option<String> = tx
                .query_row("SELECT batch_key FROM batch_closes WHERE terminal_id = ?1", [&terminal], |r| r.get(0))
                .optional()?;
            if let Some(key) = earlier {
                return Ok((key, true));
            }
            tx.execute(
                "INSERT INTO batch_closes (terminal_id, batch_key, started_at_ms) VALUES (?1, ?2, ?3)",
                params![terminal, candidate, now_ms()],
            )?;
            Ok((candidate, false))
        })
        .await
    }

    /// Ends the lane's end of day: with `event` (the gateway answered), its
    /// event in the same commit; without (the first attempt was not sent),
    /// just the key.
    pub async fn end_close(
        self: &Arc<Self>,
        terminal: &str,
        event: Option<NewEvent>,
    ) -> Result<Option<EventRecord>, StoreError> {
        let terminal = terminal.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM batch_closes WHERE terminal_id = ?1", [&terminal])?;
            event.map(|e| insert_event(tx, &e)).transpose()
        })
        .await
    }

    /// Takes back the note of [`Store::note_send`] after the attempt that
    /// made it was not sent (its connect failed): nothing can be at the
    /// gateway, and the next attempt is a first one again.
    pub async fn forget_send(self: &Arc<Self>, kind: SendKind, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |tx| {
            tx.execute("DELETE FROM gateway_sends WHERE kind = ?1 AND op_key = ?2", params![kind.as_str(), key])?;
            Ok(())
        })
        .await
    }

    /// Whether an attempt of the operation may have reached the gateway.
    pub fn sent_before(&self, kind: SendKind, key: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM gateway_sends WHERE kind = ?1 AND op_key = ?2")?;
        Ok(stmt.exists(params![kind.as_str(), key])?)
    }

    /// Adds an audit line to a payment's log without changing its status.
    pub async fn audit(self: &Arc<Self>, payment_id: &str, cause: &str) -> Result<(), StoreError> {
        let (id, cause) = (payment_id.to_string(), cause.to_string());
        self.write(move |conn| audit_in(conn, &id, now_ms(), &cause)).await
    }

    /// Payments per status.
    pub fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM payments GROUP BY status ORDER BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest event's cursor (0 when there is none).
    pub fn last_event_cursor(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row("SELECT COALESCE(MAX(cursor), 0) FROM events", [], |r| r.get(0))?)
    }

    pub fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: i64) -> Result<(), StoreError> {
        self.conn().execute(SET_META, params![key, value])?;
        Ok(())
    }

    /// Applies a gateway event once: records its id and appends the
    /// register event, in one commit; a redelivery only advances the cursor.
    pub async fn apply_gateway_event(
        self: &Arc<Self>,
        e: &pos_proto::gateway::GatewayEvent,
    ) -> Result<Option<EventRecord>, StoreError> {
        let e = e.clone();
        self.write(move |tx| apply_gateway_event_in(tx, &e)).await
    }

    /// A payment terminal's result for a payment, with its receipt lines.
    pub fn terminal_result(&self, payment_id: &str) -> Result<Option<TerminalResult>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT result_code, receipt_no, trace, offline, terminal_tid, lines FROM terminal_results \
                 WHERE payment_id = ?1",
                [payment_id],
                |r| {
                    let lines: String = r.get(5)?;
                    Ok(TerminalResult {
                        result_code: r.get(0)?,
                        receipt_no: r.get(1)?,
                        trace: r.get(2)?,
                        offline: r.get(3)?,
                        terminal_tid: r.get::<_, Option<i64>>(4)?.map(|t| format!("{t:08}")).unwrap_or_default(),
                        lines: if lines.is_empty() { vec![] } else { lines.split('\n').map(str::to_string).collect() },
                    })
                },
            )
            .optional()?)
    }

    /// Adds receipt lines the terminal sent after its result.
    pub async fn append_receipt_lines(self: &Arc<Self>, payment_id: &str, lines: &[String]) -> Result<(), StoreError> {
        let (id, lines) = (payment_id.to_string(), lines.join("\n"));
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE terminal_results SET lines = CASE WHEN lines = '' THEN ?2 ELSE lines || char(10) || char(10) || ?2 END \
                 WHERE payment_id = ?1",
                params![id, lines],
            )?;
            Ok(())
        })
        .await
    }

    /// Records for the gateway's ledger not yet acknowledged, oldest first.
    pub fn pending_records(&self, limit: usize) -> Result<Vec<GatewayRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, record_key, payment_id, kind, amount_minor, currency, created_at_ms FROM gateway_records \
             WHERE sent_at_ms IS NULL AND refused = 0 ORDER BY seq LIMIT ?1",
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

    /// The gateway acknowledged the record (`error` empty), or the attempt
    /// failed; a `refused` record is not sent again.
    pub async fn record_attempt(self: &Arc<Self>, seq: i64, error: &str, refused: bool) -> Result<(), StoreError> {
        let error = error.to_string();
        self.write(move |conn| {
            if refused {
                exec(
                    conn,
                    "UPDATE gateway_records SET attempts = attempts + 1, last_error = ?2, refused = 1 WHERE seq = ?1",
                    params![seq, error],
                )?;
            } else if error.is_empty() {
                exec(
                    conn,
                    "UPDATE gateway_records SET sent_at_ms = ?2, attempts = attempts + 1 WHERE seq = ?1",
                    params![seq, now_ms()],
                )?;
            } else {
                exec(
                    conn,
                    "UPDATE gateway_records SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
                    params![seq, error],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The next queued payments to forward, in FIFO order, with their card data.
    pub fn outbox_batch(&self, limit: usize) -> Result<Vec<(PaymentRecord, Vec<u8>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS}, encrypted_card FROM payments WHERE status = 'offline_approved' ORDER BY queue_seq LIMIT ?1"
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
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
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
    /// audit entry and a `forward_overdue` event, all in one commit.
    pub fn drop_overdue_card_data(&self, queued_before_ms: i64, why: &str) -> Result<Vec<EventRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let overdue: Vec<(String, String)> = tx
            .prepare_cached(
                "SELECT id, terminal_id FROM payments WHERE status = 'offline_approved' AND forward_attempts > 0 \
                 AND queued_at_ms < ?1 AND encrypted_card IS NOT NULL ORDER BY queue_seq",
            )?
            .query_map([queued_before_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let now = now_ms();
        let mut events = Vec::with_capacity(overdue.len());
        for (id, terminal_id) in overdue {
            exec(&tx, "UPDATE payments SET encrypted_card = NULL WHERE id = ?1", [&id])?;
            let cause = format!("card data deleted: {why}; the gateway's record under the payment's key decides");
            audit_in(&tx, &id, now, &cause)?;
            let message = format!(
                "payment {id}: {why}; its card data is deleted and posd asks the gateway whether it holds the payment \
                 (captured if it does, expired if not)"
            );
            events
                .push(insert_event(&tx, &NewEvent { kind: "forward_overdue", terminal_id, payment_id: id, message })?);
        }
        tx.commit()?;
        Ok(events)
    }

    /// AUTHORIZED payments (manual capture) authorized before the cutoff,
    /// oldest first, at most `limit`.
    pub fn authorized_before(&self, before_ms: i64, limit: usize) -> Result<Vec<PaymentRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM payments WHERE status = 'authorized' AND updated_at_ms < ?1 \
             ORDER BY updated_at_ms LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![before_ms, limit as i64], row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Totals of the unsent offline payments.
    pub fn queue_summary(&self) -> Result<QueueSummary, StoreError> {
        let conn = self.conn();
        const UNSENT: &str = "status IN ('offline_approved', 'forwarding', 'quarantined')";
        let (count, quarantined, oldest): (u32, u32, Option<i64>) = conn.query_row(
            &format!(
                "SELECT COUNT(*), COALESCE(SUM(status = 'quarantined'), 0), \
                 MIN(CASE WHEN status = 'quarantined' THEN NULL ELSE queued_at_ms END) FROM payments WHERE {UNSENT}"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT currency, SUM(amount_minor) FROM payments WHERE {UNSENT} GROUP BY currency ORDER BY currency"
        ))?;
        let totals = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(QueueSummary { count, quarantined, totals, oldest_queued_at_ms: oldest })
    }

    /// Unsent offline payments of one card (by the reader's fingerprint).
    pub fn queued_for_card(&self, fingerprint: &str) -> Result<u32, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM payments WHERE status IN ('offline_approved', 'forwarding', 'quarantined') \
             AND card_fingerprint = ?1",
            [fingerprint],
            |r| r.get(0),
        )?)
    }
}

/// Executes a statement through the connection's statement cache (the
/// forwarder runs the same few statements thousands of times).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn insert_event(conn: &Connection, e: &NewEvent) -> Result<EventRecord, StoreError> {
    let at_ms = now_ms();
    exec(
        conn,
        "INSERT INTO events (at_ms, kind, terminal_id, payment_id, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at_ms, e.kind, e.terminal_id, e.payment_id, e.message],
    )?;
    Ok(EventRecord {
        cursor: conn.last_insert_rowid(),
        at_ms,
        kind: e.kind.to_string(),
        terminal_id: e.terminal_id.clone(),
        payment_id: e.payment_id.clone(),
        message: e.message.clone(),
    })
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
    tx.execute(
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

/// The write of [`Store::apply_gateway_event`].
fn apply_gateway_event_in(
    tx: &Connection,
    e: &pos_proto::gateway::GatewayEvent,
) -> Result<Option<EventRecord>, StoreError> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO gateway_events (event_id, sequence, kind, transaction_key, received_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.event_id, e.sequence as i64, e.kind, e.transaction_key, now_ms()],
    )? == 1;
    tx.execute(
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
            "refund_settled" => "gateway_refund_settled",
            "dispute_opened" => "gateway_dispute_opened",
            "settlement_closed" => "gateway_settlement_closed",
            _ => "gateway_event",
        };
        let message = format!("{} ({}): {}", e.kind, e.event_id, e.message);
        Some(insert_event(tx, &NewEvent { kind, terminal_id, payment_id, message })?)
    } else {
        None
    };
    Ok(event)
}

/// A new payment (`Ok`), or the one already under its idempotency key (`Err`).
pub type Inserted = Result<PaymentRecord, PaymentRecord>;

/// A committed transition: the payment as it now is, and its register event.
pub type Applied = (PaymentRecord, Option<EventRecord>);

/// The write of [`Store::insert_or_get`].
fn insert_or_get_in(
    p: &PaymentRecord,
    caller: &str,
) -> impl FnOnce(&Connection) -> Result<Inserted, StoreError> + Send + 'static {
    let (p, caller) = (p.clone(), caller.to_string());
    move |conn| {
        if let Some(existing) = payment_by_key(conn, &p.idempotency_key)? {
            return Ok(Err(existing));
        }
        insert_in(conn, &p, &caller)?;
        Ok(Ok(p))
    }
}

/// The payment under a register's idempotency key.
fn payment_by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<PaymentRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM payments WHERE idempotency_key = ?1"))?
        .query_row([key], row_to_payment)
        .optional()
}

/// A new payment's row, with its first audit entry.
fn insert_in(tx: &Connection, p: &PaymentRecord, caller: &str) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
         manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms, device, history) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, json_array(json_array(0, '', ?8, ?13)))",
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
            p.created_at_ms,
            p.device,
            audit_text(&format!("payment requested by the register ({caller})"))
        ],
    )?;
    Ok(())
}

/// One transition inside the caller's transaction (see [`Store::apply`]).
fn apply_in(tx: &Connection, id: &str, t: &Transition, update: Update) -> Result<Applied, StoreError> {
    {
        let now = now_ms();
        // The status moves only from the one the transition starts at; a
        // reason replaces the previous one only when the transition has one.
        // The audit entry goes into the row the transition rewrites anyway,
        // and so do the changes every transition to its status makes: card
        // data dropped where the status may not keep it, the amount captured,
        // the forwarding attempts counted.
        let moved = tx
            .prepare_cached(concat!(
                "UPDATE payments SET status = :to, updated_at_ms = :at, \
                 reason_code = CASE WHEN :has_reason THEN :code ELSE reason_code END, \
                 reason_message = CASE WHEN :has_reason THEN :message ELSE reason_message END, \
                 encrypted_card = CASE WHEN :keeps_card THEN encrypted_card END, \
                 captured_minor = CASE WHEN :captures THEN COALESCE(:captured, amount_minor) ELSE captured_minor END, \
                 forward_attempts = forward_attempts + :forwards, ",
                append_history!(":from", ":to"),
                " WHERE id = :id AND status = :from"
            ))?
            .execute(named_params! {
                ":id": id,
                ":to": t.to.as_str(),
                ":at": now,
                ":from": t.from.as_str(),
                ":has_reason": t.reason.is_some(),
                ":code": t.reason.as_ref().map(|r| r.code.as_str()),
                ":message": t.reason.as_ref().map(|r| r.message.as_str()),
                ":keeps_card": t.to.keeps_card_data(),
                ":captures": t.to == Status::Captured,
                ":captured": update.captured_minor,
                ":forwards": t.to == Status::Forwarding,
                ":cause": audit_text(&t.cause),
            })?;
        if moved == 0 {
            let current: String = tx
                .prepare_cached("SELECT status FROM payments WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            let actual = Status::parse(&current).ok_or(StoreError::Corrupt(current))?;
            return Err(StoreError::Conflict { id: id.to_string(), expected: t.from, actual });
        }
        if let Some((c, blob)) = &update.card {
            exec(
                tx,
                "UPDATE payments SET masked_pan = ?2, brand = ?3, entry_mode = ?4, wallet = ?5, aid = ?6, \
                 application_label = ?7, verification = ?8, card_fingerprint = ?9, \
                 encrypted_card = CASE WHEN ?11 THEN ?10 END WHERE id = ?1",
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
                    blob,
                    t.to.keeps_card_data()
                ],
            )?;
        }
        if let Some(a) = &update.auth_code {
            exec(tx, "UPDATE payments SET auth_code = ?2 WHERE id = ?1", params![id, a])?;
        }
        if let Some(g) = &update.gateway_reference {
            exec(tx, "UPDATE payments SET gateway_reference = ?2 WHERE id = ?1", params![id, g])?;
        }
        if t.to == Status::OfflineApproved {
            let sql = format!(
                "UPDATE payments SET offline = 1, queue_seq = COALESCE(queue_seq, ({NEXT_QUEUE_SEQ})), \
                 queued_at_ms = COALESCE(queued_at_ms, ?2) WHERE id = ?1"
            );
            exec(tx, &sql, params![id, update.queued_at_ms.unwrap_or(now)])?;
        }
        if let Some(e) = &update.last_error {
            exec(tx, "UPDATE payments SET last_error = ?2 WHERE id = ?1", params![id, e])?;
        }
        if let Some(r) = &update.terminal {
            exec(
                tx,
                "INSERT INTO terminal_results (payment_id, result_code, receipt_no, trace, offline, terminal_tid, lines) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (payment_id) DO UPDATE SET \
                 result_code = excluded.result_code, receipt_no = excluded.receipt_no, trace = excluded.trace, \
                 offline = excluded.offline, terminal_tid = excluded.terminal_tid",
                params![
                    id,
                    r.result_code,
                    r.receipt_no,
                    r.trace,
                    r.offline,
                    r.terminal_tid.parse::<i64>().ok(),
                    r.lines.join("\n")
                ],
            )?;
        }
        if let Some(kind) = update.record {
            exec(
                tx,
                "INSERT INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
                 SELECT gateway_key || ':' || ?2, id, ?2, captured_minor, currency, ?3 FROM payments WHERE id = ?1",
                params![id, kind, now],
            )?;
        }
        if let Some((key, value)) = &update.meta {
            exec(tx, "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
        }
        if let Some(cause) = &update.audit {
            audit_in(tx, id, now, cause)?;
        }
        let event = update.event.as_ref().map(|e| insert_event(tx, e)).transpose()?;
        let (rec, history_bytes) = tx
            .prepare_cached(&format!("SELECT {COLUMNS}, octet_length(history) FROM payments WHERE id = ?1"))?
            .query_row([id], |r| Ok((row_to_payment(r)?, r.get(30)?)))?;
        move_long_history(tx, id, history_bytes)?;
        Ok((rec, event))
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
    /// synced commit goes through (it records the time of the check in
    /// `meta`). It runs on a connection of its own with a short busy
    /// timeout, so posd's reads go on meanwhile.
    pub fn probe(&self) -> Result<(), StoreError> {
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
        for table in schema::TABLES {
            conn.prepare(&format!("SELECT * FROM {table} LIMIT 0"))?;
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch("CREATE TABLE store_probe (b BLOB); INSERT INTO store_probe VALUES (zeroblob(65536));")?;
        tx.rollback()?;
        conn.execute(SET_META, params!["store_probe_ms", now_ms()])?;
        Ok(())
    }

    /// Moves the WAL into the database and truncates it, so deleted card
    /// data does not linger there (secure_delete wipes it in the database).
    pub fn checkpoint(&self) {
        let conn = self.conn();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(&format!("SELECT {COLUMNS} FROM payments WHERE id = ?1"), [id], row_to_payment)
            .optional()?)
    }

    pub fn get_by_key(&self, key: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(payment_by_key(&self.conn(), key)?)
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
        let order = if f.oldest_first { "ASC" } else { "DESC" };
        sql += &format!(" ORDER BY created_at_ms {order}, id {order} LIMIT ?{}", args.len());
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Payments a restart must act on (their status has a recovery), oldest first.
    pub fn unfinished(&self) -> Result<Vec<PaymentRecord>, StoreError> {
        let unfinished: Vec<&str> = Status::ALL
            .iter()
            .filter(|s| {
                pos_engine::recovery(**s) != pos_engine::Recovery::None
                    || pos_engine::recovery_on_terminal(**s) != pos_engine::Recovery::None
            })
            .map(|s| s.as_str())
            .collect();
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
/// [`Store::open`] committed the schema (`synchronous=FULL`: the commit is
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

#[cfg(test)]
mod tests {
    use super::schema::MIGRATIONS;
    use super::*;
    use pos_engine::{Input, next};

    fn sample(key: &str) -> PaymentRecord {
        PaymentRecord {
            order_reference: "order-1".into(),
            ..PaymentRecord::created(
                format!("pay_{key}"),
                key.into(),
                format!("gw-{key}"),
                "lane-1".into(),
                1234,
                "EUR".into(),
                now_ms(),
            )
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_probe_passes_a_working_database_and_fails_a_full_or_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        let s = Store::open(&path).unwrap();
        s.probe().unwrap();
        assert!(s.meta("store_probe_ms").unwrap().is_some(), "the probe commits");
        let tables: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'store_probe'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0, "the probe's pages are rolled back");
        let pages: u64 = s.conn().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        drop(s);

        // No room for new pages: as with a full disk.
        let full = Store::open_with(&path, Some(pages)).unwrap();
        let err = full.probe().unwrap_err();
        assert!(
            matches!(&err, StoreError::Db(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull),
            "{err}"
        );
        drop(full);

        // A table gone (as in the e2e tests' damaged database).
        let s = Store::open(&path).unwrap();
        s.conn().execute_batch("ALTER TABLE refunds RENAME TO refunds_damaged").unwrap();
        assert!(s.probe().unwrap_err().to_string().contains("refunds"));
        s.conn().execute_batch("ALTER TABLE refunds_damaged RENAME TO refunds").unwrap();
        s.probe().unwrap();
    }

    #[test]
    fn same_key_returns_the_existing_payment() {
        let (_d, s) = open();
        assert!(s.insert_or_get_blocking(&sample("k"), "test").unwrap().is_ok());
        let mut other = sample("k");
        other.id = "pay_other".into();
        assert_eq!(s.insert_or_get_blocking(&other, "test").unwrap().unwrap_err().id, "pay_k");
    }

    #[test]
    fn card_data_is_deleted_in_the_commit_that_leaves_authorizing() {
        let (_d, s) = open();
        s.insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
        let mut st = Status::Created;
        for (input, update) in [
            (Input::Start, Update::default()),
            (Input::CardRead, Update { card: Some((CardInfo::default(), vec![1, 2, 3])), ..Default::default() }),
            (Input::Sending, Update::default()),
        ] {
            let t = next(st, &input).unwrap();
            st = s.apply_blocking("pay_k", &t, update).unwrap().0.status;
        }
        assert_eq!(s.encrypted_card("pay_k").unwrap(), Some(vec![1, 2, 3]));
        let t = next(st, &Input::Approved { captured: true }).unwrap();
        assert_eq!(s.apply_blocking("pay_k", &t, Update::default()).unwrap().0.status, Status::Captured);
        assert_eq!(s.encrypted_card("pay_k").unwrap(), None);
        let h = s.history("pay_k").unwrap();
        assert_eq!(h.iter().map(|e| e.to).collect::<Vec<_>>().last(), Some(&Status::Captured));
        assert_eq!(h.len(), 5);

        // Card data that comes with a move to a status that may not keep it
        // is not stored; what the card is stays.
        s.insert_or_get_blocking(&sample("j"), "test").unwrap().unwrap();
        let t = next(Status::Created, &Input::Cancel { by: "test".into() }).unwrap();
        let card = CardInfo { masked_pan: "424242******4242".into(), ..Default::default() };
        let update = Update { card: Some((card, vec![1, 2, 3])), ..Default::default() };
        let (rec, _) = s.apply_blocking("pay_j", &t, update).unwrap();
        assert_eq!((rec.status, rec.card.map(|c| c.masked_pan)), (Status::Canceled, Some("424242******4242".into())));
        assert_eq!(s.encrypted_card("pay_j").unwrap(), None);
    }

    #[test]
    fn a_second_audit_entry_commits_with_its_transition_or_not_at_all() {
        let (_d, s) = open();
        s.insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
        let t = next(Status::Created, &Input::Start).unwrap();
        let who = || Update { audit: Some("by a person".into()), ..Default::default() };
        s.apply_blocking("pay_k", &t, who()).unwrap();
        // The same transition again is stale: refused, with nothing written.
        assert!(matches!(s.apply_blocking("pay_k", &t, who()), Err(StoreError::Conflict { .. })));
        let h = s.history("pay_k").unwrap();
        let causes: Vec<&str> = h.iter().map(|e| e.cause.as_str()).collect();
        assert_eq!(causes[1..], [t.cause.as_str(), "by a person"]);
        assert_eq!((h[2].from, h[2].to), (Some(Status::Collecting), Status::Collecting));
    }

    #[tokio::test]
    async fn a_long_history_moves_out_of_the_row_and_reads_back_in_order() {
        let (_d, s) = open();
        let s = Arc::new(s);
        s.insert_or_get(&sample("k"), "test").await.unwrap().unwrap();
        let mut expected = vec![("created", "payment requested by the register (test)".to_string())];
        let mut st = Status::Created;
        let step = |st: &mut Status, input: Input, expected: &mut Vec<(&str, String)>| {
            let t = next(*st, &input).unwrap();
            *st = s.apply_blocking("pay_k", &t, Update::default()).unwrap().0.status;
            expected.push((st.as_str(), t.cause.clone()));
        };
        step(&mut st, Input::Start, &mut expected);
        step(&mut st, Input::CardRead, &mut expected);
        // Causes JSON has to escape, enough to move twice, and one longer
        // than the row may hold.
        for i in 0..60 {
            let long = if i == 30 { "x".repeat(HISTORY_IN_ROW_BYTES as usize) } else { String::new() };
            let cause = format!("note {i}: \"quoted\"\n\tnext line, ünïcode{long}");
            s.audit("pay_k", &cause).await.unwrap();
            expected.push(("card_read", cause));
        }
        step(&mut st, Input::ApprovedOffline, &mut expected);

        let h = s.history("pay_k").unwrap();
        let got: Vec<(&str, String)> = h.iter().map(|e| (e.to.as_str(), e.cause.clone())).collect();
        assert_eq!(got, expected);
        assert_eq!(h[0].from, None, "the first entry has no status before it");
        assert!(h.windows(2).all(|w| Some(w[0].to) == w[1].from), "each entry starts where the one before ended");
        let (in_row, in_row_bytes, moved, seqs): (i64, i64, i64, String) = s
            .conn()
            .query_row(
                "SELECT json_array_length(history), octet_length(history), \
                 (SELECT COUNT(*) FROM payment_events WHERE payment_id = 'pay_k'), \
                 (SELECT COALESCE(group_concat(seq), '') FROM (SELECT seq FROM payment_events WHERE payment_id = 'pay_k' ORDER BY seq)) \
                 FROM payments WHERE id = 'pay_k'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert!(
            in_row >= 1 && in_row_bytes <= HISTORY_IN_ROW_BYTES,
            "{in_row} entries, {in_row_bytes} bytes in the row"
        );
        assert!(moved >= 40, "moved more than once: {moved}");
        assert_eq!(in_row + moved, expected.len() as i64);
        let want: Vec<String> = (1..=moved).map(|n| n.to_string()).collect();
        assert_eq!(seqs, want.join(","), "moved entries are numbered in order, without gaps");
        assert!(matches!(s.audit("pay_none", "x").await, Err(StoreError::NotFound(_))));

        // Times come back whole, and are kept as offsets from the payment's
        // creation: written out, a time in ms is a 13-digit run, which a
        // card-number scan of the file would report.
        let created = s.get("pay_k").unwrap().unwrap().created_at_ms;
        assert_eq!(h[0].at_ms, created);
        assert!(h.windows(2).all(|w| w[0].at_ms <= w[1].at_ms) && h.last().unwrap().at_ms <= now_ms());
        let text: String =
            s.conn().query_row("SELECT history FROM payments WHERE id = 'pay_k'", [], |r| r.get(0)).unwrap();
        let longest_run = text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
        assert!(longest_run < 13, "a {longest_run}-digit run in {text}");

        // A control character JSON would write as `\u0001` is replaced, so
        // its digits cannot join the ones after it.
        s.insert_or_get(&sample("c"), "test").await.unwrap().unwrap();
        s.audit("pay_c", "terminal text \u{1}123456789012 and a \u{0}").await.unwrap();
        let h = s.history("pay_c").unwrap();
        assert_eq!(h[1].cause, "terminal text \u{fffd}123456789012 and a \u{fffd}");
        let text: String =
            s.conn().query_row("SELECT history FROM payments WHERE id = 'pay_c'", [], |r| r.get(0)).unwrap();
        let longest_run = text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
        assert!(longest_run < 13, "a {longest_run}-digit run in {text}");
    }

    #[test]
    fn a_database_from_a_newer_posd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        drop(Store::open(&path).unwrap());
        let newer = MIGRATIONS.len() + 1;
        Connection::open(&path).unwrap().execute_batch(&format!("PRAGMA user_version = {newer}")).unwrap();
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains(&format!("schema version {newer}, newer than this posd's")), "{err}");
    }

    #[test]
    fn only_authorizations_older_than_the_cutoff_are_found_oldest_first() {
        let (_d, s) = open();
        for (key, captured, authorized_at) in [("a", false, 5_000), ("b", false, 3_000), ("c", true, 1_000)] {
            s.insert_or_get_blocking(&sample(key), "test").unwrap().unwrap();
            let id = format!("pay_{key}");
            let mut st = Status::Created;
            for input in [Input::Start, Input::CardRead, Input::Sending, Input::Approved { captured }] {
                st = s.apply_blocking(&id, &next(st, &input).unwrap(), Update::default()).unwrap().0.status;
            }
            s.conn()
                .execute("UPDATE payments SET updated_at_ms = ?2 WHERE id = ?1", params![id, authorized_at])
                .unwrap();
        }
        let ids = |cutoff, limit| -> Vec<String> {
            s.authorized_before(cutoff, limit).unwrap().into_iter().map(|p| p.id).collect()
        };
        assert_eq!(ids(10_000, 100), ["pay_b", "pay_a"], "captured payments are not authorizations");
        assert_eq!(ids(5_000, 100), ["pay_b"], "the cutoff is exclusive");
        assert_eq!(ids(3_000, 100), Vec::<String>::new());
        assert_eq!(ids(10_000, 1), ["pay_b"]);
    }

    #[test]
    fn a_stale_transition_is_refused() {
        let (_d, s) = open();
        s.insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
        let t = next(Status::Created, &Input::Start).unwrap();
        s.apply_blocking("pay_k", &t, Update::default()).unwrap();
        assert!(matches!(s.apply_blocking("pay_k", &t, Update::default()), Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn a_migration_keeps_queued_payments_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        {
            // A database as the version before the last migration left it,
            // with a payment waiting in the outbox.
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..MIGRATIONS.len() - 1] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() - 1)).unwrap();
            conn.execute(
                "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
                 manual_capture, status, gateway_key, encrypted_card, demo, created_at_ms, updated_at_ms, offline, \
                 queue_seq, queued_at_ms) VALUES ('pay_q', 'k', '', 'lane-1', 700, 'EUR', 0, 'offline_approved', 'gk', \
                 X'0102', 0, 1, 1, 1, 1, 1)",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let q = s.get("pay_q").unwrap().unwrap();
        assert_eq!((q.status, q.amount_minor, q.offline), (Status::OfflineApproved, 700, true));
        assert_eq!(s.encrypted_card("pay_q").unwrap(), Some(vec![1, 2]));
        assert_eq!(s.queue_summary().unwrap().count, 1);
    }

    #[tokio::test]
    async fn a_refund_left_pending_before_migration_9_counts_as_possibly_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        {
            // Version 8 (the release before gateway_sends): a captured
            // payment with one refund pending and one that failed.
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..8] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch("PRAGMA user_version = 8").unwrap();
            conn.execute(
                "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
                 manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms, offline, captured_minor) \
                 VALUES ('pay_r', 'k', '', 'lane-1', 900, 'EUR', 0, 'captured', 'gk', 0, 1, 1, 0, 900)",
                [],
            )
            .unwrap();
            for (id, key, status) in [("ref_p", "rk-pending", "pending"), ("ref_f", "rk-failed", "failed")] {
                conn.execute(
                    "INSERT INTO refunds (id, idempotency_key, payment_id, amount_minor, currency, refund_key, status, \
                     reason, created_at_ms, updated_at_ms) VALUES (?1, ?1, 'pay_r', 100, 'EUR', ?2, ?3, '', 1, 1)",
                    params![id, key, status],
                )
                .unwrap();
            }
        }
        let s = Arc::new(Store::open(&path).unwrap());
        assert!(s.sent_before(SendKind::Refund, "rk-pending").unwrap(), "a pending refund may have been sent");
        assert!(!s.sent_before(SendKind::Refund, "rk-failed").unwrap());
        assert_eq!(s.pending_refunds().unwrap().len(), 1, "nothing lost");
        // note_send says whether an earlier attempt may have left; it writes once.
        assert!(!s.note_send(SendKind::Capture, "gk", "pay_r").await.unwrap());
        assert!(s.note_send(SendKind::Capture, "gk", "pay_r").await.unwrap());
        assert!(!s.note_send(SendKind::Void, "gk", "pay_r").await.unwrap(), "kinds are apart");
    }

    #[tokio::test]
    async fn the_audit_log_keeps_its_order_across_migration_7() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        {
            // Version 6: an audit log in one sequence for all payments (with
            // AUTOINCREMENT), and a queued payment.
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..6] {
                conn.execute_batch(m).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 6;
                 INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
                 manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms, offline, queue_seq, \
                 queued_at_ms) VALUES ('pay_q', 'kq', '', 'lane-1', 700, 'EUR', 0, 'offline_approved', 'gq', 0, 1, 1, \
                 1, 41, 1);
                 INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
                 manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms) \
                 VALUES ('pay_r', 'kr', '', 'lane-2', 500, 'EUR', 0, 'collecting', 'gr', 0, 1, 1);
                 INSERT INTO payment_events (payment_id, at_ms, from_status, to_status, cause) VALUES
                 ('pay_q', 1, '', 'created', 'one'), ('pay_r', 1, '', 'created', 'r-one'),
                 ('pay_q', 2, 'created', 'collecting', 'two'), ('pay_r', 2, 'created', 'collecting', 'r-two'),
                 ('pay_q', 3, 'collecting', 'card_read', 'three');",
            )
            .unwrap();
        }
        let s = Arc::new(Store::open(&path).unwrap());
        let causes = |id: &str| s.history(id).unwrap().into_iter().map(|e| e.cause).collect::<Vec<_>>();
        assert_eq!(causes("pay_q"), ["one", "two", "three"]);
        s.audit("pay_q", "four").await.unwrap();
        assert_eq!(causes("pay_q"), ["one", "two", "three", "four"], "new entries come after the old ones");
        // Since migration 8 new entries are in the row; once they pass its
        // limit they move behind the old ones, numbered after them.
        let long: Vec<String> = (0..3).map(|i| format!("long {i} {}", "y".repeat(900))).collect();
        for cause in &long {
            s.audit("pay_q", cause).await.unwrap();
        }
        let mut want = vec!["one", "two", "three", "four"];
        want.extend(long.iter().map(String::as_str));
        assert_eq!(causes("pay_q"), want);
        let seqs: Vec<i64> = s
            .conn()
            .prepare("SELECT seq FROM payment_events WHERE payment_id = 'pay_q' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs, [1, 3, 5, 6, 7, 8, 9], "the old entries keep the shared counter's numbers");
        assert_eq!(causes("pay_r"), ["r-one", "r-two"]);
        let conn = s.conn();
        let sequences: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'payment_events'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sequences, 0, "no sequence row is written by state changes any more");
        drop(conn);

        // The next payment entering the outbox queues behind the one there.
        s.insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
        let mut st = Status::Created;
        for input in [Input::Start, Input::CardRead, Input::ApprovedOffline] {
            let t = next(st, &input).unwrap();
            st = s.apply_blocking("pay_k", &t, Update::default()).unwrap().0.status;
        }
        assert_eq!(st, Status::OfflineApproved);
        let queued: Vec<String> = s.outbox_batch(10).unwrap().into_iter().map(|(p, _)| p.id).collect();
        assert_eq!(queued, ["pay_q", "pay_k"]);
        let seq: i64 =
            s.conn().query_row("SELECT queue_seq FROM payments WHERE id = 'pay_k'", [], |r| r.get(0)).unwrap();
        assert_eq!(seq, 42);
        let plan: String =
            s.conn().query_row(&format!("EXPLAIN QUERY PLAN {NEXT_QUEUE_SEQ}"), [], |r| r.get(3)).unwrap();
        assert!(plan.contains("payments_queue"), "the next position is read from the queue's index: {plan}");
    }

    #[test]
    fn writes_queued_during_a_commit_share_the_next_one() {
        let (_d, s) = open();
        s.insert_or_get_blocking(&sample("k0"), "test").unwrap().unwrap();
        let stale = next(Status::Collecting, &Input::CardRead).unwrap();
        // Polls the queue's state (no timing involved) until `ready`.
        let wait_for = |ready: &dyn Fn(&Group) -> bool| {
            while !ready(&s.group.lock().unwrap()) {
                std::thread::yield_now();
            }
        };
        std::thread::scope(|scope| {
            // The disk is busy: the first writer leads, takes its own write and waits.
            let held = s.conn();
            let first = scope.spawn(|| s.insert_or_get_blocking(&sample("k1"), "test"));
            wait_for(&|g| g.leading && g.queue.is_empty());
            let inserts: Vec<_> = (2..8)
                .map(|i| {
                    let s = &s;
                    scope.spawn(move || s.insert_or_get_blocking(&sample(&format!("k{i}")), "test"))
                })
                .collect();
            let refused = scope.spawn(|| s.apply_blocking("pay_k0", &stale, Update::default()));
            wait_for(&|g| g.queue.len() == 7);
            drop(held);
            assert!(first.join().unwrap().unwrap().is_ok());
            for insert in inserts {
                assert!(insert.join().unwrap().unwrap().is_ok());
            }
            let refused = refused.join().unwrap();
            assert!(matches!(refused, Err(StoreError::Conflict { actual: Status::Created, .. })), "{refused:?}");
        });
        assert_eq!(s.write_counts(), (8, 3), "the seven writes queued behind the first shared one commit");
        for i in 1..8 {
            let id = format!("pay_k{i}");
            assert_eq!(s.get(&id).unwrap().unwrap().status, Status::Created);
            assert_eq!(s.history(&id).unwrap().len(), 1);
        }
        assert_eq!(s.get("pay_k0").unwrap().unwrap().status, Status::Created, "the refused write left nothing");
        assert_eq!(s.history("pay_k0").unwrap().len(), 1);
    }

    // Holding the connection across awaits stands in for a slow disk.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_writes_share_a_commit_without_holding_their_workers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
        // Polls the queue's state (no timing involved) until `ready`.
        let wait_for = |ready: fn(&Group) -> bool| {
            let s = Arc::clone(&s);
            async move {
                while !ready(&s.group.lock().unwrap()) {
                    tokio::task::yield_now().await;
                }
            }
        };
        // The disk is busy: the first write commits in place and waits on its worker.
        let held = s.conn();
        let write = |i: usize| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.insert_or_get(&sample(&format!("k{i}")), "test").await })
        };
        let first = write(0);
        wait_for(|g| g.leading && g.queue.is_empty()).await;
        // Meanwhile the other worker is free: seven more lanes queue their writes.
        let rest: Vec<_> = (1..8).map(write).collect();
        wait_for(|g| g.queue.len() == 7).await;
        drop(held);
        assert!(first.await.unwrap().unwrap().is_ok());
        for w in rest {
            assert!(w.await.unwrap().unwrap().is_ok());
        }
        assert_eq!(s.write_counts(), (8, 2), "the seven writes queued behind the first shared one commit");
        let t = next(Status::Created, &Input::Start).unwrap();
        let (rec, _) = s.apply("pay_k3", &t, Update::default()).await.unwrap();
        assert_eq!(rec.status, t.to);
        assert_eq!(s.get("pay_k3").unwrap().unwrap().status, t.to);
        assert_eq!(s.write_counts(), (9, 3));
    }

    #[test]
    fn a_leader_dropped_before_committing_abandons_the_queue() {
        let (_d, s) = open();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        assert!(s.enqueue(insert_or_get_in(&sample("k1"), "test"), Box::new(move |r| drop(reply.send(r)))));
        // As when the runtime stops before the blocking task that was to commit runs.
        drop(Leader::new(&s));
        assert!(answer.recv().is_err(), "the caller hears that its write was dropped");
        assert!(s.insert_or_get_blocking(&sample("k2"), "test").unwrap().is_ok(), "the next write leads");
        assert!(s.get("pay_k1").unwrap().is_none());
        assert_eq!(s.write_counts(), (1, 1));
    }

    #[test]
    fn a_batch_inserts_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("posd.db")).unwrap();
        s.insert_batch(&[sample("k"), sample("k2")], "test").unwrap();
        assert_eq!(s.get("pay_k2").unwrap().unwrap().status, Status::Created);
        assert_eq!(s.history("pay_k").unwrap().len(), 1, "with its first audit entry");
        assert!(s.insert_batch(&[sample("k3"), sample("k")], "test").is_err(), "key k is taken");
        assert!(s.get("pay_k3").unwrap().is_none(), "nothing of a failed batch is kept");
    }

    #[test]
    fn migrations_are_idempotent_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.db");
        Store::open(&path).unwrap().insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
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
    fn a_state_directory_that_held_a_database_refuses_to_start_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (db, marker) = (dir.path().join("posd.db"), dir.path().join(INITIALIZED_MARKER));
        let refusal = || check_database_kept(dir.path()).unwrap_err().to_string();
        // A first start, and one after a kill before the first commit (no marker): they go on.
        check_database_kept(dir.path()).unwrap();
        std::fs::write(&db, b"").unwrap();
        check_database_kept(dir.path()).unwrap();
        let s = Store::open(&db).unwrap();
        s.insert_or_get_blocking(&sample("k"), "test").unwrap().unwrap();
        mark_initialized(dir.path()).unwrap();
        assert!(marker.exists());
        mark_initialized(dir.path()).unwrap();
        check_database_kept(dir.path()).unwrap();
        drop(s);
        check_database_kept(dir.path()).unwrap();

        // Emptied, missing, or replaced by another database: refused, saying how to restore or start over.
        std::fs::write(&db, b"").unwrap();
        for f in ["posd.db-wal", "posd.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let err = refusal();
        assert!(err.contains("posd.db is empty (0 bytes)"), "{err}");
        assert!(err.contains("posd backup") && err.contains(&format!("delete {}", marker.display())), "{err}");
        std::fs::remove_file(&db).unwrap();
        assert!(refusal().contains("posd.db is missing"));
        Connection::open(&db).unwrap().execute_batch("CREATE TABLE other (x)").unwrap();
        assert!(refusal().contains("holds none of posd's tables"));

        // Restored from a backup: it starts, with the payments it had.
        std::fs::remove_file(&db).unwrap();
        let other = tempfile::tempdir().unwrap();
        Store::open(&other.path().join("posd.db"))
            .unwrap()
            .insert_or_get_blocking(&sample("b"), "test")
            .unwrap()
            .unwrap();
        crate::admin::backup(other.path(), &db).unwrap();
        check_database_kept(dir.path()).unwrap();
        assert!(Store::open(&db).unwrap().get("pay_b").unwrap().is_some());

        // Started over on purpose: the marker deleted.
        std::fs::write(&db, b"").unwrap();
        std::fs::remove_file(&marker).unwrap();
        check_database_kept(dir.path()).unwrap();
    }

    #[test]
    fn list_pages_newest_first_with_filters() {
        let (_d, s) = open();
        for i in 0..5 {
            let mut p = sample(&format!("k{i}"));
            p.created_at_ms = 1000 + i;
            p.terminal_id = if i % 2 == 0 { "lane-1".into() } else { "lane-2".into() };
            s.insert_or_get_blocking(&p, "test").unwrap().unwrap();
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
