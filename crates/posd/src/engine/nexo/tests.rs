//! The nexo payment driver (`Engine::drive_nexo`) in one process: the
//! engine's test rig (a real store in a temporary directory, tokio's paused
//! clock) and a fake nexo terminal that answers each kind of request from a
//! script and notes every request with its ServiceID and what the store
//! held for the payment when it arrived. The end-to-end tests run the same
//! paths against `firmware-sim nexo`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::Status;
use pos_engine::nexo::{NexoPayment, Outcome};
use pos_nexo::codes::{DocumentQualifier, EntryMode, ErrorCondition, MessageCategory, OutputFormat, ResultType};
use pos_nexo::payment::{
    AmountsResp, CardData, OutputContent, OutputText, PaymentAcquirerData, PaymentInstrumentData, PaymentReceipt,
    PaymentResponse, PaymentResult, PoiData,
};
use pos_nexo::reversal::ReversalResponse;
use pos_nexo::status::{RepeatedMessageResponse, RepeatedResponseMessageBody, TransactionStatusResponse};
use pos_nexo::{
    Decimal, MessageHeader, RequestBody, Response, ResponseBody, SaleToPoiResponse, ServiceId,
    TransactionIdentification,
};
use pos_proto::terminal as pb;
use tokio::sync::{Notify, broadcast, mpsc};

use super::NexoDevice;
use super::payment::payment_of;
use crate::convert;
use crate::engine::gateway_key;
use crate::engine::test_support::{LANE, Rig, rig_with_lane, settings};
use crate::nexo::terminal::NexoError;
use crate::store::{DeviceKind, Inserted, PaymentRecord, ReversalKind, ReversalStatus, Store};

const SALE_ID: &str = "POSD-lane-1";

/// What the fake terminal answers one request with.
enum Reply {
    Answer(ResponseBody),
    Fail(NexoError),
    /// Answers once posd's AbortRequest came.
    AfterAbort(ResponseBody),
    /// Never answers (posd stops meanwhile).
    Hang,
}

/// One request as the fake terminal saw it.
#[derive(Debug, Clone)]
struct Seen {
    kind: &'static str,
    service_id: String,
    body: RequestBody,
    /// The payment's ServiceID and status in the store when it arrived.
    stored_service_id: Option<String>,
    stored_status: Status,
}

struct FakeNexo {
    store: Arc<Store>,
    payment: String,
    payments: Mutex<VecDeque<Reply>>,
    statuses: Mutex<VecDeque<Reply>>,
    reversals: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    aborted: Notify,
    posted: Notify,
}

