//! The payment-terminal driver (`Engine::drive_terminal`) in one process: a
//! real store in a temporary directory, a fake ZVT terminal that plays a
//! script per command and notes what posd answered (with the payment's
//! stored status at that moment), the register's live stream, under tokio's
//! paused clock. The end-to-end tests (tests/tests/zvt.rs) run the same
//! paths against firmware-sim.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_engine::terminal::{self as machine, Outcome, TerminalPayment};
use pos_engine::{Input, Status, next};
use pos_proto::terminal as pb;
use pos_zvt::message::{DEFAULT_PASSWORD, WithPassword};
use pos_zvt::{Bmps, Message, codes};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Abort, PaymentTerminal, last_receipt_key, payment_of};
use crate::convert;
use crate::engine::{Engine, EngineSettings, ForwardSettings, Live};
use crate::gateway::{Gateway, GatewaySettings};
use crate::store::{DeviceKind, EventKind, Inserted, PaymentRecord, Store, Update, now_ms};
use crate::zvt::{Ending, Outcome as ZvtOutcome, ZvtEvent};

const LANE: &str = "lane-1";
const STATUS_BACKOFF: Duration = Duration::from_millis(500);

/// One thing the fake terminal does in a command.
enum Step {
    Progress(u8, &'static str),
    /// Sends a Status-Information, waits for posd's answer, notes it, and
    /// tells posd it reached the terminal.
    Result(ZvtOutcome),
    /// Moves the stored payment on behind posd's back, so posd's next
    /// commit of it fails (refused as stale).
    MoveStoredPayment,
    /// Waits for posd's abort request.
    WaitAbort,
    Done(Ending),
}

/// A terminal that plays one script per command, in order.
struct FakeTerminal {
    store: Arc<Store>,
    payment: String,
    scripts: Mutex<VecDeque<Vec<Step>>>,
    calls: Arc<Mutex<Vec<String>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FakeTerminal {
    fn new(b: &Bench, scripts: Vec<Vec<Step>>) -> Self {
        Self {
            store: b.engine.store.clone(),
            payment: b.rec.id.clone(),
            scripts: Mutex::new(scripts.into()),
            calls: Arc::default(),
            tasks: Mutex::default(),
        }
    }

    /// What posd asked and answered, once every command's script has run.
    async fn calls(&self) -> Vec<String> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in tasks {
            task.await.unwrap();
        }
        self.calls.lock().unwrap().clone()
    }
}

struct FakeAbort(mpsc::UnboundedSender<()>);

impl Abort for FakeAbort {
    fn abort(&self) {
        let _ = self.0.send(());
    }
}

impl PaymentTerminal for FakeTerminal {
    type Abort = FakeAbort;

    fn run(&self, command: Message) -> impl Future<Output = (mpsc::UnboundedReceiver<ZvtEvent>, FakeAbort)> + Send {
        let name = match &command {
            Message::Authorization(f) => format!("authorization {}", f.amount().unwrap_or_default()),
            Message::RepeatReceipt(_) => "repeat receipt".to_string(),
            other => other.name().to_string(),
        };
        self.calls.lock().unwrap().push(name);
        let lost = Ending::Lost { message: "no script".into(), started: false };
        let script = self.scripts.lock().unwrap().pop_front().unwrap_or_else(|| vec![Step::Done(lost)]);
        let (events, rx) = mpsc::unbounded_channel();
        let (abort, mut aborted) = mpsc::unbounded_channel();
        let (calls, store, id) = (self.calls.clone(), self.store.clone(), self.payment.clone());
        let task = tokio::spawn(async move {
            for step in script {
                match step {
                    Step::Progress(code, text) => {
                        let _ = events.send(ZvtEvent::Progress { code, text: text.into() });
                    }
                    Step::Result(outcome) => {
                        let (confirm, answer) = oneshot::channel();
                        let _ = events.send(ZvtEvent::Result { outcome, confirm });
                        let stored = answer.await.unwrap_or(false);
                        let status = store.get(&id).unwrap().unwrap().status;
                        let reply = if stored { "80 00" } else { "84 66" };
                        calls.lock().unwrap().push(format!("{reply} ({status})"));
                        let _ = events.send(if stored { ZvtEvent::Confirmed } else { ZvtEvent::Refused });
                    }
                    Step::MoveStoredPayment => {
                        let t = next(Status::Collecting, &Input::Cancel { by: "a test".into() }).unwrap();
                        store.apply(&id, &t, Update::default(), now_ms()).await.unwrap();
                    }
                    Step::WaitAbort => {
                        if aborted.recv().await.is_some() {
                            calls.lock().unwrap().push("abort".into());
                        }
                    }
                    Step::Done(ending) => {
                        let _ = events.send(ZvtEvent::Done(ending));
                    }
                }
            }
        });
        self.tasks.lock().unwrap().push(task);
        std::future::ready((rx, FakeAbort(abort)))
    }

