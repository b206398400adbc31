//! The nexo machines (`pos_engine::nexo`), transition by transition and at
//! each failure point. Each test plays the runtime by hand (commits, the
//! POST and its answer, TransactionStatus, time) and checks the commands; a
//! property test plays random scripts against the money rules: no POST
//! before its start is committed and never a second one, nothing told
//! before the answer is committed, one reversal per partial approval, at
//! most one abort, exactly one end.

use std::time::Duration;

use pos_engine::nexo::{
    AfterSale, AfterSaleCommand, AfterSaleError, AfterSaleEvent, AfterSaleOutcome, Answer, Category, Command,
    Condition, Data, Durability, Event, Log, Millis, NexoPayment, Operation, Outcome, Payment, PoiTransaction, Queried,
    Querying, Record, Recover, Settings, Stage, StatusAnswer, TerminalResult, failure, recover, refund, void,
};
use pos_engine::{Input, Status, Transition, TransitionError};
use proptest::prelude::*;

const T0: Millis = 1_000_000;
const SID: &str = "0000000041";
const REV: &str = "0000000042";
const KEY: &str = "GWKEY1";

fn settings() -> Settings {
    Settings { status_attempts: 3, status_backoff: Duration::from_millis(500) }
}

fn payment(status: Status) -> Payment {
    Payment { id: "pay_1".into(), status, amount_minor: 2_000, currency: "EUR".into(), gateway_key: KEY.into() }
}

fn poi() -> PoiTransaction {
    PoiTransaction { transaction_id: "TX4F2KQ8".into(), timestamp: "2026-12-07T10:00:05.000Z".into() }
}

fn approved() -> Answer {
    Answer {
        result: TerminalResult::Success,
        authorized_minor: Some(2_000),
        poi_transaction: Some(poi()),
        approval_code: "123456".into(),
        masked_pan: "541333******9999".into(),
        brand: "mc".into(),
        ..Answer::default()
    }
}

fn partial(authorized: u64) -> Answer {
    Answer { result: TerminalResult::Partial, authorized_minor: Some(authorized), ..approved() }
}

fn failed(condition: Condition, text: &str) -> Answer {
    Answer { result: TerminalResult::Failure, condition: Some(condition), message: text.into(), ..Answer::default() }
}

fn settled(status: Status) -> Command {
    Command::Done(Outcome::Settled(status))
}

fn post() -> Command {
    let (service_id, sale_transaction_id) = (SID.to_string(), KEY.to_string());
    Command::Post { service_id, sale_transaction_id, amount_minor: 2_000, currency: "EUR".into() }
}

fn ask() -> Command {
    Command::AskStatus { service_id: SID.into() }
}

