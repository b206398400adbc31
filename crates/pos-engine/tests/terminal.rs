//! The payment-terminal machine (`pos_engine::terminal`), transition by
//! transition and at each failure point. Each test plays the runtime by hand
//! (commits, the terminal, its Repeat Receipt, time) and checks the
//! commands; a property test plays random scripts against the rule that a
//! result is confirmed (80 00) only once it is stored.

use std::time::Duration;

use pos_engine::terminal::{
    Asked, Asking, Command, Data, Durability, Ending, Event, Log, Millis, Outcome, Payment, Recover, Repeat, Settings,
    Stage, StatusInfo, Stored, TerminalPayment, Verdict, recover,
};
use pos_engine::{Input, Status, TransitionError};
use proptest::prelude::*;

const T0: Millis = 1_000_000;
const BACKOFF: Duration = Duration::from_millis(500);

fn settings() -> Settings {
    Settings { status_attempts: 1, status_backoff: BACKOFF }
}

fn payment(status: Status) -> Payment {
    Payment { id: "pay_1".into(), status, amount_minor: 2_000 }
}

fn approved(receipt: u16) -> StatusInfo {
    StatusInfo {
        result_code: Some(0),
        amount_minor: Some(2_000),
        receipt_no: Some(receipt),
        offline: false,
        result_text: "approved".into(),
    }
}

fn declined() -> StatusInfo {
    StatusInfo {
        result_code: Some(0x05),
        amount_minor: Some(2_000),
        receipt_no: Some(9),
        offline: false,
        result_text: "declined by the card issuer".into(),
    }
}

fn lost(started: bool) -> Ending {
    Ending::Lost { message: "line to the terminal failed".into(), started }
}

fn completed() -> Ending {
    Ending::Completed { terminal_id: "52500001".into() }
}

fn settled(status: Status) -> Command {
    Command::Done(Outcome::Settled(status))
}

/// The one step of a single Persist command: its input's target and data.
fn persisted(commands: &[Command]) -> (Status, Status, Data) {
    let steps: Vec<_> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Persist { steps, durability } => {
                assert_eq!(*durability, Durability::Synced, "every commit on a terminal's lane is synced");
                Some(steps.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 1, "one Persist: {commands:?}");
    assert_eq!(steps[0].len(), 1, "one step: {commands:?}");
    let s = &steps[0][0];
    (s.transition.from, s.transition.to, s.data.clone())
}

fn transition_of(commands: &[Command]) -> pos_engine::Transition {
    commands
        .iter()
        .find_map(|c| match c {
            Command::Persist { steps, .. } => Some(steps[0].transition.clone()),
            _ => None,
        })
        .expect("a Persist")
}

/// A register's payment up to the command running on the terminal (last
/// receipt 7 before it).
fn running() -> TerminalPayment {
    let mut p = TerminalPayment::new(payment(Status::Created), settings());
    assert_eq!(p.start(T0), vec![Command::ReadLastReceipt]);
    let c = p.handle(Event::LastReceipt(Some(7)), T0);
    assert_eq!(persisted(&c), (Status::Created, Status::Collecting, Data::Start { receipt_before: Some(7) }));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::RunPayment { amount_minor: 2_000 }]);
    assert_eq!(p.status(), Status::Collecting);
    p
}

/// A running payment whose approval (receipt 8) is stored and confirmed.
fn confirming() -> TerminalPayment {
    let mut p = running();
    let c = p.handle(Event::Result(approved(8)), T0);
    assert_eq!(persisted(&c), (Status::Collecting, Status::Confirming, Data::Result));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::Confirm(true)]);
    p
}

/// Plays the in-doubt path from the command's end to the Repeat Receipt:
/// UNKNOWN committed, the register told, the stored receipts read.
fn asked_after_lost_line(p: &mut TerminalPayment, from: Status, stored: Option<Stored>) -> Command {
    let c = p.handle(Event::Ended(lost(true)), T0);
    assert!(c.contains(&Command::Log(Log::InDoubt { message: "line to the terminal failed".into() })), "{c:?}");
    assert_eq!(persisted(&c), (from, Status::Unknown, Data::None));
    let c = p.handle(Event::Committed, T0);
    let checking = Command::Publish {
        stage: Stage::Authorizing,
        message: "Checking with the payment terminal what it booked".into(),
    };
    assert_eq!(c, vec![checking, Command::ReadStored]);
    let c = p.handle(Event::Stored { result: stored, receipt_before: Some(7) }, T0);
    assert_eq!(c.len(), 1, "{c:?}");
    c[0].clone()
}

