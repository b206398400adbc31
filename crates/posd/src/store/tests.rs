//! The store's unit tests: schema and migrations, group commit, payments and
//! their history, the probe, and the state directory's lock and marker.

use std::sync::Arc;

use pos_engine::{Input, Status, next};
use rusqlite::{Connection, params};

use super::group::{Group, Leader};
use super::history::HISTORY_IN_ROW_BYTES;
use super::outbox::NEXT_QUEUE_SEQ;
use super::payments::insert_or_get_in;
use super::schema::MIGRATIONS;
use super::*;

/// The time of the tests' payments and writes (the store takes it from its
/// callers).
const AT: i64 = 1_750_000_000_000;

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
            AT,
        )
    }
}

/// The insert succeeded and stored a new payment (its key was free).
fn is_new(inserted: Result<Inserted, StoreError>) -> bool {
    matches!(inserted.unwrap(), Inserted::New(_))
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
    s.probe(AT).unwrap();
    assert_eq!(s.meta("store_probe_ms").unwrap(), Some(AT), "the probe commits, with its caller's time");
    let tables: i64 =
        s.conn().query_row("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'store_probe'", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 0, "the probe's pages are rolled back");
    let pages: u64 = s.conn().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    drop(s);

    // No room for new pages: as with a full disk.
    let full = Store::open_with(&path, Some(pages)).unwrap();
    let err = full.probe(AT).unwrap_err();
    assert!(
        matches!(&err, StoreError::Db(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull),
        "{err}"
    );
    drop(full);

    // A table gone (as in the e2e tests' damaged database).
    let s = Store::open(&path).unwrap();
    s.conn().execute_batch("ALTER TABLE refunds RENAME TO refunds_damaged").unwrap();
    assert!(s.probe(AT).unwrap_err().to_string().contains("refunds"));
    s.conn().execute_batch("ALTER TABLE refunds_damaged RENAME TO refunds").unwrap();
    s.probe(AT).unwrap();
}

#[test]
fn values_kept_as_text_read_back_as_written_and_unknown_text_is_refused() {
    fn round_trip<T>(conn: &Connection, all: &[T])
    where
        T: rusqlite::types::ToSql + rusqlite::types::FromSql + std::fmt::Display + std::fmt::Debug + PartialEq,
    {
        for value in all {
            let text: String = conn.query_row("SELECT ?1", [value], |r| r.get(0)).unwrap();
            assert_eq!(text, value.to_string());
            let back: T = conn.query_row("SELECT ?1", [&text], |r| r.get(0)).unwrap();
            assert_eq!(&back, value);
        }
    }
    let conn = Connection::open_in_memory().unwrap();
    round_trip(&conn, DeviceKind::ALL);
    round_trip(&conn, RefundStatus::ALL);
    round_trip(&conn, RecordKind::ALL);
    round_trip(&conn, EventKind::ALL);
    round_trip(&conn, SendKind::ALL);
    // Today's text, as earlier releases stored it.
    assert_eq!(DeviceKind::ALL.iter().map(|d| d.as_str()).collect::<Vec<_>>(), ["reader", "zvt", "nexo"]);
    assert_eq!(RefundStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["pending", "succeeded", "failed"]);
    assert_eq!(RecordKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["sale", "reversal", "refund"]);
    assert_eq!(EventKind::parse("gateway_dispute_opened"), Some(EventKind::GatewayDisputeOpened));
    let err = conn.query_row("SELECT 'refunded'", [], |r| r.get::<_, RefundStatus>(0)).unwrap_err();
    assert!(err.to_string().contains("unknown refund status \"refunded\""), "{err}");
}

#[test]
fn same_key_returns_the_existing_payment() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let mut other = sample("k");
    other.id = "pay_other".into();
    match s.insert_or_get_blocking(&other, "test").unwrap() {
        Inserted::Existing(existing) => assert_eq!(existing.id, "pay_k"),
        Inserted::New(p) => panic!("{} stored under a key taken", p.id),
    }
}

#[test]
fn a_key_taken_on_another_lane_returns_that_payment_and_stores_nothing() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let other = PaymentRecord {
        id: "pay_other".into(),
        gateway_key: "gw-other".into(),
        terminal_id: "lane-2".into(),
        amount_minor: 99,
        ..sample("k")
    };
    let Inserted::Existing(existing) = s.insert_or_get_blocking(&other, "test").unwrap() else {
        panic!("stored under a key taken")
    };
    assert_eq!(existing, s.get("pay_k").unwrap().unwrap());
    assert_eq!((existing.terminal_id.as_str(), existing.amount_minor), ("lane-1", 1234));
    assert!(s.get("pay_other").unwrap().is_none());
    assert_eq!(s.history("pay_k").unwrap().len(), 1, "no second audit entry");
}

#[test]
fn an_id_or_gateway_key_taken_under_another_key_fails_the_insert() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    // Only a taken idempotency key answers with the payment under it; any
    // other clash is an error, never a payment taken for the register's.
    let same_id = PaymentRecord { id: "pay_k".into(), ..sample("k2") };
    assert!(matches!(s.insert_or_get_blocking(&same_id, "test"), Err(StoreError::Db(_))));
    let same_gateway_key = PaymentRecord { gateway_key: "gw-k".into(), ..sample("k3") };
    assert!(matches!(s.insert_or_get_blocking(&same_gateway_key, "test"), Err(StoreError::Db(_))));
    assert!(s.get_by_key("k2").unwrap().is_none());
    assert!(s.get_by_key("k3").unwrap().is_none());
}