/// The steps of the one Persist among the commands: from, to, data.
fn steps(commands: &[Command]) -> Vec<(Status, Status, Data)> {
    let persists: Vec<_> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Persist { steps, durability } => {
                assert_eq!(*durability, Durability::Synced, "every commit on a nexo lane is synced");
                Some(steps.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(persists.len(), 1, "one Persist: {commands:?}");
    persists[0].iter().map(|s| (s.transition.from, s.transition.to, s.data.clone())).collect()
}

/// The last transition of the one Persist among the commands.
fn transition_of(commands: &[Command]) -> Transition {
    commands
        .iter()
        .find_map(|c| match c {
            Command::Persist { steps, .. } => steps.last().map(|s| s.transition.clone()),
            _ => None,
        })
        .expect("a Persist")
}

fn code(t: &Transition) -> String {
    t.reason.as_ref().map(|r| r.code.clone()).unwrap_or_default()
}

/// The message of a Publish at `stage`.
fn published(command: &Command, stage: Stage) -> String {
    match command {
        Command::Publish { stage: s, message } if *s == stage => message.clone(),
        other => panic!("not a Publish at {stage:?}: {other:?}"),
    }
}

/// The code of an after-sale operation's commit as not booked.
fn not_booked(command: &AfterSaleCommand) -> String {
    match command {
        AfterSaleCommand::Persist { record: Record::NotBooked { code, .. }, durability: Durability::Synced } => {
            code.clone()
        }
        other => panic!("not a synced commit as not booked: {other:?}"),
    }
}

fn result(answer: Answer, reversal: Option<&str>) -> Data {
    Data::Result { answer: Box::new(answer), reversal: reversal.map(str::to_string) }
}

/// A register's payment up to its POST: the ServiceID committed with
/// COLLECTING first.
fn posting() -> NexoPayment {
    let mut p = NexoPayment::new(payment(Status::Created), settings());
    assert_eq!(p.start(T0), vec![Command::NextServiceId]);
    let c = p.handle(Event::ServiceId(SID.into()), T0);
    assert_eq!(steps(&c), vec![(Status::Created, Status::Collecting, Data::Start { service_id: SID.into() })]);
    assert_eq!(c.len(), 1, "nothing but the commit: {c:?}");
    assert_eq!(p.handle(Event::Committed, T0), vec![post()]);
    assert_eq!((p.status(), p.service_id()), (Status::Collecting, Some(SID)));
    p
}

/// A posting payment whose POST ended in doubt: the terminal is asked.
fn in_doubt() -> NexoPayment {
    let mut p = posting();
    let c = p.handle(Event::InDoubt { message: "no answer within 180s".into() }, T0);
    assert_eq!(
        c,
        vec![
            Command::Log(Log::InDoubt { message: "no answer within 180s".into() }),
            Command::Publish {
                stage: Stage::Authorizing,
                message: "Checking with the payment terminal what it booked".into(),
            },
            ask(),
        ],
        "nothing committed, nothing posted again"
    );
    assert_eq!(p.status(), Status::Collecting);
    p
}

#[test]
fn the_service_id_is_committed_with_the_start_before_the_post() {
    let p = posting();
    assert!(!p.is_done());
    // The commit fails: nothing went out, the register may try again.
    let mut p = NexoPayment::new(payment(Status::Created), settings());
    p.start(T0);
    p.handle(Event::ServiceId(SID.into()), T0);
    let c = p.handle(Event::StoreFailed { error: "database is locked".into(), stored: Some(Status::Created) }, T0);
    assert_eq!(c[0], Command::FreeLane);
    assert!(published(&c[1], Stage::Failed).contains("Nothing was charged"), "{c:?}");
    assert!(!c.iter().any(|c| matches!(c, Command::Post { .. })), "no POST without its commit: {c:?}");
    assert!(matches!(c.last(), Some(Command::Done(Outcome::Unrecorded { may_be_at_gateway: false, .. }))));
    // The ServiceID cannot be read: the same.
    let mut p = NexoPayment::new(payment(Status::Created), settings());
    p.start(T0);
    let c = p.handle(Event::StoreFailed { error: "disk I/O error".into(), stored: Some(Status::Created) }, T0);
    assert_eq!(c[0], Command::FreeLane);
    assert!(p.is_done());
}

#[test]
fn an_approval_is_committed_before_the_register_hears_it() {
    let mut p = posting();
    let c = p.handle(Event::Answered(approved()), T0);
    assert_eq!(
        steps(&c),
        vec![
            (Status::Collecting, Status::Confirming, result(approved(), None)),
            (Status::Confirming, Status::Captured, Data::None),
        ]
    );
    assert_eq!(c.len(), 1, "nothing heard before the commit: {c:?}");
    assert_eq!(p.status(), Status::Collecting, "the status moves on the commit");
    let c = p.handle(Event::Committed, T0);
    assert_eq!(c, vec![Command::WakeRecorder, Command::AutoPrint, settled(Status::Captured)]);
    assert!(p.is_done());
    assert!(p.handle(Event::Answered(approved()), T0).is_empty(), "nothing follows the end");
}

#[test]
fn an_answer_that_cannot_be_committed_leaves_the_payment_for_the_restart() {
    let mut p = posting();
    p.handle(Event::Answered(approved()), T0);
    let c = p.handle(Event::StoreFailed { error: "disk I/O error".into(), stored: Some(Status::Collecting) }, T0);
    assert!(!c.contains(&Command::FreeLane), "the terminal booked it: the lane stays busy");
    assert!(published(&c[0], Stage::Authorizing).starts_with("Outcome unknown"), "{c:?}");
    assert_eq!(
        c.last(),
        Some(&Command::Done(Outcome::Unrecorded {
            stored: Some(Status::Collecting),
            may_be_at_gateway: true,
            error: "disk I/O error".into()
        }))
    );
    assert!(!c.iter().any(|c| matches!(c, Command::WakeRecorder | Command::AutoPrint)));
}

#[test]
fn failure_conditions_map_to_the_registers_codes_and_unknown_ones_are_kept() {
    let cases = [
        (Condition::Refusal, Status::Declined, "generic_decline"),
        (Condition::WrongPin, Status::Declined, "incorrect_pin"),
        (Condition::Cancel, Status::Canceled, "canceled"),
        (Condition::Aborted, Status::Canceled, "canceled"),
        (Condition::Busy, Status::Failed, "terminal_busy"),
        (Condition::InProgress, Status::Failed, "terminal_busy"),
        (Condition::DeviceOut, Status::Failed, "terminal_unavailable"),
        (Condition::UnavailableDevice, Status::Failed, "terminal_unavailable"),
        (Condition::UnavailableService, Status::Failed, "terminal_unavailable"),
        (Condition::Other("InsertedCard".into()), Status::Failed, "terminal_error"),
    ];
    for (condition, to, reason) in cases {
        let mut p = posting();
        let answer = failed(condition.clone(), "said the terminal");
        let c = p.handle(Event::Answered(answer.clone()), T0);
        assert_eq!(steps(&c), vec![(Status::Collecting, to, result(answer, None))], "{condition:?}");
        let t = transition_of(&c);
        assert_eq!(code(&t), reason, "{condition:?}");
        let message = t.reason.unwrap().message;
        // A cancel is told as the register knows it; everything else with the terminal's words.
        let told = message.contains(condition.as_str()) && message.contains("said the terminal");
        assert!(to == Status::Canceled || told, "{message}");
        assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(to)]);
    }
    let mut p = posting();
    let t = transition_of(&p.handle(Event::Answered(failed(Condition::Cancel, "")), T0));
    assert_eq!(t.cause, "canceled by the customer at the payment terminal");
    let mut p = posting();
    let t = transition_of(&p.handle(Event::Answered(failed(Condition::Aborted, "")), T0));
    assert_eq!(t.cause, "canceled by the payment terminal", "no cancel from the register");
    // A failure without any condition is kept as such.
    let mut p = posting();
    let t = transition_of(&p.handle(Event::Answered(Answer::default()), T0));
    assert_eq!((t.to, code(&t)), (Status::Failed, "terminal_error".to_string()));
    assert!(t.reason.unwrap().message.contains("no ErrorCondition"));
}