#[test]
fn an_approval_is_stored_before_80_00_and_captured_once_the_terminal_has_it() {
    let mut p = confirming();
    assert_eq!(p.handle(Event::Progress { stage: Stage::Authorizing, text: "Please wait".into() }, T0).len(), 1);
    let c = p.handle(Event::Confirmed, T0);
    let data = Data::Booked { with_result: false, last_receipt: Some(8), event: None };
    assert_eq!(persisted(&c), (Status::Confirming, Status::Captured, data));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::WakeRecorder], "the ledger's record is queued");
    assert_eq!(p.handle(Event::Ended(completed()), T0), vec![Command::AutoPrint, settled(Status::Captured)]);
    assert!(p.is_done());
    assert!(p.handle(Event::Committed, T0).is_empty(), "nothing follows the end");
}

#[test]
fn an_offline_approval_raises_its_event_with_the_capture() {
    let mut p = running();
    let offline = StatusInfo { offline: true, ..approved(8) };
    p.handle(Event::Result(offline), T0);
    p.handle(Event::Committed, T0);
    let c = p.handle(Event::Confirmed, T0);
    let Data::Booked { event: Some(event), .. } = persisted(&c).2 else { panic!("{c:?}") };
    assert!(event.contains("approved offline"), "{event}");
}

#[test]
fn a_result_that_cannot_be_stored_is_refused_and_the_payment_left_as_stored() {
    let mut p = running();
    p.handle(Event::Result(approved(8)), T0);
    let c = p.handle(Event::StoreFailed { error: "disk I/O error".into(), stored: Some(Status::Collecting) }, T0);
    assert_eq!(c[0], Command::Confirm(false), "84 66 before anything else: {c:?}");
    assert!(!c.contains(&Command::Confirm(true)));
    assert!(!c.contains(&Command::FreeLane), "the terminal may have booked it: the lane stays busy");
    let told = |m: &str| m.starts_with("Outcome unknown");
    assert!(matches!(&c[1], Command::Publish { stage: Stage::Authorizing, message } if told(message)), "{c:?}");
    assert_eq!(
        c.last(),
        Some(&Command::Done(Outcome::Unrecorded {
            stored: Some(Status::Collecting),
            may_be_at_gateway: true,
            error: "disk I/O error".into()
        }))
    );
}

#[test]
fn a_start_that_cannot_be_stored_frees_the_lane_nothing_was_charged() {
    let mut p = TerminalPayment::new(payment(Status::Created), settings());
    p.start(T0);
    let c = p.handle(Event::StoreFailed { error: "database is locked".into(), stored: Some(Status::Created) }, T0);
    assert_eq!(c[0], Command::FreeLane);
    let told = |m: &str| m.contains("Nothing was charged");
    assert!(matches!(&c[1], Command::Publish { stage: Stage::Failed, message } if told(message)), "{c:?}");
    assert!(matches!(c.last(), Some(Command::Done(Outcome::Unrecorded { may_be_at_gateway: false, .. }))));
    assert!(!c.iter().any(|c| matches!(c, Command::RunPayment { .. })));
}

#[test]
fn a_decline_is_stored_then_confirmed() {
    let mut p = running();
    let c = p.handle(Event::Result(declined()), T0);
    let t = transition_of(&c);
    assert_eq!((t.to, t.reason.as_ref().unwrap().code.as_str()), (Status::Declined, "zvt_05"));
    assert_eq!(t.reason.unwrap().message, "declined by the card issuer");
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::Confirm(true)]);
    assert!(p.handle(Event::Confirmed, T0).is_empty(), "nothing to confirm on a decline");
    assert_eq!(p.handle(Event::Ended(completed()), T0), vec![Command::AutoPrint, settled(Status::Declined)]);
}

