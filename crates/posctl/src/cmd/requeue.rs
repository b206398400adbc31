//! `posctl requeue ID`: puts a quarantined payment back in the offline queue.

use pos_proto::terminal::{self as pb};

use crate::cmd::Client;
use crate::cmd::print::print_payment;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, id: String, json: bool) -> Result<u8, Failure> {
    let p = client.requeue_payment(pb::RequeuePaymentRequest { payment_id: id }).await?.into_inner();
    print_payment(&p, json);
    Ok(0)
}
