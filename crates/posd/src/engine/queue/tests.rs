//! The offline queue forwarded in one process (`engine::test_support`):
//! payments approved offline while the gateway was down, then forwarded to
//! gateway-sim's service at each failure point (not sent, the answer lost
//! after the gateway booked the batch, no answer in time, credentials
//! refused, items refused, posd stopped while a batch was out), asserted on
//! posd's store and on the ledger.

use std::time::Duration;

use gateway_sim::Fault;
use pos_engine::Status;

use crate::engine::test_support::{REQUEST_TIMEOUT, Rig, next_event, rig};
use crate::store::{EventKind, PaymentRecord, StoredEventKind};

/// Payments of these amounts, approved offline with the gateway down.
async fn queued(r: &Rig, amounts: &[i64]) -> Vec<PaymentRecord> {
    r.gateway.fault(Fault::Down);
    let mut queued = Vec::new();
    for &amount in amounts {
        let p = r.pay(amount, false).await;
        assert_eq!(p.status, Status::OfflineApproved);
        queued.push(p);
    }
    assert!(r.gateway.charges().is_empty(), "nothing reached the gateway");
    queued
}

/// One forwarding round of what the outbox holds, as the forwarder makes it.
async fn forward(r: &Rig) -> Option<bool> {
    let batch = r.engine.store.outbox_batch(10).unwrap();
    r.engine.forward_once(batch).await.unwrap()
}

/// The payments as stored: (status, forwarding attempts).
fn states(r: &Rig, payments: &[PaymentRecord]) -> Vec<(Status, i64)> {
    payments.iter().map(|p| r.stored(&p.id)).map(|s| (s.status, s.forward_attempts)).collect()
}

/// Each payment is captured with the charge the gateway booked under its
/// key, and the gateway holds no other charge.
fn assert_forwarded_once(r: &Rig, payments: &[PaymentRecord]) {
    for p in payments {
        let stored = r.stored(&p.id);
        let charge = r.gateway.charge(&p.gateway_key).expect("booked under the payment's key");
        assert_eq!(stored.status, Status::Captured);
        assert_eq!((charge.amount_minor, charge.status.as_str(), charge.captured), (p.amount_minor, "approved", true));
        assert_eq!(stored.auth_code, charge.auth_code, "the gateway's one booking");
        assert_eq!(r.engine.store.encrypted_card(&p.id).unwrap(), None, "the card data goes with the answer");
    }
    assert_eq!(r.gateway.charges().len(), payments.len(), "one booking per payment");
    assert_eq!(r.engine.store.queue_summary().unwrap().count, 0, "the queue is empty");
}

