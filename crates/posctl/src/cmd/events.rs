//! `posctl events`: prints register events after a cursor, then follows new
//! ones (or stops after the stored ones with `--no-follow`).

use pos_proto::terminal::{self as pb};
use serde_json::json;

use crate::cmd::Client;
use crate::cmd::print::rfc3339;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, from: u64, no_follow: bool, json: bool) -> Result<u8, Failure> {
    let mut stream = client.stream_events(pb::StreamEventsRequest { from_cursor: from }).await?.into_inner();
    loop {
        let next = if no_follow {
            // Stored events arrive at once; a quiet moment means the backlog is done.
            match tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await {
                Ok(m) => m?,
                Err(_) => None,
            }
        } else {
            stream.message().await?
        };
        let Some(e) = next else { break };
        if json {
            outln!(
                "{}",
                json!({
                    "cursor": e.cursor,
                    "at": rfc3339(e.at.as_ref()),
                    "kind": e.kind,
                    "terminal_id": e.terminal_id,
                    "payment_id": e.payment_id,
                    "message": e.message,
                })
            );
        } else {
            outln!(
                "{:>6}  {}  {:<20} {} {}  {}",
                e.cursor,
                rfc3339(e.at.as_ref()),
                e.kind,
                e.terminal_id,
                e.payment_id,
                e.message
            );
        }
        if crate::output::closed() {
            break;
        }
    }
    Ok(0)
}
