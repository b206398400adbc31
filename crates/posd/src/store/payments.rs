//! Payments: their records, a new payment, its transitions (with the data
//! each stores), the reads and listings of payments, and what a payment
//! terminal that authorizes by itself reported.

use std::sync::{Arc, LazyLock};

use pos_engine::{Status, Transition};
use rusqlite::{Connection, OptionalExtension, Row, named_params, params};

use super::events::{EventRecord, NewEvent, insert_event};
use super::gateway::RecordKind;
use super::group::Durability;
use super::history::{audit_in, audit_text, move_long_history};
use super::outbox::NEXT_QUEUE_SEQ;
use super::{Store, StoreError, exec};

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
    /// The card device that took it.
    pub device: DeviceKind,
}

text_enum! {
    /// The card device that took a payment (`payments.device`).
    pub enum DeviceKind ("device kind") {
        /// A card reader: the gateway authorizes.
        Reader = "reader",
        /// A ZVT payment terminal: it authorizes by itself.
        Zvt = "zvt",
        /// A nexo payment terminal (Adyen's Terminal API): it authorizes by itself.
        Nexo = "nexo",
    }
}

impl PaymentRecord {
    /// Taken on a payment terminal that authorizes by itself (ZVT or nexo):
    /// refunds, reversals and recovery go to the terminal, not the gateway.
    pub fn on_terminal(&self) -> bool {
        match self.device {
            DeviceKind::Reader => false,
            DeviceKind::Zvt | DeviceKind::Nexo => true,
        }
    }
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
            device: DeviceKind::Reader,
        }
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
    /// nexo: the terminal's id of the transaction and its time stamp
    /// (`POITransactionID`), what a reversal names; empty otherwise.
    pub poi_transaction_id: String,
    pub poi_time_stamp: String,
}

/// What a transition stores besides its status, its reason and its audit
/// entry, in the same commit.
#[derive(Debug, Default)]
pub struct Update {
    /// The payment's data the transition brings.
    pub data: Data,
    /// An event for the register.
    pub event: Option<NewEvent>,
    /// A second audit entry, after the transition's own (who made a person's
    /// decision).
    pub audit: Option<String>,
}

/// The payment's data a transition brings (see [`Update`]).
#[derive(Debug, Default)]
pub enum Data {
    /// Nothing besides the transition.
    #[default]
    None,
    /// The card read: what posd may keep of it, and its encrypted data (kept
    /// only while the new status may keep card data).
    Card(CardInfo, Vec<u8>),
    /// What the gateway's answer says of the payment; each part is stored
    /// when given.
    GatewayAnswer { auth_code: Option<String>, gateway_reference: Option<String> },
    /// Entering the outbox: the ageing-clock time (it sets the FIFO position
    /// once), and why nothing was sent.
    Queued { queued_at_ms: i64, last_error: String },
    /// A forwarding attempt's error, kept for support.
    ForwardError(String),
    /// Entering CAPTURED: the amount captured (without it, the whole amount).
    Captured(i64),
    /// Starting on a payment terminal: the lane's last receipt number then
    /// (-1: none known), what the terminal's answers are judged against.
    TerminalStart { receipt_before: i64 },
    /// Starting on a nexo terminal: the next ServiceID of the lane's SaleID
    /// is reserved and kept with the payment in this same commit, before the
    /// request leaves ([`Store::nexo_service`] reads it back). `service_id`:
    /// the id the request goes out under, read before ([`Store::next_service_id`]);
    /// a reservation that gives another one fails the commit.
    NexoStart { sale_id: String, service_id: Option<String> },
    /// A payment terminal's result.
    Terminal(TerminalData),
    /// A nexo terminal's answer: its result; `book`, the payment is booked
    /// (its record for the gateway's ledger, a sale, is queued); `owed`, a
    /// reversal of it posd owes, written to `nexo_reversals` as a pending
    /// attempt (kind owed) under its ServiceID, which this same commit takes
    /// from the lane's counter (it fails if the counter is elsewhere); its
    /// time stamps are the commit's.
    NexoResult { result: TerminalData, book: bool, owed: Option<super::nexo_after_sale::NexoReversal> },
    /// The payment terminal booked the payment: its record for the gateway's
    /// ledger (a sale) is queued; with the terminal's result when posd learns
    /// it only now, and the lane's last receipt number (a `meta` key and
    /// value).
    Booked { result: Option<TerminalData>, last_receipt: Option<(String, i64)> },
    /// The payment terminal reversed the payment: its record for the
    /// gateway's ledger (a reversal) is queued. On a nexo lane it is
    /// committed with the reversal attempt it settles
    /// ([`Store::settle_reversal`]).
    Reversed,
}

