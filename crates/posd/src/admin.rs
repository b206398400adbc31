//! Maintenance commands that run beside a live posd: online backup, CSV
//! export, and the queue check the package's removal script uses.

use std::path::{Path, PathBuf};

use crate::report::ReportSettings;
use crate::store::{ListFilter, RefundStatus, Store};

/// The state directory and report settings, from a config file or the defaults.
pub fn locate(config: Option<&Path>, state_dir: Option<&Path>) -> anyhow::Result<(PathBuf, ReportSettings)> {
    let cfg = config.map(crate::config::Config::load).transpose()?;
    let dir = state_dir
        .map(Path::to_path_buf)
        .or_else(|| cfg.as_ref().map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/posd"));
    let report = cfg.map(|c| c.report).unwrap_or_default();
    Ok((dir, ReportSettings::new(&report.time_zone, &report.cutover)?))
}

fn open(dir: &Path) -> anyhow::Result<Store> {
    let db = dir.join("posd.db");
    anyhow::ensure!(db.exists(), "no posd database at {}", db.display());
    // Opening an emptied database would give it a new, empty schema, and the
    // daemon would then take it for a new install.
    crate::store::check_database_kept(dir)?;
    Ok(Store::open(&db)?)
}

/// Copies the live database to `to` (SQLite online backup) and checks the copy.
pub fn backup(dir: &Path, to: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(!to.exists(), "{} exists; not overwriting it", to.display());
    let src = rusqlite::Connection::open_with_flags(dir.join("posd.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.join("posd.db").display()))?;
    let mut dst = rusqlite::Connection::open(to).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", to.display()))?;
    rusqlite::backup::Backup::new(&src, &mut dst)?.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
    let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    anyhow::ensure!(check == "ok", "the backup failed its integrity check: {check}");
    let payments: i64 = dst.query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))?;
    Ok(format!("backup of {payments} payments written to {}", to.display()))
}

/// The header line of [`export`].
const EXPORT_HEADER: [&str; 14] = [
    "payment_id",
    "created_at",
    "business_day",
    "terminal_id",
    "amount_minor",
    "currency",
    "status",
    "approved",
    "offline",
    "brand",
    "masked_pan",
    "auth_code",
    "captured_minor",
    "refunded_minor",
];

/// Payments created on the business days `from`..=`to`, as CSV (amounts in minor units), written by the `csv`
/// crate: a field with a comma, a quote or a line break is quoted as RFC 4180 has it, any other field is written as it
/// is; each record ends in `\n`.
pub fn export(dir: &Path, report: &ReportSettings, from: &str, to: &str) -> anyhow::Result<String> {
    let parse =
        |d: &str| d.parse::<jiff::civil::Date>().map_err(|_| anyhow::anyhow!("{d:?}: write dates as YYYY-MM-DD"));
    let (first, last) = (parse(from)?, parse(to)?);
    anyhow::ensure!(first <= last, "--from {from} is after --to {to}");
    let start = report.bounds(first).map_err(anyhow::Error::msg)?.0;
    let end = report.bounds(last).map_err(anyhow::Error::msg)?.1;
    let store = open(dir)?;
    let mut rows = store.list(&ListFilter {
        created_after_ms: Some(start),
        created_before_ms: Some(end),
        limit: usize::MAX >> 1,
        oldest_first: true,
        ..Default::default()
    })?;
    rows.sort_by_key(|p| p.created_at_ms);
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(EXPORT_HEADER)?;
    for p in rows {
        let refunded: i64 = store
            .refunds_of(&p.id)?
            .iter()
            .filter(|r| r.status == RefundStatus::Succeeded)
            .map(|r| r.amount_minor)
            .sum();
        let (brand, masked) = p.card.as_ref().map(|c| (c.brand.clone(), c.masked_pan.clone())).unwrap_or_default();
        let at = jiff::Timestamp::from_millisecond(p.created_at_ms).map(|t| t.to_string()).unwrap_or_default();
        let record = [
            p.id,
            at,
            report.business_day(p.created_at_ms).to_string(),
            p.terminal_id,
            p.amount_minor.to_string(),
            p.currency,
            p.status.to_string(),
            p.status.is_approved().to_string(),
            p.offline.to_string(),
            brand,
            masked,
            p.auth_code,
            p.captured_minor.to_string(),
            refunded.to_string(),
        ];
        out.write_record(&record)?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// Unsent offline payments, for the package's removal check.
pub fn unsent(dir: &Path) -> anyhow::Result<u32> {
    if !dir.join("posd.db").exists() {
        return Ok(0);
    }
    Ok(open(dir)?.queue_summary()?.count)
}
