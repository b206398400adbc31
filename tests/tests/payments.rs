//! A cashier's register takes card payments through posd: the end-to-end
//! cases of the payment issue, over loopback gRPC and a PTY card reader,
//! with gateway-sim, firmware-sim and posd as separate processes.

use std::process::Command;

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, bin, eventually, final_payment, more_reader_lanes, request, run, status, take};

fn stages(events: &[pb::PaymentEvent]) -> Vec<pb::PaymentStage> {
    events.iter().map(|e| pb::PaymentStage::try_from(e.stage).unwrap()).collect()
}

#[tokio::test]
async fn approved_payment_with_progress_and_exactly_one_charge() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let events = lane.pay("k-approve", 1234).await;
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    assert!(p.approved);
    let s = stages(&events);
    for expected in [
        pb::PaymentStage::PresentCard,
        pb::PaymentStage::Reading,
        pb::PaymentStage::PinEntry,
        pb::PaymentStage::Authorizing,
    ] {
        assert!(s.contains(&expected), "missing {expected:?} in {s:?}");
    }
    assert_eq!(s.last(), Some(&pb::PaymentStage::Approved));
    let card = p.card.clone().unwrap();
    assert_eq!(card.masked_pan, "424242******4242");
    assert_eq!(card.brand, "visa");
    assert!(!p.auth_code.is_empty());
    let history: Vec<i32> = p.history.iter().map(|h| h.to).collect();
    use pb::PaymentStatus as S;
    assert_eq!(
        history,
        [S::Created, S::Collecting, S::CardRead, S::Authorizing, S::Captured].map(|s| s as i32).to_vec(),
        "every transition is in the audit log"
    );
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["amount_minor"], 1234);
    assert_eq!(ledger[0]["status"], "approved");
    assert_eq!(ledger[0]["terminal_id"], "e2e/lane-1");
    assert_eq!(ledger[0]["masked_pan"], "424242******4242");
    assert_ne!(ledger[0]["key"], "k-approve", "the register's key is never the gateway key");
    lane.finish();
}

#[tokio::test]
async fn every_test_amount_decline_code_is_reported() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let cases = [
        (1201, "call_issuer"),
        (1205, "generic_decline"),
        (1255, "incorrect_pin"),
        (1260, "online_or_offline_pin_required"),
        (1265, "withdrawal_count_limit_exceeded"),
        (1275, "pin_try_exceeded"),
    ];
    for (amount, code) in cases {
        let events = lane.pay(&format!("k-decline-{amount}"), amount).await;
        let p = final_payment(&events);
        assert_eq!(status(&p), pb::PaymentStatus::Declined, "{amount}");
        assert!(!p.approved);
        assert_eq!(p.decline.as_ref().unwrap().code, code);
        assert_eq!(stages(&events).last(), Some(&pb::PaymentStage::Declined));
    }
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), cases.len());
    assert!(ledger.iter().all(|c| c["status"] == "declined"));
    lane.finish();
}

#[tokio::test]
async fn posctl_pay_approves_and_declines_with_exit_codes() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let posctl = |args: &[&str]| run(Command::new(bin("posctl")).args(["--addr", &lane.posd_addr]).args(args));
    let (st, out, err) = posctl(&["pay", "12.34"]);
    assert!(st.success(), "pay 12.34: {out}{err}");
    assert!(out.contains("APPROVED"), "{out}");
    let (st, out, _) = posctl(&["pay", "12.05"]);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("generic_decline"), "{out}");
    let (st, out, _) = posctl(&["pay", "12.34", "--json", "--key", "json-1"]);
    assert!(st.success());
    let v: serde_json::Value = serde_json::from_str(&out).expect("pay --json prints one JSON object");
    assert_eq!(v["status"], "captured");
    assert_eq!(v["amount_minor"], 1234);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'), "RFC 3339 times");
    let (st, out, _) = posctl(&["payments", "--json"]);
    assert!(st.success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["payments"].as_array().unwrap().len(), 3);
    let (st, out, _) = posctl(&["status", "--json"]);
    assert!(st.success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reader_connected"], true);
    assert_eq!(v["gateway_online"], true);
    let (st, _, err) = posctl(&["pay", "12.345"]);
    assert_eq!(st.code(), Some(2), "{err}");
    lane.responses.push(out);
    lane.finish();
}

