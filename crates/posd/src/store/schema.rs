//! The database's schema: its migrations, in order, and the tables the store
//! uses.
//!
//! Each migration's SQL is a file in `sql/`, numbered by the version it
//! brings the database to (`PRAGMA user_version`). A released migration is
//! never edited, renumbered or removed: a database an older posd made runs
//! only the migrations after its version. A change to the schema is a new
//! file at the end of [`MIGRATIONS`].

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// The migrations, oldest first: the one at index `i` brings the database to
/// version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("sql/0001_payments.sql"),
    include_str!("sql/0002_offline_outbox.sql"),
    include_str!("sql/0003_gateway_events.sql"),
    include_str!("sql/0004_captures_and_refunds.sql"),
    include_str!("sql/0005_payment_terminals.sql"),
    include_str!("sql/0006_drop_payments_by_status.sql"),
    include_str!("sql/0007_audit_log_by_payment.sql"),
    include_str!("sql/0008_history_in_row.sql"),
    include_str!("sql/0009_gateway_sends.sql"),
    include_str!("sql/0010_zvt_receipt_before.sql"),
    include_str!("sql/0011_nexo_terminals.sql"),
    include_str!("sql/0012_nexo_reversals.sql"),
];

/// Every table the store reads or writes.
pub(super) const TABLES: &[&str] = &[
    "payments",
    "payment_events",
    "events",
    "meta",
    "gateway_events",
    "refunds",
    "terminal_results",
    "gateway_records",
    "gateway_sends",
    "batch_closes",
    "nexo_service_ids",
    "nexo_reversals",
];

/// Runs the migrations the database at `path` has not had, each in a
/// transaction of its own that also sets its version. A database a newer
/// posd wrote is refused.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        // An older posd would write in the old places and scramble what
        // the newer one keeps (such as the audit log's order).
        return Err(StoreError::Unusable(format!(
            "{} is at schema version {version}, newer than this posd's {}; run the posd that wrote it \
             (or newer), or restore a backup taken with this version",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}