#[test]
fn conditions_keep_their_names_and_unknown_ones_verbatim() {
    for name in ["Aborted", "Busy", "Cancel", "DeviceOut", "InProgress", "NotFound", "Refusal", "WrongPIN"] {
        assert_eq!(Condition::parse(name).as_str(), name);
    }
    assert_eq!(Condition::parse("UnavailableService"), Condition::UnavailableService);
    assert_eq!(Condition::parse("PaymentRestriction"), Condition::Other("PaymentRestriction".into()));
    let f = failure(&failed(Condition::Other("PaymentRestriction".into()), "not with this card"));
    assert!(!f.declined);
    assert_eq!(f.code, "terminal_error");
    assert!(f.message.contains("PaymentRestriction: not with this card"), "{}", f.message);
    assert!(failure(&failed(Condition::Refusal, "")).declined);
}

#[test]
fn a_request_that_never_left_posd_fails_nothing_charged() {
    let mut p = posting();
    let c = p.handle(Event::NotSent { message: "connection refused".into(), identity: false }, T0);
    assert!(!c.iter().any(|c| matches!(c, Command::LaneUnavailable { .. })));
    let t = transition_of(&c);
    assert_eq!((t.to, code(&t)), (Status::Failed, "terminal_unavailable".to_string()));
    assert!(t.reason.unwrap().message.contains("connection refused"));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Failed)]);
    // The terminal is not the lane's: the lane is marked unavailable too.
    let mut p = posting();
    let why = "certificate names V400m-999";
    let c = p.handle(Event::NotSent { message: why.into(), identity: true }, T0);
    assert_eq!(c[0], Command::LaneUnavailable { message: why.into() });
    let t = transition_of(&c);
    assert_eq!((t.to, code(&t)), (Status::Failed, "terminal_unavailable".to_string()));
    assert!(t.reason.unwrap().message.contains("not the one configured for this lane"));
}

#[test]
fn an_answer_in_doubt_is_settled_by_transaction_status_as_booked() {
    let mut p = in_doubt();
    // A second in-doubt report or answer of the POST is not waited for now.
    assert!(p.handle(Event::InDoubt { message: "again".into() }, T0).is_empty());
    let c = p.handle(Event::Status(StatusAnswer::Repeated(approved())), T0);
    assert_eq!(
        steps(&c),
        vec![
            (Status::Collecting, Status::Confirming, result(approved(), None)),
            (Status::Confirming, Status::Captured, Data::None),
        ]
    );
    assert!(!c.iter().any(|c| matches!(c, Command::Post { .. })), "never posted again");
    let end = vec![Command::WakeRecorder, Command::AutoPrint, settled(Status::Captured)];
    assert_eq!(p.handle(Event::Committed, T0), end);
}

#[test]
fn a_repeated_failure_is_taken_as_a_direct_answer() {
    let mut p = in_doubt();
    let c = p.handle(Event::Status(StatusAnswer::Repeated(failed(Condition::Cancel, "x"))), T0);
    let t = transition_of(&c);
    assert_eq!((t.to, code(&t)), (Status::Canceled, "canceled".to_string()));
}

#[test]
fn not_found_means_not_booked() {
    let mut p = in_doubt();
    let c = p.handle(Event::Status(StatusAnswer::NotFound), T0);
    let t = transition_of(&c);
    assert_eq!((t.from, t.to, code(&t)), (Status::Collecting, Status::Failed, "terminal_not_booked".to_string()));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn in_progress_and_unanswered_queries_are_asked_again_after_a_growing_backoff_then_left_to_a_person() {
    let mut p = in_doubt();
    assert!(p.handle(Event::Status(StatusAnswer::InProgress), T0).is_empty());
    assert_eq!(p.poll_timeout(), Some(T0 + 500));
    assert!(p.handle_timeout(T0 + 499).is_empty(), "not before the backoff");
    assert_eq!(p.handle_timeout(T0 + 500), vec![ask()]);
    let now = T0 + 500;
    let unanswered = StatusAnswer::Unanswered { message: "connection refused".into() };
    assert!(p.handle(Event::Status(unanswered), now).is_empty());
    assert_eq!(p.poll_timeout(), Some(now + 1_000), "twice the backoff before the third query");
    assert_eq!(p.handle_timeout(now + 1_000), vec![ask()]);
    let c = p.handle(Event::Status(StatusAnswer::InProgress), now + 1_000);
    let why = "the payment terminal still has it in progress (asked 3 times); check its journal";
    assert_eq!(steps(&c), vec![(Status::Collecting, Status::Unknown, Data::None)]);
    assert_eq!(
        p.handle(Event::Committed, now + 1_000),
        vec![
            Command::OutcomeUnknown { message: why.into() },
            Command::FreeLane,
            Command::Publish {
                stage: Stage::Authorizing,
                message: format!("Outcome unknown: {why}. Do not take this payment again before checking."),
            },
            Command::EndStream,
            Command::AutoPrint,
            settled(Status::Unknown),
        ]
    );
}

#[test]
fn the_registers_cancel_aborts_the_post_once_and_an_aborted_post_is_canceled_by_the_register() {
    let mut p = posting();
    assert_eq!(p.handle(Event::RegisterCancel, T0), vec![Command::Abort { service_id: SID.into() }]);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty(), "once");
    let t = transition_of(&p.handle(Event::Answered(failed(Condition::Aborted, "MerchantAbort")), T0));
    assert_eq!((t.to, t.cause.as_str()), (Status::Canceled, "canceled by the register"));
    // While the terminal is asked, the cancel still reaches it, once.
    let mut p = in_doubt();
    assert_eq!(p.handle(Event::RegisterCancel, T0), vec![Command::Abort { service_id: SID.into() }]);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty());
}

