//! `posctl receipt PAYMENT_ID`: prints (or reprints) a payment's receipt and
//! waits for the printer.

use pos_proto::terminal::{self as pb};
use serde_json::json;

use crate::CopyArg;
use crate::cmd::Client;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, payment_id: String, copy: CopyArg, json: bool) -> Result<u8, Failure> {
    let copy = match copy {
        CopyArg::Customer => pb::ReceiptCopy::Customer,
        CopyArg::Merchant => pb::ReceiptCopy::Merchant,
    };
    let r = client
        .print_receipt(pb::PrintReceiptRequest { payment_id: payment_id.clone(), copy: copy as i32 })
        .await?
        .into_inner();
    if json {
        outln!("{:#}", json!({"payment_id": payment_id, "terminal_id": r.terminal_id, "reprint": r.reprint}));
    } else {
        let what = if r.reprint { "reprinted" } else { "printed" };
        outln!("receipt of {payment_id} {what} on {}", r.terminal_id);
    }
    Ok(0)
}
