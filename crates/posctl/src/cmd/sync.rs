//! `posctl sync`: shows the offline queue; with `--now`, forwards it now.

use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};

use crate::cmd::Client;
use crate::cmd::print::rfc3339;
use crate::failure::Failure;
use crate::money;

pub(crate) async fn run(client: &mut Client, now: bool, json: bool) -> Result<u8, Failure> {
    let s = if now {
        client.sync_now(pb::SyncNowRequest {}).await?.into_inner()
    } else {
        client.get_sync_status(pb::GetSyncStatusRequest {}).await?.into_inner()
    };
    if json {
        let totals: serde_json::Map<String, Value> =
            s.stored_totals.iter().map(|m| (m.currency.clone(), json!(m.amount_minor))).collect();
        outln!(
            "{:#}",
            json!({
                "online": s.online,
                "queue_depth": s.queue_depth,
                "quarantined": s.quarantined,
                "oldest_age_s": s.oldest_age_s,
                "stored_totals": totals,
                "last_error": s.last_error,
                "paused": s.paused,
                "last_online_at": rfc3339(s.last_online_at.as_ref()),
            })
        );
    } else {
        outln!("gateway:     {}", if s.online { "online" } else { "OFFLINE" });
        outln!("queued:      {} payments ({} quarantined)", s.queue_depth, s.quarantined);
        for m in &s.stored_totals {
            outln!("  stored:    {}", money::format_amount(m.amount_minor, &m.currency));
        }
        outln!("oldest:      {} s", s.oldest_age_s);
        if s.paused {
            outln!("forwarding:  PAUSED");
        }
        if !s.last_error.is_empty() {
            outln!("last error:  {}", s.last_error);
        }
        if now {
            outln!("forwarding started");
        }
    }
    Ok(0)
}
