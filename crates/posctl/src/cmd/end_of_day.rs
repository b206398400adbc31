//! `posctl end-of-day`: closes the lane's batch with the gateway (or the ZVT
//! or nexo payment terminal) and prints the totals.

use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};

use crate::cmd::Client;
use crate::cmd::print::rfc3339;
use crate::failure::Failure;
use crate::money;

pub(crate) async fn run(client: &mut Client, terminal: String, json: bool) -> Result<u8, Failure> {
    let b = client.close_batch(pb::CloseBatchRequest { terminal_id: terminal }).await?.into_inner();
    if json {
        let totals: Vec<Value> = b
            .totals
            .iter()
            .map(|t| json!({"currency": t.currency, "count": t.count, "captured_minor": t.captured_minor, "refunded_minor": t.refunded_minor}))
            .collect();
        outln!(
            "{:#}",
            json!({"batch_id": b.batch_id, "terminal_id": b.terminal_id, "closed_at": rfc3339(b.closed_at.as_ref()), "totals": totals, "offline_unsent": b.offline_unsent})
        );
    } else {
        outln!("batch {} closed for {} at {}", b.batch_id, b.terminal_id, rfc3339(b.closed_at.as_ref()));
        for t in &b.totals {
            outln!(
                "  {} payments  {}  refunded {}",
                t.count,
                money::format_amount(t.captured_minor, &t.currency),
                money::format_amount(t.refunded_minor, &t.currency)
            );
        }
        if b.offline_unsent > 0 {
            outln!("  {} offline payments not yet forwarded (they settle in a later batch)", b.offline_unsent);
        }
    }
    Ok(0)
}