/// A payment terminal's result as a transition stores it.
#[derive(Debug, Default)]
pub struct TerminalData {
    /// The card, as far as the terminal tells it.
    pub card: Option<(CardInfo, Vec<u8>)>,
    pub auth_code: Option<String>,
    pub result: TerminalResult,
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

/// What [`Store::insert_or_get`] found under the payment's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The key was free: the payment is stored, as given.
    New(PaymentRecord),
    /// The key was taken: the payment already under it (nothing was stored).
    Existing(PaymentRecord),
}

/// A committed transition: the payment as it now is, and its register event.
pub type Applied = (PaymentRecord, Option<EventRecord>);

pub(super) const COLUMNS: &str = "id, idempotency_key, order_reference, terminal_id, amount_minor, currency, manual_capture, status, \
    gateway_key, masked_pan, brand, entry_mode, wallet, aid, application_label, verification, card_fingerprint, \
    reason_code, reason_message, auth_code, gateway_reference, demo, created_at_ms, updated_at_ms, offline, \
    queued_at_ms, forward_attempts, last_error, captured_minor, device";

/// The statements built from [`COLUMNS`] (and the outbox's next position),
/// made once: every call then finds its statement in the connection's
/// cache without formatting its text first.
static BY_ID: LazyLock<String> = LazyLock::new(|| format!("SELECT {COLUMNS} FROM payments WHERE id = ?1"));
static BY_KEY: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM payments WHERE idempotency_key = ?1"));
/// A transition's payment as it now is, with its in-row history's length.
static APPLIED: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS}, octet_length(history) FROM payments WHERE id = ?1"));
/// Entering the outbox: its FIFO position and ageing-clock time are set once.
static ENTER_OUTBOX: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE payments SET offline = 1, queue_seq = COALESCE(queue_seq, ({NEXT_QUEUE_SEQ})), \
         queued_at_ms = COALESCE(queued_at_ms, ?2) WHERE id = ?1"
    )
});

pub(super) fn status_col(r: &Row<'_>, i: usize) -> rusqlite::Result<Status> {
    let s: String = r.get(i)?;
    Status::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(StoreError::Corrupt(s)))
    })
}

