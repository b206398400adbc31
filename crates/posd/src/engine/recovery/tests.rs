//! Start-up recovery and the reversal worker in one process
//! (`engine::test_support`). At a restart (`Rig::restart`) a payment a
//! stopped posd left in doubt is settled by one status query, and one left
//! before its authorization was sent is failed as interrupted, nothing
//! asked; a charge whose answer posd gave up on is reversed at gateway-sim's
//! service, retried through each failure point (not sent, the answer lost
//! after the gateway reversed it, no answer in time) until acknowledged.

use gateway_sim::Fault;
use pos_engine::{Input, Status, next};
use pos_proto::terminal as pb;
use tokio::sync::broadcast;

use crate::engine::test_support::{REQUEST_TIMEOUT, Rig, published, rig, rig_with_lane, settings};
use crate::store::{PaymentRecord, Update};

/// A payment whose authorization the gateway booked only after posd gave
/// up on the answer and on its status queries: every call takes longer
/// than posd waits. It ends REVERSAL_PENDING with the charge at the gateway.
async fn given_up(r: &Rig) -> PaymentRecord {
    let slower = u64::try_from((REQUEST_TIMEOUT * 5 / 2).as_millis()).unwrap();
    r.gateway.fault(Fault::Latency(slower));
    let p = r.pay(2_000, false).await;
    assert_eq!((p.status, p.reason_code.as_str()), (Status::ReversalPending, "outcome_unknown"));
    let charge = r.gateway.charge(&p.gateway_key).expect("booked after posd gave up");
    assert_eq!((charge.status.as_str(), charge.captured), ("approved", true));
    p
}

/// Starts the reversal worker under `fault`; returns once it made `attempts`
/// attempts, and follows the payment from then on.
async fn reversing(
    r: &Rig,
    p: &PaymentRecord,
    fault: Fault,
    attempts: u64,
) -> (tokio::task::JoinHandle<()>, broadcast::Receiver<pb::PaymentEvent>) {
    r.gateway.fault(fault);
    let followed = r.follow(&p.id);
    let calls = r.gateway.dials();
    let worker = tokio::spawn(r.engine.clone().reversal_worker());
    r.gateway.dialed(calls + attempts).await;
    (worker, followed)
}

#[tokio::test(start_paused = true)]
async fn a_reversal_not_sent_is_retried_until_the_gateway_is_back() {
    let r = rig().await;
    let p = given_up(&r).await;

    let (worker, mut followed) = reversing(&r, &p, Fault::Down, 1).await;
    assert_eq!(r.stored(&p.id).status, Status::ReversalPending);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "approved");

    let calls = r.gateway.dials();
    r.gateway.fault(Fault::None);
    published(&mut followed, Status::Reversed).await;
    worker.abort();
    assert!(r.gateway.dials() > calls, "tried again after the backoff");
    assert_eq!(r.stored(&p.id).status, Status::Reversed);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "reversed", "the hold is released");
    assert_eq!(r.gateway.charges().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reversal_whose_answer_was_lost_is_sent_again_until_acknowledged() {
    let r = rig().await;
    let p = given_up(&r).await;

    // The first attempt has been answered (and the answer lost) once the second begins.
    let (worker, mut followed) = reversing(&r, &p, Fault::LoseAnswers, 2).await;
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "reversed", "reversed at the gateway");
    assert_eq!(r.stored(&p.id).status, Status::ReversalPending, "not acknowledged");

    r.gateway.fault(Fault::None);
    published(&mut followed, Status::Reversed).await;
    worker.abort();
    assert_eq!(r.stored(&p.id).status, Status::Reversed);
    assert_eq!(r.gateway.charges().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reversal_without_an_answer_in_time_is_retried() {
    let r = rig().await;
    let p = given_up(&r).await;

    // The first attempt timed out once the second begins.
    let (worker, mut followed) = reversing(&r, &p, Fault::Hang, 2).await;
    assert_eq!(r.stored(&p.id).status, Status::ReversalPending);

    r.gateway.fault(Fault::None);
    published(&mut followed, Status::Reversed).await;
    worker.abort();
    assert_eq!(r.stored(&p.id).status, Status::Reversed);
    assert_eq!(r.gateway.charge(&p.gateway_key).unwrap().status, "reversed");
}

#[tokio::test(start_paused = true)]
async fn a_payment_left_authorizing_is_settled_at_start_up_by_one_status_query() {
    let mut r = rig_with_lane(settings()).await;
    let p = r.left_authorizing(2_000).await;
    assert_eq!(p.status, Status::Authorizing);
    assert!(r.engine.store.encrypted_card(&p.id).unwrap().is_some(), "its card data waits for the answer");
    let charge = r.gateway.charge(&p.gateway_key).expect("the gateway booked it");

    r.restart();
    let mut followed = r.follow(&p.id);
    let calls = r.gateway.dials();
    r.engine.recover().await.unwrap();
    published(&mut followed, Status::Captured).await;
    let settled = r.stored(&p.id);
    assert_eq!((settled.status, settled.auth_code.as_str()), (Status::Captured, charge.auth_code.as_str()));
    assert_eq!(r.gateway.dials(), calls + 1, "one status query; the authorization is not sent again");
    assert_eq!(r.gateway.charges().len(), 1);
    assert_eq!(r.engine.store.encrypted_card(&p.id).unwrap(), None, "the card data goes with the answer");
}

#[tokio::test(start_paused = true)]
async fn payments_left_before_their_authorization_are_failed_as_interrupted_at_start_up() {
    let mut r = rig_with_lane(settings()).await;
    let collecting = r.left_collecting(1_000).await;
    assert_eq!(collecting.status, Status::Collecting);
    // This posd commits CARD_READ with AUTHORIZING; a database of an older
    // one may hold it alone.
    let card_read = r.left_collecting(2_000).await;
    let read = next(Status::Collecting, &Input::CardRead).unwrap();
    r.engine.store.apply(&card_read.id, &read, Update::default(), r.engine.now_ms()).await.unwrap();
    assert_eq!(r.stored(&card_read.id).status, Status::CardRead);

    r.restart();
    let calls = r.gateway.dials();
    r.engine.recover().await.unwrap();
    for p in [&collecting, &card_read] {
        let ended = r.stored(&p.id);
        assert_eq!((ended.status, ended.reason_code.as_str()), (Status::Failed, "interrupted"), "{}", p.id);
    }
    assert_eq!(r.gateway.dials(), calls, "nothing can be at the gateway: nothing is asked");
    assert!(r.gateway.charges().is_empty());
}
