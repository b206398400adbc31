//! Payments on a nexo terminal (`firmware-sim nexo`: Adyen's Terminal API,
//! one encrypted JSON document per HTTPS POST) through posd, PTY-free: the
//! outcomes the terminal decides, an answer lost on the way settled by
//! TransactionStatus (booked and not booked), posd killed mid-POST and
//! settled at its next start, the register's cancel, a partial approval
//! reversed at once, void, partial refund and end of day, and a terminal
//! posd must not talk to (another POIID in its certificate, another key).
//!
//! What the terminal received is read from its transcript (every request
//! and answer, decrypted, card numbers masked); what it booked from its
//! journal file and its control port.

use std::process::Command;

use pos_proto::terminal as pb;
use posd_e2e::{Lane, NexoSetup, Proc, bin, card_numbers, eventually, final_payment, request, status, take};

fn reason(p: &pb::Payment) -> String {
    format!("{:?} {:?}", p.decline, p.failure)
}

async fn payment(lane: &Lane, id: &str) -> pb::Payment {
    let mut client = lane.client().await;
    client.get_payment(pb::GetPaymentRequest { payment_id: id.into() }).await.unwrap().into_inner()
}

/// The terminal's transcript lines of documents it received whose meaning
/// starts with `what` (`PaymentRequest`, `ReversalRequest`, ...).
fn received(transcript: &str, what: &str) -> usize {
    transcript
        .lines()
        .filter(|l| l.split_whitespace().skip(1).take(2).eq(["nexo", "in"]))
        .filter(|l| l.split_once(" | ").is_some_and(|(_, meaning)| meaning.starts_with(what)))
        .count()
}

/// Waits until the terminal's transcript holds every one of `needles`; returns it.
async fn transcribed(lane: &Lane, needles: &[&str]) -> String {
    eventually(&format!("the terminal's transcript to show {needles:?}"), async || {
        let t = lane.nexo_transcript();
        needles.iter().all(|n| t.contains(n)).then_some(t)
    })
    .await
}

/// Waits until the terminal runs a payment (posd's POST is in).
async fn terminal_running_a_payment(lane: &Lane) {
    eventually("the terminal to run the payment", async || {
        lane.terminal("status").contains("; 1 running").then_some(())
    })
    .await;
}

/// The gateway ledger's records of terminal payments of `amount_minor`,
/// once at least one arrived.
async fn recorded(lane: &Lane, amount_minor: i64) -> Vec<serde_json::Value> {
    eventually("the terminal payment to be recorded at the gateway", async || {
        let of: Vec<_> = lane.ledger().into_iter().filter(|c| c["amount_minor"] == amount_minor).collect();
        (!of.is_empty()).then_some(of)
    })
    .await
}