#[test]
fn a_cancel_before_the_post_sends_nothing() {
    // Before the ServiceID is read: canceled from CREATED.
    let mut p = NexoPayment::new(payment(Status::Created), settings());
    p.start(T0);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty());
    let c = p.handle(Event::ServiceId(SID.into()), T0);
    assert_eq!(steps(&c), vec![(Status::Created, Status::Canceled, Data::None)]);
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Canceled)]);
    // While the start is committed: canceled from COLLECTING, no POST.
    let mut p = NexoPayment::new(payment(Status::Created), settings());
    p.start(T0);
    p.handle(Event::ServiceId(SID.into()), T0);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty());
    let c = p.handle(Event::Committed, T0);
    assert_eq!(steps(&c), vec![(Status::Collecting, Status::Canceled, Data::None)]);
    assert!(!c.iter().any(|c| matches!(c, Command::Post { .. } | Command::Abort { .. })));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Canceled)]);
}

#[test]
fn an_approval_after_the_registers_cancel_is_honoured_then_reversed() {
    let mut p = posting();
    p.handle(Event::RegisterCancel, T0);
    assert_eq!(p.handle(Event::Answered(approved()), T0), vec![Command::NextServiceId], "the reversal's ServiceID");
    let c = p.handle(Event::ServiceId(REV.into()), T0);
    assert_eq!(
        steps(&c),
        vec![
            (Status::Collecting, Status::Confirming, result(approved(), Some(REV))),
            (Status::Confirming, Status::Captured, Data::None),
        ]
    );
    let c = p.handle(Event::Committed, T0);
    assert_eq!(c[0], Command::WakeRecorder);
    assert_eq!(c[1], Command::Log(Log::Reversing { why: "approved after the register canceled".into() }));
    assert!(matches!(&c[2], Command::Publish { message, .. } if message.contains("after the register canceled")));
    assert_eq!(c[3], Command::Reverse { service_id: REV.into(), original: poi(), amount_minor: 2_000 });
    assert_eq!(&c[4..], &[Command::AutoPrint, settled(Status::Captured)]);
}

#[test]
fn a_partial_approval_is_committed_declined_and_reversed_exactly_once() {
    for answer in [partial(1_500), Answer { authorized_minor: Some(1_500), ..approved() }] {
        let mut p = posting();
        assert_eq!(p.handle(Event::Answered(answer.clone()), T0), vec![Command::NextServiceId]);
        let c = p.handle(Event::ServiceId(REV.into()), T0);
        assert_eq!(steps(&c), vec![(Status::Collecting, Status::Declined, result(answer, Some(REV)))]);
        let t = transition_of(&c);
        assert_eq!(code(&t), "partial_approval_not_allowed");
        assert!(t.reason.unwrap().message.contains("1500 of 2000"));
        let c = p.handle(Event::Committed, T0);
        let reversal = Command::Reverse { service_id: REV.into(), original: poi(), amount_minor: 1_500 };
        assert_eq!(c.iter().filter(|c| **c == reversal).count(), 1, "{c:?}");
        assert!(!c.contains(&Command::WakeRecorder), "a declined payment is not recorded as booked");
        assert_eq!(c.last(), Some(&settled(Status::Declined)));
        assert!(p.handle(Event::Committed, T0).is_empty());
    }
}

#[test]
fn a_partial_approval_whose_reversal_id_cannot_be_read_is_left_for_the_restart() {
    let mut p = posting();
    p.handle(Event::Answered(partial(1_500)), T0);
    let c = p.handle(Event::StoreFailed { error: "disk I/O error".into(), stored: Some(Status::Collecting) }, T0);
    assert!(!c.iter().any(|c| matches!(c, Command::Reverse { .. } | Command::Persist { .. })), "{c:?}");
    assert!(matches!(c.last(), Some(Command::Done(Outcome::Unrecorded { may_be_at_gateway: true, .. }))));
}

#[test]
fn an_approval_of_more_than_asked_is_declined_and_reversed() {
    let mut p = posting();
    let more = Answer { authorized_minor: Some(2_500), ..approved() };
    p.handle(Event::Answered(more), T0);
    let t = transition_of(&p.handle(Event::ServiceId(REV.into()), T0));
    assert_eq!((t.to, code(&t)), (Status::Declined, "terminal_result_refused".to_string()));
    let c = p.handle(Event::Committed, T0);
    assert!(c.contains(&Command::Reverse { service_id: REV.into(), original: poi(), amount_minor: 2_500 }));
}

