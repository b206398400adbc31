//! Captures, voids, refunds and end of day in one process
//! (`engine::test_support`): gateway-sim's service behind the real gateway
//! client, under tokio's paused clock, at each failure point of the call
//! (not sent, the answer lost after the gateway booked it, no answer in
//! time, refused), asserted on posd's store and on the gateway's ledger;
//! and capture windows, counted on the engine's wall clock, which follows
//! the paused clock.

use std::time::Duration;

use gateway_sim::Fault;
use pos_engine::Status;
use tokio::time::Instant;

use crate::engine::test_support::{LANE, REQUEST_TIMEOUT, Rig, published, rig, rig_with_lane, settings};
use crate::engine::{EngineError, EngineSettings};
use crate::printer::fake::Sent;
use crate::store::{EventKind, RefundRecord, RefundStatus, SendKind};

/// The register's error as its kind and stable code.
fn code(e: EngineError) -> String {
    match e {
        EngineError::Unavailable(code, _) => format!("unavailable {code}"),
        EngineError::DeadlineExceeded(code, _) => format!("deadline {code}"),
        EngineError::FailedPrecondition(code, _) => format!("precondition {code}"),
        other => format!("{other:?}"),
    }
}

async fn ask_refund(r: &Rig, key: &str, payment_id: &str, amount_minor: i64) -> Result<RefundRecord, EngineError> {
    r.engine.refund_payment(key, payment_id, amount_minor, "returned", "test").await
}

/// posd's refunds of a payment.
fn refunds_of(r: &Rig, payment_id: &str) -> Vec<RefundRecord> {
    r.engine.store.refunds_of(payment_id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_capture_is_booked_once_and_its_repeat_answered_by_posd() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    assert_eq!(p.status, Status::Authorized);
    let charge = r.gateway.charge(&p.gateway_key).unwrap();
    assert_eq!((charge.status.as_str(), charge.captured), ("approved", false));

    let captured = r.engine.capture_payment(&p.id, 1_500, "test").await.unwrap();
    assert_eq!((captured.status, captured.captured_minor), (Status::Captured, 1_500));
    let charge = r.gateway.charge(&p.gateway_key).unwrap();
    assert_eq!((charge.captured, charge.captured_minor), (true, 1_500));

    let calls = r.gateway.dials();
    let again = r.engine.capture_payment(&p.id, 1_500, "test").await.unwrap();
    assert_eq!((again.status, again.captured_minor), (Status::Captured, 1_500));
    assert_eq!(r.gateway.dials(), calls, "a capture already stored is not sent again");
}

#[tokio::test(start_paused = true)]
async fn a_capture_whose_answer_is_lost_is_unknown_until_the_same_request_settles_it() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.fault(Fault::LoseAnswers);

    let e = r.engine.capture_payment(&p.id, 0, "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);
    assert!(r.engine.store.sent_before(SendKind::Capture, &p.gateway_key).unwrap());
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().captured_minor, 2_000, "the gateway booked it");

    r.gateway.fault(Fault::None);
    let captured = r.engine.capture_payment(&p.id, 0, "test").await.unwrap();
    assert_eq!((captured.status, captured.captured_minor), (Status::Captured, 2_000));
    let charge = r.gateway.charge(&p.gateway_key).unwrap();
    assert_eq!((charge.captured, charge.captured_minor), (true, 2_000));
}

#[tokio::test(start_paused = true)]
async fn a_capture_not_sent_is_unreachable_and_takes_back_its_note() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.fault(Fault::Down);

    let e = r.engine.capture_payment(&p.id, 0, "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable GATEWAY_UNREACHABLE");
    assert!(!r.engine.gateway.is_online(), "a refused connection is the network's: the gateway is offline");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);
    assert!(!r.engine.store.sent_before(SendKind::Capture, &p.gateway_key).unwrap(), "nothing can be at the gateway");
    assert!(!r.gateway.charge(&p.gateway_key).unwrap().captured);

    r.gateway.fault(Fault::None);
    let captured = r.engine.capture_payment(&p.id, 0, "test").await.unwrap();
    assert_eq!(captured.status, Status::Captured);
    assert!(r.engine.gateway.is_online());
}

