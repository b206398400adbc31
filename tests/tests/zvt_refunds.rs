//! Refunds on a ZVT payment terminal that were interrupted (the line failed,
//! posd was killed) settle the way payments in doubt do: by the terminal's
//! Repeat Receipt, judged against the lane's last receipt before the refund;
//! what the terminal cannot tell is left to a person (`posctl resolve
//! REFUND`), never refunded a second time (issue 22 §2).

use pos_proto::terminal as pb;
use posd_e2e::{Lane, eventually, final_payment, status};

async fn ready(lane: &mut Lane) {
    lane.ready().await;
    lane.reader_ready().await;
}

use posd_e2e::refund_request as refund;

async fn payment(lane: &Lane, id: &str) -> pb::Payment {
    let get = pb::GetPaymentRequest { payment_id: id.into() };
    lane.client().await.get_payment(get).await.unwrap().into_inner()
}

/// The line drops while the customer is asked for the card: posd asks the
/// terminal, whose last receipt is still the sale's, so nothing was refunded
/// and the refund fails; the next refund goes through, recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_cut_off_by_the_line_is_settled_by_asking_the_terminal() {
    let mut lane = Lane::start_zvt(&[], false);
    ready(&mut lane).await;
    let sale = final_payment(&lane.pay("sale", 3_000).await);
    assert_eq!(status(&sale), pb::PaymentStatus::Captured);
    lane.terminal("scenario disconnect");
    let mut client = lane.client().await;
    let r = client.refund_payment(refund("cut", &sale.payment_id, 1_000)).await.unwrap().into_inner();
    assert_eq!(r.status, pb::RefundStatus::Failed as i32, "{r:?}");
    assert_eq!(r.failure.as_ref().unwrap().code, "terminal_not_booked", "{r:?}");
    // The same key answers the settled refund; a new one refunds.
    let again = client.refund_payment(refund("cut", &sale.payment_id, 1_000)).await.unwrap().into_inner();
    assert_eq!(again.status, pb::RefundStatus::Failed as i32);
    let ok = client.refund_payment(refund("next", &sale.payment_id, 1_000)).await.unwrap().into_inner();
    assert_eq!(ok.status, pb::RefundStatus::Succeeded as i32, "{ok:?}");
    eventually("the refund to reach the ledger", async || {
        lane.ledger().iter().any(|c| c["amount_minor"] == 3_000 && c["refunded_minor"] == 1_000).then_some(())
    })
    .await;
    assert_eq!(payment(&lane, &sale.payment_id).await.refunded_minor, 1_000);
    lane.finish();
}

/// posd is killed between the terminal's refund result and storing it; the
/// terminal keeps the result it never saw confirmed. Start-up asks it: the
/// next receipt after the sale's, with this amount: booked, recorded in the
/// ledger once, and never refunded a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_interrupted_by_a_kill_is_settled_from_the_terminals_receipt() {
    let mut lane = Lane::prepare_zvt(&["--t3-ms", "300", "--keep-unconfirmed"], false, "");
    lane.start_posd();
    ready(&mut lane).await;
    let sale = final_payment(&lane.pay("sale", 4_000).await);
    lane.kill_posd();
    lane.posd_env = vec![("POSD_FAILPOINT".into(), "zvt_refund_result".into())];
    lane.start_posd();
    ready(&mut lane).await;
    let cut = lane.client().await.refund_payment(refund("killed", &sale.payment_id, 1_500)).await;
    assert!(cut.is_err(), "posd died under the call: {cut:?}");
    posd_e2e::assert_aborted(&lane.wait_posd_exit().await);
    lane.posd_env.clear();
    lane.start_posd();
    ready(&mut lane).await;
    let p = eventually("start-up to settle the refund from the terminal", async || {
        let p = payment(&lane, &sale.payment_id).await;
        p.refunds.iter().all(|r| r.status != pb::RefundStatus::Pending as i32).then_some(p)
    })
    .await;
    assert_eq!(p.refunds.len(), 1);
    assert_eq!(p.refunds[0].status, pb::RefundStatus::Succeeded as i32, "{p:?}");
    assert_eq!(p.refunded_minor, 1_500);
    let r = lane.client().await.refund_payment(refund("killed", &sale.payment_id, 1_500)).await.unwrap();
    assert_eq!(r.into_inner().status, pb::RefundStatus::Succeeded as i32, "the same key: that refund");
    eventually("the refund to reach the ledger", async || {
        lane.ledger().iter().any(|c| c["amount_minor"] == 4_000 && c["refunded_minor"] == 1_500).then_some(())
    })
    .await;
    lane.finish();
}

/// A terminal that cannot repeat its last receipt cannot tell: the refund
/// stays pending and alerted (a same-key call says so, never "failed", and
/// its amount stays reserved) until a person checks the journal and says.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_settles_a_refund_the_terminal_cannot_tell() {
    let mut lane = Lane::start_zvt(&["--no-repeat-receipt"], false);
    ready(&mut lane).await;
    let sale = final_payment(&lane.pay("sale", 2_000).await);
    lane.terminal("scenario disconnect");
    let mut client = lane.client().await;
    let doubt = client.refund_payment(refund("doubt", &sale.payment_id, 2_000)).await.unwrap_err();
    assert_eq!(doubt.code(), tonic::Code::Unavailable, "{doubt:?}");
    assert!(doubt.message().contains("posctl resolve"), "{}", doubt.message());
    let p = payment(&lane, &sale.payment_id).await;
    assert_eq!(p.refunds[0].status, pb::RefundStatus::Pending as i32);
    let refund_id = p.refunds[0].refund_id.clone();
    // Its 2,000 stay reserved: nothing more may be refunded meanwhile.
    let over = client.refund_payment(refund("more", &sale.payment_id, 1)).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::FailedPrecondition, "{over:?}");
    let events = lane.events().await;
    assert_eq!(events.iter().filter(|e| e.kind == "terminal_refund_unknown").count(), 1, "{events:?}");

    let (st, out, err) = lane.posctl(&["resolve", &refund_id, "--not-booked", "--note", "journal checked"]);
    assert!(st.success(), "{out}{err}");
    let p = payment(&lane, &sale.payment_id).await;
    assert_eq!(p.refunds[0].status, pb::RefundStatus::Failed as i32);
    assert!(
        p.history
            .iter()
            .any(|h| h.cause.contains("checked the payment terminal's journal: not booked (journal checked)")),
        "audited with who: {:?}",
        p.history
    );
    // Settled once: resolving again is refused.
    let (st, _, err) = lane.posctl(&["resolve", &refund_id, "--not-booked"]);
    assert_eq!(st.code(), Some(4), "{err}");
    // The amount is free again.
    lane.terminal("scenario approve");
    let ok = client.refund_payment(refund("after", &sale.payment_id, 2_000)).await.unwrap().into_inner();
    assert_eq!(ok.status, pb::RefundStatus::Succeeded as i32, "{ok:?}");
    lane.finish();
}
