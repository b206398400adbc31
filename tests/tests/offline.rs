//! Offline store-and-forward, end to end: when the gateway cannot be reached
//! posd approves within limits, queues durably, and forwards each payment
//! exactly once when the link returns. The numbered cases are those of
//! `shared/reference/offline-payments.md`.

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, events_from, final_payment, request, status, take};

fn approved_by_amount(ledger: &[serde_json::Value], amount: i64) -> usize {
    ledger.iter().filter(|c| c["amount_minor"] == amount && c["status"] == "approved").count()
}

#[tokio::test]
async fn case_4_wan_down_before_sending_approves_offline_then_forwards_exactly_once() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let events = lane.pay("k-off-1", 1800).await;
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::OfflineApproved);
    assert!(p.approved && p.offline, "an offline approval is an approval for the register");
    assert_eq!(events.last().unwrap().stage, pb::PaymentStage::Approved as i32);
    assert!(p.auth_code.is_empty(), "offline approvals have no authorisation code");
    let sync = lane.sync().await;
    assert_eq!(sync.queue_depth, 1);
    assert_eq!(sync.stored_totals, vec![pb::Money { amount_minor: 1800, currency: "EUR".into() }]);
    assert!(lane.ledger().is_empty());
    lane.fault("none");
    let forwarded = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert!(forwarded.offline && forwarded.approved && !forwarded.auth_code.is_empty());
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(approved_by_amount(&ledger, 1800), 1);
    let kinds: Vec<String> = lane.events().await.into_iter().map(|e| e.kind).collect();
    for k in ["offline", "approved_offline", "online", "forwarded"] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
    assert_eq!(lane.sync().await.queue_depth, 0);
    lane.finish();
}

#[tokio::test]
async fn case_4_each_offline_refusal_has_its_own_reason() {
    let limits =
        "[lane.offline]\nmax_payment_minor = 5000\nmax_total_minor = 8000\nmax_payments = 3\nmax_per_card = 5\n";
    let mut lane = Lane::start_configured(&[], limits);
    lane.ready().await;
    lane.fault("down");
    let mut outcome = async |key: &str, amount: i64| {
        let p = final_payment(&lane.pay(key, amount).await);
        match status(&p) {
            pb::PaymentStatus::OfflineApproved => "ok".to_string(),
            pb::PaymentStatus::Failed => p.failure.unwrap().code,
            s => format!("{s:?}"),
        }
    };
    assert_eq!(outcome("r1", 6000).await, "amount_over_limit");
    assert_eq!(outcome("r2", 4000).await, "ok");
    assert_eq!(outcome("r3", 4500).await, "store_full_total");
    assert_eq!(outcome("r4", 3000).await, "ok");
    assert_eq!(outcome("r5", 500).await, "ok");
    assert_eq!(outcome("r6", 100).await, "store_full_count");
    lane.finish();

    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 2\n");
    lane.ready().await;
    lane.fault("down");
    for key in ["c1", "c2"] {
        assert_eq!(status(&final_payment(&lane.pay(key, 1000).await)), pb::PaymentStatus::OfflineApproved);
    }
    let p = final_payment(&lane.pay("c3", 1000).await);
    assert_eq!(p.failure.unwrap().code, "card_limit");
    lane.finish();

    for (reader, config, code) in [
        (vec![], "[lane.offline]\ncurrencies = [\"USD\"]\n", "currency_not_allowed"),
        (vec![], "[lane.offline]\nbrands = [\"mastercard\"]\n", "brand_not_allowed"),
        (vec![], "[lane.offline]\nenabled = false\n", "offline_disabled"),
        (vec!["--entry-mode", "swipe"], "", "entry_mode_not_allowed"),
        (vec!["--entry-mode", "manual"], "", "entry_mode_not_allowed"),
        (vec!["--fallback"], "", "fallback_not_allowed"),
        (vec!["--no-keys"], "", "card_data_unavailable"),
    ] {
        let mut lane = Lane::start_configured(&reader, config);
        lane.ready().await;
        lane.fault("down");
        let p = final_payment(&lane.pay("refused", 1000).await);
        assert_eq!(status(&p), pb::PaymentStatus::Failed, "{code}");
        assert_eq!(p.failure.as_ref().unwrap().code, code);
        assert!(!p.approved);
        lane.finish();
    }
}