pub(super) fn row_to_payment(r: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
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

impl Store {
    /// Inserts a new payment in CREATED, with its first audit entry. Returns
    /// the existing payment instead when the idempotency key is taken.
    pub async fn insert_or_get(self: &Arc<Self>, p: &PaymentRecord, caller: &str) -> Result<Inserted, StoreError> {
        self.counted(self.write(insert_or_get_in(p, caller)).await, payments_stored)
    }

    #[cfg(test)]
    pub fn insert_or_get_blocking(&self, p: &PaymentRecord, caller: &str) -> Result<Inserted, StoreError> {
        self.counted(self.write_blocking(insert_or_get_in(p, caller)), payments_stored)
    }

    /// Inserts many new payments in one commit (bulk loads, such as the
    /// benchmarks' stored payments). A key already taken fails them all.
    pub async fn insert_batch(self: &Arc<Self>, payments: &[PaymentRecord], caller: &str) -> Result<(), StoreError> {
        let (payments, caller, n) = (payments.to_vec(), caller.to_string(), payments.len());
        let inserted = self
            .write(move |conn| payments.iter().try_for_each(|p| insert_in(conn, INSERT, p, &caller).map(drop)))
            .await;
        self.counted(inserted, |_| n)
    }

    /// Commits one transition made at `at_ms`: the status (only if it is
    /// still `t.from`), its reason, the update's data, and an audit entry.
    /// Card data is dropped in the same commit when the new status may not
    /// keep it.
    pub async fn apply(
        self: &Arc<Self>,
        id: &str,
        t: &Transition,
        update: Update,
        at_ms: i64,
    ) -> Result<Applied, StoreError> {
        let (id, t) = (id.to_string(), t.clone());
        self.counted(self.write(move |conn| apply_in(conn, &id, &t, update, at_ms)).await, |_| 1)
    }

    /// Commits transitions of one payment made at `at_ms` in order, in one
    /// commit: all of them or, when one is refused, none.
    pub async fn apply_all(
        self: &Arc<Self>,
        id: &str,
        durability: Durability,
        steps: Vec<(Transition, Update)>,
        at_ms: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let id = id.to_string();
        let applied: Result<Vec<Applied>, StoreError> = self
            .write_with(durability, move |conn| {
                steps.into_iter().map(|(t, update)| apply_in(conn, &id, &t, update, at_ms)).collect()
            })
            .await;
        self.counted(applied, Vec::len)
    }

    #[cfg(test)]
    pub fn apply_blocking(&self, id: &str, t: &Transition, update: Update, at_ms: i64) -> Result<Applied, StoreError> {
        let (id, t) = (id.to_string(), t.clone());
        self.counted(self.write_blocking(move |conn| apply_in(conn, &id, &t, update, at_ms)), |_| 1)
    }

    /// Commits many transitions made at `at_ms` at once (one disk sync),
    /// through the group commit (the forwarder's batches). A transition whose
    /// `from` is stale is skipped and reported; the others are committed. An
    /// empty batch commits nothing.
    pub async fn apply_batch(
        self: &Arc<Self>,
        items: Vec<(String, Transition, Update)>,
        at_ms: i64,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |conn| apply_batch_in(conn, items, at_ms)).await
    }

    pub fn get(&self, id: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(self.reader().prepare_cached(&BY_ID)?.query_row([id], row_to_payment).optional()?)
    }

    pub fn get_by_key(&self, key: &str) -> Result<Option<PaymentRecord>, StoreError> {
        Ok(payment_by_key(&self.reader(), key)?)
    }

    /// The encrypted card data, while the payment still keeps it.
    pub fn encrypted_card(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached("SELECT encrypted_card FROM payments WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .flatten())
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
        // `LIMIT +?`: see the module docs of `store`.
        sql += &format!(" ORDER BY created_at_ms {order}, id {order} LIMIT +?{}", args.len());
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
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
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM payments WHERE status IN ({marks}) ORDER BY created_at_ms, id"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(unfinished), row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// AUTHORIZED payments (manual capture) authorized before the cutoff,
    /// oldest first, at most `limit`.
    pub fn authorized_before(&self, before_ms: i64, limit: usize) -> Result<Vec<PaymentRecord>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM payments WHERE status = 'authorized' AND updated_at_ms < ?1 \
             ORDER BY updated_at_ms LIMIT +?2"
        ))?;
        let rows = stmt.query_map(params![before_ms, limit as i64], row_to_payment)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Payments per status.
    pub fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM payments GROUP BY status ORDER BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The lane's last receipt number when the payment started on its payment
    /// terminal (-1: none known); `None` when it never did.
    pub fn payment_receipt_before(&self, payment_id: &str) -> Result<Option<i64>, StoreError> {
        self.nullable_of("SELECT zvt_receipt_before FROM payments WHERE id = ?1", payment_id)
    }

    /// A payment terminal's result for a payment, with its receipt lines.
    pub fn terminal_result(&self, payment_id: &str) -> Result<Option<TerminalResult>, StoreError> {
        let conn = self.reader();
        let stored = conn
            .prepare_cached(
                "SELECT result_code, receipt_no, trace, offline, terminal_tid, lines, poi_transaction_id, \
                 poi_time_stamp FROM terminal_results WHERE payment_id = ?1",
            )?
            .query_row([payment_id], |r| {
                let lines: String = r.get(5)?;
                Ok(TerminalResult {
                    result_code: r.get(0)?,
                    receipt_no: r.get(1)?,
                    trace: r.get(2)?,
                    offline: r.get(3)?,
                    terminal_tid: r.get::<_, Option<i64>>(4)?.map(|t| format!("{t:08}")).unwrap_or_default(),
                    lines: if lines.is_empty() { vec![] } else { lines.split('\n').map(str::to_string).collect() },
                    poi_transaction_id: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                    poi_time_stamp: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                })
            })
            .optional()?;
        stored
            .map(|mut t| {
                t.poi_transaction_id = super::nexo::read_reference(&t.poi_transaction_id)?;
                Ok(t)
            })
            .transpose()
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
}

/// The payment writes of an insert: one new payment, or none under a taken key.
fn payments_stored(inserted: &Inserted) -> usize {
    usize::from(matches!(inserted, Inserted::New(_)))
}

/// The write of [`Store::insert_or_get`].
pub(super) fn insert_or_get_in(
    p: &PaymentRecord,
    caller: &str,
) -> impl FnOnce(&Connection) -> Result<Inserted, StoreError> + Send + 'static {
    let (p, caller) = (p.clone(), caller.to_string());
    move |conn| {
        // Inserted first: the payment under a taken key (whichever lane
        // took it) is read only when there is one.
        if insert_in(conn, INSERT_UNLESS_KEY_TAKEN, &p, &caller)? == 1 {
            return Ok(Inserted::New(p));
        }
        let existing = payment_by_key(conn, &p.idempotency_key)?;
        Ok(Inserted::Existing(existing.ok_or_else(|| StoreError::NotFound(p.idempotency_key))?))
    }
}

