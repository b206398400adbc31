//! `posctl report`: a business day's totals per terminal, brand and entry
//! mode, as a table, JSON, or the CSV posd made.

use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};

use crate::cmd::Client;
use crate::cmd::print::{enum_name, rfc3339};
use crate::failure::Failure;
use crate::money;

pub(crate) async fn run(
    client: &mut Client,
    day: Option<String>,
    terminal: Option<String>,
    csv: bool,
    json: bool,
) -> Result<u8, Failure> {
    let r = client
        .get_report(pb::GetReportRequest {
            business_day: day.unwrap_or_default(),
            terminal_id: terminal.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if csv {
        crate::output::write(r.csv.as_bytes(), false);
    } else if json {
        let rows: Vec<Value> = r
            .rows
            .iter()
            .map(|x| {
                json!({
                    "terminal_id": x.terminal_id, "currency": x.currency, "brand": x.brand,
                    "entry_mode": enum_name(pb::EntryMode::try_from(x.entry_mode).map(|e| e.as_str_name()), "ENTRY_MODE_"),
                    "approvals": x.approvals, "approved_minor": x.approved_minor, "declines": x.declines,
                    "refunds": x.refunds, "refunded_minor": x.refunded_minor, "voids": x.voids,
                    "offline_pending": x.offline_pending, "offline_pending_minor": x.offline_pending_minor,
                    "offline_forwarded": x.offline_forwarded, "offline_declined": x.offline_declined,
                    "offline_declined_minor": x.offline_declined_minor,
                })
            })
            .collect();
        outln!(
            "{:#}",
            json!({
                "business_day": r.business_day, "time_zone": r.time_zone, "cutover": r.cutover,
                "starts_at": rfc3339(r.starts_at.as_ref()), "ends_at": rfc3339(r.ends_at.as_ref()), "rows": rows,
            })
        );
    } else {
        outln!("business day {} ({} from {})", r.business_day, r.time_zone, r.cutover);
        for x in &r.rows {
            outln!(
                "  {} {} {:<10} approvals {} ({})  declines {}  refunds {} ({})  voids {}  offline pending {} forwarded {} declined {}",
                x.terminal_id,
                x.currency,
                x.brand,
                x.approvals,
                money::format_amount(x.approved_minor, &x.currency),
                x.declines,
                x.refunds,
                money::format_amount(x.refunded_minor, &x.currency),
                x.voids,
                x.offline_pending,
                x.offline_forwarded,
                x.offline_declined
            );
        }
    }
    Ok(0)
}
