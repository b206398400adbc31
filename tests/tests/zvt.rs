//! Payments on a ZVT payment terminal (firmware-sim zvt) through posd, on a
//! PTY (serial framing) and over TCP, including the field bugs listed in the
//! reference: two APDUs in one TCP read, T4 restarted by 04 FF, a crash
//! between storing 04 0F and sending 80 00, customer cancel, 0x51.

use pos_proto::terminal as pb;
use posd_e2e::{Lane, final_payment, status};

async fn ready(lane: &mut Lane) {
    lane.ready().await;
    lane.reader_ready().await;
}

/// Waits until the terminal simulator's log (written through a pipe, a
/// moment behind) has every one of `needles`.
async fn terminal_logged(lane: &Lane, needles: &[&str]) {
    let path = lane.dir.path().join("firmware-sim.log");
    posd_e2e::eventually("the terminal simulator to log it", async || {
        let log = std::fs::read_to_string(&path).ok()?;
        needles.iter().all(|n| log.contains(n)).then_some(())
    })
    .await;
}

fn reason(p: &pb::Payment) -> String {
    format!("{:?} {:?}", p.decline, p.failure)
}

async fn payment(lane: &Lane, id: &str) -> pb::Payment {
    let mut client = lane.client().await;
    client.get_payment(pb::GetPaymentRequest { payment_id: id.into() }).await.unwrap().into_inner()
}

/// The gateway ledger's entry for a payment, once the record arrived.
async fn recorded(lane: &Lane, p: &pb::Payment) -> serde_json::Value {
    posd_e2e::eventually("the terminal payment to be recorded at the gateway", async || {
        lane.ledger().into_iter().find(|c| c["amount_minor"] == p.amount.as_ref().unwrap().amount_minor)
    })
    .await
}