impl FakeNexo {
    fn new(b: &Bench, payments: Vec<Reply>, statuses: Vec<Reply>, reversals: Vec<Reply>) -> FakeNexo {
        FakeNexo {
            store: b.rig.engine.store.clone(),
            payment: b.rec.id.clone(),
            payments: Mutex::new(payments.into()),
            statuses: Mutex::new(statuses.into()),
            reversals: Mutex::new(reversals.into()),
            seen: Mutex::default(),
            aborted: Notify::new(),
            posted: Notify::new(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.seen().iter().map(|s| s.kind).collect()
    }
}

impl NexoDevice for FakeNexo {
    fn sale_id(&self) -> &str {
        SALE_ID
    }

    async fn exchange(&self, service_id: &ServiceId, body: RequestBody) -> Result<SaleToPoiResponse, NexoError> {
        let (kind, category, queue) = match &body {
            RequestBody::Payment(_) => ("payment", MessageCategory::Payment, Some(&self.payments)),
            RequestBody::TransactionStatus(_) => ("status", MessageCategory::TransactionStatus, Some(&self.statuses)),
            RequestBody::Reversal(_) => ("reversal", MessageCategory::Reversal, Some(&self.reversals)),
            RequestBody::Abort(_) => ("abort", MessageCategory::Abort, None),
            _ => ("other", MessageCategory::Diagnosis, None),
        };
        let stored_service_id = self.store.nexo_service(&self.payment).unwrap().map(|(_, id)| id.to_string());
        let stored_status = self.store.get(&self.payment).unwrap().unwrap().status;
        let seen = Seen { kind, service_id: service_id.to_string(), body, stored_service_id, stored_status };
        self.seen.lock().unwrap().push(seen);
        let Some(queue) = queue else {
            self.aborted.notify_one();
            return Err(NexoError::InDoubt("an AbortRequest has no answer".into()));
        };
        if kind == "payment" {
            self.posted.notify_one();
        }
        let reply = queue.lock().unwrap().pop_front().unwrap_or(Reply::Fail(NexoError::NotSent("no script".into())));
        let header = MessageHeader::request(category, service_id, SALE_ID, "V400m-324688179").response();
        match reply {
            Reply::Answer(body) => Ok(SaleToPoiResponse { header, body }),
            Reply::Fail(e) => Err(e),
            Reply::AfterAbort(body) => {
                self.aborted.notified().await;
                Ok(SaleToPoiResponse { header, body })
            }
            Reply::Hang => std::future::pending().await,
        }
    }
}

/// The rig with one nexo payment of 20.00 EUR on its lane in CREATED,
/// followed live by the register.
struct Bench {
    rig: Rig,
    rec: PaymentRecord,
    register: broadcast::Receiver<pb::PaymentEvent>,
    cancel: mpsc::Receiver<()>,
    cancel_tx: mpsc::Sender<()>,
}

async fn bench() -> Bench {
    let rig = rig_with_lane(settings()).await;
    let created = PaymentRecord::created(
        "pay_n1".into(),
        "k-n1".into(),
        gateway_key(),
        LANE.into(),
        2_000,
        "EUR".into(),
        rig.engine.now_ms(),
    );
    let candidate = PaymentRecord { device: DeviceKind::Nexo, ..created };
    let Inserted::New(rec) = rig.engine.store.insert_or_get(&candidate, "test").await.unwrap() else {
        panic!("the payment's key is free");
    };
    let register = rig.follow(&rec.id);
    rig.engine.busy.lock().unwrap().insert(LANE.into(), rec.id.clone());
    let (cancel_tx, cancel) = mpsc::channel(1);
    Bench { rig, rec, register, cancel, cancel_tx }
}

impl Bench {
    /// Runs the payment as the register's task would, to its end.
    async fn run(&mut self, fake: &FakeNexo) -> Outcome {
        let engine = &self.rig.engine;
        let payment = NexoPayment::new(payment_of(&self.rec), engine.nexo_settings());
        engine.drive_nexo(fake, payment, self.rec.clone(), Some(&mut self.cancel)).await
    }

    fn stored(&self) -> PaymentRecord {
        self.rig.stored(&self.rec.id)
    }

    fn reason(&self) -> (String, String) {
        let stored = self.stored();
        (stored.reason_code, stored.reason_message)
    }

    fn records(&self) -> usize {
        self.rig.engine.store.pending_records(10).unwrap().len()
    }

    /// The statuses the register heard, in order.
    fn heard(&mut self) -> Vec<(Status, String)> {
        let mut heard = Vec::new();
        while let Ok(e) = self.register.try_recv() {
            let status = pb::PaymentStatus::try_from(e.payment.unwrap().status).unwrap();
            heard.push((convert::status_from_proto(status).unwrap(), e.message));
        }
        heard
    }

    fn assert_lane_free(&self) {
        assert_eq!(self.rig.engine.busy_with(LANE), None, "the lane is free");
    }

    /// The reversal worker was woken (and not since): its permit is there.
    async fn worker_woken(&self) -> bool {
        tokio::time::timeout(Duration::ZERO, self.rig.engine.reversals.notified()).await.is_ok()
    }
}

fn poi() -> TransactionIdentification {
    TransactionIdentification { transaction_id: "POI-4711".into(), time_stamp: "2026-03-02T09:00:05.000Z".into() }
}

/// A PaymentResponse booking `amount` (major units), with Adyen's masking,
/// a receipt and the signature flag as given.
fn booked(result: ResultType, amount: &str, signature: bool) -> PaymentResponse {
    let card = CardData {
        masked_pan: Some("411111 **** 1111".into()),
        payment_brand: Some("visa".into()),
        entry_mode: vec![EntryMode::Contactless],
        card_country_code: None,
    };
    let line = |text: &str| OutputText { text: text.into(), ..OutputText::default() };
    let receipt = PaymentReceipt {
        document_qualifier: DocumentQualifier::CustomerReceipt,
        required_signature_flag: signature,
        output_content: OutputContent {
            output_format: OutputFormat::Text,
            output_text: vec![line("key=header&name=Test+Shop"), line("key=approved&name=APPROVED")],
        },
    };
    PaymentResponse {
        response: Response { result, error_condition: None, additional_response: None },
        sale_data: None,
        poi_data: Some(PoiData { poi_transaction_id: poi(), poi_reconciliation_id: None }),
        payment_result: Some(PaymentResult {
            amounts_resp: Some(AmountsResp {
                currency: Some("EUR".into()),
                authorized_amount: Some(Decimal::parse(amount).unwrap()),
                ..AmountsResp::default()
            }),
            payment_instrument_data: Some(PaymentInstrumentData {
                payment_instrument_type: None,
                card_data: Some(card),
            }),
            payment_acquirer_data: Some(PaymentAcquirerData {
                approval_code: Some("123456".into()),
                ..PaymentAcquirerData::default()
            }),
            ..PaymentResult::default()
        }),
        payment_receipt: vec![receipt],
    }
}

fn approved() -> Reply {
    Reply::Answer(booked(ResultType::Success, "20.00", false).into())
}

fn failure(condition: ErrorCondition, additional: Option<&str>) -> PaymentResponse {
    PaymentResponse {
        response: Response {
            result: ResultType::Failure,
            error_condition: Some(condition),
            additional_response: additional.map(str::to_string),
        },
        sale_data: None,
        poi_data: None,
        payment_result: None,
        payment_receipt: vec![],
    }
}

fn status_failure(condition: ErrorCondition) -> Reply {
    let response = TransactionStatusResponse {
        response: Response::failure(condition),
        message_reference: None,
        repeated_message_response: None,
    };
    Reply::Answer(response.into())
}

fn status_repeats(payment: PaymentResponse) -> Reply {
    let header =
        MessageHeader::request(MessageCategory::Payment, &ServiceId::parse("1").unwrap(), SALE_ID, "V400m-324688179");
    let response = TransactionStatusResponse {
        response: Response::success(),
        message_reference: None,
        repeated_message_response: Some(RepeatedMessageResponse {
            message_header: header.response(),
            repeated_response_message_body: RepeatedResponseMessageBody {
                payment_response: Some(payment),
                reversal_response: None,
            },
        }),
    };
    Reply::Answer(response.into())
}

fn reversed() -> Reply {
    let response = ReversalResponse {
        response: Response::success(),
        poi_data: None,
        original_poi_transaction: None,
        reversed_amount: None,
        payment_receipt: vec![],
    };
    Reply::Answer(response.into())
}

/// The ServiceID a TransactionStatus or Abort request refers to.
fn referenced(body: &RequestBody) -> Option<String> {
    match body {
        RequestBody::TransactionStatus(s) => s.message_reference.as_ref()?.service_id.clone(),
        RequestBody::Abort(a) => a.message_reference.service_id.clone(),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_approval_is_posted_under_a_committed_service_id_and_captured_with_one_record() {
    let mut b = bench().await;
    let fake = FakeNexo::new(&b, vec![approved()], vec![], vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Captured));

    let seen = fake.seen();
    assert_eq!(fake.kinds(), ["payment"]);
    // The ServiceID was committed with COLLECTING before the POST went out.
    assert_eq!(seen[0].stored_service_id.as_deref(), Some(seen[0].service_id.as_str()));
    assert_eq!(seen[0].stored_status, Status::Collecting);
    let RequestBody::Payment(request) = &seen[0].body else { panic!("a PaymentRequest") };
    assert_eq!(request.sale_data.sale_transaction_id.transaction_id, b.rec.gateway_key);
    assert!(!request.sale_data.sale_transaction_id.time_stamp.is_empty());
    let amounts = &request.payment_transaction.amounts_req;
    assert_eq!((amounts.currency.as_str(), amounts.requested_amount), ("EUR", Some(Decimal::parse("20").unwrap())));

    let stored = b.stored();
    assert_eq!(stored.status, Status::Captured);
    assert_eq!(stored.auth_code, "123456");
    let card = stored.card.unwrap();
    assert_eq!((card.masked_pan.as_str(), card.brand.as_str()), ("411111****1111", "visa"));
    assert_eq!(card.entry_mode, pb::EntryMode::Contactless as i32);
    assert_eq!(card.verification, pb::CardholderVerification::Unspecified as i32);
    let result = b.rig.engine.store.terminal_result(&b.rec.id).unwrap().unwrap();
    assert_eq!((result.poi_transaction_id, result.poi_time_stamp), (poi().transaction_id, poi().time_stamp));
    assert_eq!(result.lines, ["Test Shop", "APPROVED"], "the terminal's receipt, kept for the lane printer");
    assert_eq!(b.records(), 1, "one record queued for the gateway's ledger");
    // The register heard each status only once it was committed.
    let heard: Vec<Status> = b.heard().into_iter().map(|(s, _)| s).collect();
    assert_eq!(heard, [Status::Collecting, Status::Confirming, Status::Captured]);
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn a_signature_receipt_is_flagged_as_the_cardholder_verification() {
    let mut b = bench().await;
    let fake = FakeNexo::new(&b, vec![Reply::Answer(booked(ResultType::Success, "20", true).into())], vec![], vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Captured));

    let card = b.stored().card.unwrap();
    assert_eq!(card.verification, pb::CardholderVerification::Signature as i32);
}

#[tokio::test(start_paused = true)]
async fn the_terminals_failures_map_to_the_registers_codes() {
    let cases = [
        (ErrorCondition::Refusal, Some("refusalReason=Not+enough+balance"), Status::Declined, "generic_decline"),
        (ErrorCondition::WrongPin, None, Status::Declined, "incorrect_pin"),
        (ErrorCondition::Cancel, None, Status::Canceled, "canceled"),
        (ErrorCondition::Busy, None, Status::Failed, "terminal_busy"),
        (ErrorCondition::UnavailableService, None, Status::Failed, "terminal_unavailable"),
        (ErrorCondition::Other("FancyNewCondition".into()), None, Status::Failed, "terminal_error"),
    ];
    for (condition, additional, status, code) in cases {
        let mut b = bench().await;
        let name = condition.as_str().to_string();
        let fake = FakeNexo::new(&b, vec![Reply::Answer(failure(condition, additional).into())], vec![], vec![]);

        assert_eq!(b.run(&fake).await, Outcome::Settled(status), "{name}");

        assert_eq!(fake.kinds(), ["payment"], "{name}");
        let (reason, message) = b.reason();
        assert_eq!(reason, code, "{name}: {message}");
        if code == "terminal_error" {
            assert!(message.contains("FancyNewCondition"), "an unknown condition is kept verbatim: {message}");
        }
        if code == "generic_decline" {
            assert!(message.contains("Not enough balance"), "{message}");
        }
        assert_eq!(b.records(), 0, "{name}: nothing recorded at the gateway");
        b.assert_lane_free();
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_that_was_not_sent_fails_without_asking() {
    let mut b = bench().await;
    let fake = FakeNexo::new(&b, vec![Reply::Fail(NexoError::NotSent("connection refused".into()))], vec![], vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Failed));

    assert_eq!(fake.kinds(), ["payment"], "nothing was sent: no TransactionStatus");
    let (reason, message) = b.reason();
    assert_eq!(reason, "terminal_unavailable");
    assert!(message.contains("connection refused"), "{message}");
    assert!(b.rig.engine.lane(LANE).unwrap().reader_state().detail.is_empty(), "the lane is not marked");
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn a_terminal_of_another_identity_fails_the_payment_and_the_lane() {
    let mut b = bench().await;
    let refused = NexoError::Identity("the certificate names V400m-999".into());
    let fake = FakeNexo::new(&b, vec![Reply::Fail(refused)], vec![], vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Failed));

    assert_eq!(fake.kinds(), ["payment"]);
    assert_eq!(b.reason().0, "terminal_unavailable");
    let state = b.rig.engine.lane(LANE).unwrap().reader_state();
    assert!(!state.connected && state.detail.starts_with("unavailable: "), "{state:?}");
    assert!(state.detail.contains("V400m-999"), "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_in_doubt_is_settled_by_transaction_status_only() {
    let mut b = bench().await;
    let lost = Reply::Fail(NexoError::InDoubt("no answer within 150s".into()));
    let statuses =
        vec![status_failure(ErrorCondition::InProgress), status_repeats(booked(ResultType::Success, "20.00", false))];
    let fake = FakeNexo::new(&b, vec![lost], statuses, vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Captured));

    let seen = fake.seen();
    assert_eq!(fake.kinds(), ["payment", "status", "status"], "never a second POST");
    let payment_id = seen[0].service_id.clone();
    for asked in &seen[1..] {
        assert_eq!(referenced(&asked.body).as_deref(), Some(payment_id.as_str()));
        assert_ne!(asked.service_id, payment_id, "a TransactionStatus goes out under its own ServiceID");
        assert_eq!(asked.stored_status, Status::Collecting, "COLLECTING while the terminal is asked");
    }
    assert_ne!(seen[1].service_id, seen[2].service_id);
    assert_eq!(b.stored().auth_code, "123456");
    assert_eq!(b.records(), 1);
    let heard = b.heard();
    assert!(heard.iter().any(|(_, m)| m == "Checking with the payment terminal what it booked"), "{heard:?}");
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn an_answer_in_doubt_that_the_terminal_does_not_know_fails() {
    let mut b = bench().await;
    let lost = Reply::Fail(NexoError::InDoubt("the line to the terminal failed".into()));
    let fake = FakeNexo::new(&b, vec![lost], vec![status_failure(ErrorCondition::NotFound)], vec![]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Failed));

    assert_eq!(fake.kinds(), ["payment", "status"]);
    assert_eq!(b.reason().0, "terminal_not_booked");
    assert_eq!(b.records(), 0);
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn the_registers_cancel_sends_one_abort_and_cancels_the_payment() {
    let mut b = bench().await;
    let aborted = Reply::AfterAbort(failure(ErrorCondition::Aborted, None).into());
    let fake = FakeNexo::new(&b, vec![aborted], vec![], vec![]);
    // The register cancels twice while the terminal waits for the card.
    b.cancel_tx.try_send(()).unwrap();
    let (cancel_tx, run) = (b.cancel_tx.clone(), b.run(&fake));
    let again = async {
        fake.posted.notified().await;
        let _ = cancel_tx.send(()).await;
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
        () = again => unreachable!(),
    };

    assert_eq!(outcome, Outcome::Settled(Status::Canceled));
    // The POST and the AbortRequest run side by side: either may reach the fake first.
    let mut kinds = fake.kinds();
    kinds.sort_unstable();
    assert_eq!(kinds, ["abort", "payment"], "exactly one AbortRequest");
    let seen = fake.seen();
    let of = |kind: &str| seen.iter().find(|s| s.kind == kind).unwrap().clone();
    let (posted, abort) = (of("payment"), of("abort"));
    assert_eq!(referenced(&abort.body).as_deref(), Some(posted.service_id.as_str()));
    assert_ne!(abort.service_id, posted.service_id);
    let RequestBody::Abort(abort) = &abort.body else { panic!("an AbortRequest") };
    assert_eq!(abort.abort_reason, "MerchantAbort");
    assert_eq!(b.reason(), ("canceled".to_string(), "canceled by the register".to_string()));
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn a_partial_approval_is_reversed_once_and_declined() {
    let mut b = bench().await;
    let partial = Reply::Answer(booked(ResultType::Partial, "12.50", false).into());
    let fake = FakeNexo::new(&b, vec![partial], vec![], vec![reversed()]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Declined));

    let seen = fake.seen();
    assert_eq!(fake.kinds(), ["payment", "reversal"], "exactly one ReversalRequest");
    let RequestBody::Reversal(reversal) = &seen[1].body else { panic!("a ReversalRequest") };
    assert_eq!(reversal.original_poi_transaction.poi_transaction_id, poi());
    assert_eq!(reversal.reversed_amount, None, "all of what was booked");
    assert_ne!(seen[1].service_id, seen[0].service_id);
    // The reversal's ServiceID was stored with the answer, before it went out.
    assert_eq!(seen[1].stored_status, Status::Declined);
    let (reason, message) = b.reason();
    assert_eq!(reason, "partial_approval_not_allowed", "{message}");
    let attempts = b.rig.engine.store.reversals_of(&b.rec.id).unwrap();
    assert_eq!(attempts.len(), 1, "one attempt, the one sent");
    let owed = &attempts[0];
    assert_eq!((owed.kind, owed.status), (ReversalKind::Owed, ReversalStatus::Booked), "the owed reversal is booked");
    assert_eq!(owed.service_id.as_str(), seen[1].service_id);
    assert_eq!((owed.poi_transaction_id.as_str(), owed.amount_minor), (poi().transaction_id.as_str(), 1_250));
    assert!(b.rig.engine.store.open_reversals(SALE_ID).unwrap().is_empty(), "nothing left for the worker");
    assert!(!b.worker_woken().await);
    assert_eq!(b.records(), 0, "nothing booked stays with posd");
    b.assert_lane_free();
}

#[tokio::test(start_paused = true)]
async fn a_reversal_the_terminal_does_not_book_stays_owed() {
    let mut b = bench().await;
    let partial = Reply::Answer(booked(ResultType::Success, "15.00", false).into());
    let refused = Reply::Answer(
        ReversalResponse {
            response: Response::failure(ErrorCondition::NotAllowed),
            poi_data: None,
            original_poi_transaction: None,
            reversed_amount: None,
            payment_receipt: vec![],
        }
        .into(),
    );
    let fake = FakeNexo::new(&b, vec![partial], vec![], vec![refused]);

    assert_eq!(b.run(&fake).await, Outcome::Settled(Status::Declined));

    assert_eq!(fake.kinds(), ["payment", "reversal"]);
    let attempts = b.rig.engine.store.reversals_of(&b.rec.id).unwrap();
    assert_eq!(attempts.len(), 1);
    let owed = &attempts[0];
    assert_eq!((owed.kind, owed.status), (ReversalKind::Owed, ReversalStatus::Failed));
    assert_eq!((owed.poi_transaction_id.as_str(), owed.amount_minor), (poi().transaction_id.as_str(), 1_500));
    assert_eq!(owed.service_id.as_str(), fake.seen()[1].service_id);
    // Still owed: the reversal worker's nexo pass runs it again, and was woken for it.
    let open = b.rig.engine.store.open_reversals(SALE_ID).unwrap();
    assert_eq!(open, attempts, "left open for the reversal worker");
    assert!(b.worker_woken().await);
}

#[tokio::test(start_paused = true)]
async fn a_payment_left_mid_post_is_settled_after_a_restart_by_transaction_status() {
    let mut b = bench().await;
    let left = FakeNexo::new(&b, vec![Reply::Hang], vec![], vec![]);
    {
        let run = b.run(&left);
        tokio::select! {
            _ = run => panic!("the POST never ends"),
            () = left.posted.notified() => {}
        }
    }
    // posd was killed mid-POST: COLLECTING, with the ServiceID it posted under.
    assert_eq!(b.stored().status, Status::Collecting);
    let posted_under = left.seen()[0].service_id.clone();

    b.rig.restart();
    let fake = FakeNexo::new(&b, vec![], vec![status_repeats(booked(ResultType::Success, "20.00", false))], vec![]);
    let rec = b.stored();
    assert_eq!(b.rig.engine.settle_on_nexo(&fake, rec).await, Outcome::Settled(Status::Captured));

    let seen = fake.seen();
    assert_eq!(fake.kinds(), ["status"], "asked, never posted again");
    assert_eq!(referenced(&seen[0].body).as_deref(), Some(posted_under.as_str()));
    assert_ne!(seen[0].service_id, posted_under, "ServiceIDs stay unique across the restart");
    assert_eq!(b.stored().status, Status::Captured);
    assert_eq!(b.records(), 1);
}
