//! Capture, void and refund: the state rules, idempotency, and the rule that
//! refunds never exceed what was captured; checked against the gateway-sim ledger.

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, eventually, final_payment, status, take};

async fn manual(lane: &mut Lane, key: &str, amount: i64) -> pb::Payment {
    let mut req = posd_e2e::request(key, amount);
    req.capture_mode = pb::CaptureMode::Manual as i32;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(req).await.unwrap().into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.payment;
    }
    last.unwrap()
}

/// Starts a capture of all of `p` and returns once posd has audited it and
/// is asking the gateway; the call is still running.
async fn capture_under_way(
    lane: &Lane,
    p: &pb::Payment,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::Payment>, tonic::Status>> {
    let mut client = lane.client().await;
    let capture = pb::CapturePaymentRequest { payment_id: p.payment_id.clone(), amount_minor: 0 };
    let call = tokio::spawn(async move { client.capture_payment(capture).await });
    let mut reader = lane.client().await;
    let get = pb::GetPaymentRequest { payment_id: p.payment_id.clone() };
    let audited = format!("capture of {}", p.amount.as_ref().unwrap().amount_minor);
    eventually("posd to ask the gateway for the capture", async || {
        let now = reader.get_payment(get.clone()).await.unwrap().into_inner();
        now.history.iter().any(|t| t.cause.starts_with(&audited)).then_some(())
    })
    .await;
    call
}

/// The payment ended captured in full, at the gateway too, and was never
/// taken for an expired authorization.
async fn captured_not_expired(lane: &Lane, captured: &pb::Payment, amount: i64) {
    assert_eq!(status(captured), pb::PaymentStatus::Captured);
    assert_eq!(captured.captured_minor, amount);
    let c = charge(&lane.ledger(), amount).clone();
    assert_eq!((c["status"].as_str(), c["captured"].as_bool()), (Some("approved"), Some(true)), "{c}");
    assert!(lane.events().await.iter().all(|e| e.kind != "authorization_expired"));
}

fn charge(ledger: &[serde_json::Value], amount: i64) -> &serde_json::Value {
    ledger.iter().find(|c| c["amount_minor"] == amount).expect("a charge with that amount")
}

#[tokio::test]
async fn a_manual_payment_is_captured_partly_and_repeating_the_capture_is_harmless() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&mut lane, "k-manual", 10_000).await;
    assert_eq!(status(&p), pb::PaymentStatus::Authorized);
    assert!(p.approved);
    assert_eq!(charge(&lane.ledger(), 10_000)["captured"], false);
    let mut client = lane.client().await;
    let capture = pb::CapturePaymentRequest { payment_id: p.payment_id.clone(), amount_minor: 8_000 };
    let captured = client.capture_payment(capture.clone()).await.unwrap().into_inner();
    assert_eq!(status(&captured), pb::PaymentStatus::Captured);
    assert_eq!(captured.captured_minor, 8_000);
    let again = client.capture_payment(capture).await.unwrap().into_inner();
    assert_eq!(again.captured_minor, 8_000);
    let other = pb::CapturePaymentRequest { payment_id: p.payment_id.clone(), amount_minor: 9_000 };
    assert_eq!(client.capture_payment(other).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let too_much = manual(&mut lane, "k-manual-2", 500).await;
    let err = client
        .capture_payment(pb::CapturePaymentRequest { payment_id: too_much.payment_id, amount_minor: 501 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("amount_minor"), "{}", err.message());
    let c = charge(&lane.ledger(), 10_000).clone();
    assert_eq!((c["captured"].as_bool(), c["captured_minor"].as_i64()), (Some(true), Some(8_000)));
    lane.responses.push(format!("{captured:?}"));
    lane.finish();
}

#[tokio::test]
async fn an_authorization_not_captured_within_the_capture_window_is_reversed_and_cannot_be_captured() {
    let mut lane = Lane::prepare(&[], "");
    lane.top_config = "capture_window = \"3s\"\n".into();
    lane.start_posd();
    lane.ready().await;
    let left = manual(&mut lane, "k-left", 4_100).await;
    let taken = manual(&mut lane, "k-taken", 4_200).await;
    let mut client = lane.client().await;
    let capture = |id: &str| pb::CapturePaymentRequest { payment_id: id.into(), amount_minor: 0 };
    let captured = client.capture_payment(capture(&taken.payment_id)).await.unwrap().into_inner();
    assert_eq!(status(&captured), pb::PaymentStatus::Captured);

    let reversed = lane.wait_status(&left.payment_id, pb::PaymentStatus::Reversed).await;
    assert!(!reversed.approved);
    assert_eq!(reversed.failure.unwrap().code, "capture_window_passed");
    let ledger = lane.ledger();
    assert_eq!(charge(&ledger, 4_100)["status"], "reversed", "the hold is released at the gateway");
    assert_eq!(charge(&ledger, 4_200)["status"], "approved", "a captured payment is not touched");
    assert_eq!(charge(&ledger, 4_200)["captured"], true);
    let late = client.capture_payment(capture(&left.payment_id)).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    let events = lane.events().await;
    let expired = events.iter().find(|e| e.kind == "authorization_expired").expect("an event");
    assert_eq!(expired.payment_id, left.payment_id);
    assert!(
        expired.message.contains("41.00 EUR") && expired.message.contains("nothing is charged"),
        "{}",
        expired.message
    );
    let got = client.get_payment(pb::GetPaymentRequest { payment_id: taken.payment_id.clone() }).await.unwrap();
    assert_eq!(status(&got.into_inner()), pb::PaymentStatus::Captured);
    lane.finish();
}

#[tokio::test]
async fn a_capture_under_way_when_the_capture_window_passes_goes_first_and_is_not_reversed() {
    let mut lane = Lane::prepare(&[], "");
    // Long enough for the capture to take the payment in hand first, even
    // on a loaded machine (the test fails clearly if it does not).
    lane.top_config = "capture_window = \"10s\"\n".into();
    // The capture waits at the gateway for as long as the test needs.
    lane.gateway_timeout_ms = 60_000;
    lane.start_posd();
    lane.ready().await;
    let p = manual(&mut lane, "k-race", 4_400).await;
    lane.fault("hang");
    let call = capture_under_way(&lane, &p).await;
    assert!(!call.is_finished(), "the capture waits at the gateway");
    // The window passes while the capture is at the gateway: the expiry
    // check finds the payment in hand and leaves it.
    let log = lane.posd_log();
    eventually("the expiry check to find the capture under way", async || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .any(|l| l.contains("while a capture or void has the payment") && l.contains(&p.payment_id))
            .then_some(())
    })
    .await;
    lane.fault("none");
    let captured = call.await.unwrap().expect("the capture goes through").into_inner();
    captured_not_expired(&lane, &captured, 4_400).await;
    lane.finish();
}

