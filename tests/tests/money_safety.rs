//! Money safety as a register and a hostile network see it: an operation
//! whose attempt may have reached the gateway is settled only by the
//! gateway's record under its key, never by a later attempt that was not
//! sent (issue 22 §1). Each test plays the sequence an outside run found:
//! the answer is lost, the gateway goes down, the register retries with the
//! same key, then starts a new operation; and checks posd's totals against
//! the gateway-sim ledger.

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, eventually, final_payment};
use tonic_types::StatusExt;

use posd_e2e::refund_request as refund;

/// posd's reason code in a status's `ErrorInfo`.
fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// The ledger's charge under this amount (each test pays one amount once).
fn charge(lane: &Lane, amount: i64) -> serde_json::Value {
    lane.ledger().into_iter().find(|c| c["amount_minor"] == amount).expect("a charge with that amount")
}

async fn payment(lane: &Lane, id: &str) -> pb::Payment {
    let get = pb::GetPaymentRequest { payment_id: id.into() };
    lane.client().await.get_payment(get).await.unwrap().into_inner()
}

/// Waits until none of the payment's refunds is pending and returns it.
async fn refunds_settled(lane: &Lane, id: &str) -> pb::Payment {
    let mut client = lane.client().await;
    let get = pb::GetPaymentRequest { payment_id: id.into() };
    eventually("posd to settle the pending refunds by the gateway's record", async || {
        let p = client.get_payment(get.clone()).await.unwrap().into_inner();
        p.refunds.iter().all(|r| r.status != pb::RefundStatus::Pending as i32).then_some(p)
    })
    .await
}

/// Refunds `amount` of the payment under `key` with a posd that aborts as
/// soon as the gateway has answered (booked), before it stores the outcome;
/// returns with posd stopped.
async fn crash_after_the_refund_is_booked(lane: &mut Lane, payment_id: &str, key: &str, amount: i64) {
    lane.kill_posd();
    lane.posd_env.push(("POSD_FAILPOINT".into(), "refund_after_response".into()));
    lane.start_posd();
    lane.ready().await;
    let lost = lane.client().await.refund_payment(refund(key, payment_id, amount)).await.unwrap_err();
    assert!(!lost.message().is_empty(), "the call ends with posd: {lost:?}");
    posd_e2e::assert_aborted(&lane.wait_posd_exit().await);
    lane.posd_env.retain(|(k, _)| k != "POSD_FAILPOINT");
}

/// The outside run's sequence, reproduced: a refund whose answer was lost is
/// retried while the gateway is down. It must stay pending ("outcome
/// unknown"), never be reported failed, keep counting against the captured
/// amount, and end settled by the gateway's record, so posd's refunded total
/// equals the ledger's.
#[tokio::test]
async fn a_refund_in_doubt_is_never_reported_failed() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-doubt", 5_000).await);
    let id = p.payment_id.clone();
    let mut client = lane.client().await;

    lane.fault("lose-answers");
    let lost = client.refund_payment(refund("R1", &id, 1_000)).await.unwrap_err();
    assert_eq!(reason(&lost), "OUTCOME_UNKNOWN", "{lost:?}");
    assert_eq!(charge(&lane, 5_000)["refunded_minor"], 1_000, "the gateway booked R1; its answer was lost");

    // Until the gateway is down, posd's own settling may already have asked
    // the gateway about R1 (it answers status queries): R1 is then
    // succeeded. Either way, it is never failed.
    lane.fault("down");
    match client.refund_payment(refund("R1", &id, 1_000)).await {
        Err(retry) => assert_eq!(reason(&retry), "OUTCOME_UNKNOWN", "not sent settles nothing: {retry:?}"),
        Ok(r) => assert_eq!(r.into_inner().status, pb::RefundStatus::Succeeded as i32),
    }
    let now = payment(&lane, &id).await;
    assert_eq!(now.refunds.len(), 1);
    assert_ne!(now.refunds[0].status, pb::RefundStatus::Failed as i32, "R1 is never failed");
    // The pending 1,000 still counts: 4,001 more would exceed the 5,000.
    lane.fault("none");
    let over = client.refund_payment(refund("R-over", &id, 4_001)).await.unwrap_err();
    assert_eq!(reason(&over), "REFUND_EXCEEDS_CAPTURE", "{over:?}");

    let r2 = client.refund_payment(refund("R2", &id, 1_000)).await.unwrap().into_inner();
    assert_eq!(r2.status, pb::RefundStatus::Succeeded as i32);
    let settled = refunds_settled(&lane, &id).await;
    assert!(settled.refunds.iter().all(|r| r.status == pb::RefundStatus::Succeeded as i32), "{settled:?}");
    let r1 = client.refund_payment(refund("R1", &id, 1_000)).await.unwrap().into_inner();
    assert_eq!(r1.status, pb::RefundStatus::Succeeded as i32, "R1 is what the gateway booked");
    assert_eq!(settled.refunded_minor, 2_000);
    assert_eq!(charge(&lane, 5_000)["refunded_minor"], 2_000, "posd's total equals the ledger's");
    let events = lane.events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "refund_failed").count(), 0, "nothing was reported failed");
    assert_eq!(events.iter().filter(|e| e.kind == "refund_succeeded").count(), 2, "each refund settled once");
    lane.finish();
}

