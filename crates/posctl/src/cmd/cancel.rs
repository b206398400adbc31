//! `posctl cancel ID`: cancels a payment that is still collecting a card.

use pos_proto::terminal::{self as pb};

use crate::cmd::Client;
use crate::cmd::print::print_payment;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, id: String, json: bool) -> Result<u8, Failure> {
    let p = client.cancel_payment(pb::CancelPaymentRequest { payment_id: id }).await?.into_inner();
    print_payment(&p, json);
    Ok(0)
}