#[tokio::test(start_paused = true)]
async fn a_capture_without_an_answer_in_time_stays_unknown_while_a_repeat_is_not_sent() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.fault(Fault::Hang);

    let began = Instant::now();
    let e = r.engine.capture_payment(&p.id, 0, "test").await.unwrap_err();
    assert_eq!(code(e), "deadline OUTCOME_UNKNOWN");
    let waited = began.elapsed();
    assert!(waited >= REQUEST_TIMEOUT && waited < REQUEST_TIMEOUT * 2, "waits the request timeout: {waited:?}");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);

    // Not sent now, but the first attempt may be at the gateway: still unknown.
    r.gateway.fault(Fault::Down);
    let e = r.engine.capture_payment(&p.id, 0, "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    assert!(r.engine.store.sent_before(SendKind::Capture, &p.gateway_key).unwrap(), "the note is kept");

    r.gateway.fault(Fault::None);
    let captured = r.engine.capture_payment(&p.id, 0, "test").await.unwrap();
    assert_eq!((captured.status, captured.captured_minor), (Status::Captured, 2_000));
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().captured_minor, 2_000);
}

#[tokio::test(start_paused = true)]
async fn a_capture_the_gateway_refuses_leaves_the_payment_authorized() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.edit(|ledger| ledger.set_status(&p.gateway_key, "voided").unwrap());

    let e = r.engine.capture_payment(&p.id, 0, "test").await.unwrap_err();
    assert_eq!(code(e), "precondition GATEWAY_REFUSED");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);
    assert!(!r.gateway.charge(&p.gateway_key).unwrap().captured);
    assert!(r.engine.gateway.is_online(), "a refusal is an answer");
}

#[tokio::test(start_paused = true)]
async fn a_void_releases_the_hold_once() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;

    let voided = r.engine.void_payment(&p.id, "", "test").await.unwrap();
    assert_eq!(voided.status, Status::Voided);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "voided");

    let calls = r.gateway.dials();
    assert_eq!(r.engine.void_payment(&p.id, "", "test").await.unwrap().status, Status::Voided);
    assert_eq!(r.gateway.dials(), calls, "a void already stored is not sent again");
}

#[tokio::test(start_paused = true)]
async fn a_void_whose_answer_is_lost_is_settled_by_its_repeat() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.fault(Fault::LoseAnswers);

    let e = r.engine.void_payment(&p.id, "", "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);
    assert!(r.engine.store.sent_before(SendKind::Void, &p.gateway_key).unwrap());
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "voided", "the gateway voided it");

    r.gateway.fault(Fault::None);
    assert_eq!(r.engine.void_payment(&p.id, "", "test").await.unwrap().status, Status::Voided);
}

#[tokio::test(start_paused = true)]
async fn a_void_without_an_answer_in_time_is_repeated_safely() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;
    r.gateway.fault(Fault::Hang);

    let e = r.engine.void_payment(&p.id, "", "test").await.unwrap_err();
    assert_eq!(code(e), "deadline OUTCOME_UNKNOWN");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);

    r.gateway.fault(Fault::None);
    assert_eq!(r.engine.void_payment(&p.id, "", "test").await.unwrap().status, Status::Voided);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "voided");
}

#[tokio::test(start_paused = true)]
async fn a_void_not_sent_or_refused_leaves_the_payment_authorized() {
    let r = rig().await;
    let p = r.pay(2_000, true).await;

    r.gateway.fault(Fault::Down);
    let e = r.engine.void_payment(&p.id, "", "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable GATEWAY_UNREACHABLE");
    assert!(!r.engine.store.sent_before(SendKind::Void, &p.gateway_key).unwrap());

    // Captured at the gateway meanwhile: it refuses the void.
    r.gateway.fault(Fault::None);
    r.gateway.edit(|ledger| ledger.set_captured(&p.gateway_key, 2_000).unwrap());
    let e = r.engine.void_payment(&p.id, "", "test").await.unwrap_err();
    assert_eq!(code(e), "precondition GATEWAY_REFUSED");

    assert_eq!(r.stored(&p.id).status, Status::Authorized);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "approved");
}

