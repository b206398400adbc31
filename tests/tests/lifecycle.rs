//! A graceful stop (SIGTERM, as systemd and a package upgrade send it): new
//! payments are refused, payments in progress finish, and those that cannot
//! finish within `stop_timeout` are canceled or parked, never lost.

use pos_proto::terminal as pb;
use posd_e2e::{Lane, final_payment, request, status};

/// Starts a payment and returns its stream once the reader is waiting for the card.
async fn collecting(lane: &Lane, key: &str) -> tonic::Streaming<pb::PaymentEvent> {
    let mut stream = lane.client().await.take_payment(request(key, 1234)).await.expect("take payment").into_inner();
    loop {
        let ev = stream.message().await.expect("event").expect("the stream ended before the card was asked for");
        if ev.payment.as_ref().is_some_and(|p| status(p) == pb::PaymentStatus::Collecting) {
            return stream;
        }
    }
}

async fn rest(mut stream: tonic::Streaming<pb::PaymentEvent>) -> Vec<pb::PaymentEvent> {
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await.expect("event") {
        events.push(ev);
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_lets_the_payment_in_progress_finish_and_refuses_new_ones() {
    // The card comes 2.5 s after it is asked for: well after the stop.
    let mut lane = Lane::prepare(&["--present-delay-ms", "2500"], "");
    lane.start_posd();
    lane.ready().await;
    let stream = collecting(&lane, "in-progress").await;
    lane.terminate_posd();
    let refused = posd_e2e::eventually("posd to refuse new payments", async || {
        match lane.client().await.take_payment(request("after-stop", 500)).await {
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().contains("posd is stopping") => Some(e),
            _ => None,
        }
    })
    .await;
    assert!(refused.message().contains("take the payment again"), "{}", refused.message());
    let p = final_payment(&rest(stream).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{p:?}");
    let exit = lane.wait_posd_exit().await;
    assert!(exit.success(), "posd exited with {exit}");
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    assert!(log.contains("stopping: waiting for payments in progress"), "the stop began mid-payment");
    assert_eq!(lane.ledger().len(), 1, "exactly one charge");
    lane.start_posd();
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_still_waiting_for_a_card_at_the_stop_bound_is_canceled_and_nothing_is_charged() {
    let mut lane = Lane::prepare(&["--no-card"], "");
    lane.top_config = "stop_timeout = \"3s\"\n".into();
    lane.start_posd();
    lane.ready().await;
    let stream = collecting(&lane, "never-a-card").await;
    lane.terminate_posd();
    let p = final_payment(&rest(stream).await);
    assert_eq!(status(&p), pb::PaymentStatus::Canceled, "{p:?}");
    let exit = lane.wait_posd_exit().await;
    assert!(exit.success(), "posd exited with {exit}");

    // After the restart the payment is still canceled, and the event log says why.
    lane.start_posd();
    lane.ready().await;
    let mut client = lane.client().await;
    let stored = client.get_payment(pb::GetPaymentRequest { payment_id: p.payment_id.clone() }).await.unwrap();
    assert_eq!(status(&stored.into_inner()), pb::PaymentStatus::Canceled);
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "payment_canceled_on_stop" && e.payment_id == p.payment_id), "{events:?}");
    assert!(lane.ledger().is_empty(), "nothing was charged");
    lane.finish();
}