#[test]
fn card_data_is_deleted_in_the_commit_that_leaves_authorizing() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let mut st = Status::Created;
    for (input, update) in [
        (Input::Start, Update::default()),
        (Input::CardRead, Update { data: Data::Card(CardInfo::default(), vec![1, 2, 3]), ..Default::default() }),
        (Input::Sending, Update::default()),
    ] {
        let t = next(st, &input).unwrap();
        st = s.apply_blocking("pay_k", &t, update, AT).unwrap().0.status;
    }
    assert_eq!(s.encrypted_card("pay_k").unwrap(), Some(vec![1, 2, 3]));
    let t = next(st, &Input::Approved { captured: true }).unwrap();
    assert_eq!(s.apply_blocking("pay_k", &t, Update::default(), AT).unwrap().0.status, Status::Captured);
    assert_eq!(s.encrypted_card("pay_k").unwrap(), None);
    let h = s.history("pay_k").unwrap();
    assert_eq!(h.iter().map(|e| e.to).collect::<Vec<_>>().last(), Some(&Status::Captured));
    assert_eq!(h.len(), 5);

    // Card data that comes with a move to a status that may not keep it
    // is not stored; what the card is stays.
    assert!(is_new(s.insert_or_get_blocking(&sample("j"), "test")));
    let t = next(Status::Created, &Input::Cancel { by: "test".into() }).unwrap();
    let card = CardInfo { masked_pan: "424242******4242".into(), ..Default::default() };
    let update = Update { data: Data::Card(card, vec![1, 2, 3]), ..Default::default() };
    let (rec, _) = s.apply_blocking("pay_j", &t, update, AT).unwrap();
    assert_eq!((rec.status, rec.card.map(|c| c.masked_pan)), (Status::Canceled, Some("424242******4242".into())));
    assert_eq!(s.encrypted_card("pay_j").unwrap(), None);
}

#[test]
fn a_terminal_payment_stores_what_each_transition_brings() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("z"), "test")));
    let card = CardInfo { masked_pan: "424242******4242".into(), ..Default::default() };
    let result = TerminalResult { result_code: 0, receipt_no: Some(42), ..Default::default() };
    let steps = [
        (Input::StartOnTerminal, Data::TerminalStart { receipt_before: 41 }),
        (
            Input::TerminalApproved,
            Data::Terminal(TerminalData { card: Some((card, vec![])), auth_code: Some("A1".into()), result }),
        ),
        (Input::TerminalConfirmed, Data::Booked { result: None, last_receipt: Some(("receipt:lane-1".into(), 42)) }),
        (Input::TerminalReversed { reason: "test".into() }, Data::Reversed),
    ];
    let mut st = Status::Created;
    for (input, data) in steps {
        let t = next(st, &input).unwrap();
        st = s.apply_blocking("pay_z", &t, Update { data, ..Update::default() }, AT).unwrap().0.status;
    }
    assert_eq!(st, Status::Voided);
    let p = s.get("pay_z").unwrap().unwrap();
    assert_eq!((p.auth_code.as_str(), p.card.map(|c| c.masked_pan)), ("A1", Some("424242******4242".into())));
    assert_eq!(s.payment_receipt_before("pay_z").unwrap(), Some(41));
    assert_eq!(s.terminal_result("pay_z").unwrap().unwrap().receipt_no, Some(42));
    assert_eq!(s.meta("receipt:lane-1").unwrap(), Some(42));
    let records: Vec<_> =
        s.pending_records(10).unwrap().into_iter().map(|r| (r.record_key, r.kind, r.amount_minor)).collect();
    assert_eq!(
        records,
        [("gw-z:sale".to_string(), RecordKind::Sale, 1234), ("gw-z:reversal".to_string(), RecordKind::Reversal, 1234)]
    );
}

#[test]
fn a_second_audit_entry_commits_with_its_transition_or_not_at_all() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let t = next(Status::Created, &Input::Start).unwrap();
    let who = || Update { audit: Some("by a person".into()), ..Default::default() };
    s.apply_blocking("pay_k", &t, who(), AT).unwrap();
    // The same transition again is stale: refused, with nothing written.
    assert!(matches!(s.apply_blocking("pay_k", &t, who(), AT), Err(StoreError::Conflict { .. })));
    let h = s.history("pay_k").unwrap();
    let causes: Vec<&str> = h.iter().map(|e| e.cause.as_str()).collect();
    assert_eq!(causes[1..], [t.cause.as_str(), "by a person"]);
    assert_eq!((h[2].from, h[2].to), (Some(Status::Collecting), Status::Collecting));
}