#[tokio::test(start_paused = true)]
async fn a_full_refund_and_its_repeat_book_one_refund() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;
    assert_eq!(p.status, Status::Captured);

    let refund = ask_refund(&r, "r-1", &p.id, 0).await.unwrap();
    assert_eq!((refund.status, refund.amount_minor), (RefundStatus::Succeeded, 2_000));
    assert!(r.engine.store.has_event(EventKind::RefundSucceeded, &p.id, "refunded 2000 EUR").unwrap());

    let calls = r.gateway.dials();
    let again = ask_refund(&r, "r-1", &p.id, 0).await.unwrap();
    assert_eq!((again.id.as_str(), again.status), (refund.id.as_str(), RefundStatus::Succeeded));
    assert_eq!(r.gateway.dials(), calls, "a refund already settled is not sent again");

    assert_eq!(refunds_of(&r, &p.id).len(), 1);
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(refund.refund_key, 2_000, true)]);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().refunded_minor, 2_000);
}

#[tokio::test(start_paused = true)]
async fn partial_refunds_add_up_to_the_capture_and_no_further() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;

    for (key, amount) in [("r-1", 500), ("r-2", 700)] {
        let refund = ask_refund(&r, key, &p.id, amount).await.unwrap();
        assert_eq!((refund.status, refund.amount_minor), (RefundStatus::Succeeded, amount));
    }
    let calls = r.gateway.dials();
    let e = ask_refund(&r, "r-3", &p.id, 900).await.unwrap_err();
    assert_eq!(code(e), "precondition REFUND_EXCEEDS_CAPTURE");
    assert_eq!(r.gateway.dials(), calls, "an over-refund is refused by posd: nothing is sent");

    let rest = ask_refund(&r, "r-4", &p.id, 0).await.unwrap();
    assert_eq!((rest.status, rest.amount_minor), (RefundStatus::Succeeded, 800), "0: everything not refunded");
    let e = ask_refund(&r, "r-5", &p.id, 0).await.unwrap_err();
    assert_eq!(code(e), "precondition REFUND_EXCEEDS_CAPTURE");

    assert_eq!(refunds_of(&r, &p.id).len(), 3, "refused refunds are not recorded");
    let booked: Vec<(i64, bool)> = r.gateway.refunds(&p.gateway_key).into_iter().map(|(_, a, ok)| (a, ok)).collect();
    assert_eq!(booked, [(500, true), (700, true), (800, true)]);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().refunded_minor, 2_000);
}