#[test]
fn a_booking_to_reverse_without_a_poi_transaction_is_left_to_a_person() {
    let mut p = posting();
    let answer = Answer { poi_transaction: None, ..partial(1_500) };
    let c = p.handle(Event::Answered(answer.clone()), T0);
    assert_eq!(steps(&c), vec![(Status::Collecting, Status::Declined, result(answer, None))]);
    let c = p.handle(Event::Committed, T0);
    assert!(matches!(&c[0], Command::OutcomeUnknown { message } if message.contains("cannot reverse it")));
    assert!(!c.iter().any(|c| matches!(c, Command::Reverse { .. })));
    assert_eq!(c.last(), Some(&settled(Status::Declined)));
}

#[test]
fn the_start_up_decision_settles_every_payment_in_flight_by_transaction_status() {
    let never = || -> Result<bool, TransitionError> { panic!("read only for a payment left UNKNOWN") };
    let Recover::Persist(step) = recover(Status::Created, never).unwrap() else { panic!("CREATED is interrupted") };
    assert_eq!((step.transition.to, step.data), (Status::Failed, Data::None));
    assert_eq!(step.transition, pos_engine::next(Status::Created, &Input::Interrupted).unwrap());
    for s in [Status::Collecting, Status::Confirming] {
        assert_eq!(recover(s, never).unwrap(), Recover::Settle);
    }
    assert_eq!(recover(Status::Unknown, || Ok::<_, TransitionError>(false)).unwrap(), Recover::Settle);
    assert_eq!(recover(Status::Unknown, || Ok::<_, TransitionError>(true)).unwrap(), Recover::Nothing);
    for s in [Status::Captured, Status::Declined, Status::Failed, Status::Canceled, Status::Voided] {
        assert_eq!(recover(s, never).unwrap(), Recover::Nothing);
    }
}

#[test]
fn recovery_asks_by_the_stored_service_id_and_never_posts() {
    let mut p = NexoPayment::settling(payment(Status::Collecting), settings(), SID.into());
    let c = p.start(T0);
    let restarted = "posd restarted while the payment terminal had the payment";
    assert_eq!(c[0], Command::Log(Log::InDoubt { message: restarted.into() }));
    assert_eq!(c.last(), Some(&ask()));
    let c = p.handle(Event::Status(StatusAnswer::Repeated(approved())), T0);
    assert_eq!(transition_of(&c).to, Status::Captured);
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::WakeRecorder, settled(Status::Captured)], "no print");
    // A settled payment is not for the machine.
    let mut p = NexoPayment::settling(payment(Status::Captured), settings(), SID.into());
    assert!(matches!(p.start(T0).last(), Some(Command::Done(Outcome::Unrecorded { .. }))));
}

#[test]
fn an_unknown_payment_asked_again_settles_as_booked_or_not_booked() {
    let unknown = || {
        let mut p = NexoPayment::settling(payment(Status::Unknown), settings(), SID.into());
        p.start(T0);
        p
    };
    let mut p = unknown();
    let c = p.handle(Event::Status(StatusAnswer::Repeated(approved())), T0);
    assert_eq!(steps(&c), vec![(Status::Unknown, Status::Captured, result(approved(), None))]);
    let mut p = unknown();
    let t = transition_of(&p.handle(Event::Status(StatusAnswer::NotFound), T0));
    assert_eq!((t.to, code(&t)), (Status::Failed, "terminal_not_booked".to_string()));
    let mut p = unknown();
    let t = transition_of(&p.handle(Event::Status(StatusAnswer::Repeated(failed(Condition::Refusal, "x"))), T0));
    assert_eq!((t.to, code(&t)), (Status::Failed, "terminal_not_booked".to_string()));
    assert!(t.reason.unwrap().message.contains("Refusal"));
    // A partial approval learned only now: captured, then voided by its reversal.
    let mut p = unknown();
    assert_eq!(p.handle(Event::Status(StatusAnswer::Repeated(partial(1_500))), T0), vec![Command::NextServiceId]);
    let c = p.handle(Event::ServiceId(REV.into()), T0);
    assert_eq!(steps(&c), vec![(Status::Unknown, Status::Captured, result(partial(1_500), Some(REV)))]);
    let c = p.handle(Event::Committed, T0);
    assert!(c.contains(&Command::Reverse { service_id: REV.into(), original: poi(), amount_minor: 1_500 }));
    // Still no answer: left as it is, nothing committed again.
    let mut p = NexoPayment::settling(payment(Status::Unknown), settings(), SID.into());
    p.start(T0);
    let mut now = T0;
    for _ in 0..2 {
        assert!(p.handle(Event::Status(StatusAnswer::InProgress), now).is_empty());
        now = p.poll_timeout().unwrap();
        assert_eq!(p.handle_timeout(now), vec![ask()]);
    }
    let c = p.handle(Event::Status(StatusAnswer::InProgress), now);
    assert!(!c.iter().any(|c| matches!(c, Command::Persist { .. })), "{c:?}");
    assert!(matches!(c[0], Command::OutcomeUnknown { .. }));
    assert_eq!(c.last(), Some(&settled(Status::Unknown)));
}