    fn payment_command(&self, amount_minor: u64) -> Message {
        Message::authorization(amount_minor, 978)
    }

    fn repeat_receipt_command(&self) -> Message {
        Message::RepeatReceipt(WithPassword { password: DEFAULT_PASSWORD, fields: Bmps::default() })
    }

    fn repeat_receipt_bound(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// An engine on a fresh store (the lane's last receipt 7) with one payment
/// on its terminal in CREATED, followed live by the register.
struct Bench {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    rec: PaymentRecord,
    register: broadcast::Receiver<pb::PaymentEvent>,
    cancel: mpsc::Receiver<()>,
    cancel_tx: mpsc::Sender<()>,
    /// Synced and unsynced commits before the payment was inserted.
    commits_before: (u64, u64),
}

async fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    store.set_meta(&last_receipt_key(LANE), 7).await.unwrap();
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
    let (id, key, gateway_key) = ("pay_z1".to_string(), "k-1".to_string(), "GWKEY1K".to_string());
    let created = PaymentRecord::created(id, key, gateway_key, LANE.into(), 2_000, "EUR".into(), now_ms());
    let candidate = PaymentRecord { device: DeviceKind::Zvt, ..created };
    let Inserted::New(rec) = engine.store.insert_or_get(&candidate, "test").await.unwrap() else {
        panic!("the payment's key is free");
    };
    let (events, register) = broadcast::channel(64);
    let (cancel_tx, cancel) = mpsc::channel(1);
    let live = Live { events, cancel: cancel_tx.clone(), received: std::time::Instant::now() };
    engine.live.lock().unwrap().insert(rec.id.clone(), live);
    engine.busy.lock().unwrap().insert(LANE.into(), rec.id.clone());
    Bench { _dir: dir, engine, rec, register, cancel, cancel_tx, commits_before }
}

fn settings() -> EngineSettings {
    let d = Duration::from_secs(1);
    EngineSettings {
        store_id: "store-1".into(),
        demo: false,
        collect_timeout: Duration::from_secs(30),
        capture_window: None,
        // Four Repeat Receipts at most after a lost line.
        status_attempts: 1,
        status_backoff: STATUS_BACKOFF,
        reversal_backoff: (d, d),
        forward: ForwardSettings {
            batch_size: 10,
            retry_first: d,
            retry_max: d,
            health_interval: d,
            ageing_interval: d,
            expire_after: Duration::from_secs(72 * 3600),
            alert_after: Duration::from_secs(12 * 3600),
            stop_after: Duration::from_secs(24 * 3600),
        },
        receipt: crate::receipt::ReceiptSettings { header: vec![], footer: vec![], tz: jiff::tz::TimeZone::UTC },
        auto_print: vec![],
    }
}

impl Bench {
    /// Runs the payment as the register's task would, to its end.
    async fn run(&mut self, terminal: &FakeTerminal) -> Outcome {
        let payment = TerminalPayment::new(payment_of(&self.rec), self.engine.terminal_settings());
        self.engine.drive_terminal(terminal, payment, self.rec.clone(), Some(&mut self.cancel)).await
    }

    /// What the register heard: stage, the payment's status, the message.
    fn heard(&mut self) -> Vec<(pb::PaymentStage, Status, String)> {
        let mut heard = Vec::new();
        while let Ok(e) = self.register.try_recv() {
            let stage = pb::PaymentStage::try_from(e.stage).unwrap();
            let status = pb::PaymentStatus::try_from(e.payment.unwrap().status).unwrap();
            heard.push((stage, convert::status_from_proto(status).unwrap(), e.message));
        }
        heard
    }

    fn stored(&self) -> PaymentRecord {
        self.engine.store.get(&self.rec.id).unwrap().unwrap()
    }

    fn last_receipt(&self) -> Option<i64> {
        self.engine.store.meta(&last_receipt_key(LANE)).unwrap()
    }