/// The same doubt across a kill: start-up finds the refund pending while the
/// gateway is down, leaves it pending, and settles it once the gateway is
/// back, without the register calling again.
#[tokio::test]
async fn a_refund_in_doubt_across_a_kill_settles_by_the_gateways_record() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-doubt-kill", 4_000).await);
    let id = p.payment_id.clone();
    // posd dies the moment the gateway's answer arrives, before storing it.
    crash_after_the_refund_is_booked(&mut lane, &id, "K1", 1_500).await;
    assert_eq!(charge(&lane, 4_000)["refunded_minor"], 1_500, "the gateway booked K1");
    lane.fault("down");
    lane.start_posd();
    lane.ready().await;
    let retry = lane.client().await.refund_payment(refund("K1", &id, 1_500)).await.unwrap_err();
    assert_eq!(reason(&retry), "OUTCOME_UNKNOWN", "{retry:?}");
    assert_eq!(payment(&lane, &id).await.refunds[0].status, pb::RefundStatus::Pending as i32);
    lane.fault("none");
    let settled = refunds_settled(&lane, &id).await;
    assert_eq!(settled.refunds[0].status, pb::RefundStatus::Succeeded as i32, "{settled:?}");
    assert_eq!(settled.refunded_minor, 1_500);
    assert_eq!(charge(&lane, 4_000)["refunded_minor"], 1_500);
    lane.finish();
}

/// A gateway from before GetRefund cannot be asked: the refund in doubt
/// stays pending and is alerted once, never failed.
#[tokio::test]
async fn a_gateway_that_cannot_be_asked_leaves_the_refund_pending_and_alerted() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-old-gateway", 3_000).await);
    let id = p.payment_id.clone();
    crash_after_the_refund_is_booked(&mut lane, &id, "O1", 700).await;
    lane.fault("no-refund-status");
    lane.start_posd();
    lane.ready().await;
    let mut client = lane.client().await;
    // Start-up asks about O1, cannot, and alerts.
    let alert = eventually("the alert for the refund in doubt", async || {
        lane.events().await.into_iter().find(|e| e.kind == "refund_outcome_unknown")
    })
    .await;
    assert!(alert.message.contains("posctl resolve"), "{alert:?}");
    for _ in 0..2 {
        let again = client.refund_payment(refund("O1", &id, 700)).await.unwrap_err();
        assert_eq!(reason(&again), "OUTCOME_UNKNOWN", "{again:?}");
        assert!(again.message().contains("posctl resolve"), "{}", again.message());
    }
    assert_eq!(payment(&lane, &id).await.refunds[0].status, pb::RefundStatus::Pending as i32);
    let events = lane.events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "refund_outcome_unknown").count(), 1, "alerted once");
    assert_eq!(events.iter().filter(|e| e.kind == "refund_failed").count(), 0);
    lane.finish();
}

/// A refund that cannot have been sent (the gateway was down for its only
/// attempt) still fails cleanly, as before: that is no doubt.
#[tokio::test]
async fn a_refund_never_sent_fails_and_reserves_nothing() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-never-sent", 2_000).await);
    let mut client = lane.client().await;
    lane.fault("down");
    let r = client.refund_payment(refund("N1", &p.payment_id, 2_000)).await.unwrap().into_inner();
    assert_eq!(r.status, pb::RefundStatus::Failed as i32);
    assert_eq!(r.failure.unwrap().code, "gateway_unreachable");
    lane.fault("none");
    let ok = client.refund_payment(refund("N2", &p.payment_id, 2_000)).await.unwrap().into_inner();
    assert_eq!(ok.status, pb::RefundStatus::Succeeded as i32);
    // Nothing left: refunding "everything left" is refused, not an internal error.
    let nothing = client.refund_payment(refund("N3", &p.payment_id, 0)).await.unwrap_err();
    assert_eq!(nothing.code(), tonic::Code::FailedPrecondition, "{nothing:?}");
    assert_eq!(reason(&nothing), "REFUND_EXCEEDS_CAPTURE");
    assert_eq!(charge(&lane, 2_000)["refunded_minor"], 2_000);
    lane.finish();
}