#[tokio::test]
async fn cancel_while_collecting_charges_nothing() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-cancel", 1000)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let id = first.payment_id.clone();
    lane.wait_status(&id, pb::PaymentStatus::Collecting).await;
    let canceled =
        client.cancel_payment(pb::CancelPaymentRequest { payment_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(status(&canceled), pb::PaymentStatus::Canceled);
    let mut last = first;
    while let Some(ev) = stream.message().await.unwrap() {
        last = ev;
    }
    assert_eq!(last.stage, pb::PaymentStage::Canceled as i32);
    // Canceling twice is harmless; a finished payment cannot be canceled.
    assert!(client.cancel_payment(pb::CancelPaymentRequest { payment_id: id }).await.is_ok());
    assert!(lane.ledger().is_empty());
    lane.responses.push(format!("{canceled:?}"));
    lane.finish();
}

#[tokio::test]
async fn same_key_same_parameters_returns_the_same_payment_also_after_a_restart() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let first = final_payment(&lane.pay("k-idem", 2500).await);
    let again = final_payment(&lane.pay("k-idem", 2500).await);
    assert_eq!(again.payment_id, first.payment_id);
    assert_eq!(status(&again), pb::PaymentStatus::Captured);
    lane.restart_posd();
    lane.ready().await;
    let after_restart = final_payment(&lane.pay("k-idem", 2500).await);
    assert_eq!(after_restart.payment_id, first.payment_id);
    assert_eq!(after_restart.auth_code, first.auth_code);
    assert_eq!(lane.ledger().len(), 1, "one charge, however often the register asks");
    lane.finish();
}

#[tokio::test]
async fn same_key_with_a_different_amount_is_already_exists_naming_the_field() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.pay("k-conflict", 1000).await;
    let err = take(&mut lane.client().await, "k-conflict", 1001).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("amount"), "{}", err.message());
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn the_same_key_on_two_lanes_at_once_makes_one_payment() {
    let mut lane = Lane::prepare(&[], "");
    let (_reader_2, table) = more_reader_lanes(lane.dir.path(), 2, "");
    lane.extra_config = table;
    lane.start_posd();
    lane.ready().await;
    let (mut a, mut b) = (lane.client().await, lane.client().await);
    let on_lane_2 = async {
        let req = pb::TakePaymentRequest { terminal_id: "lane-2".into(), ..request("k-two-lanes", 1500) };
        let mut stream = b.take_payment(req).await?.into_inner();
        let mut events = Vec::new();
        while let Some(ev) = stream.message().await? {
            events.push(ev);
        }
        Ok(events)
    };
    // The lanes admit at once; whichever stores the key first takes the payment.
    let (won, lost) = match tokio::join!(take(&mut a, "k-two-lanes", 1500), on_lane_2) {
        (Ok(events), Err(e)) | (Err(e), Ok(events)) => (events, e),
        other => panic!("one lane must take the payment and the other be refused: {other:?}"),
    };
    assert_eq!(status(&final_payment(&won)), pb::PaymentStatus::Captured);
    assert_eq!(lost.code(), tonic::Code::AlreadyExists);
    assert!(lost.message().contains("terminal_id"), "{}", lost.message());
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn a_second_payment_on_a_busy_terminal_is_refused() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-busy-1", 1000)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let err = take(&mut lane.client().await, "k-busy-2", 2000).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("busy"), "{}", err.message());
    // The running payment's own key re-attaches instead.
    let mut again = client.take_payment(request("k-busy-1", 1000)).await.unwrap().into_inner();
    assert_eq!(again.message().await.unwrap().unwrap().payment_id, first.payment_id);
    lane.wait_status(&first.payment_id, pb::PaymentStatus::Collecting).await;
    client.cancel_payment(pb::CancelPaymentRequest { payment_id: first.payment_id }).await.unwrap();
    lane.finish();
}

#[tokio::test]
async fn gateway_hang_leads_to_a_status_query_then_a_reversal_and_exactly_one_ledger_entry() {
    let mut lane = Lane::start_with(&[], 300);
    lane.ready().await;
    lane.fault("hang");
    let events = lane.pay("k-hang", 4200).await;
    let p = final_payment(&events);
    assert!(!p.approved, "a lost answer is never an approval");
    assert_eq!(status(&p), pb::PaymentStatus::ReversalPending);
    assert_eq!(p.failure.as_ref().unwrap().code, "outcome_unknown");
    let causes: Vec<&str> = p.history.iter().map(|h| h.cause.as_str()).collect();
    assert!(causes.iter().any(|c| c.starts_with("no answer from the gateway")), "{causes:?}");
    lane.fault("none");
    let mut client = lane.client().await;
    let id = p.payment_id.clone();
    let reversed = eventually("the reversal to be acknowledged", async || {
        let p = client.get_payment(pb::GetPaymentRequest { payment_id: id.clone() }).await.ok()?.into_inner();
        (status(&p) == pb::PaymentStatus::Reversed).then_some(p)
    })
    .await;
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "exactly one ledger entry: {ledger:?}");
    assert_eq!(ledger[0]["amount_minor"], 4200);
    assert_eq!(ledger[0]["status"], "reversed", "the customer is not charged");
    lane.responses.push(format!("{reversed:?}"));
    lane.finish();
}

