//! The card-reader driver (`Engine::drive_reader`) in one process: a real
//! store in a temporary directory, a fake gateway and a fake reader, the
//! register's live stream, under tokio's paused clock. The end-to-end tests
//! (tests/tests) run the same paths with processes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::Status;
use pos_engine::offline::OfflinePolicy;
use pos_engine::payment::{Outcome, ReaderPayment};
use pos_proto::gateway::{AuthorizeRequest, Outcome as GatewayOutcome, Transaction};
use pos_proto::reader::{CardResult, CollectCard, EntryMode, Stage};
use pos_proto::terminal as pb;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::{Authorizer, CardReader, payment_of, well_masked};
use crate::convert;
use crate::engine::test_support::{COLLECT_TIMEOUT, STATUS_BACKOFF, settings};
use crate::engine::{Engine, LAST_ONLINE, Live};
use crate::gateway::{AuthOutcome, Gateway, GatewaySettings};
use crate::lane::ReaderEvent;
use crate::store::{EventKind, Inserted, PaymentRecord, Store, now_ms};

const LANE: &str = "lane-1";
const KEY: &str = "GWKEY1K";

/// A gateway that answers from a script and notes each call with the
/// (paused) time it came.
#[derive(Default)]
struct FakeGateway {
    authorize: Mutex<Option<AuthOutcome>>,
    /// Answers to status queries, in order; then "no record".
    transactions: Mutex<VecDeque<Result<Option<Transaction>, String>>>,
    calls: Mutex<Vec<(String, Instant)>>,
}

impl FakeGateway {
    fn answering(outcome: AuthOutcome) -> Self {
        Self { authorize: Mutex::new(Some(outcome)), ..Default::default() }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|(c, _)| c.clone()).collect()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push((call, Instant::now()));
    }
}

impl Authorizer for FakeGateway {
    fn authorize(&self, req: AuthorizeRequest) -> impl Future<Output = AuthOutcome> + Send {
        let (key, card) = (&req.transaction_key, req.encrypted_card.len());
        self.note(format!("authorize {key} capture={} card={card}", req.capture));
        let outcome = self.authorize.lock().unwrap().take().expect("one authorization per payment");
        std::future::ready(outcome)
    }

    fn transaction(&self, key: &str) -> impl Future<Output = Result<Option<Transaction>, String>> + Send {
        self.note(format!("transaction {key}"));
        std::future::ready(self.transactions.lock().unwrap().pop_front().unwrap_or(Ok(None)))
    }
}

/// A reader that, asked for a card, sends what its script says and then
/// stays collecting; it notes each call.
#[derive(Default)]
struct FakeReader {
    script: Mutex<Vec<ReaderEvent>>,
    /// The collecting payment's channel, open until it is released.
    sender: Mutex<Option<mpsc::UnboundedSender<ReaderEvent>>>,
    calls: Mutex<Vec<String>>,
}