async fn approved_and_recorded(transport_tcp: bool, args: &[&str]) {
    let mut lane = Lane::start_zvt(args, transport_tcp);
    ready(&mut lane).await;
    let events = lane.pay("zvt-1", 1234).await;
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    // The terminal's intermediate statuses reached the register.
    let stages: Vec<i32> = events.iter().map(|e| e.stage).collect();
    assert!(stages.contains(&(pb::PaymentStage::PresentCard as i32)), "{stages:?}");
    assert!(stages.contains(&(pb::PaymentStage::PinEntry as i32)), "{stages:?}");
    // The receipt follows the result (after 80 00), so it may come a moment later.
    let p = posd_e2e::eventually("the terminal's receipt lines", async || {
        let p = payment(&lane, &p.payment_id).await;
        let lines = &p.terminal.as_ref()?.receipt_lines;
        lines.iter().any(|l| l.contains("Zahlung erfolgt")).then_some(p)
    })
    .await;
    assert_eq!(p.card.as_ref().unwrap().masked_pan, "672559******1000");
    let t = p.terminal.as_ref().expect("the terminal's authorization");
    assert_eq!(t.receipt_no, 1);
    assert!(!t.offline);
    let history: Vec<i32> = p.history.iter().map(|h| h.to).collect();
    let confirming = history.iter().position(|s| *s == pb::PaymentStatus::Confirming as i32).expect("CONFIRMING");
    assert_eq!(history[confirming + 1], pb::PaymentStatus::Captured as i32);
    let entry = recorded(&lane, &p).await;
    assert_eq!(entry["entry_mode"], "terminal");
    assert_eq!(entry["status"], "approved");
    assert_eq!(entry["masked_pan"], "672559******1000");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_on_a_zvt_terminal_over_a_pty_is_approved_and_recorded() {
    approved_and_recorded(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_on_a_zvt_terminal_over_tcp_is_approved_and_recorded_with_print_lines() {
    // Receipts as 06 D1 print lines here; as one 06 D3 block over the PTY.
    approved_and_recorded(true, &["--receipts", "lines"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_apdus_in_one_tcp_read_are_both_taken() {
    // The terminal's 80 00 and its first intermediate status leave in one
    // TCP segment (a real bug report: ACK + Completion arriving together).
    let mut lane = Lane::start_zvt(&[], true);
    ready(&mut lane).await;
    lane.terminal("fault coalesce");
    let p = final_payment(&lane.pay("coalesced", 500).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    terminal_logged(&lane, &["holding 80 00 back"]).await;
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn t4_is_restarted_by_each_intermediate_status() {
    // Ten intermediate statuses 300 ms apart: 3 s in all, twice posd's T4
    // (1.5 s). Each 04 FF restarts T4, so the payment completes.
    let mut lane = Lane::start_zvt(&["--scenario", "slow", "--step-ms", "300"], false);
    ready(&mut lane).await;
    let started = std::time::Instant::now();
    let p = final_payment(&lane.pay("slow", 700).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    assert!(started.elapsed() > std::time::Duration::from_millis(3000), "the scenario really outlasted T4");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_cancel_on_the_terminal_cancels_the_payment() {
    let mut lane = Lane::start_zvt(&["--scenario", "cancel"], false);
    ready(&mut lane).await;
    let p = final_payment(&lane.pay("cancel", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Canceled);
    assert!(reason(&p).contains("customer at the payment terminal"), "{}", reason(&p));
    // Terminals are known to leave a Status Enquiry unanswered after a
    // customer cancel; posd does not depend on one: the next payment runs.
    lane.terminal("scenario approve");
    let next = final_payment(&lane.pay("after-cancel", 901).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn initialisation_required_is_a_clear_error() {
    let mut lane = Lane::start_zvt(&["--scenario", "init-required"], true);
    ready(&mut lane).await;
    let p = final_payment(&lane.pay("init", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    let f = p.failure.as_ref().unwrap();
    assert_eq!(f.code, "terminal_not_initialised");
    assert!(f.message.contains("initialised") && f.message.contains("Nothing was charged"), "{}", f.message);

    lane.terminal("scenario busy");
    let p = final_payment(&lane.pay("busy", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    assert_eq!(p.failure.as_ref().unwrap().code, "terminal_busy", "{}", reason(&p));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_register_cancels_a_payment_running_on_the_terminal() {
    // A slow customer; the register cancels: posd sends Abort (06 B0) and
    // the terminal ends the payment with 06 1E 6C.
    let mut lane = Lane::start_zvt(&["--scenario", "slow", "--step-ms", "200"], false);
    ready(&mut lane).await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(posd_e2e::request("register-cancel", 800)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first event");
    let id = first.payment.as_ref().unwrap().payment_id.clone();
    let canceled = client.cancel_payment(pb::CancelPaymentRequest { payment_id: id.clone() }).await;
    assert!(canceled.is_ok(), "{canceled:?}");
    let p = payment(&lane, &id).await;
    assert_eq!(status(&p), pb::PaymentStatus::Canceled);
    assert!(reason(&p).contains("the register"), "{}", reason(&p));
    terminal_logged(&lane, &["the register asked to abort (06 B0)"]).await;
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decline_and_an_offline_approval_at_the_terminal() {
    let mut lane = Lane::start_zvt(&["--scenario", "decline", "05"], false);
    ready(&mut lane).await;
    let p = final_payment(&lane.pay("declined", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Declined);
    assert_eq!(p.decline.as_ref().unwrap().code, "zvt_05", "{}", reason(&p));

    lane.terminal("scenario offline");
    let p = final_payment(&lane.pay("offline", 1100).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    let p = payment(&lane, &p.payment_id).await;
    assert!(p.terminal.as_ref().unwrap().offline);
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "terminal_approved_offline" && e.payment_id == p.payment_id), "{events:?}");
    // Outside posd's offline caps: the terminal decided; the ledger has it.
    assert_eq!(recorded(&lane, &p).await["status"], "approved");
    assert_eq!(lane.sync().await.queue_depth, 0, "not in posd's offline queue");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_ack_and_a_corrupted_crc_on_the_serial_line_are_repeated() {
    let mut lane = Lane::start_zvt(&[], false);
    ready(&mut lane).await;
    lane.terminal("fault drop-ack");
    let p = final_payment(&lane.pay("drop-ack", 300).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    lane.terminal("fault bad-crc");
    let p = final_payment(&lane.pay("bad-crc", 400).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    terminal_logged(&lane, &["dropping a link-level ACK", "corrupted CRC"]).await;
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disconnect_mid_payment_is_settled_by_asking_the_terminal() {
    let mut lane = Lane::start_zvt(&[], false);
    ready(&mut lane).await;
    let first = final_payment(&lane.pay("before", 1000).await);
    assert_eq!(status(&first), pb::PaymentStatus::Captured);
    // The line dies after "insert card": posd cannot know, asks the terminal
    // once it is back, and the terminal's last receipt is still the first
    // payment's: nothing was charged.
    lane.terminal("scenario disconnect");
    let p = final_payment(&lane.pay("dropped", 2000).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed, "{}", reason(&p));
    let f = p.failure.as_ref().unwrap();
    assert_eq!(f.code, "terminal_not_booked");
    assert!(f.message.contains("nothing was charged"), "{}", f.message);
    let p = payment(&lane, &p.payment_id).await;
    assert!(p.history.iter().any(|h| h.to == pb::PaymentStatus::Unknown as i32), "it was in doubt first");
    // And the lane goes on.
    let next = final_payment(&lane.pay("after", 3000).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

/// posd dies after storing the terminal's result and before sending 80 00.
async fn crash_before_confirming(keep_unconfirmed: bool) -> (Lane, pb::Payment) {
    let mut args = vec!["--t3-ms", "300"];
    if keep_unconfirmed {
        args.push("--keep-unconfirmed");
    }
    let mut lane = Lane::prepare_zvt(&args, false, "");
    lane.posd_env = vec![("POSD_FAILPOINT".into(), "zvt_result_stored".into())];
    lane.start_posd();
    ready(&mut lane).await;
    let mut client = lane.client().await;
    let _ = posd_e2e::take(&mut client, "crash", 4200).await;
    let exit = lane.wait_posd_exit().await;
    posd_e2e::assert_aborted(&exit);
    lane.posd_env.clear();
    lane.start_posd();
    let mut client = lane.client().await;
    let list = client.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    let id = list.payments[0].payment_id.clone();
    let p = posd_e2e::eventually("the payment to be settled by asking the terminal", async || {
        // Events first: the payment read after them is at least as new.
        let events = lane.events().await;
        let p = payment(&lane, &id).await;
        let settled = status(&p) == pb::PaymentStatus::Captured
            || events.iter().any(|e| e.kind == "terminal_outcome_unknown" && e.payment_id == id);
        settled.then_some(p)
    })
    .await;
    (lane, p)
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_storing_the_result_and_confirming_it_a_booked_payment_is_confirmed_once() {
    // The terminal kept the unconfirmed result: asked after the restart, it
    // shows the stored receipt, so the payment is CAPTURED and recorded once.
    let (lane, p) = crash_before_confirming(true).await;
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    recorded(&lane, &p).await;
    let ledger = lane.ledger();
    assert_eq!(ledger.iter().filter(|c| c["amount_minor"] == 4200).count(), 1, "{ledger:?}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_storing_the_result_and_confirming_it_a_reversed_payment_is_never_approved() {
    // The terminal reversed the result it never saw confirmed: its last
    // receipt is the reversal. posd does not guess: the payment stays
    // UNKNOWN for a person, never approved, never recorded.
    let (lane, p) = crash_before_confirming(false).await;
    assert_eq!(status(&p), pb::PaymentStatus::Unknown, "{}", reason(&p));
    assert!(!p.approved);
    let events = lane.events().await;
    let e = events.iter().find(|e| e.kind == "terminal_outcome_unknown").unwrap();
    assert!(e.message.contains("check the terminal's journal"), "{}", e.message);
    assert!(lane.ledger().iter().all(|c| c["amount_minor"] != 4200), "nothing recorded at the gateway");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn reversal_refund_and_end_of_day_over_tcp() {
    reversal_refund_and_end_of_day(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reversal_refund_and_end_of_day_over_a_pty() {
    reversal_refund_and_end_of_day(false).await;
}

/// Reversal, refund and end-of-day run on the terminal and reach the ledger.
async fn reversal_refund_and_end_of_day(tcp: bool) {
    let mut lane = Lane::start_zvt(&[], tcp);
    ready(&mut lane).await;
    let a = final_payment(&lane.pay("to-reverse", 1000).await);
    let b = final_payment(&lane.pay("to-refund", 2500).await);
    let c = final_payment(&lane.pay("kept", 700).await);
    assert_eq!((status(&a), status(&b)), (pb::PaymentStatus::Captured, pb::PaymentStatus::Captured));
    assert_eq!(status(&c), pb::PaymentStatus::Captured);

    let (st, out, err) = lane.posctl(&["void", &a.payment_id, "--reason", "wrong item"]);
    assert!(st.success(), "{out}{err}");
    let a = payment(&lane, &a.payment_id).await;
    assert_eq!(status(&a), pb::PaymentStatus::Voided);

    let (st, out, err) = lane.posctl(&["refund", &b.payment_id, "5.00"]);
    assert!(st.success(), "{out}{err}");
    let b = payment(&lane, &b.payment_id).await;
    assert_eq!(b.refunded_minor, 500);
    // A refunded payment is not reversed as well: that would pay back twice.
    let (st, _, err) = lane.posctl(&["void", &b.payment_id]);
    assert!(!st.success() && err.contains("pay back twice"), "{err}");

    // The ledger has each record once: the reversal voided A, the refund is on B.
    posd_e2e::eventually("the reversal and the refund to reach the ledger", async || {
        let ledger = lane.ledger();
        let a_voided = ledger.iter().any(|c| c["amount_minor"] == 1000 && c["status"] == "voided");
        let b_refunded = ledger.iter().any(|c| c["amount_minor"] == 2500 && c["refunded_minor"] == 500);
        (a_voided && b_refunded && ledger.len() == 3).then_some(())
    })
    .await;

    let (st, out, err) = lane.posctl(&["--json", "end-of-day"]);
    assert!(st.success(), "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The terminal's own total: B less its refund, and C; A was reversed.
    assert_eq!(summary["totals"][0]["captured_minor"], 2700, "{summary}");

    // After the terminal's end-of-day a reversal is no longer possible.
    let (st, _, err) = lane.posctl(&["void", &c.payment_id]);
    assert!(!st.success());
    assert!(err.contains("did not reverse") && err.contains("refund it instead"), "{err}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_amount_with_dle_bytes_crosses_the_serial_line_stuffed() {
    // 10.10 EUR is BCD 00 00 00 00 10 10: two DLE bytes to stuff in the frame.
    let mut lane = Lane::start_zvt(&[], false);
    ready(&mut lane).await;
    let p = final_payment(&lane.pay("dle", 1010).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    let entry = recorded(&lane, &p).await;
    assert_eq!(entry["amount_minor"], 1010, "the terminal charged exactly the amount sent");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_without_repeat_receipt_leaves_a_doubt_to_a_person_never_a_guess() {
    let mut lane = Lane::start_zvt(&["--no-repeat-receipt"], true);
    ready(&mut lane).await;
    lane.terminal("scenario disconnect");
    let events = lane.pay("no-repeat", 1500).await;
    let last = events.last().unwrap();
    assert!(last.message.contains("Outcome unknown"), "{}", last.message);
    assert!(events.iter().any(|e| e.message.contains("check its journal")), "the register heard why: {events:?}");
    let id = last.payment.as_ref().unwrap().payment_id.clone();
    let p = payment(&lane, &id).await;
    assert_eq!(status(&p), pb::PaymentStatus::Unknown);
    assert!(!p.approved);
    let events = lane.events().await;
    let e = events.iter().find(|e| e.kind == "terminal_outcome_unknown" && e.payment_id == id).unwrap();
    assert!(e.message.contains("cannot repeat its last receipt"), "{}", e.message);
    // The lane is free for the next customer.
    let next = final_payment(&lane.pay("next", 1600).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_resolves_payments_in_doubt_from_the_terminals_journal() {
    // A terminal that cannot repeat its last receipt and keeps a result it
    // never saw confirmed: posd leaves both payments UNKNOWN.
    let mut lane = Lane::start_zvt(&["--no-repeat-receipt", "--keep-unconfirmed"], false);
    ready(&mut lane).await;
    lane.terminal("scenario drop-after-result");
    let booked = final_payment(&lane.pay("doubt-booked", 2300).await);
    lane.terminal("scenario disconnect");
    let not_booked = final_payment(&lane.pay("doubt-not-booked", 2400).await);
    lane.terminal("scenario approve");
    for p in [&booked, &not_booked] {
        assert_eq!(status(&payment(&lane, &p.payment_id).await), pb::PaymentStatus::Unknown);
    }
    assert!(lane.ledger().is_empty(), "nothing recorded while in doubt");

    // A booking needs its receipt number.
    let (st, _, _) = lane.posctl(&["resolve", &booked.payment_id]);
    assert_eq!(st.code(), Some(2), "--receipt or --not-booked is required");
    // The journal shows the first one booked under receipt 1 (the terminal's first).
    let (st, out, err) = lane.posctl(&["resolve", &booked.payment_id, "--receipt", "1", "--note", "journal checked"]);
    assert!(st.success(), "{out}{err}");
    let p = payment(&lane, &booked.payment_id).await;
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    assert!(p.approved);
    assert_eq!(p.terminal.as_ref().unwrap().receipt_no, 1);
    let entry = recorded(&lane, &p).await;
    assert_eq!(entry["status"], "approved", "recorded in the ledger: {entry}");
    // The second is not in the journal: nothing was charged.
    let (st, out, err) = lane.posctl(&["resolve", &not_booked.payment_id, "--not-booked"]);
    assert!(st.success(), "{out}{err}");
    let p = payment(&lane, &not_booked.payment_id).await;
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    assert_eq!(p.failure.as_ref().unwrap().code, "terminal_not_booked");
    assert!(p.history.iter().any(|h| h.cause.contains("from the terminal's journal: not booked")), "{:?}", p.history);

    // Only a payment in doubt can be resolved, once.
    let (st, _, err) = lane.posctl(&["resolve", &booked.payment_id, "--not-booked"]);
    assert!(!st.success() && err.contains("is captured; only an UNKNOWN payment"), "{err}");
    let resolved: Vec<_> = lane.events().await.into_iter().filter(|e| e.kind == "payment_resolved").collect();
    assert_eq!(resolved.len(), 2, "{resolved:?}");
    assert!(resolved[0].message.contains("booked under receipt 1 (journal checked)"), "{}", resolved[0].message);
    let ledger = lane.ledger();
    assert_eq!(ledger.len(), 1, "only the booked payment reached the ledger: {ledger:?}");
    // The lane goes on with the next customer.
    let next = final_payment(&lane.pay("after", 2500).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_posd_is_still_asking_about_cannot_be_resolved_and_a_stop_waits_for_the_answer() {
    // A terminal that cannot repeat its last receipt, and that takes its
    // time (an intermediate status a second, within posd's T4).
    let args = ["--no-repeat-receipt", "--scenario", "slow", "--slow-steps", "600", "--step-ms", "1000"];
    let mut lane = Lane::prepare_zvt(&args, false, "");
    // A stop waits for the payment (far longer than the test's patience), and
    // posd keeps asking the terminal for as long as the test needs.
    lane.top_config = "stop_timeout = \"10m\"".into();
    lane.gateway_config = "status_attempts = 50\n".into();
    lane.start_posd();
    ready(&mut lane).await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(posd_e2e::request("asking", 1700)).await.unwrap().into_inner();
    let id = stream.message().await.unwrap().unwrap().payment_id;
    let mut seen = Vec::new();
    // The terminal's intermediate status (its "please wait", code 0x17): it has the payment.
    loop {
        let e = stream.message().await.unwrap().expect("the terminal's status");
        seen.push(format!("{e:?}"));
        if e.stage == pb::PaymentStage::Authorizing as i32 {
            break;
        }
    }
    lane.kill_reader();
    // The line died with the payment on the terminal: posd asks it what it booked.
    loop {
        let e = stream.message().await.unwrap().expect("the stream goes on while posd asks");
        seen.push(format!("{e:?}"));
        if e.message.starts_with("Checking with the payment terminal") {
            break;
        }
    }
    lane.responses.extend(seen);
    let (st, _, err) = lane.posctl(&["resolve", &id, "--not-booked"]);
    assert!(!st.success() && err.contains("still asking the payment terminal"), "{err}");

    // A stop now waits for the payment (its bound is 10 minutes): the answer
    // that ends the doubt must wake it.
    lane.terminate_posd();
    lane.start_reader();
    let exit = lane.wait_posd_exit().await;
    assert!(exit.success(), "posd stopped once the payment ended: {exit:?}");
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    assert!(log.contains("stopping: waiting for payments in progress"), "the stop waited for the payment");

    lane.start_posd();
    let p = payment(&lane, &id).await;
    assert_eq!(status(&p), pb::PaymentStatus::Unknown, "left to a person: {}", reason(&p));
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "terminal_outcome_unknown" && e.payment_id == id), "{events:?}");
    assert!(!events.iter().any(|e| e.kind == "payment_parked_on_stop"), "the stop did not time out: {events:?}");
    lane.finish();
}