#[tokio::test]
async fn answer_lost_after_commit_is_settled_by_status_query_without_a_second_charge() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.fault("lose-answers");
    let p = final_payment(&lane.pay("k-lost", 3300).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "the status query finds the approval");
    assert!(p.approved);
    let statuses: Vec<i32> = p.history.iter().map(|h| h.to).collect();
    assert!(statuses.contains(&(pb::PaymentStatus::Unknown as i32)), "went through UNKNOWN");
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["status"], "approved");
    lane.finish();
}

#[tokio::test]
async fn reader_unplugged_mid_collection_fails_clearly_and_is_not_approved() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-unplug", 1500)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    lane.wait_status(&first.payment_id, pb::PaymentStatus::Collecting).await;
    lane.kill_reader();
    let mut events = vec![first];
    while let Some(ev) = stream.message().await.unwrap() {
        events.push(ev);
    }
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    assert!(!p.approved);
    assert_eq!(p.failure.as_ref().unwrap().code, "reader_disconnected");
    assert!(lane.ledger().is_empty());
    // The reader comes back: posd reconnects by itself, and says so.
    lane.start_reader();
    lane.ready().await;
    let mut client = lane.client().await;
    let kinds = eventually("reader events", async || {
        let events = posd_e2e::events_from(&mut client, 0, None).await;
        let kinds: Vec<String> = events.into_iter().filter(|e| e.kind.starts_with("reader_")).map(|e| e.kind).collect();
        (kinds.len() >= 3).then_some(kinds)
    })
    .await;
    assert_eq!(kinds[..3], ["reader_connected", "reader_disconnected", "reader_connected"]);
    lane.responses.push(format!("{events:?}"));
    lane.finish();
}

#[tokio::test]
async fn gateway_down_with_offline_disabled_fails_without_a_charge() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nenabled = false\n");
    lane.ready().await;
    lane.fault("down");
    let p = final_payment(&lane.pay("k-down", 1800).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    let failure = p.failure.as_ref().unwrap();
    assert_eq!(failure.code, "offline_disabled");
    assert!(failure.message.contains("cannot be reached"), "{}", failure.message);
    lane.fault("none");
    let p = final_payment(&lane.pay("k-up-again", 1800).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn a_second_posd_on_the_same_state_directory_refuses_to_start() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let (st, _, err) = run(&mut lane.posd_command());
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("another posd is already running"), "{err}");
    lane.finish();
}

#[test]
fn posd_without_config_or_demo_refuses_and_says_what_to_do() {
    let (st, _, err) = run(&mut Command::new(bin("posd")));
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("--demo") && err.contains("--config"), "{err}");
}