#[tokio::test]
async fn a_long_history_moves_out_of_the_row_and_reads_back_in_order() {
    let (_d, s) = open();
    let s = Arc::new(s);
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    let mut expected = vec![("created", "payment requested by the register (test)".to_string())];
    let mut st = Status::Created;
    let step = |st: &mut Status, input: Input, expected: &mut Vec<(&str, String)>| {
        let t = next(*st, &input).unwrap();
        *st = s.apply_blocking("pay_k", &t, Update::default(), AT).unwrap().0.status;
        expected.push((st.as_str(), t.cause.clone()));
    };
    step(&mut st, Input::Start, &mut expected);
    step(&mut st, Input::CardRead, &mut expected);
    // Causes JSON has to escape, enough to move twice, and one longer
    // than the row may hold.
    for i in 0..60 {
        let long = if i == 30 { "x".repeat(HISTORY_IN_ROW_BYTES as usize) } else { String::new() };
        let cause = format!("note {i}: \"quoted\"\n\tnext line, ünïcode{long}");
        s.audit("pay_k", &cause, AT).await.unwrap();
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
    assert!(in_row >= 1 && in_row_bytes <= HISTORY_IN_ROW_BYTES, "{in_row} entries, {in_row_bytes} bytes in the row");
    assert!(moved >= 40, "moved more than once: {moved}");
    assert_eq!(in_row + moved, expected.len() as i64);
    let want: Vec<String> = (1..=moved).map(|n| n.to_string()).collect();
    assert_eq!(seqs, want.join(","), "moved entries are numbered in order, without gaps");
    assert!(matches!(s.audit("pay_none", "x", AT).await, Err(StoreError::NotFound(_))));

    // Times come back whole, and are kept as offsets from the payment's
    // creation: written out, a time in ms is a 13-digit run, which a
    // card-number scan of the file would report.
    let created = s.get("pay_k").unwrap().unwrap().created_at_ms;
    assert_eq!(h[0].at_ms, created);
    assert!(h.windows(2).all(|w| w[0].at_ms <= w[1].at_ms) && h.last().unwrap().at_ms <= now_ms());
    let text: String = s.conn().query_row("SELECT history FROM payments WHERE id = 'pay_k'", [], |r| r.get(0)).unwrap();
    let longest_run = text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
    assert!(longest_run < 13, "a {longest_run}-digit run in {text}");

    // A control character JSON would write as `\u0001` is replaced, so
    // its digits cannot join the ones after it.
    assert!(is_new(s.insert_or_get(&sample("c"), "test").await));
    s.audit("pay_c", "terminal text \u{1}123456789012 and a \u{0}", AT).await.unwrap();
    let h = s.history("pay_c").unwrap();
    assert_eq!(h[1].cause, "terminal text \u{fffd}123456789012 and a \u{fffd}");
    let text: String = s.conn().query_row("SELECT history FROM payments WHERE id = 'pay_c'", [], |r| r.get(0)).unwrap();
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
        assert!(is_new(s.insert_or_get_blocking(&sample(key), "test")));
        let id = format!("pay_{key}");
        let mut st = Status::Created;
        for input in [Input::Start, Input::CardRead, Input::Sending, Input::Approved { captured }] {
            st = s.apply_blocking(&id, &next(st, &input).unwrap(), Update::default(), AT).unwrap().0.status;
        }
        s.conn().execute("UPDATE payments SET updated_at_ms = ?2 WHERE id = ?1", params![id, authorized_at]).unwrap();
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
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let t = next(Status::Created, &Input::Start).unwrap();
    s.apply_blocking("pay_k", &t, Update::default(), AT).unwrap();
    assert!(matches!(s.apply_blocking("pay_k", &t, Update::default(), AT), Err(StoreError::Conflict { .. })));
}

/// A released migration is never edited: each one's SHA-256 as released
/// (1 to 9 are the strings posd 377f58f carried in store.rs, checked byte for
/// byte when they moved to `sql/`). A database an older posd made runs only
/// the migrations after its version, so an edited one would leave databases
/// that differ by the version that made them.
#[test]
fn released_migrations_keep_their_bytes() {
    use sha2::{Digest, Sha256};
    const RELEASED: [&str; 10] = [
        "becbd24a9c7ae67867475d096db29efb2ab4cb341fd6f652b1aece9dd9692e9a",
        "de47bb11f3ec767c09b25e3a9b7dec6a8f81a7f25ddcfe7f627ecccd2ef48b30",
        "c088648708a453393c41a7b48c87b968f24efffef72ad7f9c98eac270ccf5c13",
        "ee068a18d065a23b0f2cb8173c9d28f0c39112640b7946c351b33fad3c07cb57",
        "781d80984ea4e9ef624b0b4e2883fd0dd5e98c07176cb6b27f3c790c34a1f47b",
        "aabdb4bc456c0076a557b6ff42b3297de6370ee2ae1ce8cd8ef1fb352825c087",
        "6c528a1c5847b848a56daca74b04953e44f33549e2641e1627d1fc567ef34c13",
        "a9186e5295f062f245f29cd4b9555823d35adeaa63fc7020275791e0310da4fa",
        "69889df23340431e00cd2511e78be4dc3154aa3e06c077d3e7c853bee93fbccd",
        "00d655a27cd9bc9fc92bb092279b739e19aa9d6bbae742270f1e830806f88bba",
    ];
    assert!(MIGRATIONS.len() >= RELEASED.len(), "a released migration was removed");
    for (i, (sql, released)) in MIGRATIONS.iter().zip(RELEASED).enumerate() {
        let digest: String = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, released, "migration {} was edited; add a new one instead", i + 1);
    }
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
    assert!(!s.note_send(SendKind::Capture, "gk", "pay_r", AT).await.unwrap());
    assert!(s.note_send(SendKind::Capture, "gk", "pay_r", AT).await.unwrap());
    assert!(!s.note_send(SendKind::Void, "gk", "pay_r", AT).await.unwrap(), "kinds are apart");
}

