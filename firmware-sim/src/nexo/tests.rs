//! The simulated nexo terminal, document in, document out: the journal,
//! the scenarios, crypto failures and header checks.

use std::sync::OnceLock;

use pos_nexo::TransactionIdentification;
use pos_nexo::codes::{DocumentQualifier, ReconciliationType, ResultType, ReversalReason, TransactionType};
use pos_nexo::crypto::{SecuredDocument, SecuredMessage};
use pos_nexo::diagnosis::DiagnosisRequest;
use pos_nexo::payment::{AmountsReq, PaymentResponse, PaymentTransaction, SaleData};
use pos_nexo::reversal::OriginalPoiTransaction;
use pos_nexo::status::{MERCHANT_ABORT, StatusOutcome};

use super::*;

const POI: &str = "V400m-324688179";
const SALE: &str = "POSD-lane-1";

fn key() -> Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key::derive("sim-test-Passphrase.1", "sim-key", 1).unwrap()).clone()
}

fn terminal(scenario: Scenario, step: Duration) -> Arc<Terminal> {
    let opts = NexoOptions {
        key: Some(key()),
        step,
        slow: step,
        long_delay: step,
        restart_takes: Duration::from_secs(600),
        ..NexoOptions::default()
    };
    Terminal::new(opts, scenario, None)
}

fn request(service_id: &str, body: RequestBody) -> SaleToPoiRequest {
    let category = match &body {
        RequestBody::Payment(_) => MessageCategory::Payment,
        RequestBody::TransactionStatus(_) => MessageCategory::TransactionStatus,
        RequestBody::Abort(_) => MessageCategory::Abort,
        RequestBody::Reversal(_) => MessageCategory::Reversal,
        RequestBody::Diagnosis(_) => MessageCategory::Diagnosis,
        RequestBody::Reconciliation(_) => MessageCategory::Reconciliation,
        RequestBody::Other(_) => MessageCategory::Admin,
    };
    SaleToPoiRequest {
        header: MessageHeader::request(category, &ServiceId::parse(service_id).unwrap(), SALE, POI),
        body,
    }
}

fn payment(minor: i64) -> RequestBody {
    PaymentRequest {
        sale_data: SaleData {
            sale_transaction_id: TransactionIdentification {
                transaction_id: "01JF3Q5W7Y00000000000000OR".into(),
                time_stamp: "2026-12-07T10:00:00Z".into(),
            },
            ..SaleData::default()
        },
        payment_transaction: PaymentTransaction { amounts_req: AmountsReq::new("EUR", minor).unwrap() },
        payment_data: None,
    }
    .into()
}

fn status(service_id: &str) -> RequestBody {
    TransactionStatusRequest {
        message_reference: Some(MessageReference::payment(&ServiceId::parse(service_id).unwrap(), SALE)),
        receipt_reprint_flag: Some(true),
        document_qualifier: Vec::new(),
    }
    .into()
}

fn reversal(poi_transaction_id: &str, minor: Option<i64>) -> RequestBody {
    ReversalRequest {
        original_poi_transaction: OriginalPoiTransaction {
            poi_transaction_id: TransactionIdentification {
                transaction_id: poi_transaction_id.into(),
                time_stamp: String::new(),
            },
            ..OriginalPoiTransaction::default()
        },
        reversal_reason: ReversalReason::MerchantCancel,
        reversed_amount: minor.map(|m| Decimal::from_minor(m, "EUR").unwrap()),
        sale_data: None,
    }
    .into()
}

fn sealed(req: &SaleToPoiRequest) -> Vec<u8> {
    key().encrypt(&serde_json::to_vec(req).unwrap(), [7; 16]).unwrap().into_bytes()
}