impl FakeReader {
    fn sending(script: Vec<ReaderEvent>) -> Self {
        Self { script: Mutex::new(script), ..Default::default() }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl CardReader for FakeReader {
    fn collect(
        &self,
        req: CollectCard,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<ReaderEvent>, String>> + Send {
        let CollectCard { amount_minor, terminal_id, transaction_key, .. } = req;
        self.calls.lock().unwrap().push(format!("collect {amount_minor} {terminal_id} {transaction_key}"));
        let (tx, rx) = mpsc::unbounded_channel();
        for event in std::mem::take(&mut *self.script.lock().unwrap()) {
            tx.send(event).unwrap();
        }
        *self.sender.lock().unwrap() = Some(tx);
        std::future::ready(Ok(rx))
    }

    fn release(&self, payment_id: &str) {
        self.calls.lock().unwrap().push(format!("release {payment_id}"));
        *self.sender.lock().unwrap() = None;
    }

    fn cancel(&self, payment_id: &str) -> impl Future<Output = ()> + Send {
        self.calls.lock().unwrap().push(format!("cancel {payment_id}"));
        *self.sender.lock().unwrap() = None;
        std::future::ready(())
    }

    fn show_result(&self, _payment_id: &str, approved: bool, text: &str) -> impl Future<Output = ()> + Send {
        self.calls.lock().unwrap().push(format!("show approved={approved} {text}"));
        std::future::ready(())
    }
}

/// An engine on a fresh store with one payment in CREATED, followed live
/// by the register as `take_payment` would have it.
struct Bench {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    rec: PaymentRecord,
    register: broadcast::Receiver<pb::PaymentEvent>,
    cancel: mpsc::Receiver<()>,
    /// Synced and unsynced commits before the payment was inserted.
    commits_before: (u64, u64),
}

async fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    // The gateway was reached a minute ago: offline approval is allowed.
    store.set_meta(LAST_ONLINE, now_ms() - 60_000).await.unwrap();
    let gateway = Arc::new(
        Gateway::new(GatewaySettings {
            url: "http://127.0.0.1:9".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ca_pem: None,
            identity: None,
        })
        .unwrap(),
    );
    let engine = Engine::new(store, gateway, Vec::new(), settings());
    let commits_before = (engine.store.write_counts().1, engine.store.unsynced_commits());
    let candidate =
        PaymentRecord::created("pay_t1".into(), "k-1".into(), KEY.into(), LANE.into(), 2_000, "EUR".into(), now_ms());
    let Inserted::New(rec) = engine.store.insert_or_get(&candidate, "test").await.unwrap() else {
        panic!("the payment's key is free");
    };
    let (events, register) = broadcast::channel(64);
    let (cancel_tx, cancel) = mpsc::channel(1);
    let live = Live { events, cancel: cancel_tx, received: std::time::Instant::now() };
    engine.live.lock().unwrap().insert(rec.id.clone(), live);
    engine.busy.lock().unwrap().insert(LANE.into(), rec.id.clone());
    Bench { _dir: dir, engine, rec, register, cancel, commits_before }
}

impl Bench {
    /// Runs the payment as the register's task would, to its end.
    async fn run(&mut self, gateway: &FakeGateway, reader: &FakeReader) -> Outcome {
        let settings = self.engine.reader_settings(OfflinePolicy::defaults_for("EUR"));
        let payment = ReaderPayment::new(payment_of(&self.rec), settings);
        self.engine.drive_reader(gateway, Some(reader), payment, self.rec.clone(), Some(&mut self.cancel)).await
    }

    /// The stages the register heard, with the payment's status in each.
    fn heard(&mut self) -> Vec<(pb::PaymentStage, Status)> {
        let mut heard = Vec::new();
        while let Ok(e) = self.register.try_recv() {
            let stage = pb::PaymentStage::try_from(e.stage).unwrap();
            let status = pb::PaymentStatus::try_from(e.payment.unwrap().status).unwrap();
            heard.push((stage, convert::status_from_proto(status).unwrap()));
        }
        heard
    }

    fn stored(&self) -> PaymentRecord {
        self.engine.store.get(&self.rec.id).unwrap().unwrap()
    }

    /// The lane is free and the register's stream ended.
    fn assert_let_go(&self) {
        assert_eq!(self.engine.busy_with(LANE), None, "the lane is free");
        assert!(!self.engine.live.lock().unwrap().contains_key(&self.rec.id), "the stream ended");
    }

    /// Synced and unsynced commits since before the payment was inserted.
    fn commits(&self) -> (u64, u64) {
        let store = &self.engine.store;
        (store.write_counts().1 - self.commits_before.0, store.unsynced_commits() - self.commits_before.1)
    }
}

fn card() -> ReaderEvent {
    ReaderEvent::Card(Box::new(CardResult {
        payment_id: "pay_t1".into(),
        masked_pan: "424242******4242".into(),
        brand: "visa".into(),
        entry_mode: EntryMode::Chip as i32,
        encrypted_card: vec![7; 32],
        card_fingerprint: "FP1".into(),
        ..Default::default()
    }))
}

fn approved() -> Transaction {
    Transaction {
        transaction_key: KEY.into(),
        outcome: GatewayOutcome::Approved as i32,
        auth_code: "A1B2C3".into(),
        gateway_reference: "GW-1".into(),
        captured: true,
        amount_minor: 2_000,
        currency: "EUR".into(),
        ..Default::default()
    }
}

const COLLECT: &str = "collect 2000 store-1/lane-1 GWKEY1K";
const AUTHORIZE: &str = "authorize GWKEY1K capture=true card=32";

#[tokio::test(start_paused = true)]
async fn an_online_approval_takes_three_synced_commits_and_is_shown() {
    let mut b = bench().await;
    let gateway = FakeGateway::answering(AuthOutcome::Answer(approved()));
    let reading = ReaderEvent::Progress { stage: Stage::Reading, text: "Reading".into() };
    let reader = FakeReader::sending(vec![reading, card()]);

    assert_eq!(b.run(&gateway, &reader).await, Outcome::Settled(Status::Captured));

    let stored = b.stored();
    assert_eq!(stored.status, Status::Captured);
    assert_eq!((stored.auth_code.as_str(), stored.gateway_reference.as_str()), ("A1B2C3", "GW-1"));
    assert_eq!(stored.card.as_ref().map(|c| c.masked_pan.as_str()), Some("424242******4242"));
    assert_eq!(b.engine.store.encrypted_card(&b.rec.id).unwrap(), None, "the card data goes with the answer");
    assert_eq!(gateway.calls(), [AUTHORIZE]);
    assert_eq!(reader.calls(), [COLLECT, "release pay_t1", "show approved=true Approved"]);
    use pb::PaymentStage as S;
    assert_eq!(
        b.heard(),
        [
            (S::PresentCard, Status::Collecting),
            (S::Reading, Status::Collecting),
            (S::Authorizing, Status::CardRead),
            (S::Authorizing, Status::Authorizing),
            (S::Approved, Status::Captured),
        ]
    );
    // The insert, CARD_READ with AUTHORIZING, the answer; COLLECTING deferred.
    assert_eq!(b.commits(), (3, 1));
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_settled_by_status_query_after_the_backoff() {
    let mut b = bench().await;
    let gateway = FakeGateway::answering(AuthOutcome::Unknown("no answer within 1s".into()));
    gateway.transactions.lock().unwrap().extend([Ok(None), Ok(Some(approved()))]);
    let reader = FakeReader::sending(vec![card()]);

    assert_eq!(b.run(&gateway, &reader).await, Outcome::Settled(Status::Captured));

    assert_eq!(b.stored().status, Status::Captured);
    let query = format!("transaction {KEY}");
    assert_eq!(gateway.calls(), [AUTHORIZE, query.as_str(), query.as_str()]);
    let calls = gateway.calls.lock().unwrap().clone();
    let waited = calls[2].1 - calls[1].1;
    assert!(waited >= STATUS_BACKOFF && waited < STATUS_BACKOFF * 2, "waits the backoff: {waited:?}");
    let statuses: Vec<Status> = b.heard().into_iter().map(|(_, s)| s).collect();
    use Status::*;
    assert_eq!(statuses, [Collecting, CardRead, Authorizing, Unknown, Captured]);
    let history = b.engine.store.history(&b.rec.id).unwrap();
    assert!(history.iter().any(|h| h.cause == "no answer from the gateway: no answer within 1s"), "{history:?}");
    assert_eq!(reader.calls(), [COLLECT, "release pay_t1", "show approved=true Approved"]);
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_request_never_sent_is_approved_offline_and_queued() {
    let mut b = bench().await;
    let gateway = FakeGateway::answering(AuthOutcome::NotSent("connection refused".into()));
    let reader = FakeReader::sending(vec![card()]);

    assert_eq!(b.run(&gateway, &reader).await, Outcome::Settled(Status::OfflineApproved));

    let stored = b.stored();
    assert_eq!(stored.status, Status::OfflineApproved);
    assert!(stored.queued_at_ms.is_some(), "it has its place in the queue");
    assert_eq!(stored.last_error, "connection refused");
    assert_eq!(b.engine.store.encrypted_card(&b.rec.id).unwrap(), Some(vec![7; 32]), "kept to be forwarded");
    let event = "approved offline and queued (connection refused)";
    assert!(b.engine.store.has_event(EventKind::ApprovedOffline, &b.rec.id, event).unwrap());
    assert_eq!(gateway.calls(), [AUTHORIZE]);
    assert_eq!(reader.calls(), [COLLECT, "release pay_t1", "show approved=true Approved OFFLINE"]);
    assert_eq!(b.heard().last(), Some(&(pb::PaymentStage::Approved, Status::OfflineApproved)));
    assert!(b.engine.offline_gate.try_lock().is_ok(), "the offline gate is released");
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn no_card_within_the_timeout_fails_the_payment_and_stops_the_reader() {
    let mut b = bench().await;
    let gateway = FakeGateway::default();
    let present = ReaderEvent::Progress { stage: Stage::PresentCard, text: "Present card".into() };
    let reader = FakeReader::sending(vec![present]);
    let began = Instant::now();

    assert_eq!(b.run(&gateway, &reader).await, Outcome::Settled(Status::Failed));

    let waited = began.elapsed();
    assert!(waited >= COLLECT_TIMEOUT && waited < COLLECT_TIMEOUT + Duration::from_secs(1), "{waited:?}");
    let stored = b.stored();
    assert_eq!((stored.status, stored.reason_code.as_str()), (Status::Failed, "reader_timeout"));
    assert_eq!(stored.reason_message, "no card within 30s");
    assert!(gateway.calls().is_empty(), "nothing is sent");
    assert_eq!(reader.calls(), [COLLECT, "cancel pay_t1"]);
    use pb::PaymentStage as S;
    assert_eq!(
        b.heard(),
        [(S::PresentCard, Status::Collecting), (S::PresentCard, Status::Collecting), (S::Failed, Status::Failed)]
    );
    b.assert_let_go();
}

#[test]
fn masked_pans_keep_first_six_and_last_four_only() {
    assert_eq!(well_masked("424242******4242"), "424242******4242");
    assert_eq!(well_masked("4242424242424242"), "424242******4242");
    assert_eq!(well_masked("4242424242******"), "****************");
    assert_eq!(well_masked("garbage"), "*******");
    // The one rule of pos_mask, for the ZVT terminal's card numbers alike.
    assert_eq!(well_masked("4242 4242 4242 4242"), crate::zvt::safe_pan("4242 4242 4242 4242"));
    assert_eq!(well_masked("4242 4242 4242 4242"), "424242******4242");
    assert_eq!(well_masked("************4242"), crate::zvt::safe_pan("************4242"));
    assert_eq!(well_masked(""), "****");
}