#[test]
fn querying_gives_at_least_one_attempt_and_waits_longer_each_time() {
    let backoff = Duration::from_secs(2);
    let mut q = Querying::new(0);
    assert!(matches!(q.answer(StatusAnswer::InProgress, backoff), Queried::Exhausted(_)));
    let mut q = Querying::new(3);
    assert_eq!(q.answer(StatusAnswer::InProgress, backoff), Queried::Again { wait: backoff });
    let unanswered = StatusAnswer::Unanswered { message: "timeout".into() };
    assert_eq!(q.answer(unanswered.clone(), backoff), Queried::Again { wait: backoff * 2 });
    let Queried::Exhausted(why) = q.answer(unanswered, backoff) else { panic!("three attempts") };
    assert!(why.contains("could not be asked: timeout"), "{why}");
    let mut q = Querying::new(3);
    assert_eq!(q.answer(StatusAnswer::NotFound, backoff), Queried::NotFound);
    assert_eq!(q.answer(StatusAnswer::Repeated(approved()), backoff), Queried::Answered(approved()));
}

#[test]
fn a_void_is_a_whole_reversal_of_the_poi_transaction() {
    assert_eq!(void(Some(&poi()), 0), Ok(Operation::Reversal { original: poi(), reversed_minor: None }));
    assert_eq!(void(None, 0), Err(AfterSaleError::NoPoiTransaction));
    assert_eq!(void(Some(&poi()), 500), Err(AfterSaleError::AlreadyRefunded { refunded_minor: 500 }));
}

#[test]
fn a_refund_is_a_reversal_whole_or_in_part_or_an_unreferenced_refund() {
    let whole = Operation::Reversal { original: poi(), reversed_minor: None };
    assert_eq!(refund(Some(&poi()), 2_000, 2_000, 0), Ok(whole));
    let part = Operation::Reversal { original: poi(), reversed_minor: Some(500) };
    assert_eq!(refund(Some(&poi()), 500, 2_000, 0), Ok(part));
    // The rest after an earlier refund is a part, named.
    let rest = Operation::Reversal { original: poi(), reversed_minor: Some(1_500) };
    assert_eq!(refund(Some(&poi()), 1_500, 2_000, 500), Ok(rest));
    assert_eq!(
        refund(Some(&poi()), 1_501, 2_000, 500),
        Err(AfterSaleError::ExceedsCapture { amount_minor: 1_501, left_minor: 1_500 })
    );
    assert_eq!(refund(Some(&poi()), 0, 2_000, 0), Err(AfterSaleError::NothingToRefund));
    assert_eq!(refund(None, 700, 2_000, 0), Ok(Operation::Refund { amount_minor: 700 }));
    assert_eq!(Operation::Refund { amount_minor: 1 }.category(), Category::Payment);
    assert_eq!(Operation::Reversal { original: poi(), reversed_minor: None }.category(), Category::Reversal);
}

fn reversal() -> Operation {
    Operation::Reversal { original: poi(), reversed_minor: Some(500) }
}

fn send() -> AfterSaleCommand {
    AfterSaleCommand::Send { service_id: REV.into(), sale_transaction_id: "refund-key-1".into(), operation: reversal() }
}

fn ask_reversal() -> AfterSaleCommand {
    AfterSaleCommand::AskStatus { service_id: REV.into(), category: Category::Reversal }
}

/// A refund's reversal up to its request: its ServiceID committed first.
fn sending() -> AfterSale {
    let mut a = AfterSale::new(reversal(), "refund-key-1".into(), settings());
    assert_eq!(a.start(T0), vec![AfterSaleCommand::NextServiceId]);
    let c = a.handle(AfterSaleEvent::ServiceId(REV.into()), T0);
    let started = Record::Started { service_id: REV.into() };
    assert_eq!(c, vec![AfterSaleCommand::Persist { record: started, durability: Durability::Synced }]);
    assert_eq!(a.handle(AfterSaleEvent::Committed, T0), vec![send()]);
    a
}

#[test]
fn an_after_sale_operation_commits_its_service_id_then_its_answer_before_it_ends() {
    let mut a = sending();
    let booked = Answer { authorized_minor: Some(500), ..approved() };
    let c = a.handle(AfterSaleEvent::Answered(booked.clone()), T0);
    let record = Record::Booked(booked.clone());
    assert_eq!(c, vec![AfterSaleCommand::Persist { record, durability: Durability::Synced }]);
    assert_eq!(a.handle(AfterSaleEvent::Committed, T0), vec![AfterSaleCommand::Done(AfterSaleOutcome::Booked(booked))]);
    assert!(a.is_done());
    // A refusal is committed as not booked, with the register's code.
    let mut a = sending();
    let c = a.handle(AfterSaleEvent::Answered(failed(Condition::Refusal, "x")), T0);
    assert_eq!(not_booked(&c[0]), "generic_decline");
    let c = a.handle(AfterSaleEvent::Committed, T0);
    let AfterSaleCommand::Done(AfterSaleOutcome::NotBooked { code, .. }) = &c[0] else { panic!("{c:?}") };
    assert_eq!(code, "generic_decline");
}