/// The class of bug an outside run found: a refund retried under the same
/// idempotency key across gateway faults was booked twice.
#[tokio::test(start_paused = true)]
async fn a_refund_whose_answer_was_lost_is_booked_once_across_retries_through_faults() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;

    r.gateway.fault(Fault::LoseAnswers);
    let e = ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    let refunds = refunds_of(&r, &p.id);
    let [pending] = &refunds[..] else { panic!("one refund") };
    assert_eq!(pending.status, RefundStatus::Pending);
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(pending.refund_key.clone(), 1_000, true)], "booked");
    // Pending, it still counts against the capture.
    let e = ask_refund(&r, "r-2", &p.id, 1_500).await.unwrap_err();
    assert_eq!(code(e), "precondition REFUND_EXCEEDS_CAPTURE");

    for fault in [Fault::Down, Fault::Hang, Fault::Flaky(100)] {
        r.gateway.fault(fault);
        let e = ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap_err();
        assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN", "retried under {fault}");
        assert_eq!(refunds_of(&r, &p.id)[0].status, RefundStatus::Pending, "under {fault}");
    }

    r.gateway.fault(Fault::None);
    let settled = ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!((settled.id.as_str(), settled.status), (pending.id.as_str(), RefundStatus::Succeeded));
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(pending.refund_key.clone(), 1_000, true)], "exactly one");
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().refunded_minor, 1_000);
    assert_eq!(refunds_of(&r, &p.id).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refund_without_an_answer_in_time_is_booked_once_when_repeated() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;

    r.gateway.fault(Fault::Hang);
    let e = ask_refund(&r, "r-1", &p.id, 2_000).await.unwrap_err();
    assert_eq!(code(e), "deadline OUTCOME_UNKNOWN");
    assert_eq!(refunds_of(&r, &p.id)[0].status, RefundStatus::Pending);

    // The held request is booked once the gateway moves on, before or after
    // the repeat asks: under one refund key, either way.
    r.gateway.fault(Fault::None);
    let settled = ask_refund(&r, "r-1", &p.id, 2_000).await.unwrap();
    assert_eq!(settled.status, RefundStatus::Succeeded);
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(settled.refund_key, 2_000, true)]);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().refunded_minor, 2_000);
}

#[tokio::test(start_paused = true)]
async fn a_refund_never_sent_fails_and_frees_its_amount() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;

    r.gateway.fault(Fault::Down);
    let failed = ask_refund(&r, "r-1", &p.id, 2_000).await.unwrap();
    assert_eq!((failed.status, failed.failure_code.as_str()), (RefundStatus::Failed, "gateway_unreachable"));
    assert!(r.engine.store.has_event(EventKind::RefundFailed, &p.id, "refund of 2000 failed").unwrap());
    assert!(r.gateway.refunds(&p.gateway_key).is_empty());

    r.gateway.fault(Fault::None);
    let refund = ask_refund(&r, "r-2", &p.id, 2_000).await.unwrap();
    assert_eq!(refund.status, RefundStatus::Succeeded, "a failed refund does not count against the capture");
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(refund.refund_key, 2_000, true)]);
}

#[tokio::test(start_paused = true)]
async fn a_refund_the_gateway_refuses_fails_with_its_reason() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;
    r.gateway.edit(|ledger| ledger.set_status(&p.gateway_key, "voided").unwrap());

    let failed = ask_refund(&r, "r-1", &p.id, 500).await.unwrap();
    assert_eq!((failed.status, failed.failure_code.as_str()), (RefundStatus::Failed, "not_captured"));
    assert!(r.engine.store.has_event(EventKind::RefundFailed, &p.id, "refund of 500 failed: not_captured").unwrap());
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(failed.refund_key, 500, false)]);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().refunded_minor, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refund_in_doubt_the_gateway_cannot_be_asked_about_waits_for_a_person() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;
    r.gateway.fault(Fault::LoseAnswers);
    ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap_err();

    r.gateway.fault(Fault::NoRefundStatus);
    let e = ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    let alert = format!("refund {} ", refunds_of(&r, &p.id)[0].id);
    assert!(r.engine.store.has_event(EventKind::RefundOutcomeUnknown, &p.id, &alert).unwrap());

    // The background leaves it to a person: it is neither asked about nor sent.
    let calls = r.gateway.dials();
    r.engine.settle_pending_refunds().await;
    assert_eq!(r.gateway.dials(), calls);
    assert_eq!(refunds_of(&r, &p.id)[0].status, RefundStatus::Pending);
    assert_eq!(r.gateway.refunds(&p.gateway_key).len(), 1, "never sent a second time");
}