#[tokio::test]
async fn a_capture_posd_did_not_store_before_a_crash_is_recorded_not_reversed_when_the_window_passes() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&mut lane, "k-crash-capture", 4_300).await;
    // The gateway captures; posd dies before it stores the answer.
    lane.posd_env = vec![("POSD_FAILPOINT".into(), "capture_after_response".into())];
    lane.restart_posd();
    lane.ready().await;
    let capture = pb::CapturePaymentRequest { payment_id: p.payment_id.clone(), amount_minor: 0 };
    assert!(lane.client().await.capture_payment(capture).await.is_err(), "posd stopped at the failpoint");
    posd_e2e::assert_aborted(&lane.wait_posd_exit().await);
    assert_eq!(charge(&lane.ledger(), 4_300)["captured"], true);
    // Started again with a short capture window, posd finds the payment
    // still AUTHORIZED in its own records and past the window: the
    // gateway's record says captured, so it is recorded, not reversed.
    lane.posd_env.clear();
    lane.top_config = "capture_window = \"1s\"\n".into();
    lane.start_posd();
    let captured = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    captured_not_expired(&lane, &captured, 4_300).await;
    lane.finish();
}

#[tokio::test]
async fn a_capture_the_register_hangs_up_on_still_ends_captured() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&mut lane, "k-hang-up", 6_000).await;
    lane.fault("latency 1000");
    // posd audits the request before it calls the gateway; then the register hangs up.
    let call = capture_under_way(&lane, &p).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let captured = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert_eq!(captured.captured_minor, 6_000);
    assert_eq!(charge(&lane.ledger(), 6_000)["captured"], true);
    lane.fault("none");
    lane.finish();
}