#[test]
fn an_after_sale_operation_in_doubt_is_asked_by_its_own_service_id_and_never_sent_again() {
    let mut a = sending();
    let c = a.handle(AfterSaleEvent::InDoubt { message: "connection reset".into() }, T0);
    assert_eq!(c, vec![AfterSaleCommand::Log(Log::InDoubt { message: "connection reset".into() }), ask_reversal()]);
    let c = a.handle(AfterSaleEvent::Status(StatusAnswer::NotFound), T0);
    assert_eq!(not_booked(&c[0]), "terminal_not_booked");
    // Never settled: left pending, nothing committed, nothing sent again.
    let mut a = sending();
    a.handle(AfterSaleEvent::InDoubt { message: "m".into() }, T0);
    let mut now = T0;
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend(a.handle(AfterSaleEvent::Status(StatusAnswer::InProgress), now));
        now = a.poll_timeout().expect("a backoff");
        all.extend(a.handle_timeout(now));
    }
    let c = a.handle(AfterSaleEvent::Status(StatusAnswer::InProgress), now);
    assert!(matches!(&c[..], [AfterSaleCommand::Done(AfterSaleOutcome::InDoubt { .. })]), "{c:?}");
    all.extend(c);
    assert!(!all.iter().any(|c| matches!(c, AfterSaleCommand::Send { .. } | AfterSaleCommand::Persist { .. })));
    assert_eq!(all.iter().filter(|c| **c == ask_reversal()).count(), 2);
}

#[test]
fn an_after_sale_operation_found_pending_is_asked_and_an_owed_one_is_sent_at_once() {
    let mut a = AfterSale::settling(reversal(), "refund-key-1".into(), settings(), REV.into());
    let c = a.start(T0);
    assert_eq!(c.last(), Some(&ask_reversal()));
    assert!(!c.iter().any(|c| matches!(c, AfterSaleCommand::Send { .. } | AfterSaleCommand::NextServiceId)));
    let c = a.handle(AfterSaleEvent::Status(StatusAnswer::Repeated(approved())), T0);
    assert!(matches!(&c[0], AfterSaleCommand::Persist { record: Record::Booked(_), .. }));
    let mut a = AfterSale::committed(reversal(), "refund-key-1".into(), settings(), REV.into());
    assert_eq!(a.start(T0), vec![send()]);
}

#[test]
fn an_after_sale_operation_that_never_left_posd_is_not_booked_and_a_failed_commit_says_if_it_was_sent() {
    let mut a = sending();
    let c = a.handle(AfterSaleEvent::NotSent { message: "wrong POIID".into(), identity: true }, T0);
    assert_eq!(c[0], AfterSaleCommand::LaneUnavailable { message: "wrong POIID".into() });
    assert_eq!(not_booked(&c[1]), "terminal_unavailable");
    let c = a.handle(AfterSaleEvent::StoreFailed { error: "disk".into() }, T0);
    assert_eq!(c, vec![AfterSaleCommand::Done(AfterSaleOutcome::Unrecorded { error: "disk".into(), sent: false })]);
    // The start cannot be committed: nothing was sent.
    let mut a = AfterSale::new(Operation::Refund { amount_minor: 700 }, "refund-key-2".into(), settings());
    a.start(T0);
    a.handle(AfterSaleEvent::ServiceId(REV.into()), T0);
    let c = a.handle(AfterSaleEvent::StoreFailed { error: "disk".into() }, T0);
    assert_eq!(c, vec![AfterSaleCommand::Done(AfterSaleOutcome::Unrecorded { error: "disk".into(), sent: false })]);
    // The answer cannot be committed: it was sent.
    let mut a = sending();
    a.handle(AfterSaleEvent::Answered(approved()), T0);
    let c = a.handle(AfterSaleEvent::StoreFailed { error: "disk".into() }, T0);
    assert_eq!(c, vec![AfterSaleCommand::Done(AfterSaleOutcome::Unrecorded { error: "disk".into(), sent: true })]);
}

/// What a random script may feed.
fn scripted(i: usize) -> Event {
    match i % 20 {
        0 | 1 => Event::Committed,
        2 => Event::StoreFailed { error: "e".into(), stored: None },
        3 => Event::ServiceId("0000000050".into()),
        4 => Event::Answered(approved()),
        5 => Event::Answered(partial(1_500)),
        6 => Event::Answered(failed(Condition::Refusal, "x")),
        7 => Event::Answered(failed(Condition::Aborted, "x")),
        8 => Event::NotSent { message: "m".into(), identity: false },
        9 => Event::NotSent { message: "m".into(), identity: true },
        10 => Event::InDoubt { message: "m".into() },
        11 => Event::Status(StatusAnswer::InProgress),
        12 => Event::Status(StatusAnswer::NotFound),
        13 => Event::Status(StatusAnswer::Repeated(approved())),
        14 => Event::Status(StatusAnswer::Repeated(partial(1_500))),
        15 => Event::Status(StatusAnswer::Unanswered { message: "m".into() }),
        16 => Event::RegisterCancel,
        17 => Event::Answered(Answer { authorized_minor: Some(1_000), ..approved() }),
        18 => Event::Status(StatusAnswer::Repeated(failed(Condition::Cancel, "x"))),
        _ => Event::Answered(failed(Condition::Busy, "x")),
    }
}

