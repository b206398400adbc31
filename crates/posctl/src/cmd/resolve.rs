//! `posctl resolve ID`: records what the payment terminal's journal (or the
//! gateway's records) shows for a payment posd left UNKNOWN or a refund it
//! left PENDING.

use pos_proto::terminal::{self as pb};

use crate::cmd::Client;
use crate::cmd::print::{print_payment, print_refund};
use crate::failure::Failure;

/// Resolves the payment, or the refund when `id` is a refund's (`ref_...`):
/// booked with a receipt number or `booked`, otherwise not booked.
pub(crate) async fn run(
    client: &mut Client,
    id: String,
    receipt: Option<u32>,
    booked: bool,
    note: String,
    json: bool,
) -> Result<u8, Failure> {
    let finding = if receipt.is_some() || booked { pb::JournalFinding::Booked } else { pb::JournalFinding::NotBooked };
    if id.starts_with("ref_") {
        let request =
            pb::ResolveRefundRequest { refund_id: id, finding: finding as i32, receipt_no: receipt.unwrap_or(0), note };
        print_refund(&client.resolve_refund(request).await?.into_inner(), json);
        return Ok(0);
    }
    let request =
        pb::ResolvePaymentRequest { payment_id: id, finding: finding as i32, receipt_no: receipt.unwrap_or(0), note };
    let p = client.resolve_payment(request).await?.into_inner();
    print_payment(&p, json);
    Ok(0)
}
