//! Voids, refunds, owed reversals and end of day on a nexo lane in one
//! process: a real store in a temporary directory (`engine::test_support`),
//! a booked nexo payment written into it as the payment driver commits one,
//! and a fake terminal that answers each kind of request from a script and
//! keeps every request with the ServiceID it came under, under tokio's
//! paused clock (the backoff between status queries passes at once).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use pos_engine::{Input, Status, next};
use pos_escpos::decode::{Decoder, Op};
use pos_nexo::codes::{
    ErrorCondition, MessageCategory, PaymentType, ReconciliationType, ReversalReason, TransactionType,
};
use pos_nexo::payment::{AmountsResp, PaymentResponse, PaymentResult, PoiData};
use pos_nexo::reconciliation::{PaymentTotals, ReconciliationResponse, TransactionTotals};
use pos_nexo::reversal::ReversalResponse;
use pos_nexo::status::{RepeatedMessageResponse, RepeatedResponseMessageBody, TransactionStatusResponse};
use pos_nexo::{
    Decimal, MessageHeader, RequestBody, Response, ResponseBody, SaleToPoiResponse, ServiceId,
    TransactionIdentification,
};

use crate::engine::after_sale::Reserved;
use crate::engine::nexo::NexoDevice;
use crate::engine::test_support::{LANE, Rig, rig_with_lane, settings};
use crate::engine::{EngineError, gateway_key};
use crate::nexo::terminal::NexoError;
use crate::printer::fake::Sent;
use crate::store::{
    Data, DeviceKind, EventKind, Inserted, NexoReversal, PaymentRecord, RecordKind, RefundRecord, RefundStatus,
    ReversalKind, ReversalStatus, TerminalData, TerminalResult, Update,
};

const SALE_ID: &str = "POSD-lane-1";
const POI_ID: &str = "V400m-324688179";
const POI_TX: &str = "BV0q001.8816178952380553";

/// What the fake terminal answers to one request.
enum Reply {
    Body(ResponseBody),
    Error(NexoError),
}

/// A nexo terminal that answers each kind of request from its own script,
/// in order (nothing scripted: not sent), and keeps every request.
#[derive(Default)]
struct FakeNexo {
    script: Mutex<HashMap<&'static str, VecDeque<Reply>>>,
    sent: Mutex<Vec<(&'static str, String, RequestBody)>>,
}

impl FakeNexo {
    fn on(&self, kind: &'static str, reply: Reply) {
        self.script.lock().unwrap().entry(kind).or_default().push_back(reply);
    }

    /// The kind and ServiceID of every request, in order.
    fn sent(&self) -> Vec<(&'static str, String)> {
        self.sent.lock().unwrap().iter().map(|(kind, id, _)| (*kind, id.clone())).collect()
    }

    /// The requests of one kind with their ServiceIDs.
    fn requests(&self, kind: &str) -> Vec<(String, RequestBody)> {
        let sent = self.sent.lock().unwrap();
        sent.iter().filter(|(k, _, _)| *k == kind).map(|(_, id, body)| (id.clone(), body.clone())).collect()
    }
}

fn kind(body: &RequestBody) -> (&'static str, MessageCategory) {
    match body {
        RequestBody::Payment(_) => ("Payment", MessageCategory::Payment),
        RequestBody::TransactionStatus(_) => ("TransactionStatus", MessageCategory::TransactionStatus),
        RequestBody::Abort(_) => ("Abort", MessageCategory::Abort),
        RequestBody::Reversal(_) => ("Reversal", MessageCategory::Reversal),
        RequestBody::Diagnosis(_) => ("Diagnosis", MessageCategory::Diagnosis),
        RequestBody::Reconciliation(_) => ("Reconciliation", MessageCategory::Reconciliation),
        RequestBody::Other(_) => ("Other", MessageCategory::Event),
    }
}

impl NexoDevice for FakeNexo {
    fn sale_id(&self) -> &str {
        SALE_ID
    }