#[tokio::test]
async fn case_4_a_terminal_that_never_reached_the_gateway_is_not_ready_for_offline() {
    let mut lane = Lane::start_never_online(&[], "");
    lane.reader_ready().await;
    let p = final_payment(&lane.pay("never-online", 1000).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    assert_eq!(p.failure.unwrap().code, "offline_not_ready");
    lane.finish();
}

#[tokio::test]
async fn case_7_a_forwarded_offline_payment_that_is_declined_is_visible_as_the_merchants_loss() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let p = final_payment(&lane.pay("k-loss", 1205).await);
    assert_eq!(status(&p), pb::PaymentStatus::OfflineApproved);
    lane.fault("none");
    let p = lane.wait_status(&p.payment_id, pb::PaymentStatus::OfflineDeclined).await;
    assert!(!p.approved);
    assert_eq!(p.decline.unwrap().code, "generic_decline");
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "offline_declined" && e.payment_id == p.payment_id), "{events:?}");
    assert_eq!(lane.ledger()[0]["status"], "declined");
    lane.finish();
}

#[tokio::test]
async fn case_8_expired_credentials_pause_forwarding_and_an_account_mismatch_is_quarantined() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 10\n");
    lane.ready().await;
    lane.fault("down");
    let good = final_payment(&lane.pay("k-good", 1000).await);
    let mismatch = final_payment(&lane.pay("k-mismatch", 1298).await);
    lane.fault("expired-credentials");
    let mut client = lane.client().await;
    client.sync_now(pb::SyncNowRequest {}).await.unwrap();
    let paused = posd_e2e::eventually("forwarding to pause", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        s.paused.then_some(s)
    })
    .await;
    assert_eq!(paused.queue_depth, 2, "nothing quarantined or lost while paused");
    assert!(paused.last_error.contains("credentials"), "{}", paused.last_error);
    assert!(lane.events().await.iter().any(|e| e.kind == "forwarding_paused"));
    lane.fault("none");
    client.sync_now(pb::SyncNowRequest {}).await.unwrap();
    lane.wait_status(&good.payment_id, pb::PaymentStatus::Captured).await;
    let q = lane.wait_status(&mismatch.payment_id, pb::PaymentStatus::Quarantined).await;
    assert_eq!(q.failure.unwrap().code, "account_mismatch");
    let sync = lane.sync().await;
    assert_eq!((sync.queue_depth, sync.quarantined), (1, 1));
    assert!(lane.events().await.iter().any(|e| e.kind == "quarantined" && e.payment_id == mismatch.payment_id));
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn a_quarantined_payment_requeued_once_its_account_is_fixed_is_forwarded_exactly_once() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let p = final_payment(&lane.pay("k-requeue", 2498).await);
    assert_eq!(status(&p), pb::PaymentStatus::OfflineApproved);
    // Only a quarantined payment can be requeued.
    let (st, _, err) = lane.posctl(&["requeue", &p.payment_id]);
    assert!(!st.success() && err.contains("is offline_approved; only a QUARANTINED payment"), "{err}");
    lane.fault("none");
    lane.client().await.sync_now(pb::SyncNowRequest {}).await.unwrap();
    lane.wait_status(&p.payment_id, pb::PaymentStatus::Quarantined).await;
    assert!(lane.ledger().is_empty());

    lane.ctl(&["accounts", "fixed"]);
    let (st, out, err) = lane.posctl(&["requeue", &p.payment_id, "--json"]);
    assert!(st.success(), "{out}{err}");
    let requeued: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(["offline_approved", "forwarding", "captured"].contains(&requeued["status"].as_str().unwrap()), "{out}");
    let done = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert!(done.approved && done.offline && !done.auth_code.is_empty());
    let causes: Vec<&str> = done.history.iter().map(|h| h.cause.as_str()).collect();
    assert!(causes.iter().any(|c| c.starts_with("requeued by ")), "{causes:?}");
    // The same gateway key both times: one charge.
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(approved_by_amount(&ledger, 2498), 1);
    let events = lane.events().await;
    let requeued = events.iter().find(|e| e.kind == "requeued" && e.payment_id == p.payment_id).expect("an event");
    assert!(requeued.message.contains("account_mismatch"), "{}", requeued.message);
    // Requeuing again is refused: it is captured now.
    let (st, _, err) = lane.posctl(&["requeue", &p.payment_id]);
    assert!(!st.success() && err.contains("is captured; only a QUARANTINED payment"), "{err}");
    lane.finish();
}