#[tokio::test]
async fn migration_10_moves_the_receipt_numbers_from_meta_into_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.db");
    {
        // Version 9: a ZVT payment and its refund with their receipt numbers
        // in `meta`, one payment that never reached a terminal, and another
        // lane's `meta` value that stays.
        let conn = Connection::open(&path).unwrap();
        for m in &MIGRATIONS[..9] {
            conn.execute_batch(m).unwrap();
        }
        conn.execute_batch("PRAGMA user_version = 9").unwrap();
        for id in ["pay_z", "pay_n"] {
            conn.execute(
                "INSERT INTO payments (id, idempotency_key, order_reference, terminal_id, amount_minor, currency, \
                 manual_capture, status, gateway_key, demo, created_at_ms, updated_at_ms, offline, captured_minor) \
                 VALUES (?1, ?1, '', 'lane-1', 900, 'EUR', 0, 'captured', ?1, 0, 1, 1, 0, 900)",
                [id],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO refunds (id, idempotency_key, payment_id, amount_minor, currency, refund_key, status, \
             reason, created_at_ms, updated_at_ms) VALUES ('ref_z', 'rk', 'pay_z', 100, 'EUR', 'rk', 'pending', '', 1, 1)",
            [],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('zvt_before:pay_z', 41), ('zvt_before:ref_z', -1), \
             ('zvt_last_receipt:lane-1', 42)",
        )
        .unwrap();
    }
    let s = Arc::new(Store::open(&path).unwrap());
    assert_eq!(s.payment_receipt_before("pay_z").unwrap(), Some(41));
    assert_eq!(s.payment_receipt_before("pay_n").unwrap(), None, "never on a terminal");
    assert_eq!(s.refund_receipt_before("ref_z").unwrap(), Some(-1), "sent, with no receipt known then");
    assert_eq!(s.meta("zvt_before:pay_z").unwrap(), None, "gone from meta");
    assert_eq!(s.meta("zvt_before:ref_z").unwrap(), None);
    assert_eq!(s.meta("zvt_last_receipt:lane-1").unwrap(), Some(42), "other values stay");
    // From now on they are written with their rows.
    s.set_refund_receipt_before("ref_z", 43).await.unwrap();
    assert_eq!(s.refund_receipt_before("ref_z").unwrap(), Some(43));
    let start = next(Status::Created, &Input::StartOnTerminal).unwrap();
    assert!(is_new(s.insert_or_get(&sample("t"), "test").await));
    let update = Update { data: Data::TerminalStart { receipt_before: 7 }, ..Update::default() };
    s.apply("pay_t", &start, update, AT).await.unwrap();
    assert_eq!(s.payment_receipt_before("pay_t").unwrap(), Some(7));
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
    s.audit("pay_q", "four", AT).await.unwrap();
    assert_eq!(causes("pay_q"), ["one", "two", "three", "four"], "new entries come after the old ones");
    // Since migration 8 new entries are in the row; once they pass its
    // limit they move behind the old ones, numbered after them.
    let long: Vec<String> = (0..3).map(|i| format!("long {i} {}", "y".repeat(900))).collect();
    for cause in &long {
        s.audit("pay_q", cause, AT).await.unwrap();
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
    let sequences: i64 =
        conn.query_row("SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'payment_events'", [], |r| r.get(0)).unwrap();
    assert_eq!(sequences, 0, "no sequence row is written by state changes any more");
    drop(conn);

    // The next payment entering the outbox queues behind the one there.
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    let mut st = Status::Created;
    for input in [Input::Start, Input::CardRead, Input::ApprovedOffline] {
        let t = next(st, &input).unwrap();
        st = s.apply_blocking("pay_k", &t, Update::default(), AT).unwrap().0.status;
    }
    assert_eq!(st, Status::OfflineApproved);
    let queued: Vec<String> = s.outbox_batch(10).unwrap().into_iter().map(|(p, _)| p.id).collect();
    assert_eq!(queued, ["pay_q", "pay_k"]);
    let seq: i64 = s.conn().query_row("SELECT queue_seq FROM payments WHERE id = 'pay_k'", [], |r| r.get(0)).unwrap();
    assert_eq!(seq, 42);
    let plan: String = s.conn().query_row(&format!("EXPLAIN QUERY PLAN {NEXT_QUEUE_SEQ}"), [], |r| r.get(3)).unwrap();
    assert!(plan.contains("payments_queue"), "the next position is read from the queue's index: {plan}");
}

#[test]
fn writes_queued_during_a_commit_share_the_next_one() {
    let (_d, s) = open();
    assert!(is_new(s.insert_or_get_blocking(&sample("k0"), "test")));
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
        let refused = scope.spawn(|| s.apply_blocking("pay_k0", &stale, Update::default(), AT));
        wait_for(&|g| g.queue.len() == 7);
        drop(held);
        assert!(is_new(first.join().unwrap()));
        for insert in inserts {
            assert!(is_new(insert.join().unwrap()));
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
    // The disk is busy: the first write commits at once, its worker handed
    // off (`block_in_place`), and waits.
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
    assert!(is_new(first.await.unwrap()));
    for w in rest {
        assert!(is_new(w.await.unwrap()));
    }
    assert_eq!(s.write_counts(), (8, 2), "the seven writes queued behind the first shared one commit");
    let t = next(Status::Created, &Input::Start).unwrap();
    let (rec, _) = s.apply("pay_k3", &t, Update::default(), AT).await.unwrap();
    assert_eq!(rec.status, t.to);
    assert_eq!(s.get("pay_k3").unwrap().unwrap().status, t.to);
    assert_eq!(s.write_counts(), (9, 3));
}

#[tokio::test]
async fn a_deferred_commit_is_counted_apart_and_never_lowers_a_synced_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    let synchronous = |s: &Store| -> i64 { s.conn().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    assert_eq!(synchronous(&s), 2, "FULL");
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    let start = (next(Status::Created, &Input::Start).unwrap(), Update::default());
    let applied = s.apply_all("pay_k", Durability::Deferred, vec![start], AT).await.unwrap();
    assert_eq!(applied[0].0.status, Status::Collecting);
    assert_eq!((s.write_counts(), s.unsynced_commits()), ((2, 1), 1), "the deferred commit is not a synced one");
    assert_eq!(synchronous(&s), 1, "the deferred commit ran at NORMAL");
    // Two transitions in one synced commit.
    let card = (next(Status::Collecting, &Input::CardRead).unwrap(), Update::default());
    let sending = (next(Status::CardRead, &Input::Sending).unwrap(), Update::default());
    let applied = s.apply_all("pay_k", Durability::Synced, vec![card, sending], AT).await.unwrap();
    let statuses: Vec<Status> = applied.iter().map(|(r, _)| r.status).collect();
    assert_eq!(statuses, [Status::CardRead, Status::Authorizing]);
    assert_eq!((s.write_counts(), s.unsynced_commits()), ((3, 2), 1));
    assert_eq!(synchronous(&s), 2, "the synced commit ran at FULL");
    assert_eq!(s.payment_writes(), 4, "the insert and three transitions");
    let history: Vec<_> = s.history("pay_k").unwrap().into_iter().map(|h| h.to).collect();
    assert_eq!(history, [Status::Created, Status::Collecting, Status::CardRead, Status::Authorizing]);
}

#[tokio::test]
async fn transitions_applied_together_are_kept_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    let start = (next(Status::Created, &Input::Start).unwrap(), Update::default());
    // The second starts from a status the first did not reach: refused.
    let stale = (next(Status::CardRead, &Input::Sending).unwrap(), Update::default());
    let refused = s.apply_all("pay_k", Durability::Synced, vec![start, stale], AT).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "{refused:?}");
    assert_eq!(s.get("pay_k").unwrap().unwrap().status, Status::Created, "the first is rolled back too");
    assert_eq!(s.history("pay_k").unwrap().len(), 1);
}

