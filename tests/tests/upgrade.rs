//! A database written by the release before the money-safety changes
//! (a050298) opens in today's posd with nothing lost or doubled: its queued
//! offline payment is forwarded once, its pending refund (answer lost; the
//! gateway booked it) is settled by the gateway's record, not refunded
//! again, and its ZVT payment in doubt stays for a person (issue 22,
//! "Upgrades"). The fixture in `tests/fixtures/upgrade-a050298/` was made by
//! that release's binaries through `make_upgrade_fixture` below.

use std::path::{Path, PathBuf};
use std::process::Command;

use pos_proto::terminal as pb;
use posd_e2e::{Lane, Proc, bin, eventually, final_payment};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade-a050298")
}

/// The ZVT lane beside the harness's reader lane, on a simulated terminal
/// that cannot repeat its last receipt.
fn with_zvt_lane(dir: &Path) -> (Proc, String, String) {
    let link = dir.join("zvt-link");
    let mut cmd = Command::new(bin("firmware-sim"));
    cmd.arg("zvt").arg("--pty-link").arg(&link);
    cmd.args(["--control", "127.0.0.1:0", "--step-ms", "5", "--no-repeat-receipt"]);
    let (proc, control) = Proc::start(cmd, &dir.join("zvt.log"), "firmware-sim zvt control on ");
    let lane = format!(
        "[[lane]]\nid = \"zvt\"\ncurrency = \"EUR\"\nreader = {{ kind = \"zvt\", device = {link:?}, t3_ms = 1000, t4_ms = 3000 }}\n"
    );
    (proc, control, lane)
}

/// Takes a payment as `req` asks and returns its stream's events.
async fn take(
    client: &mut pos_proto::terminal::payment_terminal_client::PaymentTerminalClient<tonic::transport::Channel>,
    req: pb::TakePaymentRequest,
) -> Vec<pb::PaymentEvent> {
    let mut stream = client.take_payment(req).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e);
    }
    events
}

fn terminal(control: &str, command: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(control).expect("the terminal's control port");
    writeln!(s, "{command}").unwrap();
    BufReader::new(s).read_line(&mut String::new()).unwrap();
}