/// The write of [`Store::apply_batch`]: a refused transition is reported
/// and the others go on. It needs no savepoint of its own: a refused
/// transition wrote nothing (see [`apply_in`]), and any other error fails
/// the whole write, which the group commit rolls back (its savepoint, or the
/// transaction when alone).
fn apply_batch_in(
    conn: &Connection,
    items: Vec<(String, Transition, Update)>,
    at_ms: i64,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    for (id, t, u) in items {
        match apply_in(conn, &id, &t, u, at_ms) {
            Ok(applied) => out.push(Ok(applied)),
            Err(e @ (StoreError::Conflict { .. } | StoreError::NotFound(_))) => out.push(Err(e)),
            // The whole write is rolled back by the group commit.
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The payment under a register's idempotency key.
fn payment_by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<PaymentRecord>> {
    conn.prepare_cached(&BY_KEY)?.query_row([key], row_to_payment).optional()
}

/// The insert of a new payment's row, with its first audit entry, followed
/// by `$tail`.
macro_rules! insert_payment {
    ($tail:literal) => {
        concat!(
            "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
             manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms, device, history) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, json_array(json_array(0, '', ?8, ?13)))",
            $tail
        )
    };
}

/// A new payment's row; a key taken fails the write.
const INSERT: &str = insert_payment!("");
/// A new payment's row unless its idempotency key is taken (then nothing is
/// stored). Only that key: SQLite checks the conflict target's index first,
/// and any other constraint (a taken id or gateway key) still fails the write.
const INSERT_UNLESS_KEY_TAKEN: &str = insert_payment!(" ON CONFLICT (idempotency_key) DO NOTHING");

/// A new payment's row, with its first audit entry, by `sql` ([`INSERT`] or
/// [`INSERT_UNLESS_KEY_TAKEN`]); the rows inserted.
fn insert_in(tx: &Connection, sql: &str, p: &PaymentRecord, caller: &str) -> Result<usize, StoreError> {
    Ok(exec(
        tx,
        sql,
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
    )?)
}

/// One transition made at `at_ms` inside the caller's transaction (see
/// [`Store::apply`]). A refused transition ([`StoreError::Conflict`],
/// [`StoreError::NotFound`]) writes nothing: the status check is its first
/// statement, and once it moved the row, nothing after it returns them.
pub(super) fn apply_in(
    tx: &Connection,
    id: &str,
    t: &Transition,
    update: Update,
    at_ms: i64,
) -> Result<Applied, StoreError> {
    let Update { data, event, audit } = update;
    let captured = match &data {
        Data::Captured(amount) => Some(*amount),
        _ => None,
    };
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
            ":at": at_ms,
            ":from": t.from.as_str(),
            ":has_reason": t.reason.is_some(),
            ":code": t.reason.as_ref().map(|r| r.code.as_str()),
            ":message": t.reason.as_ref().map(|r| r.message.as_str()),
            ":keeps_card": t.to.keeps_card_data(),
            ":captures": t.to == Status::Captured,
            ":captured": captured,
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
    let mut queued_at_ms = None;
    match &data {
        Data::None | Data::Captured(_) => {}
        Data::Card(card, blob) => store_card(tx, id, card, blob, t.to)?,
        Data::GatewayAnswer { auth_code, gateway_reference } => {
            if let Some(a) = auth_code {
                store_auth_code(tx, id, a)?;
            }
            if let Some(g) = gateway_reference {
                exec(tx, "UPDATE payments SET gateway_reference = ?2 WHERE id = ?1", params![id, g])?;
            }
        }
        Data::Queued { queued_at_ms: at, last_error } => {
            queued_at_ms = Some(*at);
            store_last_error(tx, id, last_error)?;
        }
        Data::ForwardError(e) => store_last_error(tx, id, e)?,
        Data::TerminalStart { receipt_before } => {
            exec(tx, "UPDATE payments SET zvt_receipt_before = ?2 WHERE id = ?1", params![id, receipt_before])?;
        }
        Data::NexoStart { sale_id, service_id: expected } => {
            let service_id = super::nexo::reserve_service_id_in(tx, sale_id)?;
            super::nexo::check_reserved(&service_id, expected.as_deref())?;
            exec(
                tx,
                "UPDATE payments SET nexo_sale_id = ?2, nexo_service_id = ?3 WHERE id = ?1",
                params![id, sale_id, service_id.as_str()],
            )?;
        }
        Data::Terminal(result) => store_terminal_data(tx, id, result, t.to)?,
        Data::Booked { result, last_receipt } => {
            if let Some(result) = result {
                store_terminal_data(tx, id, result, t.to)?;
            }
            queue_record(tx, id, RecordKind::Sale, at_ms)?;
            if let Some((key, value)) = last_receipt {
                exec(tx, super::SET_META, params![key, value])?;
            }
        }
        Data::NexoResult { result, book, owed } => {
            store_terminal_data(tx, id, result, t.to)?;
            if *book {
                queue_record(tx, id, RecordKind::Sale, at_ms)?;
            }
            if let Some(owed) = owed {
                let owed = super::nexo_after_sale::NexoReversal {
                    payment_id: id.to_string(),
                    created_at_ms: at_ms,
                    updated_at_ms: at_ms,
                    ..owed.clone()
                };
                super::nexo_after_sale::owe_reversal_in(tx, &owed)?;
            }
        }
        Data::Reversed => queue_record(tx, id, RecordKind::Reversal, at_ms)?,
    }
    if t.to == Status::OfflineApproved {
        exec(tx, &ENTER_OUTBOX, params![id, queued_at_ms.unwrap_or(at_ms)])?;
    }
    if let Some(cause) = &audit {
        audit_in(tx, id, at_ms, cause)?;
    }
    let event = event.as_ref().map(|e| insert_event(tx, e, at_ms)).transpose()?;
    let (rec, history_bytes) =
        tx.prepare_cached(&APPLIED)?.query_row([id], |r| Ok((row_to_payment(r)?, r.get(30)?)))?;
    move_long_history(tx, id, history_bytes)?;
    Ok((rec, event))
}

/// Stores the card read; its encrypted data only while status `to` may keep
/// card data.
fn store_card(tx: &Connection, id: &str, c: &CardInfo, blob: &[u8], to: Status) -> Result<(), StoreError> {
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
            to.keeps_card_data()
        ],
    )?;
    Ok(())
}