#[tokio::test]
async fn case_2_a_retry_answered_conflict_although_the_charge_exists_is_settled_by_status_query() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let p = final_payment(&lane.pay("k-conflict-retry", 2200).await);
    // The forwarded batch commits at the gateway, but its answer is lost.
    lane.fault("lose-answers");
    lane.client().await.sync_now(pb::SyncNowRequest {}).await.unwrap();
    posd_e2e::eventually("the gateway to commit the forwarded payment", async || {
        (approved_by_amount(&lane.ledger(), 2200) == 1).then_some(())
    })
    .await;
    // The retry under the same key is answered "already exists".
    lane.fault("conflict-on-repeat");
    lane.client().await.sync_now(pb::SyncNowRequest {}).await.unwrap();
    let done = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert!(done.approved);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn case_5_link_flapping_while_the_queue_drains_yields_one_charge_per_payment() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 100\n");
    lane.ready().await;
    let faults = ["down", "none", "flaky 50", "down", "none", "down"];
    let mut amounts = Vec::new();
    for i in 0..18i64 {
        if i % 3 == 0 {
            lane.fault(faults[(i / 3) as usize]);
        }
        let amount = 1000 + i * 100;
        let events = lane.pay(&format!("flap-{i}"), amount).await;
        let p = final_payment(&events);
        if p.approved {
            amounts.push(amount);
        }
    }
    lane.fault("none");
    let mut client = lane.client().await;
    client.sync_now(pb::SyncNowRequest {}).await.unwrap();
    posd_e2e::eventually("the queue to drain", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        (s.queue_depth == 0).then_some(())
    })
    .await;
    // Settle any online payment whose answer was lost to the flaky link.
    let list = client
        .list_payments(pb::ListPaymentsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .payments;
    for p in &list {
        if status(p) == pb::PaymentStatus::ReversalPending {
            lane.wait_status(&p.payment_id, pb::PaymentStatus::Reversed).await;
        }
    }
    let ledger = lane.ledger();
    for amount in &amounts {
        assert_eq!(approved_by_amount(&ledger, *amount), 1, "amount {amount}: {ledger:?}");
    }
    let approved_total = ledger.iter().filter(|c| c["status"] == "approved").count();
    assert_eq!(approved_total, amounts.len(), "no charge without an approved local payment");
    assert!(amounts.len() >= 12, "most payments approve (online or offline): {}", amounts.len());
    lane.finish();
}

#[tokio::test]
async fn case_6_power_cut_after_an_offline_approval_is_persisted() {
    let mut lane = Lane::start(&[]);
    lane.posd_env = vec![("POSD_FAILPOINT".into(), "offline_after_persist".into())];
    lane.restart_posd();
    lane.ready().await;
    lane.fault("down");
    let cut = take(&mut lane.client().await, "k-cut-1", 1500).await;
    let heard_approved = cut.is_ok_and(|e| e.last().and_then(|x| x.payment.as_ref()).is_some_and(|p| p.approved));
    assert!(!heard_approved, "the register never heard approved");
    posd_e2e::assert_aborted(&lane.wait_posd_exit().await);
    lane.posd_env.clear();
    lane.start_posd();
    lane.ready().await;
    let again = final_payment(&lane.pay("k-cut-1", 1500).await);
    assert_eq!(status(&again), pb::PaymentStatus::OfflineApproved, "the committed approval stands");
    lane.fault("none");
    lane.wait_status(&again.payment_id, pb::PaymentStatus::Captured).await;
    assert_eq!(approved_by_amount(&lane.ledger(), 1500), 1);
    lane.finish();
}

async fn forwarding_cut(failpoint: &str) {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let p = final_payment(&lane.pay("k-fwd-cut", 2700).await);
    assert_eq!(status(&p), pb::PaymentStatus::OfflineApproved);
    cut_forwarding_at(&mut lane, failpoint).await;
    lane.start_posd();
    let done = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert!(done.history.iter().any(|h| h.cause.contains("restarted during forwarding")), "{:?}", done.history);
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "exactly once: {ledger:?}");
    assert_eq!(approved_by_amount(&ledger, 2700), 1);
    lane.finish();
}