#[test]
fn a_leader_dropped_before_committing_abandons_the_queue() {
    let (_d, s) = open();
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    assert!(s.enqueue(
        Durability::Synced,
        insert_or_get_in(&sample("k1"), "test"),
        Box::new(move |r| drop(reply.send(r)))
    ));
    // As when the runtime stops before the blocking task that was to commit runs.
    drop(Leader::new(&s));
    assert!(answer.recv().is_err(), "the caller hears that its write was dropped");
    assert!(is_new(s.insert_or_get_blocking(&sample("k2"), "test")), "the next write leads");
    assert!(s.get("pay_k1").unwrap().is_none());
    assert_eq!(s.write_counts(), (1, 1));
}

#[tokio::test]
async fn a_batch_inserts_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    s.insert_batch(&[sample("k"), sample("k2")], "test").await.unwrap();
    assert_eq!(s.get("pay_k2").unwrap().unwrap().status, Status::Created);
    assert_eq!(s.history("pay_k").unwrap().len(), 1, "with its first audit entry");
    assert!(s.insert_batch(&[sample("k3"), sample("k")], "test").await.is_err(), "key k is taken");
    assert!(s.get("pay_k3").unwrap().is_none(), "nothing of a failed batch is kept");
    assert_eq!(s.write_counts(), (1, 1), "through the group commit; the failed batch is not counted");
}

#[tokio::test]
async fn a_batch_of_transitions_skips_the_stale_ones_and_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    for key in ["a", "b", "c"] {
        assert!(is_new(s.insert_or_get(&sample(key), "test").await));
    }
    let start = next(Status::Created, &Input::Start).unwrap();
    let stale = next(Status::Collecting, &Input::CardRead).unwrap();
    let event = NewEvent {
        kind: EventKind::Requeued,
        terminal_id: "lane-1".into(),
        payment_id: "pay_c".into(),
        message: "started".into(),
    };
    let items = vec![
        ("pay_a".to_string(), start.clone(), Update::default()),
        ("pay_b".to_string(), stale, Update { audit: Some("never kept".into()), ..Default::default() }),
        ("pay_missing".to_string(), start.clone(), Update::default()),
        ("pay_c".to_string(), start, Update { event: Some(event), ..Default::default() }),
    ];
    let before = s.write_counts();
    let results = s.apply_batch(items, AT).await.unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap().0.status, Status::Collecting);
    assert!(matches!(results[1], Err(StoreError::Conflict { actual: Status::Created, .. })), "{:?}", results[1]);
    assert!(matches!(results[2], Err(StoreError::NotFound(_))), "{:?}", results[2]);
    let (rec, event) = results[3].as_ref().unwrap();
    assert_eq!(rec.status, Status::Collecting);
    assert_eq!(event.as_ref().unwrap().message, "started", "with the event, in the same commit");
    assert_eq!(s.get("pay_a").unwrap().unwrap().status, Status::Collecting);
    assert_eq!(s.history("pay_a").unwrap().len(), 2);
    assert_eq!(s.get("pay_b").unwrap().unwrap().status, Status::Created, "the stale one left nothing");
    assert_eq!(s.history("pay_b").unwrap().len(), 1);
    assert_eq!(s.get("pay_c").unwrap().unwrap().status, Status::Collecting);
    assert_eq!(s.events_after(0, 10).unwrap().len(), 1);
    assert_eq!(s.write_counts(), (before.0 + 1, before.1 + 1), "one write in one synced commit");
    assert_eq!(s.payment_writes(), 3, "the batch's transitions are not counted as payment writes");
    assert!(s.apply_batch(Vec::new(), AT).await.unwrap().is_empty());
    assert_eq!(s.write_counts(), (before.0 + 1, before.1 + 1), "an empty batch commits nothing");
}

#[tokio::test]
async fn a_meta_value_is_a_write_of_the_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    assert_eq!(s.meta("k").unwrap(), None);
    s.set_meta("k", 7).await.unwrap();
    assert_eq!(s.meta("k").unwrap(), Some(7));
    assert_eq!(s.write_counts(), (1, 1), "a write, in a synced commit");
    s.set_meta("k", 8).await.unwrap();
    assert_eq!(s.meta("k").unwrap(), Some(8));
    assert_eq!((s.write_counts(), s.unsynced_commits()), ((2, 2), 0));
}

#[test]
fn reads_go_through_a_reader_that_sees_commits_and_refuses_writes() {
    let (_d, s) = open();
    assert!(s.get("pay_k").unwrap().is_none());
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
    assert_eq!(s.get("pay_k").unwrap().unwrap().status, Status::Created, "a read after a commit sees it");
    let t = next(Status::Created, &Input::Start).unwrap();
    s.apply_blocking("pay_k", &t, Update::default(), AT).unwrap();
    assert_eq!(s.get("pay_k").unwrap().unwrap().status, Status::Collecting);
    assert_eq!(s.history("pay_k").unwrap().len(), 2);
    {
        // A write in progress on the writing connection (not committed yet):
        // reads neither wait for it nor see it.
        let writer = s.conn();
        writer.execute_batch("BEGIN IMMEDIATE; UPDATE payments SET amount_minor = 1 WHERE id = 'pay_k'").unwrap();
        assert_eq!(s.get("pay_k").unwrap().unwrap().amount_minor, 1234);
        assert_eq!(s.list(&ListFilter { limit: 10, ..Default::default() }).unwrap().len(), 1);
        writer.execute_batch("ROLLBACK").unwrap();
    }
    // The reader is query_only: a write sent to it by mistake fails.
    let err = s.reader().execute("UPDATE payments SET amount_minor = 1 WHERE id = 'pay_k'", []).unwrap_err();
    assert!(matches!(&err, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly), "{err}");
    assert!(s.reader().execute_batch("INSERT INTO meta (key, value) VALUES ('x', 1)").is_err());
    assert_eq!(s.get("pay_k").unwrap().unwrap().amount_minor, 1234);
    assert_eq!(s.meta("x").unwrap(), None);
}