#[tokio::test(start_paused = true)]
async fn the_forwarder_sends_a_batch_whose_answer_was_lost_again_and_it_is_booked_once() {
    let r = rig().await;
    let payments = queued(&r, &[1_000, 2_000, 3_000]).await;
    r.gateway.fault(Fault::LoseAnswers);
    r.engine.gateway.probe().await;
    assert!(r.engine.gateway.is_online());
    let mut events = r.engine.subscribe_events();
    let forwarder = tokio::spawn(r.engine.clone().forwarder());

    let failed = next_event(&mut events, EventKind::ForwardFailed).await;
    assert!(failed.message.contains("answer lost"), "{}", failed.message);
    assert_eq!(r.gateway.charges().len(), 3, "the gateway booked the batch");

    r.gateway.fault(Fault::None);
    for _ in &payments {
        next_event(&mut events, EventKind::Forwarded).await;
    }
    forwarder.abort();
    assert!(states(&r, &payments).iter().all(|&(_, attempts)| attempts >= 2), "sent again");
    assert_forwarded_once(&r, &payments);
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_answer_was_lost_goes_again_under_the_same_keys() {
    let r = rig().await;
    let payments = queued(&r, &[1_000, 2_000]).await;

    r.gateway.fault(Fault::LoseAnswers);
    assert_eq!(forward(&r).await, Some(false), "the round failed");
    assert_eq!(states(&r, &payments), [(Status::OfflineApproved, 1); 2]);
    assert!(r.stored(&payments[0].id).last_error.contains("answer lost"));
    assert_eq!(r.gateway.charges().len(), 2, "the gateway booked both");

    // A gateway that answers a repeated key "already exists": posd asks
    // for the charge under the key instead.
    r.gateway.fault(Fault::ConflictOnRepeat);
    assert_eq!(forward(&r).await, None);
    assert_eq!(states(&r, &payments), [(Status::Captured, 2); 2]);
    assert_forwarded_once(&r, &payments);
}

#[tokio::test(start_paused = true)]
async fn a_batch_not_sent_stays_queued() {
    let r = rig().await;
    let payments = queued(&r, &[1_000, 2_000]).await;
    let mut events = r.engine.subscribe_events();

    assert_eq!(forward(&r).await, Some(false));
    assert_eq!(states(&r, &payments), [(Status::OfflineApproved, 1); 2]);
    assert!(r.stored(&payments[0].id).last_error.contains("cannot connect"));
    let failed = next_event(&mut events, EventKind::ForwardFailed).await;
    assert!(failed.message.starts_with("2 payments stay queued"), "{}", failed.message);
    assert!(r.gateway.charges().is_empty());

    r.gateway.fault(Fault::None);
    assert_eq!(forward(&r).await, None);
    assert_forwarded_once(&r, &payments);
}

#[tokio::test(start_paused = true)]
async fn a_batch_without_an_answer_in_time_is_booked_once() {
    let r = rig().await;
    let payments = queued(&r, &[1_000, 2_000]).await;

    r.gateway.fault(Fault::Hang);
    let began = tokio::time::Instant::now();
    assert_eq!(forward(&r).await, Some(false));
    assert!(began.elapsed() >= REQUEST_TIMEOUT);
    assert_eq!(states(&r, &payments), [(Status::OfflineApproved, 1); 2]);
    assert!(r.stored(&payments[0].id).last_error.contains("no answer within"));

    // The held batch is booked once the gateway moves on, before or after
    // the next round: each key once, either way.
    r.gateway.fault(Fault::None);
    assert_eq!(forward(&r).await, None);
    assert_forwarded_once(&r, &payments);
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_pause_forwarding_until_sync_now() {
    let r = rig().await;
    let payments = queued(&r, &[1_000, 2_000]).await;
    r.gateway.fault(Fault::ExpiredCredentials);
    let mut events = r.engine.subscribe_events();

    assert_eq!(forward(&r).await, Some(true), "a credentials error");
    let paused = next_event(&mut events, EventKind::ForwardingPaused).await;
    assert!(paused.message.contains("Unauthenticated"), "{}", paused.message);
    assert!(r.engine.sync_report().unwrap().paused);
    assert!(r.engine.gateway.is_online(), "the gateway answered: the link is up, the credentials are not");
    assert_eq!(states(&r, &payments), [(Status::OfflineApproved, 1); 2]);
    assert!(r.gateway.charges().is_empty());

    // Still refused: still paused, alerted once.
    assert_eq!(forward(&r).await, Some(true));
    let alerts = r.engine.store.events_after(0, 1000).unwrap();
    let paused_events = alerts.iter().filter(|e| e.kind == StoredEventKind::Known(EventKind::ForwardingPaused));
    assert_eq!(paused_events.count(), 1);

    r.gateway.fault(Fault::None);
    r.engine.sync_now();
    assert!(!r.engine.sync_report().unwrap().paused);
    assert_eq!(forward(&r).await, None);
    assert_forwarded_once(&r, &payments);
}

#[tokio::test(start_paused = true)]
async fn an_item_the_gateway_refuses_is_quarantined_or_declined_alone() {
    let r = rig().await;
    // 19.98: another merchant account's; 12.05: declined.
    let payments = queued(&r, &[2_000, 1_998, 1_205]).await;
    let (good, mismatch, declined) = (&payments[0], &payments[1], &payments[2]);

    r.gateway.fault(Fault::None);
    assert_eq!(forward(&r).await, None, "nothing goes back to the queue");
    assert_eq!(r.stored(&good.id).status, Status::Captured);
    let q = r.stored(&mismatch.id);
    assert_eq!((q.status, q.reason_code.as_str()), (Status::Quarantined, "account_mismatch"));
    let d = r.stored(&declined.id);
    assert_eq!((d.status, d.reason_code.as_str()), (Status::OfflineDeclined, "generic_decline"));
    assert!(r.engine.store.has_event(EventKind::Quarantined, &mismatch.id, "account_mismatch").unwrap());
    assert!(r.engine.store.has_event(EventKind::OfflineDeclined, &declined.id, "declined when forwarded").unwrap());
    assert!(r.gateway.charge(&mismatch.gateway_key).is_none(), "refused before booking");
    assert_eq!(r.gateway.charge(&declined.gateway_key).unwrap().status, "declined");

    // The account is mended; a person puts the payment back, same key.
    r.gateway.fix_accounts();
    let requeued = r.engine.requeue_payment(&mismatch.id, "test").await.unwrap();
    assert_eq!(requeued.status, Status::OfflineApproved);
    assert_eq!(forward(&r).await, None);
    let charge = r.gateway.charge(&mismatch.gateway_key).unwrap();
    assert_eq!((r.stored(&mismatch.id).status, charge.status.as_str()), (Status::Captured, "approved"));
    assert_eq!(r.gateway.charges().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_payment_never_sent_expires_once_the_ageing_clock_passes_expire_after() {
    let r = rig().await;
    let payments = queued(&r, &[1_000]).await;
    let f = r.engine.settings.forward.clone();

    r.engine.age_queue(&f).await;
    assert_eq!(r.stored(&payments[0].id).status, Status::OfflineApproved, "young enough");

    tokio::time::advance(f.expire_after + Duration::from_secs(1)).await;
    r.engine.age_queue(&f).await;
    let p = r.stored(&payments[0].id);
    assert_eq!(p.status, Status::Expired);
    assert!(r.engine.store.has_event(EventKind::Expired, &p.id, "not forwarded within 72h").unwrap());
    assert_eq!(r.engine.store.encrypted_card(&p.id).unwrap(), None, "its card data is deleted");
    assert!(r.gateway.charges().is_empty(), "nothing is charged");
}

#[tokio::test(start_paused = true)]
async fn a_payment_left_forwarding_at_a_restart_goes_back_in_the_queue_and_is_charged_once() {
    let mut r = rig().await;
    let payments = queued(&r, &[1_000, 2_000]).await;
    // posd stops while the first one's batch is at the gateway, unanswered.
    r.gateway.fault(Fault::Hang);
    let batch = r.engine.store.outbox_batch(1).unwrap();
    let calls = r.gateway.dials();
    tokio::select! {
        _ = r.engine.forward_once(batch) => panic!("posd stops before the gateway answers"),
        () = r.gateway.dialed(calls + 1) => {}
    }
    let left: Vec<Status> = states(&r, &payments).into_iter().map(|(status, _)| status).collect();
    assert_eq!(left, vec![Status::Forwarding, Status::OfflineApproved]);
    r.gateway.fault(Fault::None);

    r.restart();
    r.engine.recover().await.unwrap();
    for p in &payments {
        let queued = r.stored(&p.id);
        assert_eq!((queued.status, queued.gateway_key.as_str()), (Status::OfflineApproved, p.gateway_key.as_str()));
    }
    assert_eq!(r.engine.store.queue_summary().unwrap().count, 2, "both wait to be forwarded");

    assert_eq!(forward(&r).await, None);
    assert_forwarded_once(&r, &payments);
}