#[test]
fn unacceptable_results_are_refused_and_the_payment_fails_after_learning_the_last_receipt() {
    for (info, why) in [
        (StatusInfo { result_code: None, ..approved(8) }, "no result code"),
        (StatusInfo { amount_minor: Some(1), ..approved(8) }, "approved Some(1) instead of 2000"),
    ] {
        let mut p = running();
        let c = p.handle(Event::Result(info), T0);
        assert!(matches!(&c[0], Command::Log(Log::RefusingResult { why: w }) if w.contains(why)), "{c:?}");
        assert_eq!(c[1], Command::Confirm(false));
        p.handle(Event::Refused, T0);
        // The terminal reverses under a receipt posd did not see: learn it first.
        let ask = p.handle(Event::Ended(completed()), T0);
        assert_eq!(ask, vec![Command::AskTerminal { amount_minor: 2_000, stored: None, before: Some(7) }]);
        let answer = Repeat::Judged(Verdict::Undetermined("x".into()));
        let c = p.handle(Event::Repeated { answer, last_receipt: Some(9) }, T0);
        assert_eq!(c[0], Command::NoteReceipt(9));
        let t = transition_of(&c);
        assert_eq!((t.to, t.reason.unwrap().code.as_str()), (Status::Failed, "terminal_result_refused"));
    }
}

#[test]
fn a_second_result_is_confirmed_only_if_it_is_the_same() {
    let mut p = confirming();
    assert_eq!(p.handle(Event::Result(approved(8)), T0), vec![Command::Confirm(true)], "a repeat: stored already");
    let c = p.handle(Event::Result(approved(9)), T0);
    assert!(matches!(&c[0], Command::Log(Log::RefusingResult { why }) if why.contains("second, different result")));
    assert_eq!(c[1], Command::Confirm(false));
}

#[test]
fn an_approval_not_confirmed_in_time_is_refused_and_fails() {
    let mut p = confirming();
    // The terminal's own bound ran out first: it heard 84 66.
    assert!(p.handle(Event::Refused, T0).is_empty());
    let c = p.handle(Event::Ended(completed()), T0);
    assert_eq!(c, vec![Command::AskTerminal { amount_minor: 2_000, stored: Some(8), before: Some(7) }]);
    let c = p.handle(Event::Repeated { answer: Repeat::Lost { message: "gone".into() }, last_receipt: None }, T0);
    assert!(matches!(&c[0], Command::Log(Log::ReceiptNumberUnknown { .. })), "{c:?}");
    let t = transition_of(&c);
    assert_eq!((t.from, t.to), (Status::Confirming, Status::Failed));
    assert_eq!(t.reason.unwrap().code, "terminal_result_refused");
}

#[test]
fn a_line_lost_before_the_terminal_took_the_command_fails_nothing_charged() {
    let mut p = running();
    let t = transition_of(&p.handle(Event::Ended(lost(false)), T0));
    assert_eq!((t.to, t.reason.unwrap().code.as_str()), (Status::Failed, "terminal_unavailable"));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn aborts_and_refusals_of_the_command_fail_or_cancel_it_with_their_codes() {
    let cases = [
        (Ending::Aborted { code: 0x6C, text: "canceled".into() }, Status::Canceled, "canceled"),
        (Ending::Aborted { code: 0x51, text: "init".into() }, Status::Failed, "terminal_not_initialised"),
        (Ending::Refused { code: 0xA0, text: "busy".into() }, Status::Failed, "terminal_busy"),
        (Ending::Refused { code: 0x9C, text: "busy".into() }, Status::Failed, "terminal_busy"),
        (Ending::Aborted { code: 0x64, text: "card not readable".into() }, Status::Failed, "terminal_64"),
    ];
    for (ending, to, code) in cases {
        let mut p = running();
        let t = transition_of(&p.handle(Event::Ended(ending), T0));
        assert_eq!((t.to, t.reason.unwrap().code.as_str()), (to, code));
    }
    let mut p = running();
    let t = transition_of(&p.handle(Event::Ended(Ending::Aborted { code: 0x6C, text: "x".into() }), T0));
    assert_eq!(t.cause, "canceled by the customer at the payment terminal");
}

#[test]
fn the_registers_cancel_aborts_the_command_once_and_only_while_collecting() {
    let mut p = running();
    assert_eq!(p.handle(Event::RegisterCancel, T0), vec![Command::Abort]);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty(), "once");
    let t = transition_of(&p.handle(Event::Ended(Ending::Aborted { code: 0x6C, text: "x".into() }), T0));
    assert_eq!((t.to, t.cause.as_str()), (Status::Canceled, "canceled by the register"));
    // After a result the terminal has it: a cancel is too late.
    let mut p = confirming();
    assert!(p.handle(Event::RegisterCancel, T0).is_empty());
    // Before the command runs, nothing to abort.
    let mut p = TerminalPayment::new(payment(Status::Created), settings());
    p.start(T0);
    assert!(p.handle(Event::RegisterCancel, T0).is_empty());
}