    async fn exchange(&self, service_id: &ServiceId, body: RequestBody) -> Result<SaleToPoiResponse, NexoError> {
        let (name, category) = kind(&body);
        self.sent.lock().unwrap().push((name, service_id.to_string(), body));
        let reply = self.script.lock().unwrap().get_mut(name).and_then(VecDeque::pop_front);
        match reply {
            Some(Reply::Body(body)) => {
                let header = MessageHeader::request(category, service_id, SALE_ID, POI_ID).response();
                Ok(SaleToPoiResponse { header, body })
            }
            Some(Reply::Error(e)) => Err(e),
            None => Err(NexoError::NotSent("nothing scripted".into())),
        }
    }
}

fn amount(literal: &str) -> Decimal {
    Decimal::parse(literal).unwrap()
}

/// A ReversalResponse: Success, reversing `reversed` (none: the whole).
fn reversal(reversed: Option<&str>) -> ReversalResponse {
    ReversalResponse {
        response: Response::success(),
        poi_data: Some(PoiData {
            poi_transaction_id: TransactionIdentification {
                transaction_id: "BV0q001.REV".into(),
                time_stamp: "2026-03-02T09:05:00.000Z".into(),
            },
            poi_reconciliation_id: None,
        }),
        original_poi_transaction: None,
        reversed_amount: reversed.map(amount),
        payment_receipt: vec![],
    }
}

fn reversed(amount: Option<&str>) -> Reply {
    Reply::Body(reversal(amount).into())
}

/// A TransactionStatusResponse of Failure with `condition`.
fn status_failure(condition: ErrorCondition) -> Reply {
    let status = TransactionStatusResponse {
        response: Response::failure(condition),
        message_reference: None,
        repeated_message_response: None,
    };
    Reply::Body(status.into())
}

/// A TransactionStatusResponse repeating the reversal under `service_id`.
fn status_repeating(service_id: &str, amount: Option<&str>) -> Reply {
    let service_id = ServiceId::parse(service_id).unwrap();
    let status = TransactionStatusResponse {
        response: Response::success(),
        message_reference: None,
        repeated_message_response: Some(RepeatedMessageResponse {
            message_header: MessageHeader::request(MessageCategory::Reversal, &service_id, SALE_ID, POI_ID).response(),
            repeated_response_message_body: RepeatedResponseMessageBody {
                payment_response: None,
                reversal_response: Some(reversal(amount)),
            },
        }),
    };
    Reply::Body(status.into())
}

/// A nexo payment of `amount_minor` EUR booked on the lane as the payment
/// driver commits one: started under the lane's next ServiceID (the first
/// is 0000000001), its result with the terminal's POI transaction, captured
/// and recorded for the gateway's ledger.
async fn booked(r: &Rig, n: u32, amount_minor: i64) -> PaymentRecord {
    booked_as(r, n, amount_minor, POI_TX).await
}

/// [`booked`] with the terminal's POI transaction id `poi` (empty: none).
async fn booked_as(r: &Rig, n: u32, amount_minor: i64, poi: &str) -> PaymentRecord {
    let store = &r.engine.store;
    let candidate = PaymentRecord {
        device: DeviceKind::Nexo,
        ..PaymentRecord::created(
            format!("pay_{n}"),
            format!("k-{n}"),
            gateway_key(),
            LANE.into(),
            amount_minor,
            "EUR".into(),
            r.engine.now_ms(),
        )
    };
    let Inserted::New(rec) = store.insert_or_get(&candidate, "test").await.unwrap() else {
        panic!("the payment's key is free");
    };
    let result = TerminalResult {
        poi_transaction_id: poi.into(),
        poi_time_stamp: "2026-03-02T09:00:05.000Z".into(),
        ..TerminalResult::default()
    };
    let steps = [
        (Input::StartOnTerminal, Data::NexoStart { sale_id: SALE_ID.into(), service_id: None }),
        (
            Input::TerminalApproved,
            Data::Terminal(TerminalData { card: None, auth_code: Some("123456".into()), result }),
        ),
        (Input::TerminalConfirmed, Data::Booked { result: None, last_receipt: None }),
    ];
    let mut status = rec.status;
    for (input, data) in steps {
        let t = next(status, &input).unwrap();
        status =
            store.apply(&rec.id, &t, Update { data, ..Update::default() }, r.engine.now_ms()).await.unwrap().0.status;
    }
    assert_eq!(status, Status::Captured);
    r.stored(&rec.id)
}

/// The register's refund call on the nexo lane, with the fake terminal.
async fn refund(
    r: &Rig,
    nexo: &FakeNexo,
    key: &str,
    payment: &str,
    amount_minor: i64,
) -> Result<RefundRecord, EngineError> {
    match r.engine.reserve_refund_for(key, payment, amount_minor, "", "test").await? {
        Reserved::Settled(refund) => Ok(refund),
        Reserved::Send(refund, rec) => r.engine.refund_on_nexo(refund, &rec, nexo).await,
    }
}

/// The ReversedAmount and original POI transaction of a ReversalRequest.
fn reversal_of(body: &RequestBody) -> (Option<Decimal>, String) {
    let RequestBody::Reversal(request) = body else { panic!("a ReversalRequest, not {body:?}") };
    assert_eq!(request.reversal_reason, ReversalReason::MerchantCancel);
    (request.reversed_amount, request.original_poi_transaction.poi_transaction_id.transaction_id.clone())
}

/// What a TransactionStatusRequest asks about: (category, ServiceID, SaleID).
fn asked_about(body: &RequestBody) -> (MessageCategory, String, String) {
    let RequestBody::TransactionStatus(request) = body else { panic!("a TransactionStatusRequest, not {body:?}") };
    let reference = request.message_reference.clone().expect("it names the request");
    (
        reference.message_category.expect("a category"),
        reference.service_id.expect("a ServiceID"),
        reference.sale_id.expect("a SaleID"),
    )
}

/// The records queued for the gateway's ledger: (kind, amount).
fn ledger_records(r: &Rig) -> Vec<(RecordKind, i64)> {
    r.engine.store.pending_records(100).unwrap().into_iter().map(|g| (g.kind, g.amount_minor)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_void_reverses_the_whole_payment_once_and_a_second_void_is_answered_from_the_store() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked(&r, 1, 2_500).await;
    nexo.on("Reversal", reversed(None));

    let voided = r.engine.void_on_nexo(&p.id, "wrong item".into(), &nexo).await.unwrap();
    assert_eq!(voided.status, Status::Voided);
    let again = r.engine.void_on_nexo(&p.id, "wrong item".into(), &nexo).await.unwrap();
    assert_eq!(again.status, Status::Voided);

    assert_eq!(nexo.sent(), [("Reversal", "0000000002".to_string())], "one reversal, under the next ServiceID");
    let (_, body) = &nexo.requests("Reversal")[0];
    assert_eq!(reversal_of(body), (None, POI_TX.to_string()), "the whole payment, by its POI transaction");
    let attempts = r.engine.store.reversals_of(&p.id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!((attempts[0].kind, attempts[0].status), (ReversalKind::Void, ReversalStatus::Booked));
    assert_eq!(ledger_records(&r), [(RecordKind::Sale, 2_500), (RecordKind::Reversal, 2_500)]);
}

#[tokio::test(start_paused = true)]
async fn partial_refunds_reverse_up_to_the_capture_and_an_over_refund_is_refused_with_nothing_sent() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked(&r, 1, 2_500).await;
    nexo.on("Reversal", reversed(Some("10")));
    nexo.on("Reversal", reversed(Some("15")));

    let first = refund(&r, &nexo, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!((first.status, first.amount_minor), (RefundStatus::Succeeded, 1_000));
    let second = refund(&r, &nexo, "r-2", &p.id, 1_500).await.unwrap();
    assert_eq!((second.status, second.amount_minor), (RefundStatus::Succeeded, 1_500));
    let over = refund(&r, &nexo, "r-3", &p.id, 1).await;
    assert!(matches!(over, Err(EngineError::FailedPrecondition("REFUND_EXCEEDS_CAPTURE", _))), "{over:?}");
    // The first key again: answered from the store.
    let repeated = refund(&r, &nexo, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!(repeated, first);

    let ids: Vec<String> = nexo.sent().into_iter().map(|(kind, id)| format!("{kind} {id}")).collect();
    assert_eq!(ids, ["Reversal 0000000002", "Reversal 0000000003"], "each refund under its own ServiceID");
    let amounts: Vec<_> = nexo.requests("Reversal").iter().map(|(_, body)| reversal_of(body)).collect();
    assert_eq!(amounts, [(Some(amount("10")), POI_TX.to_string()), (Some(amount("15")), POI_TX.to_string())]);
    assert_eq!(r.engine.store.nexo_refund_service(&first.id).unwrap().unwrap().1.as_str(), "0000000002");
    assert_eq!(
        ledger_records(&r),
        [(RecordKind::Sale, 2_500), (RecordKind::Refund, 1_000), (RecordKind::Refund, 1_500)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refund_whose_answer_is_lost_stays_pending_and_its_retry_asks_about_the_same_service_id() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked(&r, 1, 2_500).await;
    nexo.on("Reversal", Reply::Error(NexoError::InDoubt("the connection was reset".into())));
    for _ in 0..3 {
        nexo.on("TransactionStatus", status_failure(ErrorCondition::InProgress));
    }

    let lost = refund(&r, &nexo, "r-1", &p.id, 1_000).await;
    assert!(matches!(lost, Err(EngineError::Unavailable("OUTCOME_UNKNOWN", _))), "{lost:?}");
    let pending = r.engine.store.refunds_of(&p.id).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status, RefundStatus::Pending, "in doubt: neither failed nor succeeded");
    assert_eq!(r.events(EventKind::TerminalRefundUnknown).len(), 1);

    // The register calls again with the same key: the terminal is asked, the
    // refund is not sent again.
    nexo.on("TransactionStatus", status_repeating("0000000002", Some("10")));
    let settled = refund(&r, &nexo, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!((settled.id.as_str(), settled.status), (pending[0].id.as_str(), RefundStatus::Succeeded));

    assert_eq!(nexo.requests("Reversal").len(), 1, "exactly one reversal reached the terminal");
    let asked = nexo.requests("TransactionStatus");
    assert_eq!(asked.len(), 4, "three answers in progress, then the repeated reversal");
    let mut own_ids = Vec::new();
    for (own, body) in &asked {
        let reference = (MessageCategory::Reversal, "0000000002".to_string(), SALE_ID.to_string());
        assert_eq!(asked_about(body), reference, "always the reversal's stored ServiceID");
        own_ids.push(own.clone());
    }
    own_ids.sort();
    own_ids.dedup();
    assert_eq!(own_ids.len(), 4, "each question under a ServiceID of its own");
    assert!(!own_ids.contains(&"0000000002".to_string()));
    assert_eq!(ledger_records(&r), [(RecordKind::Sale, 2_500), (RecordKind::Refund, 1_000)], "booked once");
}

#[tokio::test(start_paused = true)]
async fn a_refund_the_terminal_has_no_record_of_fails_and_its_amount_is_free_again() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked(&r, 1, 2_500).await;
    nexo.on("Reversal", Reply::Error(NexoError::InDoubt("no answer in time".into())));
    nexo.on("TransactionStatus", status_failure(ErrorCondition::NotFound));

    let failed = refund(&r, &nexo, "r-1", &p.id, 2_500).await.unwrap();
    assert_eq!((failed.status, failed.failure_code.as_str()), (RefundStatus::Failed, "terminal_not_booked"));

    // The whole amount may be refunded again (a whole reversal this time).
    nexo.on("Reversal", reversed(None));
    let again = refund(&r, &nexo, "r-2", &p.id, 2_500).await.unwrap();
    assert_eq!(again.status, RefundStatus::Succeeded);
    let amounts: Vec<_> = nexo.requests("Reversal").iter().map(|(_, body)| reversal_of(body).0).collect();
    assert_eq!(amounts, [None, None], "all of it, each time");
    assert_eq!(ledger_records(&r), [(RecordKind::Sale, 2_500), (RecordKind::Refund, 2_500)]);
}

#[tokio::test(start_paused = true)]
async fn a_refund_that_cannot_be_sent_fails_and_books_nothing() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked(&r, 1, 2_500).await;
    nexo.on("Reversal", Reply::Error(NexoError::NotSent("connection refused".into())));

    let failed = refund(&r, &nexo, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!((failed.status, failed.failure_code.as_str()), (RefundStatus::Failed, "terminal_unavailable"));
    assert!(nexo.requests("TransactionStatus").is_empty(), "nothing reached the terminal, nothing to ask");
    assert_eq!(r.stored(&p.id).status, Status::Captured);
    assert_eq!(ledger_records(&r), [(RecordKind::Sale, 2_500)], "no refund recorded");
    assert_eq!(r.events(EventKind::RefundFailed).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_owed_reversal_is_run_by_the_worker_once_until_the_terminal_confirms() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    // Approved after the register's cancel: captured, and a reversal owed,
    // whose POST posd never made (it stopped first).
    let p = booked(&r, 1, 2_500).await;
    let store = &r.engine.store;
    let owed = NexoReversal {
        sale_id: SALE_ID.into(),
        service_id: store.next_service_id(SALE_ID).unwrap(),
        payment_id: p.id.clone(),
        kind: ReversalKind::Owed,
        sale_transaction_id: format!("{}:reversal", p.gateway_key),
        poi_transaction_id: POI_TX.into(),
        poi_time_stamp: "2026-03-02T09:00:05.000Z".into(),
        amount_minor: 2_500,
        status: ReversalStatus::Pending,
        message: String::new(),
        created_at_ms: r.engine.now_ms(),
        updated_at_ms: r.engine.now_ms(),
    };
    store.owe_reversal(&owed).await.unwrap();
    assert_eq!(owed.service_id.as_str(), "0000000002");
    nexo.on("TransactionStatus", status_failure(ErrorCondition::NotFound));
    nexo.on("Reversal", reversed(None));

    assert!(r.engine.settle_nexo_lane(LANE, &nexo).await, "nothing left for a later pass");
    assert_eq!(r.stored(&p.id).status, Status::Voided);
    // Once more: nothing is open, nothing is sent.
    assert!(r.engine.settle_nexo_lane(LANE, &nexo).await);

    let kinds: Vec<&str> = nexo.sent().into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["TransactionStatus", "Reversal"], "asked about first, then sent once");
    let (_, status_query) = &nexo.requests("TransactionStatus")[0];
    assert_eq!(asked_about(status_query).1, "0000000002");
    let attempts: Vec<_> =
        store.reversals_of(&p.id).unwrap().into_iter().map(|a| (a.service_id.to_string(), a.status)).collect();
    let (reversal_id, _) = &nexo.requests("Reversal")[0];
    assert_eq!(
        attempts,
        [("0000000002".to_string(), ReversalStatus::Failed), (reversal_id.clone(), ReversalStatus::Booked)]
    );
    assert_eq!(ledger_records(&r), [(RecordKind::Sale, 2_500), (RecordKind::Reversal, 2_500)]);
}

/// The text of the printer's jobs: PC858 decoded, a line break per line feed.
fn printed(r: &Rig) -> Vec<String> {
    let mut jobs = Vec::new();
    for sent in r.printer().sent() {
        let Sent::Job(job) = sent else { continue };
        let mut text = String::new();
        for op in Decoder::new().push(&job) {
            match op {
                Op::Text(bytes) => text.extend(bytes.iter().map(|&b| pos_escpos::codepage::decode_byte(b))),
                Op::LineFeed => text.push('\n'),
                _ => {}
            }
        }
        jobs.push(text);
    }
    jobs
}

#[tokio::test(start_paused = true)]
async fn end_of_day_reconciles_on_the_terminal_and_prints_its_totals_per_brand() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let totals = |brand: &str, entries: &[(TransactionType, u64, &str)]| TransactionTotals {
        card_brand: Some(brand.into()),
        payment_currency: Some("EUR".into()),
        payment_totals: entries
            .iter()
            .map(|(kind, count, sum)| PaymentTotals {
                transaction_type: kind.clone(),
                transaction_count: *count,
                transaction_amount: amount(sum),
            })
            .collect(),
        ..TransactionTotals::default()
    };
    let answer = ReconciliationResponse {
        response: Response::success(),
        reconciliation_type: Some(ReconciliationType::SaleReconciliation),
        poi_reconciliation_id: Some("42".into()),
        transaction_totals: vec![
            totals("visa", &[(TransactionType::Debit, 3, "75"), (TransactionType::Credit, 1, "10")]),
            totals("mc", &[(TransactionType::Debit, 1, "20.5")]),
        ],
    };
    nexo.on("Reconciliation", Reply::Body(answer.into()));

    let summary = r.engine.end_of_day_on_nexo(LANE, "test", &nexo).await.unwrap();
    assert_eq!(summary.batch_id, "nexo_42");
    assert_eq!(summary.totals.len(), 1);
    let eur = &summary.totals[0];
    assert_eq!((eur.currency.as_str(), eur.count, eur.captured_minor, eur.refunded_minor), ("EUR", 4, 9_550, 1_000));

    let requests = nexo.requests("Reconciliation");
    assert_eq!(requests.len(), 1);
    let RequestBody::Reconciliation(request) = &requests[0].1 else { panic!("a ReconciliationRequest") };
    assert_eq!(request.reconciliation_type, ReconciliationType::SaleReconciliation);
    let jobs = printed(&r);
    assert_eq!(jobs.len(), 1, "one slip");
    for line in ["END OF DAY", "visa Debit 3x 75.00 EUR", "visa Credit 1x 10.00 EUR", "mc Debit 1x 20.50 EUR"] {
        assert!(jobs[0].contains(line), "{line:?} on the slip:\n{}", jobs[0]);
    }
    assert_eq!(r.events(EventKind::BatchClosed).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_payment_without_a_poi_transaction_is_refunded_by_an_unreferenced_refund() {
    let r = rig_with_lane(settings()).await;
    let nexo = FakeNexo::default();
    let p = booked_as(&r, 1, 2_500, "").await;
    let answer = PaymentResponse {
        response: Response::success(),
        sale_data: None,
        poi_data: None,
        payment_result: Some(PaymentResult {
            amounts_resp: Some(AmountsResp {
                currency: Some("EUR".into()),
                authorized_amount: Some(amount("10")),
                ..AmountsResp::default()
            }),
            ..PaymentResult::default()
        }),
        payment_receipt: vec![],
    };
    nexo.on("Payment", Reply::Body(answer.into()));

    let refunded = refund(&r, &nexo, "r-1", &p.id, 1_000).await.unwrap();
    assert_eq!(refunded.status, RefundStatus::Succeeded);
    assert!(nexo.requests("Reversal").is_empty(), "nothing to reverse by");
    let payments = nexo.requests("Payment");
    assert_eq!(payments.len(), 1);
    let (service_id, RequestBody::Payment(request)) = &payments[0] else { panic!("a PaymentRequest") };
    assert_eq!(service_id, "0000000002");
    assert_eq!(request.payment_type(), PaymentType::Refund);
    assert_eq!(request.payment_transaction.amounts_req.requested_amount, Some(amount("10")));
    assert_eq!(request.sale_data.sale_transaction_id.transaction_id, refunded.refund_key, "under the refund's own key");
}