/// The terminal's answer to `req`, decrypted.
async fn ask(t: &Terminal, req: &SaleToPoiRequest) -> SaleToPoiResponse {
    match t.handle(&sealed(req)).await {
        Reply::Json(200, text) => serde_json::from_slice(&key().decrypt(text.as_bytes()).unwrap()).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn paid(r: SaleToPoiResponse) -> PaymentResponse {
    match r.body {
        ResponseBody::Payment(p) => *p,
        other => panic!("{other:?}"),
    }
}

fn outcome(r: &SaleToPoiResponse) -> (ResultType, Option<ErrorCondition>) {
    let response = r.body.response().expect("a modelled response");
    (response.result.clone(), response.error_condition.clone())
}

#[tokio::test]
async fn an_approved_payment_is_journaled_and_repeated_by_transaction_status() {
    let t = terminal(Scenario::Approve, Duration::ZERO);
    let answer = ask(&t, &request("1", payment(1250))).await;
    assert_eq!(answer.header.message_type, MessageType::Response);
    assert_eq!(answer.header.service_id.as_deref(), Some("1"));
    let p = paid(answer);
    assert_eq!(p.response.result, ResultType::Success);
    let poi = p.poi_data.clone().unwrap().poi_transaction_id;
    assert!(poi.transaction_id.starts_with("SIMT") && poi.time_stamp.ends_with('Z'), "{poi:?}");
    let result = p.payment_result.clone().unwrap();
    assert_eq!(result.amounts_resp.clone().unwrap().authorized_amount.unwrap().to_minor("EUR"), Ok(1250));
    let card = result.card().unwrap();
    assert_eq!(card.masked_pan.as_deref(), Some("411111 **** 1111"));
    let compact = card.masked_pan.clone().unwrap().replace(' ', "");
    assert_eq!(pos_mask::well_masked(&compact), "411111****1111", "first six and last four, as posd keeps them");
    assert_eq!(result.payment_acquirer_data.clone().unwrap().approval_code.map(|c| c.len()), Some(6));
    let qualifiers: Vec<_> = p.payment_receipt.iter().map(|r| r.document_qualifier.clone()).collect();
    assert_eq!(qualifiers, [DocumentQualifier::CashierReceipt, DocumentQualifier::CustomerReceipt]);
    let lines = pos_nexo::receipt::Receipt::decode(&p.payment_receipt[1]).lines;
    let total = lines.iter().find(|l| l.key.as_deref() == Some("totalAmount")).unwrap();
    assert_eq!(total.value.as_deref(), Some("EUR 12.50"));
    assert!(lines.iter().any(|l| l.name.as_deref() == Some("APPROVED")));

    let repeated = ask(&t, &request("2", status("1"))).await;
    let ResponseBody::TransactionStatus(s) = repeated.body else { panic!("not a TransactionStatusResponse") };
    assert_eq!(s.payment_outcome(), StatusOutcome::Repeated(&p));
    assert_eq!(s.repeated_message_response.unwrap().message_header.service_id.as_deref(), Some("1"));

    let unknown = ask(&t, &request("3", status("99"))).await;
    let ResponseBody::TransactionStatus(s) = unknown.body else { panic!("not a TransactionStatusResponse") };
    assert_eq!(s.payment_outcome(), StatusOutcome::NotFound);
    // The same ServiceID again is refused, and not journaled over the first.
    assert_eq!(
        outcome(&ask(&t, &request("1", payment(500))).await),
        (ResultType::Failure, Some(ErrorCondition::NotAllowed))
    );
    assert!(matches!(t.journal_entry(SALE, "1"), Some(Entry::Done { response, .. }) if *response == p));
}

#[tokio::test]
async fn scenarios_end_payments_as_named() {
    let cases = [
        (Scenario::Decline, ResultType::Failure, Some(ErrorCondition::Refusal), true),
        (Scenario::CustomerCancel, ResultType::Failure, Some(ErrorCondition::Cancel), true),
        (Scenario::WrongPin, ResultType::Failure, Some(ErrorCondition::WrongPin), true),
        (Scenario::Partial, ResultType::Partial, None, true),
        (Scenario::Busy, ResultType::Failure, Some(ErrorCondition::Busy), false),
        (Scenario::Slow, ResultType::Success, None, true),
        (Scenario::Signature, ResultType::Success, None, true),
    ];
    for (scenario, result, condition, journaled) in cases {
        let t = terminal(scenario, Duration::ZERO);
        let p = paid(ask(&t, &request("7", payment(1000))).await);
        assert_eq!(
            (p.response.result.clone(), p.response.error_condition.clone()),
            (result, condition),
            "{scenario:?}"
        );
        assert_eq!(t.journal_entry(SALE, "7").is_some(), journaled, "{scenario:?}");
        if scenario == Scenario::Partial {
            let authorized = p.payment_result.unwrap().amounts_resp.unwrap().authorized_amount.unwrap();
            assert_eq!(authorized.to_minor("EUR"), Ok(500));
        }
        if scenario == Scenario::Signature {
            assert!(p.payment_receipt[0].required_signature_flag && !p.payment_receipt[1].required_signature_flag);
        }
    }
}

#[tokio::test]
async fn a_lost_answer_is_journaled_before_the_connection_is_cut() {
    let t = terminal(Scenario::LostAnswer, Duration::ZERO);
    assert_eq!(t.handle(&sealed(&request("5", payment(1000)))).await, Reply::Cut);
    let s = ask(&t, &request("6", status("5"))).await;
    let ResponseBody::TransactionStatus(s) = s.body else { panic!() };
    let StatusOutcome::Repeated(p) = s.payment_outcome() else { panic!("{s:?}") };
    assert_eq!(p.response.result, ResultType::Success);
}

#[tokio::test]
async fn a_running_payment_is_in_progress_until_aborted() {
    let t = terminal(Scenario::Approve, Duration::from_secs(600));
    let running = tokio::spawn({
        let t = t.clone();
        async move { t.handle(&sealed(&request("A1", payment(1000)))).await }
    });
    while t.running() == 0 {
        tokio::task::yield_now().await;
    }
    let s = ask(&t, &request("A2", status("A1"))).await;
    assert_eq!(outcome(&s), (ResultType::Failure, Some(ErrorCondition::InProgress)));
    let diagnosis = ask(&t, &request("A3", DiagnosisRequest::default().into())).await;
    let ResponseBody::Diagnosis(d) = diagnosis.body else { panic!() };
    assert_eq!(d.poi_status.unwrap().global_status, GlobalStatus::Busy);
    // Another payment meanwhile: busy, not journaled.
    assert_eq!(
        outcome(&ask(&t, &request("A4", payment(100))).await),
        (ResultType::Failure, Some(ErrorCondition::Busy))
    );
    assert_eq!(t.journal_entry(SALE, "A4"), None);

    let abort = AbortRequest {
        message_reference: MessageReference::payment(&ServiceId::parse("A1").unwrap(), SALE),
        abort_reason: MERCHANT_ABORT.into(),
    };
    assert_eq!(t.handle(&sealed(&request("A5", abort.into()))).await, Reply::Empty);
    let Reply::Json(200, text) = running.await.unwrap() else { panic!() };
    let answer: SaleToPoiResponse = serde_json::from_slice(&key().decrypt(text.as_bytes()).unwrap()).unwrap();
    assert_eq!(outcome(&answer), (ResultType::Failure, Some(ErrorCondition::Aborted)));
    let s = ask(&t, &request("A6", status("A1"))).await;
    let ResponseBody::TransactionStatus(s) = s.body else { panic!() };
    let StatusOutcome::Repeated(p) = s.payment_outcome() else { panic!("{s:?}") };
    assert_eq!(p.response.error_condition, Some(ErrorCondition::Aborted));
    let diagnosis = ask(&t, &request("A7", DiagnosisRequest::default().into())).await;
    let ResponseBody::Diagnosis(d) = diagnosis.body else { panic!() };
    assert_eq!(d.poi_status.unwrap().global_status, GlobalStatus::Ok);
}

#[tokio::test]
async fn a_restart_drops_the_payment_in_flight_and_cuts_requests_while_it_lasts() {
    let t = terminal(Scenario::Restart, Duration::ZERO);
    assert_eq!(t.handle(&sealed(&request("R1", payment(1000)))).await, Reply::Cut);
    assert_eq!(t.journal_entry(SALE, "R1"), None, "never booked");
    assert_eq!(t.handle(&sealed(&request("R2", status("R1")))).await, Reply::Cut);
    assert!(t.status_line().contains("restarting"));
}

#[tokio::test]
async fn reversals_are_taken_once_and_reconciliation_totals_each_brand() {
    let t = terminal(Scenario::Approve, Duration::ZERO);
    let first = paid(ask(&t, &request("P1", payment(1000))).await).poi_data.unwrap().poi_transaction_id.transaction_id;
    t.command("card mc").unwrap();
    paid(ask(&t, &request("P2", payment(250))).await);
    paid(ask(&t, &request("P3", payment(300))).await);

    let partial = ask(&t, &request("V1", reversal(&first, Some(400)))).await;
    let ResponseBody::Reversal(r) = partial.body else { panic!() };
    assert_eq!(r.response.result, ResultType::Success);
    assert_eq!(r.reversed_amount.unwrap().to_minor("EUR"), Ok(400));
    assert_ne!(r.poi_data.unwrap().poi_transaction_id.transaction_id, first);
    let again = ask(&t, &request("V2", reversal(&first, None))).await;
    assert_eq!(outcome(&again), (ResultType::Failure, Some(ErrorCondition::NotAllowed)));
    let unknown = ask(&t, &request("V3", reversal("SIMT99999999.0", None))).await;
    assert_eq!(outcome(&unknown), (ResultType::Failure, Some(ErrorCondition::NotFound)));

    let eod = ReconciliationRequest {
        reconciliation_type: ReconciliationType::SaleReconciliation,
        poi_reconciliation_id: None,
    };
    let answer = ask(&t, &request("E1", eod.clone().into())).await;
    let ResponseBody::Reconciliation(r) = answer.body else { panic!() };
    let totals: Vec<(String, TransactionType, u64, i64)> = r
        .transaction_totals
        .iter()
        .flat_map(|g| {
            g.payment_totals.iter().map(move |p| {
                let brand = g.card_brand.clone().unwrap();
                (brand, p.transaction_type.clone(), p.transaction_count, p.transaction_amount.to_minor("EUR").unwrap())
            })
        })
        .collect();
    let expected: Vec<(String, TransactionType, u64, i64)> = vec![
        ("visa".into(), TransactionType::Debit, 1, 1000),
        ("visa".into(), TransactionType::ReverseDebit, 1, 400),
        ("mc".into(), TransactionType::Debit, 2, 550),
    ];
    assert_eq!(totals, expected);
    // The period is closed: the next totals start from nothing.
    let answer = ask(&t, &request("E2", eod.into())).await;
    let ResponseBody::Reconciliation(r) = answer.body else { panic!() };
    assert!(r.transaction_totals.is_empty());
    assert_eq!(r.poi_reconciliation_id.as_deref(), Some("2"));
}

#[tokio::test]
async fn every_crypto_failure_gets_the_same_answer() {
    let t = terminal(Scenario::Approve, Duration::ZERO);
    let req = request("C1", payment(1000));
    let good: SecuredDocument = serde_json::from_slice(&sealed(&req)).unwrap();
    let other_doc = request("C1", payment(2000));
    let other: SecuredDocument =
        serde_json::from_str(&key().encrypt(&serde_json::to_vec(&other_doc).unwrap(), [9; 16]).unwrap()).unwrap();
    let with = |change: &dyn Fn(&mut SecuredMessage)| {
        let mut doc = good.clone();
        change(doc.request.as_mut().unwrap());
        serde_json::to_vec(&doc).unwrap()
    };
    let other_message = other.request.clone().unwrap();
    let wrong_passphrase = Key::derive("sim-test-Passphrase.2", "sim-key", 1).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "another message's HMAC",
            with(&|m: &mut SecuredMessage| m.security_trailer.hmac = other_message.security_trailer.hmac.clone()),
        ),
        ("another message's blob", with(&|m: &mut SecuredMessage| m.nexo_blob = other_message.nexo_blob.clone())),
        (
            "another nonce",
            with(&|m: &mut SecuredMessage| m.security_trailer.nonce = other_message.security_trailer.nonce.clone()),
        ),
        (
            "a blob cut short",
            with(&|m: &mut SecuredMessage| m.nexo_blob = m.nexo_blob[..m.nexo_blob.len() - 24].to_string()),
        ),
        ("another key", with(&|m: &mut SecuredMessage| m.security_trailer.key_identifier = "other".into())),
        (
            "a wrong passphrase",
            wrong_passphrase.encrypt(&serde_json::to_vec(&req).unwrap(), [7; 16]).unwrap().into_bytes(),
        ),
        ("a clear request", serde_json::to_vec(&req).unwrap()),
    ];
    let mut replies = Vec::new();
    for (what, body) in cases {
        let reply = t.handle(&body).await;
        let Reply::Json(401, text) = &reply else { panic!("{what}: {reply:?}") };
        let answer: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(answer["errors"][0], "Nexo Service: crypto error", "{what}");
        assert_eq!(answer["ServiceID"], "C1", "{what}");
        replies.push(reply);
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "no hint which check failed: {replies:?}");
    assert_eq!(t.journal_entry(SALE, "C1"), None, "nothing reached the journal");

    // In clear mode an encrypted request is refused the same way, and a clear one taken.
    let clear = Terminal::new(NexoOptions { step: Duration::ZERO, ..NexoOptions::default() }, Scenario::Approve, None);
    assert_eq!(clear.handle(&sealed(&req)).await, replies[0]);
    let Reply::Json(200, text) = clear.handle(&serde_json::to_vec(&req).unwrap()).await else { panic!("refused") };
    let answer: SaleToPoiResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(outcome(&answer), (ResultType::Success, None));
}

