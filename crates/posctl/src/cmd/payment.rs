//! `posctl payment ID`: shows one payment with its history.

use pos_proto::terminal::{self as pb};

use crate::cmd::Client;
use crate::cmd::print::{detail_lines, payment_json, rfc3339, status_name, summary};
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, id: String, json: bool) -> Result<u8, Failure> {
    let p = client.get_payment(pb::GetPaymentRequest { payment_id: id }).await?.into_inner();
    if json {
        outln!("{:#}", payment_json(&p));
    } else {
        outln!("{}", summary(&p));
        for line in detail_lines(&p) {
            outln!("{line}");
        }
        for h in &p.history {
            // The entry that created the payment has no status before it.
            let from = if h.from == 0 { "new".to_string() } else { status_name(h.from) };
            outln!("  {}  {from} -> {}  {}", rfc3339(h.at.as_ref()), status_name(h.to), h.cause);
        }
    }
    Ok(0)
}