#[tokio::test(start_paused = true)]
async fn a_pending_refund_is_settled_in_the_background_by_the_gateway_s_record() {
    let r = rig().await;
    let p = r.pay(2_000, false).await;
    r.gateway.fault(Fault::LoseAnswers);
    ask_refund(&r, "r-1", &p.id, 1_000).await.unwrap_err();
    r.gateway.fault(Fault::None);
    assert!(r.engine.gateway.is_online());

    let calls = r.gateway.dials();
    r.engine.settle_pending_refunds().await;
    assert_eq!(r.gateway.dials(), calls + 1, "one status query; the refund is not sent again");
    let refunds = refunds_of(&r, &p.id);
    let [refund] = &refunds[..] else { panic!("one refund") };
    assert_eq!(refund.status, RefundStatus::Succeeded);
    assert_eq!(r.gateway.refunds(&p.gateway_key), [(refund.refund_key.clone(), 1_000, true)]);
}

/// The capture window of these tests.
const WINDOW: Duration = Duration::from_secs(48 * 3600);

async fn with_capture_window() -> Rig {
    rig_with_lane(EngineSettings { capture_window: Some(WINDOW), ..settings() }).await
}

#[tokio::test(start_paused = true)]
async fn an_authorization_not_captured_within_its_window_is_reversed_once() {
    let r = with_capture_window().await;
    let old = r.pay(2_000, true).await;
    tokio::time::advance(WINDOW - Duration::from_secs(60)).await;
    let young = r.pay(3_000, true).await;
    assert_eq!((old.status, young.status), (Status::Authorized, Status::Authorized));

    let calls = r.gateway.dials();
    r.engine.expire_authorizations().await;
    assert_eq!(r.stored(&old.id).status, Status::Authorized, "a minute short of its window");
    assert_eq!(r.gateway.dials(), calls);

    tokio::time::advance(Duration::from_secs(120)).await;
    r.engine.expire_authorizations().await;
    assert_eq!(r.gateway.dials(), calls + 1, "the gateway's record is read first");
    let expired = r.stored(&old.id);
    assert_eq!((expired.status, expired.reason_code.as_str()), (Status::ReversalPending, "capture_window_passed"));
    assert_eq!(r.stored(&young.id).status, Status::Authorized, "within its window");
    let events = r.events(EventKind::AuthorizationExpired);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payment_id, old.id);
    assert!(events[0].message.contains("capture window (48h)"), "{}", events[0].message);

    let mut followed = r.follow(&old.id);
    let worker = tokio::spawn(r.engine.clone().reversal_worker());
    published(&mut followed, Status::Reversed).await;
    worker.abort();
    assert_eq!(r.stored(&old.id).status, Status::Reversed);
    assert_eq!(r.gateway.charge(&old.gateway_key).unwrap().status, "reversed", "the hold is released");
    assert_eq!(r.gateway.dials(), calls + 2, "one reversal");

    r.engine.expire_authorizations().await;
    assert_eq!(r.gateway.dials(), calls + 2, "a reversed authorization is not looked at again");
    assert_eq!(r.events(EventKind::AuthorizationExpired).len(), 1);
    let held = r.gateway.charge(&young.gateway_key).unwrap();
    assert_eq!((held.status.as_str(), held.captured), ("approved", false), "the younger hold stays");
}