#[tokio::test]
async fn a_header_that_is_not_the_terminal_s_is_refused() {
    let t = terminal(Scenario::Approve, Duration::ZERO);
    let mut other_poi = request("H1", payment(1000));
    other_poi.header.poi_id = "V400m-999999999".into();
    assert_eq!(outcome(&ask(&t, &other_poi).await), (ResultType::Failure, Some(ErrorCondition::NotAllowed)));
    let mut bad_service_id = request("H2", payment(1000));
    bad_service_id.header.service_id = Some("12345678901".into());
    assert_eq!(outcome(&ask(&t, &bad_service_id).await), (ResultType::Failure, Some(ErrorCondition::MessageFormat)));
    let mut no_sale_id = request("H3", payment(1000));
    no_sale_id.header.sale_id = None;
    assert_eq!(outcome(&ask(&t, &no_sale_id).await), (ResultType::Failure, Some(ErrorCondition::MessageFormat)));
    let mut wrong_category = request("H4", payment(1000));
    wrong_category.header.message_category = MessageCategory::Reversal;
    assert_eq!(outcome(&ask(&t, &wrong_category).await), (ResultType::Failure, Some(ErrorCondition::MessageFormat)));
    assert_eq!(t.running(), 0);
    assert_eq!(t.journal_entry(SALE, "H1"), None);
}