/// The gateway comes back while posd is down; posd starts with `failpoint`
/// armed and stops at it on its first forwarding round (possibly before it
/// prints its address). posd is not running afterwards.
async fn cut_forwarding_at(lane: &mut Lane, failpoint: &str) {
    lane.kill_posd();
    lane.fault("none");
    lane.posd_env = vec![("POSD_FAILPOINT".into(), failpoint.into())];
    posd_e2e::assert_aborted(&lane.run_posd_until_exit().await);
    lane.posd_env.clear();
}

#[tokio::test]
async fn a_payment_whose_forwarding_may_have_arrived_loses_its_card_data_at_the_expiry_age_and_the_gateway_decides() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let arrived = final_payment(&lane.pay("k-overdue-arrived", 2700).await);
    // Forwarded: the gateway commits it, posd dies before storing the answer.
    cut_forwarding_at(&mut lane, "forward_after_response").await;
    lane.fault("down");
    lane.start_posd();
    lane.ready().await;
    let lost = final_payment(&lane.pay("k-overdue-lost", 2800).await);
    // Claimed for sending (both), posd dies before anything is sent.
    cut_forwarding_at(&mut lane, "forward_after_claim").await;
    lane.fault("down");
    let card_data = |lane: &Lane| -> i64 {
        let db = rusqlite::Connection::open_with_flags(
            lane.state_dir().join("posd.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT COUNT(*) FROM payments WHERE encrypted_card IS NOT NULL", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(card_data(&lane), 2, "both still queued with their card data");

    // Restarted past the expiry age, with the gateway still out of reach:
    // neither may be sent again, and neither can simply expire.
    lane.extra_config = "alert_after = \"10ms\"\nstop_after = \"10ms\"\nexpire_after = \"10ms\"\n".into();
    lane.start_posd();
    lane.ready().await;
    let mut client = lane.client().await;
    let overdue = posd_e2e::eventually("both payments to be overdue", async || {
        let events = events_from(&mut client, 0, None).await;
        let overdue: Vec<_> = events.into_iter().filter(|e| e.kind == "forward_overdue").collect();
        (overdue.len() == 2).then_some(overdue)
    })
    .await;
    assert!(overdue[0].message.contains("card data is deleted"), "{}", overdue[0].message);
    assert_eq!(card_data(&lane), 0, "no card data kept past the expiry age");
    for p in [&arrived, &lost] {
        let now = client.get_payment(pb::GetPaymentRequest { payment_id: p.payment_id.clone() }).await.unwrap();
        assert_eq!(status(now.get_ref()), pb::PaymentStatus::OfflineApproved);
    }

    // The gateway is back: its record decides each one.
    lane.fault("none");
    let captured = lane.wait_status(&arrived.payment_id, pb::PaymentStatus::Captured).await;
    assert!(captured.approved);
    // No record: reversed under its key, so a late arrival can never charge it.
    let expired = lane.wait_status(&lost.payment_id, pb::PaymentStatus::Reversed).await;
    assert!(!expired.approved);
    let failure = expired.failure.as_ref().unwrap();
    assert_eq!(failure.code, "expired");
    assert!(failure.message.contains("no record"), "{failure:?}");
    let ledger = lane.ledger();
    assert_eq!(approved_by_amount(&ledger, 2700), 1, "{ledger:?}");
    assert!(
        ledger.iter().all(|c| c["amount_minor"] != 2800 || c["status"] == "reversed"),
        "the other is at most a reversed tombstone: {ledger:?}"
    );
    assert_eq!(ledger.iter().filter(|c| c["status"] == "approved").count(), 1, "{ledger:?}");
    lane.finish();
}

#[tokio::test]
async fn case_6_power_cut_during_forwarding_before_sending() {
    forwarding_cut("forward_after_claim").await;
}

#[tokio::test]
async fn case_6_power_cut_after_the_gateway_committed_before_posd_stored_the_answer() {
    forwarding_cut("forward_after_response").await;
}

#[tokio::test]
async fn case_6_power_cut_after_an_online_authorization_was_answered() {
    let mut lane = Lane::start(&[]);
    lane.posd_env = vec![("POSD_FAILPOINT".into(), "online_after_response".into())];
    lane.restart_posd();
    lane.ready().await;
    let id = {
        let mut client = lane.client().await;
        let mut stream = client.take_payment(request("k-online-cut", 3100)).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        while let Ok(Some(_)) = stream.message().await {}
        first.payment_id
    };
    posd_e2e::assert_aborted(&lane.wait_posd_exit().await);
    lane.posd_env.clear();
    lane.start_posd();
    let p = lane.wait_status(&id, pb::PaymentStatus::Captured).await;
    assert!(p.approved);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn case_9_ageing_alerts_stops_new_offline_payments_and_expires() {
    let ageing = "alert_after = \"300ms\"\nstop_after = \"700ms\"\nexpire_after = \"1500ms\"\n[lane.offline]\nmax_per_card = 10\n";
    let mut lane = Lane::start_configured(&[], ageing);
    lane.ready().await;
    lane.fault("down");
    let first = final_payment(&lane.pay("k-age-1", 1000).await);
    assert_eq!(status(&first), pb::PaymentStatus::OfflineApproved);
    let mut client = lane.client().await;
    let kinds =
        async |client: &mut _| events_from(client, 0, None).await.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    posd_e2e::eventually("the ageing alerts", async || {
        let k = kinds(&mut client).await;
        (k.contains(&"queue_age_alert".to_string()) && k.contains(&"queue_age_stop".to_string())).then_some(())
    })
    .await;
    let refused = final_payment(&lane.pay("k-age-2", 1000).await);
    assert_eq!(refused.failure.unwrap().code, "queue_too_old");
    let expired = lane.wait_status(&first.payment_id, pb::PaymentStatus::Expired).await;
    assert!(!expired.approved);
    assert!(kinds(&mut client).await.contains(&"expired".to_string()));
    lane.fault("none");
    assert!(lane.ledger().is_empty(), "an expired payment is never forwarded");
    lane.finish();
}

#[tokio::test]
async fn case_10_the_same_key_sent_concurrently_makes_one_payment() {
    let mut lane = Lane::start(&["--present-delay-ms", "100"]);
    lane.ready().await;
    let (mut a, mut b) = (lane.client().await, lane.client().await);
    let (ra, rb) = tokio::join!(take(&mut a, "k-same", 4400), take(&mut b, "k-same", 4400));
    let (pa, pb_) = (final_payment(&ra.unwrap()), final_payment(&rb.unwrap()));
    assert_eq!(pa.payment_id, pb_.payment_id);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn case_11_a_cancel_racing_an_approval_never_ends_both_ways() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    for i in 0..5 {
        let mut client = lane.client().await;
        let amount = 1000 + i * 100;
        let mut stream = client.take_payment(request(&format!("k-race-{i}"), amount)).await.unwrap().into_inner();
        let id = stream.message().await.unwrap().unwrap().payment_id;
        let cancel = lane.client().await.cancel_payment(pb::CancelPaymentRequest { payment_id: id.clone() }).await;
        let mut last = None;
        while let Ok(Some(e)) = stream.message().await {
            last = e.payment;
        }
        let p = lane.client().await.get_payment(pb::GetPaymentRequest { payment_id: id }).await.unwrap().into_inner();
        let charged = approved_by_amount(&lane.ledger(), amount) == 1;
        match cancel {
            Ok(c) => {
                assert_eq!(status(c.get_ref()), pb::PaymentStatus::Canceled);
                assert_eq!(status(&p), pb::PaymentStatus::Canceled);
                assert!(!charged, "a canceled payment is never charged");
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition);
                assert_eq!(status(&p), pb::PaymentStatus::Captured);
                assert!(charged);
            }
        }
        if let Some(last) = last {
            assert_eq!(last.status, p.status, "the stream's last word is the stored status");
        }
    }
    lane.finish();
}

#[tokio::test]
async fn case_17_a_half_failing_link_leaves_every_payment_consistent() {
    let mut lane = Lane::start_with(&[], 500);
    lane.ready().await;
    lane.fault("flaky 50");
    let mut outcomes = Vec::new();
    for i in 0..10i64 {
        let p = final_payment(&lane.pay(&format!("k-flaky-{i}"), 2000 + i).await);
        outcomes.push((2000 + i, p));
    }
    lane.fault("none");
    for (_, p) in &outcomes {
        if status(p) == pb::PaymentStatus::ReversalPending {
            lane.wait_status(&p.payment_id, pb::PaymentStatus::Reversed).await;
        }
        if status(p) == pb::PaymentStatus::OfflineApproved {
            lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
        }
    }
    let ledger = lane.ledger();
    for (amount, p) in &outcomes {
        let expected = usize::from(p.approved);
        assert_eq!(approved_by_amount(&ledger, *amount), expected, "{amount}: {:?}", status(p));
    }
    lane.finish();
}

#[tokio::test]
async fn a_register_resuming_its_event_stream_at_any_cursor_misses_and_repeats_nothing() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 10\n");
    lane.ready().await;
    lane.fault("down");
    for i in 0..4 {
        lane.pay(&format!("k-ev-{i}"), 1000 + i).await;
    }
    lane.fault("none");
    let mut client = lane.client().await;
    posd_e2e::eventually("the queue to drain", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        (s.queue_depth == 0).then_some(())
    })
    .await;
    let all = lane.events().await;
    assert!(all.len() >= 10, "{all:?}");
    assert!(all.windows(2).all(|w| w[1].cursor > w[0].cursor), "cursors increase");
    for cut in [0, 1, all.len() / 3, all.len() / 2, all.len() - 1] {
        let from = if cut == 0 { 0 } else { all[cut - 1].cursor };
        let resumed = events_from(&mut client, from, Some(all.len() - cut)).await;
        assert_eq!(resumed, all[cut..].to_vec(), "resumed after cursor {from}");
    }
    // Live events continue the same sequence.
    let mut stream = client
        .stream_events(pb::StreamEventsRequest { from_cursor: all.last().unwrap().cursor })
        .await
        .unwrap()
        .into_inner();
    lane.fault("down");
    lane.pay("k-ev-live", 1500).await;
    let next = stream.message().await.unwrap().unwrap();
    assert!(next.cursor > all.last().unwrap().cursor);
    lane.finish();
}