#[tokio::test(start_paused = true)]
async fn an_authorization_captured_within_its_window_is_not_reversed() {
    let r = with_capture_window().await;
    let p = r.pay(2_000, true).await;
    tokio::time::advance(WINDOW / 2).await;
    let captured = r.engine.capture_payment(&p.id, 1_500, "test").await.unwrap();
    assert_eq!(captured.status, Status::Captured);

    tokio::time::advance(WINDOW).await;
    let calls = r.gateway.dials();
    r.engine.expire_authorizations().await;
    assert_eq!(r.gateway.dials(), calls, "nothing to ask about");
    let stored = r.stored(&p.id);
    assert_eq!((stored.status, stored.captured_minor), (Status::Captured, 1_500));
    let charge = r.gateway.charge(&p.gateway_key).unwrap();
    assert_eq!((charge.status.as_str(), charge.captured_minor), ("approved", 1_500));
    assert!(r.events(EventKind::AuthorizationExpired).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_capture_in_hand_when_the_window_passes_goes_first_and_is_not_reversed() {
    let r = with_capture_window().await;
    let p = r.pay(2_000, true).await;
    tokio::time::advance(WINDOW + Duration::from_secs(60)).await;

    // The register's capture is at the gateway (which takes its time).
    r.gateway.fault(Fault::Latency(500));
    let calls = r.gateway.dials();
    let capture = tokio::spawn({
        let (engine, id) = (r.engine.clone(), p.id.clone());
        async move { engine.capture_payment(&id, 0, "test").await }
    });
    r.gateway.dialed(calls + 1).await;
    r.engine.expire_authorizations().await;
    assert_eq!(r.gateway.dials(), calls + 1, "the expiry leaves a payment in hand alone");
    assert_eq!(r.stored(&p.id).status, Status::Authorized);

    let captured = capture.await.unwrap().unwrap();
    assert_eq!((captured.status, captured.captured_minor), (Status::Captured, 2_000));
    r.gateway.fault(Fault::None);
    r.engine.expire_authorizations().await;
    assert_eq!(r.gateway.dials(), calls + 1, "a captured payment does not expire");
    let charge = r.gateway.charge(&p.gateway_key).unwrap();
    assert_eq!((charge.status.as_str(), charge.captured), ("approved", true), "captured, never reversed");
    assert!(r.events(EventKind::AuthorizationExpired).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_end_of_day_whose_answer_was_lost_closes_one_batch_when_repeated() {
    let r = rig_with_lane(settings()).await;
    let first = r.pay(2_000, false).await;
    let second = r.pay(3_000, false).await;
    r.gateway.fault(Fault::LoseAnswers);

    let e = r.engine.close_batch(LANE, "test").await.unwrap_err();
    assert_eq!(code(e), "unavailable OUTCOME_UNKNOWN");
    let closed = r.gateway.batch_keys();
    assert_eq!(closed.len(), 1, "the gateway closed the batch");
    let batch_id = closed[0].1.clone();
    for p in [&first, &second] {
        assert_eq!(r.gateway.batch_of(&p.gateway_key), Some(batch_id.clone()));
    }
    assert!(r.events(EventKind::BatchClosed).is_empty(), "no answer to record");

    // Sold after the lost answer: not in the batch the gateway closed.
    r.gateway.fault(Fault::None);
    let later = r.pay(4_000, false).await;
    let summary = r.engine.close_batch(LANE, "test").await.unwrap();
    assert_eq!(summary.batch_id, batch_id, "answered with the batch closed before, by its key");
    assert_eq!(r.gateway.batch_keys(), closed, "closed once");
    let totals: Vec<_> = summary.totals.iter().map(|t| (t.currency.as_str(), t.count, t.captured_minor)).collect();
    assert_eq!(totals, vec![("EUR", 2, 5_000)]);
    assert_eq!(r.gateway.batch_of(&later.gateway_key), None);
    let events = r.events(EventKind::BatchClosed);
    assert_eq!(events.len(), 1);
    let expected = format!("batch {batch_id} closed by test: 2 x 5000 EUR");
    assert!(events[0].message.starts_with(&expected), "{}", events[0].message);

    // The slip on the lane's printer, dated by the engine's wall clock.
    let sent = r.printer().sent();
    let [Sent::Job(slip)] = sent.as_slice() else { panic!("one slip: {sent:?}") };
    let slip = String::from_utf8_lossy(slip);
    for part in ["END OF DAY", batch_id.as_str(), "2026-03-02"] {
        assert!(slip.contains(part), "{part:?} on the slip:\n{slip}");
    }
    assert_eq!(r.events(EventKind::SlipPrinted).len(), 1);

    // The next end of day is a new batch under a new key.
    let next = r.engine.close_batch(LANE, "test").await.unwrap();
    assert_ne!(next.batch_id, batch_id);
    assert_eq!(r.gateway.batch_of(&later.gateway_key), Some(next.batch_id.clone()));
    assert_eq!(r.gateway.batch_keys().len(), 2);
}
