//! `posctl void ID`: voids an authorized payment before capture; on a ZVT
//! or nexo lane, reverses a captured payment at the payment terminal.

use pos_proto::terminal::{self as pb};

use crate::cmd::Client;
use crate::cmd::print::print_payment;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, id: String, reason: String, json: bool) -> Result<u8, Failure> {
    let p = client.void_payment(pb::VoidPaymentRequest { payment_id: id, reason }).await?.into_inner();
    print_payment(&p, json);
    Ok(0)
}