fn store_auth_code(tx: &Connection, id: &str, auth_code: &str) -> Result<(), StoreError> {
    exec(tx, "UPDATE payments SET auth_code = ?2 WHERE id = ?1", params![id, auth_code])?;
    Ok(())
}

fn store_last_error(tx: &Connection, id: &str, error: &str) -> Result<(), StoreError> {
    exec(tx, "UPDATE payments SET last_error = ?2 WHERE id = ?1", params![id, error])?;
    Ok(())
}

/// Stores a payment terminal's result: the card and the authorization code
/// as far as it tells them, and the result itself.
fn store_terminal_data(tx: &Connection, id: &str, d: &TerminalData, to: Status) -> Result<(), StoreError> {
    if let Some((card, blob)) = &d.card {
        store_card(tx, id, card, blob, to)?;
    }
    if let Some(a) = &d.auth_code {
        store_auth_code(tx, id, a)?;
    }
    let r = &d.result;
    exec(
        tx,
        "INSERT INTO terminal_results (payment_id, result_code, receipt_no, trace, offline, terminal_tid, lines, \
         poi_transaction_id, poi_time_stamp) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULLIF(?8, ''), NULLIF(?9, '')) \
         ON CONFLICT (payment_id) DO UPDATE SET \
         result_code = excluded.result_code, receipt_no = excluded.receipt_no, trace = excluded.trace, \
         offline = excluded.offline, terminal_tid = excluded.terminal_tid, \
         poi_transaction_id = COALESCE(excluded.poi_transaction_id, poi_transaction_id), \
         poi_time_stamp = COALESCE(excluded.poi_time_stamp, poi_time_stamp)",
        params![
            id,
            r.result_code,
            r.receipt_no,
            r.trace,
            r.offline,
            r.terminal_tid.parse::<i64>().ok(),
            r.lines.join("\n"),
            super::nexo::stored_reference(&r.poi_transaction_id),
            r.poi_time_stamp
        ],
    )?;
    Ok(())
}

/// Queues the payment's record of `kind` for the gateway's ledger, under the
/// payment's key and the kind.
fn queue_record(tx: &Connection, id: &str, kind: RecordKind, at_ms: i64) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
         SELECT gateway_key || ':' || ?2, id, ?2, captured_minor, currency, ?3 FROM payments WHERE id = ?1",
        params![id, kind, at_ms],
    )?;
    Ok(())
}