#[tokio::test]
async fn a_register_that_disconnects_mid_payment_re_attaches_with_the_same_key() {
    let mut lane = Lane::start(&["--present-delay-ms", "400"]);
    lane.ready().await;
    let first_id = {
        let mut client = lane.client().await;
        let mut stream = client.take_payment(request("k-reattach", 2100)).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap().payment_id
        // The stream and the connection are dropped here, mid-payment.
    };
    let events = lane.pay("k-reattach", 2100).await;
    let p = final_payment(&events);
    assert_eq!(p.payment_id, first_id);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "the payment ran on without its caller");
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test]
async fn power_cut_while_authorizing_is_settled_by_status_query_after_restart() {
    // posd waits long for the gateway, so it is killed in AUTHORIZING.
    let mut lane = Lane::start_with(&[], 60_000);
    lane.ready().await;
    lane.fault("hang");
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-powercut", 5100)).await.unwrap().into_inner();
    let id = stream.message().await.unwrap().unwrap().payment_id;
    let mut c2 = lane.client().await;
    eventually("the payment to be authorizing", async || {
        let p = c2.get_payment(pb::GetPaymentRequest { payment_id: id.clone() }).await.ok()?.into_inner();
        (status(&p) == pb::PaymentStatus::Authorizing).then_some(())
    })
    .await;
    lane.kill_posd();
    // The held request reaches the gateway after posd died, and is approved.
    lane.fault("none");
    eventually("the gateway to commit the delayed request", async || {
        (lane.ledger().iter().any(|c| c["amount_minor"] == 5100 && c["status"] == "approved")).then_some(())
    })
    .await;
    lane.start_posd();
    let mut client = lane.client().await;
    let p = eventually("recovery to settle the payment", async || {
        let p = client.get_payment(pb::GetPaymentRequest { payment_id: id.clone() }).await.ok()?.into_inner();
        pos_proto::terminal::PaymentStatus::try_from(p.status)
            .is_ok_and(|s| s != pb::PaymentStatus::Authorizing && s != pb::PaymentStatus::Unknown)
            .then_some(p)
    })
    .await;
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "an approved payment is never reported as failed");
    let causes: Vec<&str> = p.history.iter().map(|h| h.cause.as_str()).collect();
    assert!(causes.iter().any(|c| c.contains("restarted while waiting for the gateway")), "{causes:?}");
    assert_eq!(lane.ledger().len(), 1);
    lane.responses.push(format!("{p:?}"));
    lane.finish();
}

#[tokio::test]
async fn power_cut_while_collecting_ends_the_payment_without_a_charge() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("k-cut-collect", 700)).await.unwrap().into_inner();
    let id = stream.message().await.unwrap().unwrap().payment_id;
    lane.restart_posd();
    let mut client = lane.client().await;
    let p = client.get_payment(pb::GetPaymentRequest { payment_id: id }).await.unwrap().into_inner();
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    assert_eq!(p.failure.as_ref().unwrap().code, "interrupted");
    assert!(lane.ledger().is_empty());
    lane.responses.push(format!("{p:?}"));
    lane.finish();
}

#[tokio::test]
async fn a_reader_on_tcp_takes_payments_too() {
    let mut lane = Lane::start_tcp_reader(&["--entry-mode", "contactless", "--wallet", "apple-pay"]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-tcp", 999).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    let card = p.card.unwrap();
    assert_eq!(card.entry_mode, pb::EntryMode::Contactless as i32);
    assert_eq!(card.wallet, pb::Wallet::ApplePay as i32);
    assert_eq!(card.verification, pb::CardholderVerification::ConsumerDevice as i32);
    assert_eq!(lane.ledger()[0]["entry_mode"], "contactless");
    lane.finish();
}

#[tokio::test]
async fn list_payments_filters_and_pages() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    for (i, amount) in [1000, 1005, 1100, 1200, 1305].iter().enumerate() {
        lane.pay(&format!("k-list-{i}"), *amount).await;
    }
    let mut client = lane.client().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_payments(pb::ListPaymentsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.payments.len() <= 2);
        seen.extend(page.payments.iter().map(|p| p.idempotency_key.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["k-list-4", "k-list-3", "k-list-2", "k-list-1", "k-list-0"], "newest first, each once");
    let declined = client
        .list_payments(pb::ListPaymentsRequest {
            statuses: vec![pb::PaymentStatus::Declined as i32],
            terminal_id: "lane-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.payments.len(), 2);
    let bad = client
        .list_payments(pb::ListPaymentsRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    lane.responses.push(format!("{declined:?}"));
    lane.finish();
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let mut client = lane.client().await;
    let cases = [
        (request("", 100), "idempotency_key"),
        (request(&"k".repeat(256), 100), "idempotency_key"),
        (request("k-neg", -5), "amount.amount_minor"),
        (pb::TakePaymentRequest { terminal_id: "lane-9".into(), ..request("k-lane", 100) }, "terminal_id"),
        (
            pb::TakePaymentRequest {
                amount: Some(pb::Money { amount_minor: 100, currency: "USD".into() }),
                ..request("k-usd", 100)
            },
            "amount.currency",
        ),
    ];
    for (req, field) in cases {
        let err = client.take_payment(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    let err = client.get_payment(pb::GetPaymentRequest { payment_id: "pay_nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(lane.ledger().is_empty());
    lane.finish();
}

#[tokio::test]
async fn an_https_gateway_with_a_private_ca_takes_payments_over_tls() {
    let mut lane = Lane::start_with_tls_gateway(None, "");
    lane.start_posd();
    lane.ready().await;
    let p = final_payment(&lane.pay("k-tls", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}