#[tokio::test]
async fn a_void_before_capture_charges_nothing_and_only_authorized_payments_void() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = manual(&mut lane, "k-void", 4_000).await;
    let mut client = lane.client().await;
    let voided = client
        .void_payment(pb::VoidPaymentRequest { payment_id: p.payment_id.clone(), reason: "order canceled".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&voided), pb::PaymentStatus::Voided);
    assert!(!voided.approved);
    assert_eq!(charge(&lane.ledger(), 4_000)["status"], "voided");
    // Voiding again is harmless; capturing a voided payment is refused.
    client
        .void_payment(pb::VoidPaymentRequest { payment_id: p.payment_id.clone(), reason: String::new() })
        .await
        .unwrap();
    let err = client
        .capture_payment(pb::CapturePaymentRequest { payment_id: p.payment_id, amount_minor: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // A captured payment is refunded, not voided.
    let auto = final_payment(&lane.pay("k-void-captured", 2_000).await);
    let err = client
        .void_payment(pb::VoidPaymentRequest { payment_id: auto.payment_id, reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("refund"), "{}", err.message());
    lane.responses.push(format!("{voided:?}"));
    lane.finish();
}

#[tokio::test]
async fn refunds_are_idempotent_and_never_exceed_the_captured_amount() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-refund", 1_000).await);
    let mut client = lane.client().await;
    let refund = |key: &str, amount: i64| pb::RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: p.payment_id.clone(),
        amount_minor: amount,
        reason: "returned goods".into(),
    };
    let r1 = client.refund_payment(refund("r1", 300)).await.unwrap().into_inner();
    assert_eq!(r1.status, pb::RefundStatus::Succeeded as i32);
    let r1_again = client.refund_payment(refund("r1", 300)).await.unwrap().into_inner();
    assert_eq!(r1_again.refund_id, r1.refund_id, "the same key returns the same refund");
    assert_eq!(client.refund_payment(refund("r1", 400)).await.unwrap_err().code(), tonic::Code::AlreadyExists);
    let over = client.refund_payment(refund("r2", 800)).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::FailedPrecondition);
    assert!(over.message().contains("exceed"), "{}", over.message());
    let rest = client.refund_payment(refund("r3", 0)).await.unwrap().into_inner();
    assert_eq!(rest.amount.unwrap().amount_minor, 700, "0 refunds everything not yet refunded");
    assert_eq!(client.refund_payment(refund("r4", 1)).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let after =
        client.get_payment(pb::GetPaymentRequest { payment_id: p.payment_id.clone() }).await.unwrap().into_inner();
    assert_eq!(after.refunded_minor, 1_000);
    assert_eq!(after.refunds.len(), 2);
    assert_eq!(charge(&lane.ledger(), 1_000)["refunded_minor"], 1_000);
    let events = lane.events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "refund_succeeded").count(), 2);
    lane.responses.push(format!("{after:?}"));
    lane.finish();
}