#[tokio::test]
async fn gateway_events_are_applied_once_across_redelivery_and_restart() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-dispute", 6100).await);
    let key = lane.ledger()[0]["key"].as_str().unwrap().to_string();
    lane.ctl(&["emit", "dispute_opened", &key]);
    lane.ctl(&["emit", "settlement_closed"]);
    lane.ctl(&["redeliver"]);
    // Events arrive in order: once this one is in, all before it were handled.
    lane.ctl(&["emit", "refund_settled", &key]);
    let count = |events: &[pb::TerminalEvent], kind: &str| events.iter().filter(|e| e.kind == kind).count();
    let mut client = lane.client().await;
    let events = posd_e2e::eventually("the gateway events to arrive", async || {
        let ev = events_from(&mut client, 0, None).await;
        (count(&ev, "gateway_refund_settled") == 1).then_some(ev)
    })
    .await;
    assert_eq!(count(&events, "gateway_dispute_opened"), 1, "a redelivered event is applied once");
    assert_eq!(count(&events, "gateway_settlement_closed"), 1);
    let dispute = events.iter().find(|e| e.kind == "gateway_dispute_opened").unwrap();
    assert_eq!(dispute.payment_id, p.payment_id, "the event names the local payment");
    lane.restart_posd();
    lane.ready().await;
    lane.ctl(&["redeliver"]);
    lane.ctl(&["emit", "settlement_closed"]);
    let mut client = lane.client().await;
    let events = posd_e2e::eventually("the new settlement event", async || {
        let ev = events_from(&mut client, 0, None).await;
        (count(&ev, "gateway_settlement_closed") == 2).then_some(ev)
    })
    .await;
    assert_eq!(count(&events, "gateway_dispute_opened"), 1, "still once after a restart and another redelivery");
    assert_eq!(count(&events, "gateway_refund_settled"), 1);
    lane.finish();
}

