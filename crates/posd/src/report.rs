//! Business-day reports: totals per terminal, currency, brand and entry mode,
//! counted in the configured time zone from the configured cutover.

use std::collections::BTreeMap;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use pos_engine::Status;
use pos_proto::terminal as pb;

use crate::store::{ListFilter, PaymentRecord, RefundStatus, Store, StoreError};

/// Where business days begin and end.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub tz_name: String,
    pub tz: TimeZone,
    /// Local time a business day starts (e.g. 04:00: sales until 03:59 belong to the day before).
    pub cutover: Time,
}

impl ReportSettings {
    pub fn new(tz_name: &str, cutover: &str) -> anyhow::Result<Self> {
        let tz = TimeZone::get(tz_name)
            .map_err(|e| anyhow::anyhow!("[report] time_zone {tz_name:?} is not a known IANA time zone: {e}"))?;
        let cutover: Time = format!("{cutover}:00")
            .parse()
            .map_err(|_| anyhow::anyhow!("[report] cutover {cutover:?} must be a time of day as HH:MM"))?;
        Ok(Self { tz_name: tz_name.to_string(), tz, cutover })
    }

    /// The business day a moment belongs to.
    pub fn business_day(&self, at_ms: i64) -> Date {
        let ts = jiff::Timestamp::from_millisecond(at_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let local = self.tz.to_datetime(ts);
        if local.time() < self.cutover { local.date().yesterday().unwrap_or(local.date()) } else { local.date() }
    }

    /// The span of a business day in Unix milliseconds, `[start, end)`.
    pub fn bounds(&self, day: Date) -> Result<(i64, i64), String> {
        let start = self.tz.to_timestamp(day.to_datetime(self.cutover)).map_err(|e| e.to_string())?;
        let next = day.tomorrow().map_err(|e| e.to_string())?;
        let end = self.tz.to_timestamp(next.to_datetime(self.cutover)).map_err(|e| e.to_string())?;
        Ok((start.as_millisecond(), end.as_millisecond()))
    }
}

type RowKey = (String, String, String, i32);

/// Builds the report of one business day.
pub fn build(store: &Store, s: &ReportSettings, day: Date, terminal: Option<&str>) -> Result<pb::Report, StoreError> {
    let (start, end) = s.bounds(day).map_err(StoreError::Corrupt)?;
    let all = |after: Option<i64>, before: Option<i64>| {
        store.list(&ListFilter {
            terminal_id: terminal.map(str::to_string),
            created_after_ms: after,
            created_before_ms: before,
            limit: usize::MAX >> 1,
            ..Default::default()
        })
    };
    let payments = all(Some(start), Some(end))?;
    let mut rows: BTreeMap<RowKey, pb::ReportRow> = BTreeMap::new();
    let key = |p: &PaymentRecord| {
        let (brand, entry) = p.card.as_ref().map(|c| (c.brand.clone(), c.entry_mode)).unwrap_or_default();
        (p.terminal_id.clone(), p.currency.clone(), brand, entry)
    };
    for p in &payments {
        let row = rows.entry(key(p)).or_default();
        if p.status.is_approved() {
            row.approvals += 1;
            row.approved_minor += p.amount_minor;
        }
        match p.status {
            Status::Declined => row.declines += 1,
            Status::Voided => row.voids += 1,
            Status::OfflineDeclined => {
                row.offline_declined += 1;
                row.offline_declined_minor += p.amount_minor;
            }
            Status::Authorized | Status::Captured if p.offline => row.offline_forwarded += 1,
            s if s.is_unsent() => {
                row.offline_pending += 1;
                row.offline_pending_minor += p.amount_minor;
            }
            _ => {}
        }
    }
    // Refunds count on the day they were made, under their payment's row.
    for r in store.refunds_between(start, end)? {
        let Some(p) = store.get(&r.payment_id)? else { continue };
        if terminal.is_some_and(|t| t != p.terminal_id) || r.status != RefundStatus::Succeeded {
            continue;
        }
        let row = rows.entry(key(&p)).or_default();
        row.refunds += 1;
        row.refunded_minor += r.amount_minor;
    }
    let rows: Vec<pb::ReportRow> = rows
        .into_iter()
        .filter(|(_, r)| {
            r.approvals
                + r.declines
                + r.refunds
                + r.voids
                + r.offline_pending
                + r.offline_forwarded
                + r.offline_declined
                > 0
        })
        .map(|((terminal_id, currency, brand, entry_mode), r)| pb::ReportRow {
            terminal_id,
            currency,
            brand,
            entry_mode,
            ..r
        })
        .collect();
    Ok(pb::Report {
        business_day: day.to_string(),
        time_zone: s.tz_name.clone(),
        cutover: s.cutover.strftime("%H:%M").to_string(),
        starts_at: Some(crate::convert::timestamp(start)),
        ends_at: Some(crate::convert::timestamp(end)),
        csv: csv(&rows),
        rows,
    })
}

/// The header line of [`csv`].
const CSV_HEADER: [&str; 15] = [
    "terminal_id",
    "currency",
    "brand",
    "entry_mode",
    "approvals",
    "approved_minor",
    "declines",
    "refunds",
    "refunded_minor",
    "voids",
    "offline_pending",
    "offline_pending_minor",
    "offline_forwarded",
    "offline_declined",
    "offline_declined_minor",
];

/// Writing CSV to memory cannot fail: there is no I/O, and every record has the header's length.
const IN_MEMORY: &str = "a CSV writer into memory does not fail";

/// The rows as CSV, amounts in minor units, written by the `csv` crate: a field
/// with a comma, a quote or a line break is quoted as RFC 4180 has it (its quotes
/// doubled), any other field is written as it is; each record ends in `\n`.
pub fn csv(rows: &[pb::ReportRow]) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER).expect(IN_MEMORY);
    for r in rows {
        let entry = pb::EntryMode::try_from(r.entry_mode)
            .map(|e| e.as_str_name().trim_start_matches("ENTRY_MODE_").to_lowercase())
            .unwrap_or_default();
        let record = [
            r.terminal_id.clone(),
            r.currency.clone(),
            r.brand.clone(),
            entry,
            r.approvals.to_string(),
            r.approved_minor.to_string(),
            r.declines.to_string(),
            r.refunds.to_string(),
            r.refunded_minor.to_string(),
            r.voids.to_string(),
            r.offline_pending.to_string(),
            r.offline_pending_minor.to_string(),
            r.offline_forwarded.to_string(),
            r.offline_declined.to_string(),
            r.offline_declined_minor.to_string(),
        ];
        out.write_record(&record).expect(IN_MEMORY);
    }
    String::from_utf8(out.into_inner().expect(IN_MEMORY)).expect("CSV made of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutover_moves_early_morning_sales_to_the_day_before() {
        let s = ReportSettings::new("Europe/Berlin", "04:00").unwrap();
        // 2026-11-26 02:30 in Berlin (UTC+1) is 01:30 UTC: still the 25th's business day.
        let at = jiff::Timestamp::from_second(1_795_656_600).unwrap();
        assert_eq!(at.to_string(), "2026-11-26T01:30:00Z");
        assert_eq!(s.business_day(at.as_millisecond()).to_string(), "2026-11-25");
        let (start, end) = s.bounds("2026-11-25".parse().unwrap()).unwrap();
        assert_eq!(jiff::Timestamp::from_millisecond(start).unwrap().to_string(), "2026-11-25T03:00:00Z");
        assert_eq!(end - start, 24 * 3600 * 1000);
    }

    #[test]
    fn a_daylight_saving_day_has_its_real_length() {
        let s = ReportSettings::new("Europe/Berlin", "00:00").unwrap();
        let (start, end) = s.bounds("2026-03-29".parse().unwrap()).unwrap();
        assert_eq!(end - start, 23 * 3600 * 1000);
    }

    #[test]
    fn the_csv_quotes_only_the_fields_that_need_it() {
        let plain = pb::ReportRow {
            terminal_id: "lane-1".into(),
            currency: "EUR".into(),
            brand: "Visa".into(),
            entry_mode: pb::EntryMode::Contactless as i32,
            approvals: 2,
            approved_minor: 2468,
            declines: 1,
            refunds: 1,
            refunded_minor: 500,
            offline_declined_minor: -1,
            ..Default::default()
        };
        let odd = pb::ReportRow {
            terminal_id: "lane \"2\"".into(),
            brand: "Visa, Inc.\nEurope".into(),
            entry_mode: 99,
            ..plain.clone()
        };
        assert_eq!(
            csv(&[plain, odd]),
            "terminal_id,currency,brand,entry_mode,approvals,approved_minor,declines,refunds,refunded_minor,voids,\
             offline_pending,offline_pending_minor,offline_forwarded,offline_declined,offline_declined_minor\n\
             lane-1,EUR,Visa,contactless,2,2468,1,1,500,0,0,0,0,0,-1\n\
             \"lane \"\"2\"\"\",EUR,\"Visa, Inc.\nEurope\",,2,2468,1,1,500,0,0,0,0,0,-1\n"
        );
        assert_eq!(csv(&[]).lines().count(), 1, "the header alone");
    }

    #[test]
    fn bad_settings_are_explained() {
        assert!(ReportSettings::new("Mars/Olympus", "00:00").unwrap_err().to_string().contains("time zone"));
        assert!(ReportSettings::new("UTC", "25:00").unwrap_err().to_string().contains("HH:MM"));
    }
}