async fn manual(lane: &Lane, key: &str, amount: i64) -> pb::Payment {
    let mut req = posd_e2e::request(key, amount);
    req.capture_mode = pb::CaptureMode::Manual as i32;
    let mut stream = lane.client().await.take_payment(req).await.unwrap().into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.payment;
    }
    last.unwrap()
}

/// A capture whose answer was lost, retried while the gateway is down, is
/// "outcome unknown", not "gateway unreachable"; the retry once the gateway
/// is back records the one capture the gateway made.
#[tokio::test]
async fn a_capture_in_doubt_is_settled_by_the_gateway() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&lane, "k-capture-doubt", 6_000).await;
    let capture = pb::CapturePaymentRequest { payment_id: p.payment_id.clone(), amount_minor: 0 };
    let mut client = lane.client().await;
    lane.fault("lose-answers");
    let lost = client.capture_payment(capture.clone()).await.unwrap_err();
    assert_eq!(reason(&lost), "OUTCOME_UNKNOWN", "{lost:?}");
    lane.fault("down");
    let retry = client.capture_payment(capture.clone()).await.unwrap_err();
    assert_eq!(reason(&retry), "OUTCOME_UNKNOWN", "an earlier attempt may have captured: {retry:?}");
    lane.fault("none");
    let done = client.capture_payment(capture).await.unwrap().into_inner();
    assert_eq!(done.status, pb::PaymentStatus::Captured as i32);
    assert_eq!(done.captured_minor, 6_000);
    assert_eq!(charge(&lane, 6_000)["captured_minor"], 6_000);
    lane.finish();
}

/// The same for a void: never "unreachable" once an attempt may have voided.
#[tokio::test]
async fn a_void_in_doubt_is_settled_by_the_gateway() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&lane, "k-void-doubt", 6_100).await;
    let void = pb::VoidPaymentRequest { payment_id: p.payment_id.clone(), reason: "customer left".into() };
    let mut client = lane.client().await;
    lane.fault("lose-answers");
    let lost = client.void_payment(void.clone()).await.unwrap_err();
    assert_eq!(reason(&lost), "OUTCOME_UNKNOWN", "{lost:?}");
    lane.fault("down");
    let retry = client.void_payment(void.clone()).await.unwrap_err();
    assert_eq!(reason(&retry), "OUTCOME_UNKNOWN", "{retry:?}");
    lane.fault("none");
    let done = client.void_payment(void).await.unwrap().into_inner();
    assert_eq!(done.status, pb::PaymentStatus::Voided as i32);
    assert_eq!(charge(&lane, 6_100)["status"], "voided");
    lane.finish();
}

/// End of day whose answer was lost, retried while the gateway is down
/// ("outcome unknown", not "unreachable"), then once it is back: the retry
/// returns the batch the first attempt closed, a payment taken in between
/// is not in it, and the next end of day closes a batch of its own.
#[tokio::test]
async fn an_end_of_day_in_doubt_closes_one_batch() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    for (i, amount) in [1_000, 2_000, 3_000].into_iter().enumerate() {
        final_payment(&lane.pay(&format!("k-day-{i}"), amount).await);
    }
    let mut client = lane.client().await;
    let close = pb::CloseBatchRequest { terminal_id: "lane-1".into() };
    lane.fault("lose-answers");
    let lost = client.close_batch(close.clone()).await.unwrap_err();
    assert_eq!(reason(&lost), "OUTCOME_UNKNOWN", "{lost:?}");
    lane.fault("down");
    let retry = client.close_batch(close.clone()).await.unwrap_err();
    assert_eq!(reason(&retry), "OUTCOME_UNKNOWN", "the first close may have happened: {retry:?}");
    lane.fault("none");
    // A sale after the lost close belongs to the next batch.
    final_payment(&lane.pay("k-day-later", 4_000).await);
    let first = client.close_batch(close.clone()).await.unwrap().into_inner();
    assert_eq!(first.totals.len(), 1, "{first:?}");
    assert_eq!(
        (first.totals[0].count, first.totals[0].captured_minor),
        (3, 6_000),
        "the batch closed first: {first:?}"
    );
    let next = client.close_batch(close).await.unwrap().into_inner();
    assert_ne!(next.batch_id, first.batch_id);
    assert_eq!((next.totals[0].count, next.totals[0].captured_minor), (1, 4_000), "{next:?}");
    let events = lane.events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "batch_closed").count(), 2, "one event per batch");
    lane.finish();
}
