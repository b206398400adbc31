//! posctl tells the truth to scripts: its exit codes (README, `posctl
//! --help`), posd's reason codes in `--json` errors, the refunded amount and
//! gateway key in both payment views, and no panic when the reader of its
//! output goes away.

use std::process::{Command, Stdio};

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, bin, final_payment, request, run, status};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON value ({e}): {out}"))
}

#[tokio::test]
async fn refused_unknown_and_settled_refunds_have_their_own_exit_codes() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = final_payment(&lane.pay("cli-refunds", 2_000).await);
    let id = p.payment_id.as_str();

    // Refused by posd (exit 4): more than was captured, and a payment that does not exist.
    let (st, out, err) = lane.posctl(&["refund", id, "20.01", "--json"]);
    assert_eq!(st.code(), Some(4), "{out}{err}");
    let v = json(&out);
    let e = &v["error"];
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("FAILED_PRECONDITION"), Some("REFUND_EXCEEDS_CAPTURE"))
    );
    assert!(e["message"].as_str().unwrap().contains("exceed"), "{e}");
    assert!(err.starts_with("posctl: REFUND_EXCEEDS_CAPTURE: "), "the reason leads the message on stderr: {err}");
    let (st, out, err) = lane.posctl(&["refund", "pay_nonexistent", "--json"]);
    assert_eq!(st.code(), Some(4), "{out}{err}");
    assert_eq!(json(&out)["error"]["reason"], "NOT_FOUND");

    // The gateway books the refund but its answer is lost: the outcome is unknown (exit 5).
    lane.fault("lose-answers");
    let (st, out, err) = lane.posctl(&["refund", id, "5.00", "--key", "cli-lost", "--json"]);
    assert_eq!(st.code(), Some(5), "{out}{err}");
    assert!(out.contains(r#""reason":"OUTCOME_UNKNOWN""#), "{out}");
    let v = json(&out);
    let e = &v["error"];
    assert_eq!(e["code"], "UNAVAILABLE");
    assert!(e["message"].as_str().unwrap().contains("--key cli-lost"), "names the key to repeat with: {e}");
    assert!(err.starts_with("posctl: OUTCOME_UNKNOWN: "), "{err}");

    // Repeating it under the same key learns the outcome (exit 0), refunded once.
    lane.fault("none");
    let (st, out, err) = lane.posctl(&["refund", id, "5.00", "--key", "cli-lost", "--json"]);
    assert!(st.success(), "{out}{err}");
    let refund = json(&out);
    assert_eq!((refund["status"].as_str(), refund["amount_minor"].as_i64()), (Some("succeeded"), Some(500)));

    // Both views show what was refunded and the gateway's key for the payment.
    let (st, out, err) = lane.posctl(&["payments", "--json"]);
    assert!(st.success(), "{out}{err}");
    let listed = json(&out);
    let listed = listed["payments"].as_array().unwrap().iter().find(|x| x["payment_id"] == id).unwrap().clone();
    assert_eq!(listed["refunded_minor"], 500, "{listed}");
    assert_eq!(listed["refunds"].as_array().map(Vec::len), Some(1), "{listed}");
    let gateway_key = listed["gateway_key"].as_str().unwrap().to_string();
    assert!(!gateway_key.is_empty() && gateway_key != "cli-refunds", "posd's own key: {listed}");
    let (st, out, err) = lane.posctl(&["payment", id, "--json"]);
    assert!(st.success(), "{out}{err}");
    let shown = json(&out);
    assert_eq!((shown["refunded_minor"].as_i64(), shown["gateway_key"].as_str()), (Some(500), Some(&*gateway_key)));
    let refunds = shown["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{shown}");
    assert_eq!(
        (refunds[0]["idempotency_key"].as_str(), refunds[0]["status"].as_str()),
        (Some("cli-lost"), Some("succeeded"))
    );
    assert!(shown["terminal"].is_null(), "taken on a card reader, not a payment terminal: {shown}");
    let (st, out, err) = lane.posctl(&["payment", id]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains(&format!("gateway key {gateway_key}")) && out.contains("refunded 5.00 EUR"), "{out}");
    let (_, out, _) = lane.posctl(&["payments"]);
    assert!(out.contains(&format!("gateway key {gateway_key}")), "{out}");
    assert_eq!(lane.ledger()[0]["refunded_minor"], 500, "refunded once at the gateway");
    lane.finish();
}

#[test]
fn nothing_listening_is_unreachable_exit_3_also_in_json() {
    // Nothing listens on a port we just bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (st, out, err) = run(Command::new(bin("posctl")).args(["--addr", &addr, "payments", "--json"]));
    assert_eq!(st.code(), Some(3), "{out}{err}");
    let v = json(&out);
    let e = &v["error"];
    assert_eq!((e["code"].as_str(), e["reason"].as_str()), (Some("unreachable"), Some("")), "{e}");
    assert!(err.contains("cannot reach posd"), "{err}");
}

#[tokio::test]
async fn a_busy_lane_is_exit_6_try_again() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("cli-busy", 1_000)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    lane.wait_status(&first.payment_id, pb::PaymentStatus::Collecting).await;
    let (st, out, err) = lane.posctl(&["pay", "2.00", "--key", "cli-busy-2", "--json"]);
    assert_eq!(st.code(), Some(6), "{out}{err}");
    assert_eq!(json(&out)["error"]["reason"], "TERMINAL_BUSY");
    assert!(err.contains("--key cli-busy-2"), "{err}");
    let canceled = client.cancel_payment(pb::CancelPaymentRequest { payment_id: first.payment_id }).await.unwrap();
    lane.responses.push(format!("{canceled:?}"));
    lane.finish();
}

#[tokio::test]
async fn a_reader_that_stops_early_ends_the_output_quietly() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    for key in ["pipe-1", "pipe-2", "pipe-3"] {
        assert_eq!(status(&final_payment(&lane.pay(key, 1_000).await)), pb::PaymentStatus::Captured);
    }
    for args in [&["payments"][..], &["payments", "--json"], &["events", "--no-follow"]] {
        let mut child = Command::new(bin("posctl"))
            .args(["--addr", &lane.posd_addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `posctl payments | head -0`: the reader is gone before posctl writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "posctl {args:?} panicked: {err}");
        assert_eq!(out.status.code(), Some(0), "posctl {args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "posctl {args:?}: {err}");
    }
    lane.finish();
}
