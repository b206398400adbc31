//! `posctl pay`: takes a card payment and shows its progress live; the exit
//! code is its outcome.

use pos_proto::terminal::{self as pb};
use serde_json::json;

use crate::cmd::print::{enum_name, payment_json, status_name, summary};
use crate::cmd::{Client, random_suffix};
use crate::failure::{EXIT_NOT_APPROVED, EXIT_PENDING, EXIT_UNREACHABLE, Failure};
use crate::money;
use crate::output::say;

/// The payment to take, checked before posctl connects: the amount in the
/// currency's minor units, and a new idempotency key unless one is given.
pub(crate) fn request(
    amount: &str,
    currency: &str,
    key: Option<&str>,
    terminal: &str,
    order: &str,
    manual_capture: bool,
) -> Result<pb::TakePaymentRequest, Failure> {
    let amount_minor = money::parse_amount(amount, currency).map_err(Failure::usage)?;
    let key = key.map_or_else(|| format!("posctl-{}", random_suffix()), str::to_string);
    Ok(pb::TakePaymentRequest {
        idempotency_key: key,
        order_reference: order.to_string(),
        amount: Some(pb::Money { amount_minor, currency: currency.to_string() }),
        terminal_id: terminal.to_string(),
        capture_mode: if manual_capture { pb::CaptureMode::Manual } else { pb::CaptureMode::Automatic } as i32,
    })
}

/// Takes the payment; a failure names the idempotency key to repeat the call with.
pub(crate) async fn run(client: &mut Client, req: pb::TakePaymentRequest, json: bool) -> Result<u8, Failure> {
    let key = req.idempotency_key.clone();
    take(client, req, json).await.map_err(|f| f.with_key(&key))
}

/// Takes a payment and shows its progress; the exit code is its outcome:
/// 0 approved, 1 not approved, 5 not settled yet.
async fn take(client: &mut Client, req: pb::TakePaymentRequest, json: bool) -> Result<u8, Failure> {
    let mut stream = client.take_payment(req).await?.into_inner();
    let mut last: Option<pb::PaymentEvent> = None;
    let mut stages = Vec::new();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(status) => {
                let mut failure = Failure::from(status);
                // The payment started and runs on in posd without this
                // connection: its outcome is unknown here, not unreachable.
                if let (Some(seen), EXIT_UNREACHABLE) = (&last, failure.exit) {
                    failure.exit = EXIT_PENDING;
                    failure.reason = "OUTCOME_UNKNOWN".into();
                    failure.message = format!(
                        "{}; payment {} goes on in posd without this connection (`posctl payment {}` shows it)",
                        failure.message, seen.payment_id, seen.payment_id
                    );
                }
                return Err(failure);
            }
        };
        let stage = enum_name(pb::PaymentStage::try_from(ev.stage).map(|s| s.as_str_name()), "PAYMENT_STAGE_");
        if !json && stages.last() != Some(&stage) {
            outln!("… {}", ev.message);
        }
        stages.push(stage);
        last = Some(ev);
    }
    let Some(ev) = last else {
        return Err(Failure {
            exit: EXIT_PENDING,
            code: "UNKNOWN",
            reason: "OUTCOME_UNKNOWN".into(),
            message: "posd ended the payment stream without an event".into(),
            from_posd: false,
        });
    };
    let p = ev.payment.unwrap_or_default();
    if json {
        let mut v = payment_json(&p);
        v["stages"] = json!(stages);
        outln!("{v:#}");
    } else {
        outln!("{}", summary(&p));
    }
    if p.approved {
        return Ok(0);
    }
    use pb::PaymentStatus as S;
    match S::try_from(p.status) {
        Ok(S::Created | S::Collecting | S::CardRead | S::Authorizing | S::Confirming | S::Unknown | S::Unspecified)
        | Err(_) => {
            say(&format!(
                "posctl: OUTCOME_UNKNOWN: payment {} is {}: its outcome is not known yet; `posctl payment {}` \
                 shows it, and paying again with --key {} re-attaches to it",
                p.payment_id,
                status_name(p.status),
                p.payment_id,
                p.idempotency_key
            ));
            Ok(EXIT_PENDING)
        }
        Ok(_) => Ok(EXIT_NOT_APPROVED),
    }
}