#[test]
fn a_line_lost_after_start_is_settled_by_repeat_receipt_booked() {
    let mut p = running();
    let ask = asked_after_lost_line(&mut p, Status::Collecting, None);
    assert_eq!(ask, Command::AskTerminal { amount_minor: 2_000, stored: None, before: Some(7) });
    let answer = Repeat::Judged(Verdict::Booked(approved(8)));
    let c = p.handle(Event::Repeated { answer, last_receipt: Some(8) }, T0);
    assert_eq!(c[0], Command::NoteReceipt(8));
    assert!(matches!(c[1], Command::Log(Log::Asked { verdict: Verdict::Booked(_) })));
    let data = Data::Booked { with_result: true, last_receipt: Some(8), event: None };
    assert_eq!(persisted(&c), (Status::Unknown, Status::Captured, data));
    let end = vec![Command::WakeRecorder, Command::AutoPrint, settled(Status::Captured)];
    assert_eq!(p.handle(Event::Committed, T0), end);
}

#[test]
fn a_line_lost_after_start_is_settled_by_repeat_receipt_not_booked() {
    let mut p = running();
    asked_after_lost_line(&mut p, Status::Collecting, None);
    let answer = Repeat::Judged(Verdict::NotBooked("still receipt 7".into()));
    let c = p.handle(Event::Repeated { answer, last_receipt: Some(7) }, T0);
    let t = transition_of(&c);
    assert_eq!((t.to, t.reason.unwrap().code.as_str()), (Status::Failed, "terminal_not_booked"));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn a_result_then_a_lost_line_is_captured_when_the_terminal_shows_the_stored_receipt() {
    let mut p = confirming();
    let stored = Stored { receipt_no: Some(8), approved: true, offline: false };
    let ask = asked_after_lost_line(&mut p, Status::Confirming, Some(stored));
    assert_eq!(ask, Command::AskTerminal { amount_minor: 2_000, stored: Some(8), before: Some(7) });
    let answer = Repeat::Judged(Verdict::Booked(approved(8)));
    let c = p.handle(Event::Repeated { answer, last_receipt: Some(8) }, T0);
    // From UNKNOWN the repeated result is stored too (the same as the one stored).
    let data = Data::Booked { with_result: true, last_receipt: Some(8), event: None };
    assert_eq!(persisted(&c), (Status::Unknown, Status::Captured, data));
}

#[test]
fn an_undetermined_answer_leaves_the_payment_unknown_for_a_person_and_frees_the_lane() {
    let mut p = running();
    asked_after_lost_line(&mut p, Status::Collecting, None);
    let answer = Repeat::Declined { code: 0x83, text: "not possible".into() };
    let c = p.handle(Event::Repeated { answer, last_receipt: None }, T0);
    let why = "the payment terminal cannot repeat its last receipt (83 not possible); check its journal";
    assert_eq!(
        c,
        vec![
            Command::Log(Log::Asked { verdict: Verdict::Undetermined(why.into()) }),
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
fn an_unreachable_terminal_is_asked_again_after_the_backoff_then_left_to_a_person() {
    let mut p = running();
    let ask = asked_after_lost_line(&mut p, Status::Collecting, None);
    let lost = || Event::Repeated { answer: Repeat::Lost { message: "not connected".into() }, last_receipt: None };
    let mut now = T0;
    // status_attempts 1: four attempts in all, the backoff apart.
    for _ in 0..3 {
        assert!(p.handle(lost(), now).is_empty());
        assert_eq!(p.poll_timeout(), Some(now + 500));
        assert!(p.handle_timeout(now + 499).is_empty(), "not before the backoff");
        now += 500;
        assert_eq!(p.handle_timeout(now), vec![ask.clone()]);
    }
    let c = p.handle(lost(), now);
    assert!(!c.iter().any(|c| matches!(c, Command::NoteReceipt(_))), "nothing learned");
    assert!(c.contains(&Command::OutcomeUnknown {
        message: "the payment terminal could not be asked: not connected".into()
    }));
    assert_eq!(c.last(), Some(&settled(Status::Unknown)));
}

#[test]
fn an_undetermined_answer_from_confirming_moves_to_unknown_before_leaving_it() {
    let mut p = TerminalPayment::settling(payment(Status::Confirming), settings());
    let c = p.start(T0);
    assert_eq!(c[1], Command::ReadStored);
    let stored = Stored { receipt_no: Some(8), approved: true, offline: true };
    p.handle(Event::Stored { result: Some(stored), receipt_before: Some(7) }, T0);
    let answer = Repeat::Judged(Verdict::Undetermined("x".into()));
    let c = p.handle(Event::Repeated { answer, last_receipt: Some(9) }, T0);
    assert_eq!(persisted(&c), (Status::Confirming, Status::Unknown, Data::None));
    let c = p.handle(Event::Committed, T0);
    assert_eq!(c[0], Command::OutcomeUnknown { message: "x".into() });
    assert_eq!(c.last(), Some(&settled(Status::Unknown)));
    assert!(!c.contains(&Command::AutoPrint), "recovery prints nothing");
}

#[test]
fn recovery_settles_a_stored_approval_from_what_is_stored() {
    let mut p = TerminalPayment::settling(payment(Status::Confirming), settings());
    p.start(T0);
    let stored = Stored { receipt_no: Some(8), approved: true, offline: true };
    let ask = p.handle(Event::Stored { result: Some(stored), receipt_before: Some(7) }, T0);
    assert_eq!(ask, vec![Command::AskTerminal { amount_minor: 2_000, stored: Some(8), before: Some(7) }]);
    let answer = Repeat::Judged(Verdict::Booked(approved(8)));
    let c = p.handle(Event::Repeated { answer, last_receipt: Some(8) }, T0);
    let Data::Booked { with_result: false, last_receipt: Some(8), event: Some(_) } = persisted(&c).2 else {
        panic!("booked from the stored result: {c:?}")
    };
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::WakeRecorder, settled(Status::Captured)]);
}

#[test]
fn recovery_marks_a_collecting_payment_lost_before_asking() {
    let mut p = TerminalPayment::settling(payment(Status::Collecting), settings());
    let c = p.start(T0);
    let t = transition_of(&c);
    assert_eq!((t.from, t.to), (Status::Collecting, Status::Unknown));
    assert!(t.cause.contains("posd restarted"), "{}", t.cause);
    assert_eq!(p.handle(Event::Committed, T0)[1], Command::ReadStored);
}

#[test]
fn the_start_up_decision_asks_only_about_what_the_terminal_may_have_booked() {
    let never = || -> Result<bool, TransitionError> { panic!("read only for a payment in doubt") };
    let Recover::Persist(step) = recover(Status::Created, never).unwrap() else { panic!() };
    assert_eq!((step.transition.to, step.data), (Status::Failed, Data::None));
    for s in [Status::Collecting, Status::Confirming, Status::Unknown] {
        assert_eq!(recover(s, || Ok::<_, TransitionError>(false)).unwrap(), Recover::Settle);
        // Left to a person before: asking again changes nothing.
        assert_eq!(recover(s, || Ok::<_, TransitionError>(true)).unwrap(), Recover::Nothing);
    }
    for s in [Status::Captured, Status::Declined, Status::Failed, Status::Canceled] {
        assert_eq!(recover(s, never).unwrap(), Recover::Nothing);
    }
}

#[test]
fn asking_gives_at_least_four_attempts_and_a_refusal_settles_at_once() {
    let lost = || Repeat::Lost { message: "m".into() };
    let mut a = Asking::new(0);
    for _ in 0..3 {
        assert_eq!(a.answer(lost()), Asked::Again);
    }
    assert!(matches!(a.answer(lost()), Asked::Unreachable(Verdict::Undetermined(_))));
    let mut a = Asking::new(2);
    assert!(matches!(a.answer(Repeat::Declined { code: 0x83, text: "t".into() }), Asked::Answered(_)));
}

#[test]
fn start_on_terminal_input_is_the_one_the_state_machine_knows() {
    // The machine's steps are the transition table's answers.
    let mut p = TerminalPayment::new(payment(Status::Created), settings());
    p.start(T0);
    let t = transition_of(&p.handle(Event::LastReceipt(None), T0));
    assert_eq!(t, pos_engine::next(Status::Created, &Input::StartOnTerminal).unwrap());
}

/// What a random script may feed.
fn scripted(i: usize) -> Event {
    match i % 20 {
        0 | 1 => Event::Committed,
        2 => Event::StoreFailed { error: "e".into(), stored: None },
        3 => Event::LastReceipt(Some(7)),
        4 => Event::Stored { result: None, receipt_before: Some(7) },
        5 => Event::Progress { stage: Stage::PinEntry, text: "PIN".into() },
        6 => Event::Result(approved(8)),
        7 => Event::Result(declined()),
        8 => Event::Result(StatusInfo { amount_minor: Some(1), ..approved(8) }),
        9 => Event::Confirmed,
        10 => Event::Refused,
        11 => Event::Ended(completed()),
        12 => Event::Ended(lost(true)),
        13 => Event::Ended(lost(false)),
        14 => Event::Ended(Ending::Aborted { code: 0x6C, text: "x".into() }),
        15 => Event::RegisterCancel,
        16 => Event::Repeated { answer: Repeat::Judged(Verdict::Booked(approved(8))), last_receipt: Some(8) },
        17 => Event::Repeated { answer: Repeat::Judged(Verdict::NotBooked("n".into())), last_receipt: Some(7) },
        18 => Event::Repeated { answer: Repeat::Lost { message: "m".into() }, last_receipt: None },
        _ => Event::Repeated { answer: Repeat::Declined { code: 0x83, text: "t".into() }, last_receipt: None },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever happens in whatever order: 80 00 is sent only for a result
    /// committed (CONFIRMING, DECLINED or, for a repeat, CAPTURED); every
    /// commit is synced and one is out at a time; the status moves only on
    /// a commit; the command is aborted at most once, while collecting;
    /// exactly one Done ends the run, with the committed status, and
    /// nothing follows it.
    #[test]
    fn no_80_00_before_the_result_is_stored_and_exactly_one_done(
        settling in any::<bool>(),
        from in 0usize..3,
        script in prop::collection::vec((0usize..40, 0u64..2_000), 0..80),
    ) {
        let mut p = if settling {
            let from = [Status::Collecting, Status::Confirming, Status::Unknown][from];
            TerminalPayment::settling(payment(from), settings())
        } else {
            TerminalPayment::new(payment(Status::Created), settings())
        };
        let mut now = T0;
        let mut pending: Option<Status> = None;
        let (mut dones, mut aborts) = (0, 0);
        let mut commands = p.start(now);
        let mut script = script.into_iter();
        // After the script, the runtime keeps answering until the run ends.
        let drain = [11usize, 18, 0, 3, 4, 12];
        let mut drained = 0;
        loop {
            for c in &commands {
                prop_assert_eq!(dones, 0, "nothing after Done: {:?}", c);
                match c {
                    Command::Persist { steps, durability } => {
                        prop_assert_eq!(*durability, Durability::Synced);
                        prop_assert!(pending.is_none(), "one commit at a time");
                        prop_assert_eq!(steps[0].transition.from, p.status());
                        pending = Some(steps.last().unwrap().transition.to);
                    }
                    Command::Confirm(true) => prop_assert!(
                        matches!(p.status(), Status::Confirming | Status::Declined | Status::Captured),
                        "80 00 with the payment {}", p.status()
                    ),
                    Command::Abort => {
                        aborts += 1;
                        prop_assert!(aborts == 1 && p.status() == Status::Collecting);
                    }
                    Command::Done(outcome) => {
                        dones += 1;
                        if let Outcome::Settled(s) = outcome {
                            prop_assert_eq!(*s, p.status());
                        }
                    }
                    _ => {}
                }
            }
            if p.is_done() {
                prop_assert_eq!(dones, 1);
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
            let answer = matches!(event, Event::Committed | Event::StoreFailed { .. });
            let ok = matches!(event, Event::Committed);
            let committed = if answer { pending.take().filter(|_| ok) } else { None };
            commands = p.handle(event, now);
            match committed {
                Some(to) => prop_assert_eq!(p.status(), to),
                None => prop_assert_eq!(p.status(), before, "the status moves only on a commit"),
            }
        }
    }
}