/// Makes the fixture with the binaries in `POSD_E2E_BIN_DIR` (the older
/// release's): `POSD_E2E_BIN_DIR=<old target>/debug cargo test -p posd-e2e
/// --test upgrade -- --ignored make_upgrade_fixture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by hand with an older release's binaries"]
async fn make_upgrade_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let (zvt, control, zvt_lane) = with_zvt_lane(dir.path());
    let mut lane = Lane::prepare_in(dir, &[], &zvt_lane);
    lane.start_posd();
    lane.ready().await;
    let sale = final_payment(&lane.pay("fx-captured", 5_000).await);
    // A refund whose answer is lost: the gateway booked it, posd keeps it pending.
    lane.fault("lose-answers");
    let refund = pb::RefundPaymentRequest {
        idempotency_key: "fx-refund".into(),
        payment_id: sale.payment_id.clone(),
        amount_minor: 1_000,
        reason: String::new(),
    };
    assert!(lane.client().await.refund_payment(refund).await.is_err(), "the answer is lost");
    // A payment approved offline and queued.
    lane.fault("down");
    let queued = final_payment(&lane.pay("fx-queued", 700).await);
    assert!(queued.offline && queued.approved, "{queued:?}");
    // A ZVT sale, and a refund of it the line cut off: pending, in doubt.
    let mut req = posd_e2e::request("fx-zvt-sale", 2_500);
    req.terminal_id = "zvt".into();
    let zvt_sale = final_payment(&take(&mut lane.client().await, req).await);
    assert_eq!(zvt_sale.status, pb::PaymentStatus::Captured as i32, "{zvt_sale:?}");
    terminal(&control, "scenario disconnect");
    let refund = pb::RefundPaymentRequest {
        idempotency_key: "fx-zvt-refund".into(),
        payment_id: zvt_sale.payment_id.clone(),
        amount_minor: 500,
        reason: String::new(),
    };
    assert!(lane.client().await.refund_payment(refund).await.is_err(), "the line was cut");
    // A ZVT payment the terminal cannot confirm: UNKNOWN, left to a person.
    terminal(&control, "scenario disconnect");
    let mut req = posd_e2e::request("fx-zvt", 1_500);
    req.terminal_id = "zvt".into();
    take(&mut lane.client().await, req).await;
    lane.terminate_posd();
    assert!(lane.wait_posd_exit().await.success());
    lane.kill_gateway();
    drop(zvt);
    let out = fixture_dir();
    std::fs::create_dir_all(&out).unwrap();
    for (from, to) in [(lane.state_dir().join("posd.db"), "posd.db"), (lane.dir.path().join("ledger.db"), "ledger.db")]
    {
        // One file each: the WAL folded in.
        let db = rusqlite::Connection::open(&from).unwrap();
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;").unwrap();
        drop(db);
        std::fs::copy(&from, out.join(to)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_the_release_before_opens_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("posd-state")).unwrap();
    std::fs::copy(fixture_dir().join("posd.db"), dir.path().join("posd-state/posd.db")).unwrap();
    std::fs::copy(fixture_dir().join("ledger.db"), dir.path().join("ledger.db")).unwrap();
    let (_zvt, _control, zvt_lane) = with_zvt_lane(dir.path());
    let mut lane = Lane::prepare_in(dir, &[], &zvt_lane);
    let ledger_before = lane.ledger();
    let charge = |ledger: &[serde_json::Value], amount: i64| {
        ledger.iter().find(|c| c["amount_minor"] == amount).cloned().unwrap_or_default()
    };
    // The ZVT sale's record was still queued for the ledger (the gateway was down).
    assert_eq!(ledger_before.len(), 1, "the captured sale: {ledger_before:?}");
    assert_eq!(charge(&ledger_before, 5_000)["refunded_minor"], 1_000, "and the refund whose answer was lost");
    lane.start_posd();
    lane.ready().await;
    let mut client = lane.client().await;
    let all = client.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner().payments;
    assert_eq!(all.len(), 4, "nothing lost: {all:?}");
    let by_key = |key: &str| all.iter().find(|p| p.idempotency_key == key).unwrap().payment_id.clone();
    let (sale, queued, zvt) = (by_key("fx-captured"), by_key("fx-queued"), by_key("fx-zvt"));
    let zvt_sale = by_key("fx-zvt-sale");

    // The queued payment is forwarded, once.
    let get = |id: String| pb::GetPaymentRequest { payment_id: id };
    eventually("the queued payment to be forwarded", async || {
        let p = client.get_payment(get(queued.clone())).await.unwrap().into_inner();
        (p.status == pb::PaymentStatus::Captured as i32).then_some(())
    })
    .await;
    // The pending refund is settled by the gateway's record: 1,000 once.
    let p = eventually("the pending refund to be settled", async || {
        let p = client.get_payment(get(sale.clone())).await.unwrap().into_inner();
        (p.refunds.iter().all(|r| r.status == pb::RefundStatus::Succeeded as i32)).then_some(p)
    })
    .await;
    assert_eq!((p.refunds.len(), p.refunded_minor), (1, 1_000), "{p:?}");
    let ledger = eventually("the ZVT sale's record to reach the ledger", async || {
        let ledger = lane.ledger();
        (ledger.len() >= 3).then_some(ledger)
    })
    .await;
    assert_eq!(ledger.len(), 3, "the two sales and the forwarded payment, nothing twice: {ledger:?}");
    assert_eq!(charge(&ledger, 5_000)["refunded_minor"], 1_000, "refunded once");
    assert_eq!(charge(&ledger, 700)["status"], "approved");
    // The same refund key answers that refund; nothing more is refunded.
    let again = pb::RefundPaymentRequest {
        idempotency_key: "fx-refund".into(),
        payment_id: sale.clone(),
        amount_minor: 1_000,
        reason: String::new(),
    };
    let r = client.refund_payment(again).await.unwrap().into_inner();
    assert_eq!(r.status, pb::RefundStatus::Succeeded as i32);
    assert_eq!(lane.ledger().iter().find(|c| c["amount_minor"] == 5_000).unwrap()["refunded_minor"], 1_000);
    // The ZVT payment in doubt is still there for a person, its history whole.
    let z = client.get_payment(get(zvt)).await.unwrap().into_inner();
    assert_eq!(z.status, pb::PaymentStatus::Unknown as i32, "{z:?}");
    assert!(z.history.len() >= 3, "{:?}", z.history);
    // The ZVT refund the old posd left in doubt, with no receipt number to
    // judge it by, is neither failed nor sent again: a person settles it.
    let alert = eventually("the alert for the ZVT refund in doubt", async || {
        lane.events().await.into_iter().find(|e| e.kind == "terminal_refund_unknown")
    })
    .await;
    assert!(alert.message.contains("posctl resolve"), "{alert:?}");
    let z = client.get_payment(get(zvt_sale)).await.unwrap().into_inner();
    assert_eq!(z.refunds.len(), 1);
    assert_eq!(z.refunds[0].status, pb::RefundStatus::Pending as i32, "{z:?}");
    assert_eq!(charge(&lane.ledger(), 2_500)["refunded_minor"], 0, "nothing recorded as refunded");
    // And the lanes take payments.
    let next = final_payment(&take(&mut client, posd_e2e::request("after-upgrade", 800)).await);
    assert_eq!(next.status, pb::PaymentStatus::Captured as i32);
    lane.finish();
}