/// A commit the machine asked for and the script has not answered yet.
struct Pending {
    to: Status,
    start: Option<String>,
    /// It stores the terminal's answer.
    result: bool,
    /// It stores a partial approval (with a POI transaction: reversible).
    partial: bool,
    /// It stores a reversal posd owes.
    owes_reversal: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever happens in whatever order: the POST goes out only after the
    /// commit of its start and ServiceID, and at most once; nothing is
    /// published, recorded, reversed or ended as settled between the
    /// terminal's answer and its commit; a committed partial approval gets
    /// exactly one reversal (and nothing gets two); the register's cancel
    /// gets at most one abort; every commit is synced and one is out at a
    /// time; the status moves only on a commit; exactly one Done ends the
    /// run, with the committed status, and nothing follows it.
    #[test]
    fn the_money_rules_hold_for_any_course_of_events(
        settling in any::<bool>(),
        from in 0usize..2,
        script in prop::collection::vec((0usize..40, 0u64..2_000), 0..80),
    ) {
        let mut p = if settling {
            let from = [Status::Collecting, Status::Unknown][from];
            NexoPayment::settling(payment(from), settings(), SID.into())
        } else {
            NexoPayment::new(payment(Status::Created), settings())
        };
        let mut now = T0;
        let mut pending: Option<Pending> = None;
        let mut committed_sid = settling.then(|| SID.to_string());
        // An answer was taken and is not committed yet.
        let mut answer_uncommitted = false;
        let (mut dones, mut posts, mut aborts, mut reverses) = (0, 0, 0, 0);
        let (mut cancel_seen, mut partial_committed, mut reversal_owed) = (false, false, false);
        let mut commands = p.start(now);
        let mut script = script.into_iter();
        // After the script, the runtime keeps answering until the run ends.
        let drain = [3usize, 0, 4, 15];
        let mut drained = 0;
        loop {
            for c in &commands {
                prop_assert_eq!(dones, 0, "nothing after Done: {:?}", c);
                match c {
                    Command::Persist { steps, durability } => {
                        prop_assert_eq!(*durability, Durability::Synced);
                        prop_assert!(pending.is_none(), "one commit at a time");
                        prop_assert_eq!(steps[0].transition.from, p.status());
                        let mut next = Pending {
                            to: steps.last().unwrap().transition.to,
                            start: None,
                            result: false,
                            partial: false,
                            owes_reversal: false,
                        };
                        for s in steps {
                            match &s.data {
                                Data::Start { service_id } => next.start = Some(service_id.clone()),
                                Data::Result { answer, reversal } => {
                                    next.result = true;
                                    next.partial = answer.poi_transaction.is_some()
                                        && (answer.result == TerminalResult::Partial
                                            || answer.authorized_minor.is_some_and(|a| a < 2_000));
                                    next.owes_reversal = reversal.is_some();
                                    prop_assert!(!next.partial || next.owes_reversal, "a partial approval is reversed");
                                }
                                Data::None => {}
                            }
                        }
                        if next.result {
                            answer_uncommitted = true;
                        }
                        pending = Some(next);
                    }
                    Command::Post { service_id, .. } => {
                        posts += 1;
                        prop_assert_eq!(posts, 1, "never a second POST");
                        let committed = committed_sid.as_ref();
                        prop_assert_eq!(Some(service_id), committed, "POST only under the committed ServiceID");
                    }
                    Command::AskStatus { service_id } => {
                        let committed = committed_sid.as_ref();
                        prop_assert_eq!(Some(service_id), committed, "asked only by the committed ServiceID");
                    }
                    Command::Abort { .. } => {
                        aborts += 1;
                        prop_assert!(aborts == 1 && cancel_seen, "one abort, for the register's cancel");
                    }
                    Command::Reverse { .. } => {
                        reverses += 1;
                        prop_assert!(reverses == 1 && reversal_owed, "one reversal, once it is committed as owed");
                    }
                    Command::Publish { .. } | Command::WakeRecorder | Command::AutoPrint => {
                        prop_assert!(!answer_uncommitted, "{:?} before the answer's commit", c);
                    }
                    Command::Done(outcome) => {
                        dones += 1;
                        if let Outcome::Settled(s) = outcome {
                            prop_assert!(!answer_uncommitted, "settled before the answer's commit");
                            prop_assert_eq!(*s, p.status());
                        }
                    }
                    _ => {}
                }
            }
            if p.is_done() {
                prop_assert_eq!(dones, 1);
                prop_assert!(reverses <= 1);
                if partial_committed {
                    prop_assert_eq!(reverses, 1, "a committed partial approval is reversed");
                }
                break;
            }
            let event = if let Some((i, dt)) = script.next() {
                now += dt;
                if i >= 20 {
                    now = now.max(p.poll_timeout().unwrap_or(now));
                    let before = p.status();
                    commands = p.handle_timeout(now);
                    prop_assert_eq!(p.status(), before);
                    continue;
                }
                scripted(i)
            } else {
                drained += 1;
                prop_assert!(drained < 400, "the run ends");
                if let Some(deadline) = p.poll_timeout() {
                    now = deadline;
                    commands = p.handle_timeout(now);
                    continue;
                }
                scripted(drain[drained % drain.len()])
            };
            let before = p.status();
            if matches!(event, Event::RegisterCancel) {
                cancel_seen = true;
            }
            let mut committed: Option<Status> = None;
            match event {
                Event::Committed => {
                    if let Some(done) = pending.take() {
                        committed = Some(done.to);
                        if done.start.is_some() {
                            committed_sid = done.start;
                        }
                        if done.result {
                            answer_uncommitted = false;
                            partial_committed |= done.partial;
                            reversal_owed |= done.owes_reversal;
                        }
                    }
                }
                Event::StoreFailed { .. } => {
                    pending = None;
                    answer_uncommitted = false;
                }
                _ => {}
            }
            commands = p.handle(event, now);
            match committed {
                Some(to) => prop_assert_eq!(p.status(), to),
                None => prop_assert_eq!(p.status(), before, "the status moves only on a commit"),
            }
        }
    }
}