#[tokio::test]
async fn refunds_need_the_gateway_and_a_captured_payment() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let declined = final_payment(&lane.pay("k-declined", 1_205).await);
    let captured = final_payment(&lane.pay("k-captured", 1_300).await);
    let mut client = lane.client().await;
    let err = client
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "rd".into(),
            payment_id: declined.payment_id,
            amount_minor: 0,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    lane.fault("down");
    let r = client
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "r-offline".into(),
            payment_id: captured.payment_id.clone(),
            amount_minor: 100,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, pb::RefundStatus::Failed as i32, "never refunded offline");
    assert_eq!(r.failure.unwrap().code, "gateway_unreachable");
    lane.fault("none");
    let ok = client
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "r-online".into(),
            payment_id: captured.payment_id,
            amount_minor: 1_300,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status, pb::RefundStatus::Succeeded as i32, "a failed refund reserves nothing");
    let unknown = take(&mut lane.client().await, "k-after", 100).await.unwrap();
    assert!(final_payment(&unknown).approved);
    lane.finish();
}

#[tokio::test]
async fn posctl_capture_void_and_refund() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let (st, out, err) = lane.posctl(&["pay", "20.00", "--manual-capture", "--json"]);
    assert!(st.success(), "{out}{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["payment_id"].as_str().unwrap().to_string();
    let (st, out, _) = lane.posctl(&["capture", &id, "15.50", "--json"]);
    assert!(st.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["status"].as_str(), v["captured_minor"].as_i64()), (Some("captured"), Some(1550)));
    let (st, out, _) = lane.posctl(&["refund", &id, "5.50", "--key", "cli-r1", "--json"]);
    assert!(st.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["status"].as_str(), v["amount_minor"].as_i64()), (Some("succeeded"), Some(550)));
    let (st, _, _) = lane.posctl(&["refund", &id, "10.01"]);
    assert_eq!(st.code(), Some(4), "refused by posd: over the captured amount");
    let (_, out, _) = lane.posctl(&["pay", "3.00", "--manual-capture", "--json"]);
    let id2 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["payment_id"].as_str().unwrap().to_string();
    let (st, out, _) = lane.posctl(&["void", &id2, "--reason", "customer left"]);
    assert!(st.success() && out.contains("VOIDED"), "{out}");
    lane.finish();
}