#[test]
fn migrations_are_idempotent_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.db");
    assert!(is_new(Store::open(&path).unwrap().insert_or_get_blocking(&sample("k"), "test")));
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
    assert!(is_new(s.insert_or_get_blocking(&sample("k"), "test")));
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
    let restored = Store::open(&other.path().join("posd.db")).unwrap();
    assert!(is_new(restored.insert_or_get_blocking(&sample("b"), "test")));
    drop(restored);
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
        assert!(is_new(s.insert_or_get_blocking(&p, "test")));
    }
    let page = s.list(&ListFilter { limit: 2, ..Default::default() }).unwrap();
    assert_eq!(page.iter().map(|p| p.idempotency_key.as_str()).collect::<Vec<_>>(), ["k4", "k3"]);
    let last = page.last().unwrap();
    let next_page = s
        .list(&ListFilter { limit: 2, after: Some((last.created_at_ms, last.id.clone())), ..Default::default() })
        .unwrap();
    assert_eq!(next_page.iter().map(|p| p.idempotency_key.as_str()).collect::<Vec<_>>(), ["k2", "k1"]);
    let lane1 = s.list(&ListFilter { limit: 10, terminal_id: Some("lane-1".into()), ..Default::default() }).unwrap();
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

#[tokio::test]
async fn an_event_kind_this_posd_does_not_know_reads_back_as_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    let event = |kind| NewEvent { kind, terminal_id: "lane-1".into(), payment_id: String::new(), message: "m".into() };
    s.append_event(&event(EventKind::Offline), AT).await.unwrap();
    // A newer posd wrote a kind this one does not know (before a downgrade).
    s.conn()
        .execute(
            "INSERT INTO events (at_ms, kind, terminal_id, payment_id, message) \
             VALUES (?1, 'from_a_newer_posd', 'lane-1', '', 'newer')",
            [AT],
        )
        .unwrap();
    s.append_event(&event(EventKind::Online), AT).await.unwrap();
    let events = s.events_after(0, 10).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["offline", "from_a_newer_posd", "online"], "the stream goes on past it");
    assert_eq!(events[1].kind, StoredEventKind::Other("from_a_newer_posd".into()));
    assert_eq!(events[1].message, "newer");
    assert_eq!(events[2].kind, StoredEventKind::Known(EventKind::Online));
    assert_eq!(crate::convert::event(&events[1]).kind, "from_a_newer_posd", "the register gets the text");
    assert_eq!(s.events_after(events[0].cursor, 10).unwrap().len(), 2, "a cursor before it reads it too");
}

#[tokio::test]
async fn a_refund_settles_once_succeeded_without_a_failure_and_failed_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    let mut st = Status::Created;
    for input in [Input::Start, Input::CardRead, Input::Sending, Input::Approved { captured: true }] {
        let t = next(st, &input).unwrap();
        st = s.apply("pay_k", &t, Update::default(), AT).await.unwrap().0.status;
    }
    assert_eq!(st, Status::Captured);
    let refund = |id: &str| RefundRecord {
        id: id.into(),
        idempotency_key: format!("idem-{id}"),
        payment_id: "pay_k".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        refund_key: format!("rk-{id}"),
        status: RefundStatus::Pending,
        reason: String::new(),
        failure_code: String::new(),
        failure_message: String::new(),
        created_at_ms: AT,
        updated_at_ms: AT,
    };
    for id in ["ref_ok", "ref_no"] {
        assert!(matches!(s.reserve_refund(&refund(id)).await.unwrap(), Reservation::Created(_)));
    }
    let event = |message: &str| NewEvent {
        kind: EventKind::RefundResolved,
        terminal_id: "lane-1".into(),
        payment_id: "pay_k".into(),
        message: message.into(),
    };
    let (ok, ev) = s.finish_refund("ref_ok", None, &event("booked"), true, Some("by ops"), AT + 1).await.unwrap();
    assert_eq!((ok.status, ok.failure_code.as_str(), ok.updated_at_ms), (RefundStatus::Succeeded, "", AT + 1));
    assert_eq!(ev.unwrap().message, "booked");
    let failure = Some(("declined", "not booked"));
    let (no, ev) = s.finish_refund("ref_no", failure, &event("not booked"), true, None, AT + 2).await.unwrap();
    assert_eq!(
        (no.status, no.failure_code.as_str(), no.failure_message.as_str()),
        (RefundStatus::Failed, "declined", "not booked")
    );
    assert!(ev.is_some());
    // Only the succeeded refund is queued for the gateway's ledger, and only
    // the audited settlement is in the payment's history.
    let records: Vec<(String, RecordKind)> =
        s.pending_records(10).unwrap().into_iter().map(|r| (r.record_key, r.kind)).collect();
    assert_eq!(records, [("rk-ref_ok".to_string(), RecordKind::Refund)]);
    let history = s.history("pay_k").unwrap();
    assert_eq!(history.iter().filter(|h| h.cause == "by ops").count(), 1);
    // Settled already: returned as it stands, with no event, record or audit entry.
    let late = Some(("late", "x"));
    let (again, ev) = s.finish_refund("ref_ok", late, &event("again"), true, Some("again"), AT + 3).await.unwrap();
    assert_eq!((again, ev), (ok, None));
    assert_eq!(s.events_after(0, 10).unwrap().len(), 2);
    assert_eq!(s.history("pay_k").unwrap().len(), history.len());
}