/// The card as posd shows it: at most the first six and last four digits.
fn assert_masked(masked_pan: &str) {
    assert!(masked_pan.starts_with("411111") && masked_pan.ends_with("1111"), "{masked_pan}");
    assert!(masked_pan.chars().filter(char::is_ascii_digit).count() <= 10, "{masked_pan}");
    assert!(card_numbers(masked_pan.as_bytes()).is_empty(), "{masked_pan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_payment_shows_the_terminals_fields_and_is_recorded_at_the_gateway_once() {
    let mut lane = Lane::start_nexo(NexoSetup::new("approve"));
    lane.ready().await;
    let p = final_payment(&lane.pay("nexo-approve", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    assert!(p.approved);
    assert_masked(&p.card.as_ref().expect("the card as the terminal masked it").masked_pan);

    let (st, out, err) = lane.posctl(&["--json", "payment", &p.payment_id]);
    assert!(st.success(), "{out}{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "captured", "{shown}");
    let t = &shown["terminal"];
    let poi_transaction_id = t["poi_transaction_id"].as_str().expect("the POI transaction id");
    assert!(poi_transaction_id.starts_with("SIMT"), "{shown}");
    assert!(t["poi_time_stamp"].as_str().is_some_and(|s| s.contains('T')), "{shown}");
    assert!(t["approval_code"].as_str().is_some_and(|c| !c.is_empty()), "{shown}");
    let service_id = t["service_id"].as_str().expect("the ServiceID posd used");
    assert!((1..=10).contains(&service_id.len()) && service_id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(t["sale_id"], "POSD-lane-1", "{shown}");
    assert_masked(shown["card"]["masked_pan"].as_str().unwrap());

    // The terminal got exactly one PaymentRequest, under that ServiceID,
    // with the payment's gateway key as its SaleTransactionID.
    let transcript = transcribed(&lane, &["PaymentResponse Success"]).await;
    assert_eq!(received(&transcript, "PaymentRequest"), 1, "{transcript}");
    assert!(transcript.contains(&format!("PaymentRequest {service_id} of POSD-lane-1")), "{transcript}");
    assert!(transcript.contains(&p.gateway_key), "the SaleTransactionID is the gateway key: {transcript}");
    let journal = lane.nexo_journal();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["ServiceID"], service_id);

    // Recorded once (RecordTerminalTransaction), and it stays once.
    let records = recorded(&lane, 1234).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["entry_mode"], "terminal");
    assert_eq!(records[0]["status"], "approved");
    let next = final_payment(&lane.pay("nexo-approve-2", 2000).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    recorded(&lane, 2000).await;
    assert_eq!(lane.ledger().iter().filter(|c| c["amount_minor"] == 1234).count(), 1);
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_terminals_decline_customer_cancel_and_busy_reach_the_register_with_nothing_recorded() {
    let mut lane = Lane::start_nexo(NexoSetup::new("decline"));
    lane.ready().await;
    let p = final_payment(&lane.pay("nexo-decline", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Declined, "{}", reason(&p));
    let d = p.decline.as_ref().unwrap();
    assert_eq!(d.code, "generic_decline");
    assert!(d.message.contains("Refusal"), "the terminal's condition is shown: {}", d.message);
    assert!(!p.approved);

    lane.terminal("scenario cancel");
    let p = final_payment(&lane.pay("nexo-cancel", 901).await);
    assert_eq!(status(&p), pb::PaymentStatus::Canceled, "{}", reason(&p));
    assert!(reason(&p).contains("customer at the payment terminal"), "{}", reason(&p));

    lane.terminal("scenario busy");
    let p = final_payment(&lane.pay("nexo-busy", 902).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed, "{}", reason(&p));
    assert_eq!(p.failure.as_ref().unwrap().code, "terminal_busy", "{}", reason(&p));

    let transcript = transcribed(&lane, &["PaymentResponse Failure Refusal", "PaymentResponse Failure Cancel"]).await;
    assert!(transcript.contains("PaymentResponse Failure Busy"), "{transcript}");
    assert!(lane.ledger().is_empty(), "nothing booked, nothing recorded: {:?}", lane.ledger());

    // The lane goes on.
    lane.terminal("scenario approve");
    let next = final_payment(&lane.pay("nexo-after", 903).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_lost_after_booking_is_settled_booked_by_transaction_status() {
    // The terminal books and journals the payment, then cuts the connection.
    let mut lane = Lane::start_nexo(NexoSetup::new("lost-answer"));
    lane.ready().await;
    let p = final_payment(&lane.pay("nexo-lost", 1500).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{}", reason(&p));
    let transcript =
        transcribed(&lane, &["the scenario cuts the connection", "TransactionStatusResponse Success"]).await;
    // Asked, never paid a second time.
    assert_eq!(received(&transcript, "PaymentRequest"), 1, "{transcript}");
    assert!(received(&transcript, "TransactionStatusRequest") >= 1, "{transcript}");
    let shown = payment(&lane, &p.payment_id).await;
    let t = shown.terminal.as_ref().expect("the terminal's authorization, from the repeated answer");
    assert!(t.poi_transaction_id.starts_with("SIMT"), "{t:?}");
    assert_eq!(recorded(&lane, 1500).await.len(), 1);
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_lost_to_a_terminal_restart_is_settled_not_booked_by_transaction_status() {
    // The terminal restarts mid-payment: the connection is cut and the
    // payment forgotten, so TransactionStatus finds nothing (NotFound).
    let mut lane = Lane::start_nexo(NexoSetup::new("restart").args(&["--restart-ms", "300"]));
    lane.ready().await;
    let p = final_payment(&lane.pay("nexo-restart", 1600).await);
    assert_eq!(status(&p), pb::PaymentStatus::Failed, "{}", reason(&p));
    let f = p.failure.as_ref().unwrap();
    assert_eq!(f.code, "terminal_not_booked", "{}", reason(&p));
    assert!(f.message.contains("Nothing was charged"), "{}", f.message);
    let transcript = transcribed(&lane, &["TransactionStatusResponse Failure NotFound"]).await;
    assert_eq!(received(&transcript, "PaymentRequest"), 1, "never a second POST: {transcript}");
    assert!(lane.nexo_journal().is_empty(), "the terminal booked nothing");
    assert!(lane.ledger().is_empty(), "nothing recorded: {:?}", lane.ledger());

    lane.terminal("scenario approve");
    lane.reader_ready().await;
    let next = final_payment(&lane.pay("nexo-after-restart", 1700).await);
    assert_eq!(status(&next), pb::PaymentStatus::Captured, "{}", reason(&next));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn posd_killed_mid_post_settles_the_payment_by_transaction_status_at_its_next_start() {
    let mut lane = Lane::start_nexo(NexoSetup::new("slow").args(&["--slow-ms", "3000"]));
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("nexo-killed", 4200)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first event");
    let id = first.payment.as_ref().unwrap().payment_id.clone();
    terminal_running_a_payment(&lane).await;
    // A power cut while the terminal has the payment; the terminal goes on.
    lane.kill_posd();
    drop(stream);
    lane.start_posd();
    let p = lane.wait_status(&id, pb::PaymentStatus::Captured).await;
    assert!(p.approved);
    let transcript = transcribed(&lane, &["TransactionStatusRequest"]).await;
    assert_eq!(received(&transcript, "PaymentRequest"), 1, "never a second POST: {transcript}");
    assert_eq!(lane.nexo_journal().len(), 1);
    assert_eq!(recorded(&lane, 4200).await.len(), 1);
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registers_cancel_aborts_the_payment_at_the_terminal() {
    let mut lane = Lane::start_nexo(NexoSetup::new("slow").args(&["--slow-ms", "20000"]));
    lane.ready().await;
    let mut client = lane.client().await;
    let mut stream = client.take_payment(request("nexo-register-cancel", 800)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first event");
    let id = first.payment.as_ref().unwrap().payment_id.clone();
    terminal_running_a_payment(&lane).await;
    let canceled = client.cancel_payment(pb::CancelPaymentRequest { payment_id: id.clone() }).await;
    assert!(canceled.is_ok(), "{canceled:?}");
    let p = lane.wait_status(&id, pb::PaymentStatus::Canceled).await;
    assert!(reason(&p).contains("the register"), "{}", reason(&p));
    let transcript = transcribed(&lane, &["PaymentResponse Failure Aborted"]).await;
    assert_eq!(received(&transcript, "AbortRequest"), 1, "{transcript}");
    assert!(lane.ledger().is_empty(), "nothing booked: {:?}", lane.ledger());
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_approval_is_reversed_at_the_terminal_once_and_declined() {
    let mut lane = Lane::start_nexo(NexoSetup::new("partial"));
    lane.ready().await;
    let p = final_payment(&lane.pay("nexo-partial", 3000).await);
    assert_eq!(status(&p), pb::PaymentStatus::Declined, "{}", reason(&p));
    assert_eq!(p.decline.as_ref().unwrap().code, "partial_approval_not_allowed", "{}", reason(&p));
    assert!(!p.approved);
    let transcript = transcribed(&lane, &["PaymentResponse Partial", "ReversalResponse Success"]).await;
    assert_eq!(received(&transcript, "ReversalRequest"), 1, "{transcript}");
    // The reversal closed the booking: the terminal's period nets to nothing.
    let state = lane.terminal("status");
    assert!(state.contains("1 payment requests journaled; 2 movements"), "{state}");
    assert!(
        lane.ledger().iter().all(|c| c["amount_minor"] != 3000 || c["status"] != "approved"),
        "never recorded as approved: {:?}",
        lane.ledger()
    );
    lane.finish();
}

/// A receipt printer on TCP (`firmware-sim printer --tcp`).
struct Printer {
    proc: Proc,
}

impl Printer {
    /// Starts it and adds it to the lane's config.
    fn start(lane: &mut Lane) -> Printer {
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.args(["printer", "--tcp", "127.0.0.1:0", "--out"]).arg(lane.dir.path().join("printed"));
        let (proc, addr) = Proc::start(cmd, &lane.dir.path().join("printer.log"), "firmware-sim printer listening on ");
        lane.lane_config = format!("printer = {{ tcp = {addr:?} }}\n");
        Printer { proc }
    }

    /// The text of the next printed job holding `marker` (jobs before it are skipped).
    fn job_with(&mut self, marker: &str) -> String {
        loop {
            let line = self.proc.wait_line("firmware-sim printer job ").expect("a printed job");
            let path = line.split_once(" saved ").expect("job line").1.to_string();
            let text = std::fs::read_to_string(path).unwrap();
            if text.contains(marker) {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn void_partial_refund_and_end_of_day_run_on_the_terminal_and_the_totals_are_printed() {
    let mut lane = Lane::prepare_nexo(NexoSetup::new("approve"), "");
    let mut printer = Printer::start(&mut lane);
    lane.start_posd();
    lane.ready().await;
    let a = final_payment(&lane.pay("nexo-to-void", 1000).await);
    let b = final_payment(&lane.pay("nexo-to-refund", 2500).await);
    let c = final_payment(&lane.pay("nexo-kept", 700).await);
    for p in [&a, &b, &c] {
        assert_eq!(status(p), pb::PaymentStatus::Captured, "{}", reason(p));
    }

    let (st, out, err) = lane.posctl(&["void", &a.payment_id, "--reason", "wrong item"]);
    assert!(st.success(), "{out}{err}");
    assert_eq!(status(&payment(&lane, &a.payment_id).await), pb::PaymentStatus::Voided);

    let (st, out, err) = lane.posctl(&["refund", &b.payment_id, "5.00"]);
    assert!(st.success(), "{out}{err}");
    assert_eq!(payment(&lane, &b.payment_id).await.refunded_minor, 500);

    // Both went to the terminal as reversals of its transactions: A whole, B in part.
    let transcript = eventually("both reversals at the terminal", async || {
        let t = lane.nexo_transcript();
        (received(&t, "ReversalRequest") == 2 && t.matches("ReversalResponse Success").count() == 2).then_some(t)
    })
    .await;
    let partial = transcript.lines().filter(|l| l.contains("| ReversalRequest") && l.contains("\"ReversedAmount\""));
    assert!(partial.count() >= 1, "B's reversal names its amount: {transcript}");
    eventually("the void and the refund to reach the ledger", async || {
        let ledger = lane.ledger();
        let a_voided = ledger.iter().any(|c| c["amount_minor"] == 1000 && c["status"] == "voided");
        let b_refunded = ledger.iter().any(|c| c["amount_minor"] == 2500 && c["refunded_minor"] == 500);
        (a_voided && b_refunded && ledger.len() == 3).then_some(())
    })
    .await;

    let (st, out, err) = lane.posctl(&["--json", "end-of-day"]);
    assert!(st.success(), "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let totals = &summary["totals"][0];
    assert_eq!(totals["currency"], "EUR", "{summary}");
    // The terminal's own totals: B less its refund, and C; A was reversed.
    let net = totals["captured_minor"].as_i64().unwrap() - totals["refunded_minor"].as_i64().unwrap_or(0);
    assert_eq!(net, 2700, "{summary}");
    let transcript = transcribed(&lane, &["ReconciliationResponse Success"]).await;
    assert_eq!(received(&transcript, "ReconciliationRequest"), 1, "{transcript}");

    let slip = printer.job_with("E N D   O F   D A Y");
    let field = |name: &str| {
        slip.lines().map(str::trim).find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string())
    };
    assert_eq!(field("NET").as_deref(), Some("27.00 EUR"), "{slip}");
    assert!(slip.to_lowercase().contains("visa"), "the terminal's totals per brand: {slip}");
    assert!(card_numbers(slip.as_bytes()).is_empty());
    lane.finish();
}

/// What the register hears of a payment on a lane whose terminal posd
/// refuses to talk to: TakePayment is taken (the gRPC call and its stream
/// end OK) and the payment ends FAILED with the code docs/api.md gives a
/// terminal that is not reachable or not the lane's, `terminal_unavailable`
/// (`pos_engine::nexo`, `NexoPayment::not_sent`: the lane's `NexoError`
/// `Identity` or `Refused` becomes `NotSent`), nothing charged. Returns the
/// failure, as GetPayment shows it too.
async fn refused_payment(lane: &mut Lane, key: &str) -> pb::Failure {
    let mut client = lane.client().await;
    let events = match take(&mut client, key, 1000).await {
        Ok(events) => events,
        Err(e) => panic!("TakePayment refused ({:?}: {}); expected a payment that ends FAILED", e.code(), e.message()),
    };
    let p = final_payment(&events);
    lane.responses.push(format!("{p:?}"));
    assert_eq!(events.last().map(|e| e.stage), Some(pb::PaymentStage::Failed as i32), "{events:?}");
    assert!(!p.approved, "{p:?}");
    assert_eq!(status(&p), pb::PaymentStatus::Failed, "{}", reason(&p));
    assert!(p.decline.is_none(), "{}", reason(&p));
    let failure = p.failure.clone().unwrap_or_else(|| panic!("no failure: {p:?}"));
    assert_eq!(failure.code, "terminal_unavailable", "{}", reason(&p));
    assert!(failure.message.ends_with("; nothing was sent to it. Nothing was charged."), "{}", failure.message);
    let shown = payment(lane, &p.payment_id).await;
    assert_eq!(status(&shown), pb::PaymentStatus::Failed, "{}", reason(&shown));
    assert_eq!(shown.failure.as_ref(), Some(&failure), "{}", reason(&shown));
    failure
}

/// Waits until posd's log says the lane's terminal is unavailable and
/// returns the log.
async fn logged_unavailable(lane: &Lane, why: &str) -> String {
    eventually("posd to mark the terminal unavailable", async || {
        let log = std::fs::read_to_string(lane.posd_log()).ok()?;
        (log.contains("nexo terminal unavailable") && log.contains(why)).then_some(log)
    })
    .await
}

async fn reader_disconnected(lane: &Lane) -> pb::TerminalStatus {
    let mut client = lane.client().await;
    let s = client.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-1".into() }).await;
    let s = s.unwrap().into_inner();
    assert!(!s.reader_connected, "{s:?}");
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_whose_certificate_names_another_poiid_is_refused_before_anything_is_sent() {
    let mut lane = Lane::prepare_nexo(NexoSetup::new("approve").wrong_poi_id(), "");
    lane.start_posd();
    let log = logged_unavailable(&lane, NexoSetup::OTHER_POI_ID).await;
    assert!(log.contains(NexoSetup::POI_ID), "the expected POIID is named: {log}");
    reader_disconnected(&lane).await;
    // The register hears which terminal answered and which one the lane
    // expects (posd's TLS verifier refuses the certificate: `IdentityError`).
    let said = refused_payment(&mut lane, "nexo-wrong-poi").await.message;
    assert!(said.starts_with("The payment terminal is not the one configured for this lane ("), "{said}");
    let names = format!(
        "the terminal's certificate names \"{}.test.terminal.adyen.com\", not POIID {} (expected {}.test|live.",
        NexoSetup::OTHER_POI_ID,
        NexoSetup::POI_ID,
        NexoSetup::POI_ID
    );
    assert!(said.contains(&names), "a clear error: {said}");
    // Not a byte of a request reached the terminal.
    let transcript = lane.nexo_transcript();
    assert_eq!(
        transcript.lines().filter(|l| l.split_whitespace().skip(1).take(2).eq(["nexo", "in"])).count(),
        0,
        "{transcript}"
    );
    assert!(lane.terminal("status").contains("0 payment requests journaled"));
    assert!(lane.ledger().is_empty());
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_passphrase_is_refused_with_a_clear_error_and_nothing_is_booked() {
    let mut lane = Lane::prepare_nexo(NexoSetup::new("approve").wrong_passphrase(), "");
    lane.start_posd();
    logged_unavailable(&lane, "crypto error").await;
    reader_disconnected(&lane).await;
    // The register hears that the terminal rejected the request, with the
    // terminal's own crypto error (HTTP 401, `NexoError::Refused`).
    let said = refused_payment(&mut lane, "nexo-wrong-key").await.message;
    let rejected = "The payment terminal could not be reached (the terminal rejected the request: HTTP 401: ";
    assert!(said.starts_with(rejected), "a clear error: {said}");
    assert!(said.contains("Nexo Service: crypto error"), "a clear error: {said}");
    // The terminal could decrypt nothing: it took no request and booked nothing.
    let transcript = lane.nexo_transcript();
    assert_eq!(received(&transcript, "PaymentRequest"), 0, "{transcript}");
    assert!(transcript.contains("refused"), "{transcript}");
    assert!(lane.terminal("status").contains("0 payment requests journaled"));
    assert!(lane.nexo_journal().is_empty());
    assert!(lane.ledger().is_empty());
    // The secret is in no log.
    assert!(!std::fs::read_to_string(lane.posd_log()).unwrap().contains("not-the-Terminals-Passphrase"));
    lane.finish();
}
