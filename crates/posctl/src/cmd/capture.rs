//! `posctl capture ID [AMOUNT]`: captures an authorized payment (manual
//! capture), all of it without AMOUNT.

use pos_proto::terminal::{self as pb};

use crate::cmd::print::print_payment;
use crate::cmd::{Client, minor_for};
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, id: String, amount: Option<String>, json: bool) -> Result<u8, Failure> {
    let amount_minor = minor_for(client, &id, amount.as_deref()).await?;
    let p = client.capture_payment(pb::CapturePaymentRequest { payment_id: id, amount_minor }).await?.into_inner();
    print_payment(&p, json);
    Ok(0)
}