#[tokio::test]
async fn report_totals_equal_the_sum_of_the_payments_they_cover() {
    let mut lane = Lane::start_configured(&[], "[lane.offline]\nmax_per_card = 10\n");
    lane.ready().await;
    let approved = final_payment(&lane.pay("rep-a", 1_000).await);
    final_payment(&lane.pay("rep-b", 2_500).await);
    final_payment(&lane.pay("rep-declined", 1_205).await);
    let voided = manual(&mut lane, "rep-void", 700).await;
    let mut client = lane.client().await;
    client.void_payment(pb::VoidPaymentRequest { payment_id: voided.payment_id, reason: String::new() }).await.unwrap();
    client
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "rep-r".into(),
            payment_id: approved.payment_id.clone(),
            amount_minor: 400,
            reason: String::new(),
        })
        .await
        .unwrap();
    lane.fault("down");
    final_payment(&lane.pay("rep-offline", 900).await);
    // The business day of these payments (UTC, cutover 00:00 by default).
    let day = approved.created_at.as_ref().map(|t| {
        let secs = t.seconds;
        let days = secs.div_euclid(86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    });
    let report = client
        .get_report(pb::GetReportRequest { business_day: day.clone().unwrap(), terminal_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let payments = client
        .list_payments(pb::ListPaymentsRequest { page_size: 500, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .payments;
    let sum = |f: fn(&pb::ReportRow) -> i64| report.rows.iter().map(f).sum::<i64>();
    let approved_payments: Vec<&pb::Payment> = payments.iter().filter(|p| p.approved).collect();
    assert_eq!(sum(|r| r.approvals as i64), approved_payments.len() as i64);
    assert_eq!(
        sum(|r| r.approved_minor),
        approved_payments.iter().map(|p| p.amount.as_ref().unwrap().amount_minor).sum::<i64>()
    );
    assert_eq!(sum(|r| r.declines as i64), 1);
    assert_eq!(sum(|r| r.voids as i64), 1);
    assert_eq!((sum(|r| r.refunds as i64), sum(|r| r.refunded_minor)), (1, 400));
    assert_eq!((sum(|r| r.offline_pending as i64), sum(|r| r.offline_pending_minor)), (1, 900));
    assert_eq!(report.time_zone, "UTC");
    let csv_lines: Vec<&str> = report.csv.lines().collect();
    assert!(csv_lines[0].starts_with("terminal_id,currency,brand,entry_mode,approvals"));
    assert_eq!(csv_lines.len(), report.rows.len() + 1);
    let (st, out, _) = lane.posctl(&["report", "--day", day.as_deref().unwrap(), "--csv"]);
    assert!(st.success());
    assert_eq!(out, report.csv, "posctl exports the same CSV");
    let bad = client
        .get_report(pb::GetReportRequest { business_day: "26.11.2026".into(), terminal_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    lane.finish();
}

#[tokio::test]
async fn the_caller_is_audited_and_refunds_can_be_restricted_to_configured_clients() {
    let mut lane = Lane::start_configured(&[], "[api]\nrefunds_allowed_from = [\"uid=4242\"]\n");
    lane.ready().await;
    let p = final_payment(&lane.pay("k-audit", 1_000).await);
    assert!(p.history[0].cause.contains("tcp 127.0.0.1:"), "{:?}", p.history[0]);
    // The entry that created the payment has no status before it.
    assert_eq!((p.history[0].from(), p.history[0].to()), (pb::PaymentStatus::Unspecified, pb::PaymentStatus::Created));
    assert_eq!(p.history[1].from(), pb::PaymentStatus::Created);
    let err = lane
        .client()
        .await
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "r-denied".into(),
            payment_id: p.payment_id.clone(),
            amount_minor: 100,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("ip=127.0.0.1"), "{}", err.message());
    assert_eq!(charge(&lane.ledger(), 1_000)["refunded_minor"], 0);
    lane.finish();
}

#[tokio::test]
async fn end_of_day_closes_the_batch_with_the_gateway() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let a = final_payment(&lane.pay("eod-a", 1_000).await);
    final_payment(&lane.pay("eod-b", 2_000).await);
    final_payment(&lane.pay("eod-declined", 3_005).await);
    lane.client()
        .await
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "eod-r".into(),
            payment_id: a.payment_id,
            amount_minor: 300,
            reason: String::new(),
        })
        .await
        .unwrap();
    let (st, out, err) = lane.posctl(&["end-of-day", "--json"]);
    assert!(st.success(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"][0]["currency"], "EUR");
    assert_eq!(v["totals"][0]["count"], 2);
    assert_eq!(v["totals"][0]["captured_minor"], 3_000);
    assert_eq!(v["totals"][0]["refunded_minor"], 300);
    // A second close has nothing left to settle.
    let (_, out, _) = lane.posctl(&["end-of-day", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"].as_array().unwrap().len(), 0);
    assert!(lane.events().await.iter().any(|e| e.kind == "batch_closed"));
    lane.finish();
}

#[tokio::test]
async fn a_refund_whose_answer_times_out_is_settled_by_repeating_it_under_the_same_key() {
    let mut lane = Lane::start_with(&[], 300);
    lane.ready().await;
    let p = final_payment(&lane.pay("k-refund-timeout", 2_000).await);
    lane.fault("hang");
    let mut client = lane.client().await;
    let req = pb::RefundPaymentRequest {
        idempotency_key: "r-timeout".into(),
        payment_id: p.payment_id.clone(),
        amount_minor: 500,
        reason: String::new(),
    };
    let err = client.refund_payment(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{}", err.message());
    assert!(err.message().contains("same idempotency key"), "{}", err.message());
    lane.fault("none");
    let settled = client.refund_payment(req.clone()).await.unwrap().into_inner();
    assert_eq!(settled.status, pb::RefundStatus::Succeeded as i32);
    let again = client.refund_payment(req).await.unwrap().into_inner();
    assert_eq!(again.refund_id, settled.refund_id);
    assert_eq!(charge(&lane.ledger(), 2_000)["refunded_minor"], 500, "refunded once");
    lane.finish();
}