#[tokio::test]
async fn payment_writes_count_the_payments_and_transitions_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    assert!(!is_new(s.insert_or_get(&sample("k"), "test").await));
    assert_eq!(s.payment_writes(), 1, "a taken key stores nothing");
    s.insert_batch(&[sample("a"), sample("b")], "test").await.unwrap();
    assert_eq!(s.payment_writes(), 3, "each payment of a bulk load");
    let stale = next(Status::Collecting, &Input::CardRead).unwrap();
    assert!(s.apply("pay_k", &stale, Update::default(), AT).await.is_err());
    assert_eq!(s.payment_writes(), 3, "a refused transition stores nothing");
    let start = next(Status::Created, &Input::Start).unwrap();
    s.apply("pay_k", &start, Update::default(), AT).await.unwrap();
    assert_eq!(s.payment_writes(), 4);
}

#[tokio::test]
async fn a_record_attempt_counts_and_keeps_what_its_outcome_says() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    assert!(is_new(s.insert_or_get(&sample("k"), "test").await));
    for key in ["r-sent", "r-failed", "r-refused"] {
        s.conn()
            .execute(
                "INSERT INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
                 VALUES (?1, 'pay_k', 'sale', 1234, 'EUR', ?2)",
                params![key, AT],
            )
            .unwrap();
    }
    let seq = |key: &str| -> i64 {
        s.conn().query_row("SELECT seq FROM gateway_records WHERE record_key = ?1", [key], |r| r.get(0)).unwrap()
    };
    let (sent, failed, refused) = (seq("r-sent"), seq("r-failed"), seq("r-refused"));
    s.record_attempt(sent, "unreachable", false, AT + 1).await.unwrap();
    s.record_attempt(sent, "", false, AT + 2).await.unwrap();
    s.record_attempt(failed, "unreachable", false, AT + 3).await.unwrap();
    s.record_attempt(refused, "unknown terminal", true, AT + 4).await.unwrap();
    let row = |seq: i64| -> (Option<i64>, i64, String, bool) {
        s.conn()
            .query_row(
                "SELECT sent_at_ms, attempts, last_error, refused FROM gateway_records WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
    };
    assert_eq!(row(sent), (Some(AT + 2), 2, "unreachable".into(), false), "acknowledged; the last error kept");
    assert_eq!(row(failed), (None, 1, "unreachable".into(), false));
    assert_eq!(row(refused), (None, 1, "unknown terminal".into(), true));
    let pending: Vec<i64> = s.pending_records(10).unwrap().into_iter().map(|r| r.seq).collect();
    assert_eq!(pending, [failed], "neither the acknowledged nor the refused one is sent again");
}

