//! `posctl refund ID [AMOUNT]`: refunds a captured payment, everything not
//! yet refunded without AMOUNT; the exit code is the refund's outcome.

use pos_proto::terminal::{self as pb};

use crate::cmd::print::{print_refund, refund_status};
use crate::cmd::{Client, minor_for, random_suffix};
use crate::failure::{EXIT_NOT_APPROVED, EXIT_PENDING, Failure};
use crate::output::say;

pub(crate) async fn run(
    client: &mut Client,
    id: String,
    amount: Option<String>,
    key: Option<String>,
    reason: String,
    json: bool,
) -> Result<u8, Failure> {
    let amount_minor = minor_for(client, &id, amount.as_deref()).await?;
    let key = key.unwrap_or_else(|| format!("posctl-refund-{}", random_suffix()));
    let req = pb::RefundPaymentRequest { idempotency_key: key.clone(), payment_id: id, amount_minor, reason };
    let r = match client.refund_payment(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(Failure::from(status).with_key(&key)),
    };
    print_refund(&r, json);
    Ok(match pb::RefundStatus::try_from(r.status) {
        Ok(pb::RefundStatus::Succeeded) => 0,
        Ok(pb::RefundStatus::Failed) => EXIT_NOT_APPROVED,
        _ => {
            say(&format!(
                "posctl: OUTCOME_UNKNOWN: refund {} is {}: its outcome is not known yet; call again with \
                 --key {key} to learn it",
                r.refund_id,
                refund_status(&r)
            ));
            EXIT_PENDING
        }
    })
}