#[test]
fn scenarios_and_commands_parse() {
    assert_eq!(Scenario::parse(&["wrong-pin"]), Ok(Scenario::WrongPin));
    assert!(Scenario::parse(&["maybe"]).unwrap_err().contains("one of"));
    let t = terminal(Scenario::Approve, Duration::ZERO);
    t.command("scenario decline").unwrap();
    t.command("next lost-answer").unwrap();
    assert_eq!(t.scenario(), Scenario::Decline);
    assert!(t.status_line().contains("1 planned"), "{}", t.status_line());
    assert!(t.command("card diners").unwrap_err().contains("unknown card"));
    assert!(t.command("jump").unwrap_err().contains("try:"));
}

#[test]
fn receipt_lines_are_url_encoded_key_name_value() {
    let line = answer::line("totalAmount", "TOTAL", "EUR 12.50");
    assert_eq!(line.text, "key=totalAmount&name=TOTAL&value=EUR+12.50");
    assert_eq!(answer::line("pan", "PAN", "**** 1111").text, "key=pan&name=PAN&value=%2A%2A%2A%2A+1111");
    assert_eq!(answer::line("filler", "", "").text, "key=filler");
    let decoded = pos_nexo::receipt::ReceiptLine::from_text(&answer::line("x", "Grüße & mehr", "a=b").text);
    assert_eq!((decoded.name.as_deref(), decoded.value.as_deref()), (Some("Grüße & mehr"), Some("a=b")));
}