#[tokio::test]
async fn posctl_sync_and_events_for_scripts() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let (st, out, err) = lane.posctl(&["pay", "7.00"]);
    assert!(st.success(), "an offline approval exits 0: {out}{err}");
    assert!(out.contains("OFFLINE"), "{out}");
    // A health check that started before the link went down may still report
    // it up for a moment; the state settles at offline.
    let mut v = serde_json::Value::Null;
    for _ in 0..500 {
        let (st, out, _) = lane.posctl(&["sync", "--json"]);
        assert!(st.success());
        v = serde_json::from_str(&out).unwrap();
        if v["online"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(v["online"], false);
    assert_eq!(v["queue_depth"], 1);
    assert_eq!(v["stored_totals"]["EUR"], 700);
    assert!(v["oldest_age_s"].is_u64());
    assert!(v["last_error"].as_str().unwrap().contains("connect"), "{v}");
    lane.fault("none");
    let (st, _, _) = lane.posctl(&["sync", "--now"]);
    assert!(st.success());
    let mut client = lane.client().await;
    posd_e2e::eventually("the queue to drain", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        (s.queue_depth == 0).then_some(())
    })
    .await;
    let (st, out, _) = lane.posctl(&["events", "--no-follow", "--json"]);
    assert!(st.success());
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"approved_offline") && kinds.contains(&"forwarded"), "{kinds:?}");
    let second = events[1]["cursor"].as_u64().unwrap();
    let (_, out, _) = lane.posctl(&["events", "--no-follow", "--json", "--from", &second.to_string()]);
    assert_eq!(out.lines().count(), events.len() - 2, "--from resumes after the cursor");
    lane.finish();
}