#[tokio::test]
async fn a_batch_of_transitions_that_fails_otherwise_than_by_a_refusal_keeps_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    for key in ["a", "b"] {
        assert!(is_new(s.insert_or_get(&sample(key), "test").await));
    }
    // pay_b's reversal record is there already: queuing it again fails.
    s.conn()
        .execute(
            "INSERT INTO gateway_records (record_key, payment_id, kind, amount_minor, currency, created_at_ms) \
             VALUES ('gw-b:reversal', 'pay_b', 'reversal', 1234, 'EUR', ?1)",
            [AT],
        )
        .unwrap();
    let start = next(Status::Created, &Input::Start).unwrap();
    let event = NewEvent {
        kind: EventKind::Requeued,
        terminal_id: "lane-1".into(),
        payment_id: "pay_a".into(),
        message: "started".into(),
    };
    let items = vec![
        ("pay_a".to_string(), start.clone(), Update { event: Some(event), ..Default::default() }),
        ("pay_b".to_string(), start, Update { data: Data::Reversed, ..Default::default() }),
    ];
    let failed = s.apply_batch(items, AT).await;
    assert!(matches!(failed, Err(StoreError::Db(_))), "{failed:?}");
    assert_eq!(s.get("pay_a").unwrap().unwrap().status, Status::Created, "the first transition is rolled back too");
    assert_eq!(s.history("pay_a").unwrap().len(), 1);
    assert_eq!(s.get("pay_b").unwrap().unwrap().status, Status::Created);
    assert!(s.events_after(0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn service_ids_are_reserved_in_the_commit_that_uses_them_and_never_repeat_per_sale_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.db");
    {
        let s = Arc::new(Store::open(&path).unwrap());
        let reserved = [
            s.reserve_service_id("POSD-lane-1").await.unwrap(),
            s.reserve_service_id("POSD-lane-1").await.unwrap(),
            s.reserve_service_id("POSD-lane-2").await.unwrap(),
        ];
        let texts: Vec<&str> = reserved.iter().map(|id| id.as_str()).collect();
        assert_eq!(texts, ["0000000001", "0000000002", "0000000001"], "one counter per SaleID");

        // A payment started on a nexo terminal keeps the next one, in the same commit.
        let nexo = PaymentRecord { device: DeviceKind::Nexo, ..sample("n") };
        assert!(is_new(s.insert_or_get(&nexo, "test").await));
        assert_eq!(s.nexo_service("pay_n").unwrap(), None, "not sent anywhere yet");
        let t = next(Status::Created, &Input::StartOnTerminal).unwrap();
        let start =
            Update { data: Data::NexoStart { sale_id: "POSD-lane-1".into(), service_id: None }, ..Update::default() };
        let (rec, _) = s.apply("pay_n", &t, start, AT).await.unwrap();
        assert!(rec.on_terminal() && rec.device == DeviceKind::Nexo);
        let (sale_id, service_id) = s.nexo_service("pay_n").unwrap().unwrap();
        assert_eq!((sale_id.as_str(), service_id.as_str()), ("POSD-lane-1", "0000000003"));

        // A refused transition reserves nothing.
        let again =
            Update { data: Data::NexoStart { sale_id: "POSD-lane-1".into(), service_id: None }, ..Update::default() };
        assert!(matches!(s.apply("pay_n", &t, again, AT).await, Err(StoreError::Conflict { .. })));
    }
    // After a restart the counter goes on.
    let s = Arc::new(Store::open(&path).unwrap());
    assert_eq!(s.reserve_service_id("POSD-lane-1").await.unwrap().as_str(), "0000000004");
    assert_eq!(s.get("pay_n").unwrap().unwrap().device, DeviceKind::Nexo);
}

#[test]
fn a_nexo_terminal_s_transaction_id_is_kept_with_its_result() {
    let (_d, s) = open();
    let nexo = PaymentRecord { device: DeviceKind::Nexo, ..sample("x") };
    assert!(is_new(s.insert_or_get_blocking(&nexo, "test")));
    let result = TerminalResult {
        poi_transaction_id: "BV0q001.8816178952380553".into(),
        poi_time_stamp: "2026-01-01T10:00:05.000Z".into(),
        ..TerminalResult::default()
    };
    let mut st = Status::Created;
    for (input, data) in [
        (Input::StartOnTerminal, Data::NexoStart { sale_id: "POSD-lane-1".into(), service_id: None }),
        (
            Input::TerminalApproved,
            Data::Terminal(TerminalData { card: None, auth_code: Some("123456".into()), result }),
        ),
    ] {
        let t = next(st, &input).unwrap();
        st = s.apply_blocking("pay_x", &t, Update { data, ..Update::default() }, AT).unwrap().0.status;
    }
    let kept = s.terminal_result("pay_x").unwrap().unwrap();
    assert_eq!(kept.poi_transaction_id, "BV0q001.8816178952380553");
    // Kept base32-encoded: no run of digits a card-number scan of the file
    // could take for a PAN (the PSP reference in it may pass the Luhn check).
    let stored: String = s
        .reader()
        .query_row("SELECT poi_transaction_id FROM terminal_results WHERE payment_id = 'pay_x'", [], |r| r.get(0))
        .unwrap();
    assert!(!stored.as_bytes().windows(13).any(|w| w.iter().all(u8::is_ascii_digit)), "{stored}");
    assert_eq!(kept.poi_time_stamp, "2026-01-01T10:00:05.000Z");
    assert_eq!(s.get("pay_x").unwrap().unwrap().auth_code, "123456");
    // A ZVT result has none.
    assert!(is_new(s.insert_or_get_blocking(&sample("z"), "test")));
    let t = next(Status::Created, &Input::StartOnTerminal).unwrap();
    s.apply_blocking("pay_z", &t, Update::default(), AT).unwrap();
    let t = next(Status::Collecting, &Input::TerminalApproved).unwrap();
    let zvt = TerminalData { card: None, auth_code: None, result: TerminalResult::default() };
    s.apply_blocking("pay_z", &t, Update { data: Data::Terminal(zvt), ..Update::default() }, AT).unwrap();
    assert_eq!(s.terminal_result("pay_z").unwrap().unwrap().poi_transaction_id, "");
}

/// The reads the background loops repeat (the forwarder's batch, the record
/// forwarder, the event stream, the capture sweep, listings) run from the
/// statement cache: no statement of the reading connection is re-prepared
/// when it runs again after a commit.
#[tokio::test]
async fn repeated_reads_are_not_re_prepared() {
    let (_dir, s) = open();
    let s = Arc::new(s);
    for round in 0..3 {
        s.set_meta("k", round).await.unwrap();
        s.outbox_batch(10).unwrap();
        s.pending_records(10).unwrap();
        s.events_after(0, 10).unwrap();
        s.authorized_before(AT, 10).unwrap();
        s.list(&ListFilter { limit: 10, ..Default::default() }).unwrap();
    }
    let reader = s.reader();
    // SAFETY: the handle is the locked reader's; statements are only
    // inspected, while the lock is held.
    let (statements, re_prepared) = unsafe {
        let db = reader.handle();
        let (mut statements, mut re_prepared) = (0, 0);
        let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            statements += 1;
            re_prepared += rusqlite::ffi::sqlite3_stmt_status(stmt, rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
            stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
        }
        (statements, re_prepared)
    };
    assert!(statements >= 5, "the five reads are cached ({statements} statements)");
    assert_eq!(re_prepared, 0, "statements re-prepared");
}

/// With the simulator's commit time (`set_commit_yields`), a write that
/// leads a group commit and is then held unpolled (a future beside others
/// in a `select!`, as a nexo payment's AbortRequest reserving its
/// ServiceID was) or dropped must not hold up the writes queued behind it:
/// the commit waits in a task of its own. Before, every later write of
/// posd waited forever (simulator seed 205 when found).
#[tokio::test(start_paused = true)]
async fn a_commit_led_by_a_caller_held_unpolled_still_happens() {
    use std::future::Future;
    let (_dir, store) = open();
    let store = Arc::new(store);
    store.set_commit_yields(3);
    // The leader: polled once (it queues its write and takes the duty),
    // then neither polled nor dropped.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut held = Box::pin(store.set_meta("held", 1));
    assert!(held.as_mut().poll(&mut cx).is_pending(), "the leader waits for its commit");
    let behind = tokio::time::timeout(std::time::Duration::from_secs(5), store.set_meta("behind", 2));
    behind.await.expect("the write queued behind an unpolled leader is committed").unwrap();
    assert_eq!(store.meta("behind").unwrap(), Some(2));
    assert_eq!(store.meta("held").unwrap(), Some(1), "the held caller's write is committed too");
    // And a leader dropped during the commit's wait.
    let mut dropped = Box::pin(store.set_meta("dropped", 3));
    assert!(dropped.as_mut().poll(&mut cx).is_pending());
    drop(dropped);
    store.set_meta("after", 4).await.unwrap();
    assert_eq!((store.meta("dropped").unwrap(), store.meta("after").unwrap()), (Some(3), Some(4)));
}