    fn records(&self) -> usize {
        self.engine.store.pending_records(10).unwrap().len()
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

fn sale(receipt: u16, amount: u64) -> ZvtOutcome {
    ZvtOutcome {
        result_code: Some(0),
        amount: Some(amount),
        receipt_no: Some(receipt),
        masked_pan: "672559******1000".into(),
        card_name: "girocard".into(),
        auth_code: "123456".into(),
        ..ZvtOutcome::default()
    }
}

fn lost_after_start() -> Step {
    Step::Done(Ending::Lost { message: "line to the terminal failed".into(), started: true })
}

fn completed() -> Step {
    Step::Done(Ending::Completed { terminal_id: "52500001".into() })
}

const AUTHORIZATION: &str = "authorization 2000";

#[tokio::test(start_paused = true)]
async fn an_approval_is_committed_before_80_00_and_captured_with_its_record() {
    let mut b = bench().await;
    let script = vec![Step::Progress(0x0A, "Insert card"), Step::Result(sale(8, 2_000)), completed()];
    let t = FakeTerminal::new(&b, vec![script]);

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Captured));

    // 80 00 went out with the result already committed (CONFIRMING).
    assert_eq!(t.calls().await, [AUTHORIZATION, "80 00 (confirming)"]);
    let stored = b.stored();
    assert_eq!(stored.status, Status::Captured);
    assert_eq!(stored.card.as_ref().map(|c| c.masked_pan.as_str()), Some("672559******1000"));
    assert_eq!(b.engine.store.terminal_result(&b.rec.id).unwrap().unwrap().receipt_no, Some(8));
    assert_eq!(b.engine.store.payment_receipt_before(&b.rec.id).unwrap(), Some(7), "kept with the payment");
    assert_eq!(b.last_receipt(), Some(8), "the lane's last receipt moves with the capture");
    assert_eq!(b.records(), 1, "one record queued for the gateway's ledger");
    use pb::PaymentStage as S;
    let heard: Vec<_> = b.heard().into_iter().map(|(stage, status, _)| (stage, status)).collect();
    assert_eq!(
        heard,
        [
            (S::PresentCard, Status::Collecting),
            (S::PresentCard, Status::Collecting),
            (S::Authorizing, Status::Confirming),
            (S::Approved, Status::Captured),
        ]
    );
    // The insert, COLLECTING (synced on a terminal's lane), CONFIRMING, CAPTURED.
    assert_eq!(b.commits(), (4, 0));
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_result_whose_commit_fails_is_answered_84_66_and_never_approved() {
    let mut b = bench().await;
    let script = vec![Step::MoveStoredPayment, Step::Result(sale(8, 2_000)), completed()];
    let t = FakeTerminal::new(&b, vec![script]);

    let Outcome::Unrecorded { stored, may_be_at_gateway, .. } = b.run(&t).await else {
        panic!("the commit failed");
    };

    assert_eq!(t.calls().await, [AUTHORIZATION, "84 66 (canceled)"], "goods not issued: the terminal reverses");
    assert_eq!((stored, may_be_at_gateway), (Some(Status::Canceled), true));
    assert!(!b.stored().status.is_approved());
    assert_eq!(b.records(), 0, "nothing recorded at the gateway");
    let (stage, _, message) = b.heard().pop().unwrap();
    assert_eq!(stage, pb::PaymentStage::Authorizing);
    assert!(message.starts_with("Outcome unknown: posd could not record"), "{message}");
    assert_eq!(b.engine.busy_with(LANE), Some(b.rec.id.clone()), "the lane stays busy until a restart settles it");
}

#[tokio::test(start_paused = true)]
async fn a_decline_is_stored_confirmed_and_recorded_nowhere() {
    let mut b = bench().await;
    let declined = ZvtOutcome { result_code: Some(0x05), ..sale(9, 2_000) };
    let t = FakeTerminal::new(&b, vec![vec![Step::Result(declined), completed()]]);

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Declined));

    assert_eq!(t.calls().await, [AUTHORIZATION, "80 00 (declined)"]);
    let stored = b.stored();
    assert_eq!((stored.reason_code.as_str(), stored.reason_message.clone()), ("zvt_05", codes::result_text(0x05)));
    assert_eq!(b.records(), 0);
    assert_eq!(b.last_receipt(), Some(7), "a decline does not move the lane's receipt number");
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_line_lost_after_start_is_booked_when_repeat_receipt_shows_the_next_receipt() {
    let mut b = bench().await;
    let repeat = vec![Step::Result(sale(8, 2_000)), completed()];
    let t = FakeTerminal::new(&b, vec![vec![Step::Progress(0x17, "Please wait"), lost_after_start()], repeat]);

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Captured));

