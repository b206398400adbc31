//! Captures, voids and refunds in one process (`engine::test_support`):
//! gateway-sim's service behind the real gateway client, under tokio's
//! paused clock, at each failure point of the call (not sent, the answer
//! lost after the gateway booked it, no answer in time, refused), asserted
//! on posd's store and on the gateway's ledger.

use gateway_sim::Fault;
use pos_engine::Status;
use tokio::time::Instant;

use crate::engine::EngineError;
use crate::engine::test_support::{REQUEST_TIMEOUT, Rig, rig};
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