#[tokio::test]
async fn case_12_a_full_disk_refuses_new_payments_and_loses_nothing_queued() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 1000\n");
    lane.ready().await;
    lane.fault("down");
    for i in 0..2 {
        assert_eq!(
            status(&final_payment(&lane.pay(&format!("k-full-{i}"), 100).await)),
            pb::PaymentStatus::OfflineApproved
        );
    }
    lane.kill_posd();
    let pages: u64 = {
        let db = rusqlite::Connection::open_with_flags(
            lane.state_dir().join("posd.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
    };
    lane.extra_config = format!("[lane.offline]\nmax_per_card = 1000\n[store]\nmax_page_count = {pages}\n");
    lane.start_posd();
    lane.reader_ready().await;
    let mut refusal = None;
    for i in 0..200 {
        match take(&mut lane.client().await, &format!("k-fill-{i}"), 100).await {
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                refusal = Some(e);
                break;
            }
            Err(e) => lane.responses.push(format!("{e:?}")),
            Ok(events) => lane.responses.push(format!("{events:?}")),
        }
    }
    let refusal = refusal.expect("the database filled up and posd refused new payments");
    assert!(refusal.message().contains("database"), "{}", refusal.message());
    // One answer for the whole episode: the refusals that follow (posd
    // refusing for a database it knows failed) say DATABASE_FULL as well.
    for i in 0..3 {
        let again = take(&mut lane.client().await, &format!("k-refused-{i}"), 100).await.expect_err("refused");
        let reason = tonic_types::StatusExt::get_details_error_info(&again).map(|i| i.reason);
        assert_eq!((again.code(), reason.as_deref()), (tonic::Code::ResourceExhausted, Some("DATABASE_FULL")));
    }
    let queued = lane.sync().await.queue_depth;
    assert!(queued >= 2, "queued payments are kept: {queued}");
    lane.kill_posd();
    lane.extra_config = "[lane.offline]\nmax_per_card = 1000\n".into();
    lane.fault("none");
    lane.start_posd();
    let mut client = lane.client().await;
    posd_e2e::eventually("the queue to drain", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        (s.queue_depth == 0).then_some(())
    })
    .await;
    let approved = lane.ledger().iter().filter(|c| c["status"] == "approved").count();
    assert_eq!(approved as u32, queued, "every queued payment forwarded once");
    lane.finish();
}