    // A repeat changes nothing at the terminal: confirmed at once.
    assert_eq!(t.calls().await, [AUTHORIZATION, "repeat receipt", "80 00 (unknown)"]);
    assert_eq!(b.stored().status, Status::Captured);
    let history = b.engine.store.history(&b.rec.id).unwrap();
    assert!(history.iter().any(|h| h.to == Status::Unknown), "in doubt first: {history:?}");
    assert_eq!(b.engine.store.terminal_result(&b.rec.id).unwrap().unwrap().receipt_no, Some(8));
    assert_eq!((b.last_receipt(), b.records()), (Some(8), 1));
    let heard = b.heard();
    assert!(heard.iter().any(|(_, _, m)| m == "Checking with the payment terminal what it booked"), "{heard:?}");
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_line_lost_after_start_fails_when_repeat_receipt_shows_the_receipt_from_before() {
    let mut b = bench().await;
    let repeat = vec![Step::Result(sale(7, 500)), completed()];
    let t = FakeTerminal::new(&b, vec![vec![lost_after_start()], repeat]);

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Failed));

    assert_eq!(t.calls().await, [AUTHORIZATION, "repeat receipt", "80 00 (unknown)"]);
    let stored = b.stored();
    assert_eq!(stored.reason_code, "terminal_not_booked");
    assert!(stored.reason_message.contains("nothing was charged"), "{}", stored.reason_message);
    assert_eq!((b.last_receipt(), b.records()), (Some(7), 0));
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn a_terminal_that_cannot_repeat_its_receipt_leaves_the_payment_to_a_person() {
    let mut b = bench().await;
    let refused = Step::Done(Ending::Aborted { code: 0x83, text: "not possible".into() });
    let t = FakeTerminal::new(&b, vec![vec![lost_after_start()], vec![refused]]);

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Unknown));

    assert_eq!(t.calls().await, [AUTHORIZATION, "repeat receipt"]);
    assert_eq!(b.stored().status, Status::Unknown);
    let why = "the payment terminal cannot repeat its last receipt";
    assert!(b.engine.store.has_event(EventKind::TerminalOutcomeUnknown, &b.rec.id, why).unwrap());
    let (_, _, message) = b.heard().pop().unwrap();
    assert!(message.starts_with(&format!("Outcome unknown: {why}")), "{message}");
    assert_eq!(b.records(), 0);
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_terminal_is_asked_four_times_the_backoff_apart() {
    let mut b = bench().await;
    let unreachable = || vec![Step::Done(Ending::Lost { message: "not connected".into(), started: false })];
    let mut scripts = vec![vec![lost_after_start()]];
    scripts.extend((0..4).map(|_| unreachable()));
    let t = FakeTerminal::new(&b, scripts);
    let began = Instant::now();

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Unknown));

    let waited = began.elapsed();
    assert!(waited >= STATUS_BACKOFF * 3 && waited < STATUS_BACKOFF * 4, "three waits: {waited:?}");
    let calls = t.calls().await;
    assert_eq!(calls.iter().filter(|c| *c == "repeat receipt").count(), 4, "{calls:?}");
    let why = "the payment terminal could not be asked: not connected";
    assert!(b.engine.store.has_event(EventKind::TerminalOutcomeUnknown, &b.rec.id, why).unwrap());
    b.assert_let_go();
}

#[tokio::test(start_paused = true)]
async fn the_registers_cancel_aborts_the_command_and_cancels_the_payment() {
    let mut b = bench().await;
    let canceled = Step::Done(Ending::Aborted { code: 0x6C, text: codes::result_text(0x6C) });
    let t = FakeTerminal::new(&b, vec![vec![Step::Progress(0x0A, "Insert card"), Step::WaitAbort, canceled]]);
    b.cancel_tx.try_send(()).unwrap();

    assert_eq!(b.run(&t).await, Outcome::Settled(Status::Canceled));

    assert_eq!(t.calls().await, [AUTHORIZATION, "abort"]);
    let stored = b.stored();
    assert_eq!((stored.reason_code.as_str(), stored.reason_message.as_str()), ("canceled", "canceled by the register"));
    b.assert_let_go();
}

#[test]
fn the_machines_result_codes_are_the_terminals() {
    assert_eq!(machine::INITIALISATION_REQUIRED, codes::INITIALISATION_REQUIRED);
    assert!(codes::result_text(machine::CANCELED_AT_TERMINAL).contains("canceled"));
    assert_eq!(machine::BUSY.map(codes::result_text), ["receiver not ready", "please wait"]);
}