#[tokio::test]
async fn an_unreadable_queue_refuses_the_offline_approval_and_frees_the_lane() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    let queued = final_payment(&lane.pay("k-before", 700).await);
    assert_eq!(status(&queued), pb::PaymentStatus::OfflineApproved);
    // Damage the database under the running posd: the offline limits read a
    // table that is no longer there.
    let db = rusqlite::Connection::open(lane.state_dir().join("posd.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch("ALTER TABLE meta RENAME TO meta_damaged").unwrap();

    let p = final_payment(&lane.pay("k-unreadable", 800).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed, "{p:?}");
    let failure = p.failure.unwrap();
    assert_eq!(failure.code, "store_unavailable");
    assert!(failure.message.contains("nothing was charged"), "{}", failure.message);
    // The lane is free, and posd fails closed: the next payment is refused
    // for the database, not for a busy terminal.
    let refused = take(&mut lane.client().await, "k-after", 900).await.expect_err("new payments are refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("database"), "{}", refused.message());

    // Repaired, the database passes posd's check and posd restarts itself
    // (its service manager starts it again, as the test does here).
    db.execute_batch("ALTER TABLE meta_damaged RENAME TO meta").unwrap();
    drop(db);
    restarts_by_itself(&mut lane).await;
    lane.fault("none");
    lane.wait_status(&queued.payment_id, pb::PaymentStatus::Captured).await;
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "only the queued payment reached the gateway: {ledger:?}");
    assert_eq!(approved_by_amount(&ledger, 700), 1);
    lane.finish();
}

/// Waits for posd to stop by itself with the restart code once its database
/// works again, then starts it as systemd's `Restart=on-failure` would.
async fn restarts_by_itself(lane: &mut Lane) {
    let exit = lane.wait_posd_exit().await;
    assert_eq!(exit.code(), Some(75), "posd exits with EX_TEMPFAIL to be restarted: {exit:?}");
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    assert!(log.contains("the database works again"), "{log}");
    lane.start_posd();
    assert!(lane.events().await.iter().any(|e| e.kind == "database_recovered"));
}

#[tokio::test]
async fn a_payment_whose_answer_the_database_could_not_take_settles_once_it_works_again() {
    let mut lane = Lane::start_configured(&[], "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    lane.ready().await;
    lane.fault("hang");
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-unrecorded", 2600)).await.unwrap().into_inner();
    let id = stream.message().await.unwrap().unwrap().payment_id;
    lane.wait_status(&id, pb::PaymentStatus::Authorizing).await;
    // The request is at the gateway; posd cannot store the answer: another
    // program (a technician's sqlite3 shell) holds the write lock past
    // posd's busy timeout. Reads go on (WAL).
    let db = rusqlite::Connection::open(lane.state_dir().join("posd.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    lane.fault("none");
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e);
    }
    lane.responses.push(format!("{events:?}"));
    let last = events.last().expect("the register hears how the payment stopped");
    assert!(last.message.starts_with("Outcome unknown") && last.message.contains("restarts"), "{last:?}");
    assert_eq!(last.stage, pb::PaymentStage::Authorizing as i32, "not final: the register must not retry");
    assert!(!last.payment.as_ref().is_some_and(|p| p.approved), "not reported approved: {last:?}");
    let refused = take(&mut lane.client().await, "k-meanwhile", 900).await.expect_err("new payments are refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("database"), "{}", refused.message());
    let metrics = lane.metrics_get("/metrics").await;
    assert!(metrics.contains("posd_database_failed 1"), "store IT can alert on it:\n{metrics}");

    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    restarts_by_itself(&mut lane).await;
    // Start-up asks the gateway under the payment's key: one charge, found.
    let settled = lane.wait_status(&id, pb::PaymentStatus::Captured).await;
    assert!(settled.approved);
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "exactly one charge: {ledger:?}");
    assert_eq!(approved_by_amount(&ledger, 2600), 1);
    let next = final_payment(&lane.pay("k-after-repair", 300).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "the lane takes payments again");
    lane.finish();
}

#[tokio::test]
async fn case_3_the_reader_dropping_after_the_card_read_still_reports_the_approval() {
    let mut lane = Lane::start(&["--unplug-after-card"]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-drop", 3900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "approved at the gateway means approved");
    assert!(p.approved);
    assert_eq!(approved_by_amount(&lane.ledger(), 3900), 1);
    lane.finish();
}

#[tokio::test]
async fn shutting_down_with_unsent_payments_warns_and_keeps_them() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("down");
    final_payment(&lane.pay("k-shutdown", 1100).await);
    lane.terminate_posd();
    let exit = lane.wait_posd_exit().await;
    assert!(exit.success(), "a clean shutdown: {exit:?}");
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    assert!(log.contains("shutting down with offline payments not yet forwarded"), "{log}");
    lane.start_posd();
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "shutdown_with_unsent"));
    assert_eq!(lane.sync().await.queue_depth, 1, "nothing lost");
    lane.finish();
}
