//! The card-reader payment machine (`pos_engine::payment`), transition by
//! transition and at each failure point. Each test plays the runtime by hand
//! (commits, reader, gateway, offline queue, time) and checks the commands;
//! a property test plays random scripts against the persist-before-act rule.

use std::time::Duration;

use pos_engine::Status;
use pos_engine::offline::{Entry, OfflinePolicy, QueueState};
use pos_engine::payment::{
    Answer, Card, Command, Data, Durability, Event, Millis, Outcome, Payment, ReaderFailure, ReaderPayment, Recover,
    Settings, Stage, Step, recover,
};
use proptest::prelude::*;

const T0: Millis = 1_000_000;
const KEY: &str = "GWKEY1K";
const NOT_SENT: &str = "connection refused";

fn settings() -> Settings {
    Settings {
        collect_timeout: Duration::from_secs(60),
        status_attempts: 3,
        status_backoff: Duration::from_millis(500),
        offline: OfflinePolicy::defaults_for("EUR"),
    }
}

fn payment(status: Status) -> Payment {
    Payment {
        id: "pay_1".into(),
        status,
        amount_minor: 2_000,
        currency: "EUR".into(),
        manual_capture: false,
        gateway_key: KEY.into(),
    }
}

fn card() -> Card {
    Card {
        has_blob: true,
        brand: "visa".into(),
        fingerprint: "fp-1".into(),
        entry: Entry::Chip,
        fallback: false,
        cashback_minor: 0,
    }
}

/// The queue of a lane that reached the gateway a minute ago and holds nothing.
fn queue() -> QueueState {
    QueueState { since_online: Some(Duration::from_secs(60)), ..Default::default() }
}

fn approved(captured: bool) -> Answer {
    Answer::Approved { captured, auth_code: "A1B2C3".into(), gateway_reference: "gw-9".into() }
}

fn declined() -> Answer {
    Answer::Declined { code: "insufficient_funds".into(), message: "Insufficient funds".into() }
}

fn send(capture: bool) -> Command {
    Command::SendAuthorization { gateway_key: KEY.into(), capture }
}

fn query() -> Command {
    Command::QueryStatus { gateway_key: KEY.into() }
}

fn settled(status: Status) -> Command {
    Command::Done(Outcome::Settled(status))
}

/// What the register and the reader hear when a payment ends with `approved`
/// shown, after its commit.
fn shown(approved: bool, status: Status) -> Vec<Command> {
    vec![Command::ShowResult { approved }, Command::AutoPrint, settled(status)]
}

/// The steps and durability of the one Persist among `commands`.
fn persist(commands: &[Command]) -> (Vec<Step>, Durability) {
    let mut found = None;
    for c in commands {
        if let Command::Persist { steps, durability } = c {
            assert!(found.is_none(), "one Persist at a time: {commands:?}");
            found = Some((steps.clone(), *durability));
        }
    }
    found.unwrap_or_else(|| panic!("no Persist in {commands:?}"))
}

/// The steps of the one Persist among `commands`.
fn steps(commands: &[Command]) -> Vec<Step> {
    persist(commands).0
}

/// The statuses the one Persist among `commands` moves to, and its durability.
fn persisted(commands: &[Command]) -> (Vec<Status>, Durability) {
    let (steps, durability) = persist(commands);
    (steps.iter().map(|s| s.transition.to).collect(), durability)
}

/// The reason code and message the last step of the Persist stores.
fn reason(commands: &[Command]) -> (String, String) {
    let steps = steps(commands);
    let reason = steps.last().and_then(|s| s.transition.reason.clone()).expect("a reason");
    (reason.code, reason.message)
}

/// The audit text of the last step of the Persist.
fn cause(commands: &[Command]) -> String {
    steps(commands).last().map(|s| s.transition.cause.clone()).unwrap_or_default()
}

fn commit(p: &mut ReaderPayment) -> Vec<Command> {
    p.handle(Event::Committed, T0 + 5_000)
}

/// A payment the reader collects for: COLLECTING committed, the request taken at T0.
fn collecting(settings: Settings, payment: Payment) -> ReaderPayment {
    let mut p = ReaderPayment::new(payment, settings);
    assert_eq!(persisted(&p.start(T0)), (vec![Status::Collecting], Durability::Deferred));
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::CollectCard]);
    assert!(p.handle(Event::ReaderCollecting, T0).is_empty());
    p
}

/// A payment whose authorization is out: CARD_READ and AUTHORIZING committed together.
fn authorizing(settings: Settings, card: Card) -> ReaderPayment {
    let mut p = collecting(settings, payment(Status::Created));
    let read = p.handle(Event::CardRead(card), T0 + 1_000);
    assert_eq!(read[0], Command::ReleaseReader);
    assert_eq!(persisted(&read), (vec![Status::CardRead, Status::Authorizing], Durability::Synced));
    assert_eq!(p.handle(Event::Committed, T0 + 1_000), vec![send(true)]);
    p
}

/// A payment whose answer was lost: UNKNOWN committed, the first status query out.
fn in_doubt(settings: Settings) -> ReaderPayment {
    let mut p = authorizing(settings, card());
    let lost = p.handle(Event::GatewayUnknown { message: "no answer within 5s".into() }, T0 + 2_000);
    assert_eq!(persisted(&lost), (vec![Status::Unknown], Durability::Synced));
    assert_eq!(cause(&lost), "no answer from the gateway: no answer within 5s");
    assert_eq!(p.handle(Event::Committed, T0 + 2_000), vec![query()]);
    p
}

#[test]
fn an_approval_is_sent_only_after_the_authorizing_commit_and_settles_captured() {
    let mut p = ReaderPayment::new(payment(Status::Created), settings());
    // COLLECTING deferred; CARD_READ + AUTHORIZING and CAPTURED synced: with
    // the admission's insert, three synced commits per online payment.
    assert_eq!(persisted(&p.start(T0)), (vec![Status::Collecting], Durability::Deferred));
    assert!(p.start(T0).is_empty(), "started once");
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.handle(Event::Committed, T0), vec![Command::CollectCard]);
    assert_eq!(p.status(), Status::Collecting);
    assert!(p.handle(Event::ReaderCollecting, T0 + 20).is_empty());
    assert_eq!(p.poll_timeout(), Some(T0 + 20 + 60_000), "the deadline runs from the reader taking the request");
    let read = p.handle(Event::CardRead(card()), T0 + 900);
    assert_eq!(read[0], Command::ReleaseReader);
    assert_eq!(persisted(&read), (vec![Status::CardRead, Status::Authorizing], Durability::Synced));
    assert_eq!(steps(&read)[0].data, Data::Card);
    assert!(!read.contains(&send(true)), "nothing leaves before the commit");
    assert_eq!(p.poll_timeout(), None, "no reader deadline once the card is read");
    assert_eq!(p.handle(Event::Committed, T0 + 910), vec![send(true)]);
    assert_eq!(p.status(), Status::Authorizing);
    let answer = p.handle(Event::GatewayAnswer(approved(true)), T0 + 1_200);
    assert_eq!(persisted(&answer), (vec![Status::Captured], Durability::Synced));
    let approval = Data::Approval { auth_code: "A1B2C3".into(), gateway_reference: "gw-9".into() };
    assert_eq!(steps(&answer)[0].data, approval);
    assert_eq!(commit(&mut p), shown(true, Status::Captured));
    assert!(p.is_done());
    assert!(p.handle(Event::GatewayAnswer(approved(true)), T0 + 1_300).is_empty(), "nothing after the end");
    assert!(p.handle_timeout(T0 + 999_999).is_empty());
}

#[test]
fn a_manual_capture_payment_is_only_authorized() {
    let mut p = collecting(settings(), Payment { manual_capture: true, ..payment(Status::Created) });
    p.handle(Event::CardRead(card()), T0 + 900);
    assert_eq!(p.handle(Event::Committed, T0 + 910), vec![send(false)]);
    let answer = p.handle(Event::GatewayAnswer(approved(false)), T0 + 1_200);
    assert_eq!(persisted(&answer).0, vec![Status::Authorized]);
    assert_eq!(commit(&mut p), shown(true, Status::Authorized));
}

#[test]
fn a_decline_is_committed_with_the_gateways_reason_and_shown() {
    let mut p = authorizing(settings(), card());
    let answer = p.handle(Event::GatewayAnswer(declined()), T0 + 1_200);
    assert_eq!(persisted(&answer), (vec![Status::Declined], Durability::Synced));
    assert_eq!(reason(&answer), ("insufficient_funds".into(), "Insufficient funds".into()));
    assert_eq!(steps(&answer)[0].data, Data::None);
    assert_eq!(commit(&mut p), shown(false, Status::Declined));
}

#[test]
fn a_request_the_gateway_rejects_is_declined_as_gateway_rejected() {
    let mut p = authorizing(settings(), card());
    let rejected = p.handle(Event::GatewayRejected { message: "amount: must be positive".into() }, T0 + 1_200);
    assert_eq!(persisted(&rejected).0, vec![Status::Declined]);
    assert_eq!(reason(&rejected), ("gateway_rejected".into(), "amount: must be positive".into()));
    assert_eq!(commit(&mut p), shown(false, Status::Declined));
}

#[test]
fn a_request_never_sent_is_approved_offline_while_the_gate_is_held() {
    let mut p = authorizing(settings(), card());
    let asked = p.handle(Event::GatewayNotSent { message: NOT_SENT.into() }, T0 + 2_000);
    assert_eq!(asked, vec![Command::ReadOfflineQueue { currency: "EUR".into(), fingerprint: "fp-1".into() }]);
    let decided = p.handle(Event::OfflineQueue { queue: queue(), queued_at_ms: 1_700_000_000_000 }, T0 + 2_010);
    assert_eq!(persisted(&decided), (vec![Status::OfflineApproved], Durability::Synced));
    assert!(!decided.contains(&Command::ReleaseOfflineGate), "the limits hold until the commit is in");
    let queued = Data::Queued {
        queued_at_ms: 1_700_000_000_000,
        last_error: NOT_SENT.into(),
        event: format!("approved offline and queued ({NOT_SENT})"),
    };
    assert_eq!(steps(&decided)[0].data, queued);
    let after = commit(&mut p);
    let expected = [
        Command::ReleaseOfflineGate,
        Command::WakeForwarder,
        Command::ShowResult { approved: true },
        Command::AutoPrint,
        settled(Status::OfflineApproved),
    ];
    assert_eq!(after, expected);
}

/// Plays a request never sent whose offline approval is refused; returns the
/// refusal's step.
fn refused_offline(settings: Settings, card: Card, queue: QueueState) -> Step {
    let mut p = authorizing(settings, card);
    p.handle(Event::GatewayNotSent { message: NOT_SENT.into() }, T0 + 2_000);
    let decided = p.handle(Event::OfflineQueue { queue, queued_at_ms: 5 }, T0 + 2_010);
    assert_eq!(decided[0], Command::ReleaseOfflineGate, "a refusal frees the gate before its commit");
    assert_eq!(persisted(&decided), (vec![Status::Failed], Durability::Synced));
    assert_eq!(commit(&mut p), shown(false, Status::Failed));
    steps(&decided).remove(0)
}

fn with_policy(change: impl FnOnce(&mut OfflinePolicy)) -> Settings {
    let mut s = settings();
    change(&mut s.offline);
    s
}

#[test]
fn each_offline_rule_refuses_with_its_own_code() {
    let hours = |n: u64| Some(Duration::from_secs(n * 3600));
    let cases = [
        ("offline_disabled", with_policy(|p| p.enabled = false), card(), queue()),
        ("offline_not_ready", settings(), card(), QueueState { since_online: None, ..queue() }),
        ("offline_not_ready", settings(), card(), QueueState { since_online: hours(31 * 24), ..queue() }),
        ("card_unidentified", settings(), Card { fingerprint: String::new(), ..card() }, queue()),
        ("currency_not_allowed", with_policy(|p| p.currencies = vec!["CHF".into()]), card(), queue()),
        ("brand_not_allowed", with_policy(|p| p.brands = vec!["mastercard".into()]), card(), queue()),
        ("store_full_count", settings(), card(), QueueState { count: 500, ..queue() }),
        ("amount_over_limit", with_policy(|p| p.max_payment_minor = 1_999), card(), queue()),
        ("store_full_total", settings(), card(), QueueState { total_minor: 48_001, ..queue() }),
        ("card_limit", settings(), card(), QueueState { same_card: 3, ..queue() }),
        ("entry_mode_not_allowed", settings(), Card { entry: Entry::Swipe, ..card() }, queue()),
        ("entry_mode_not_allowed", settings(), Card { entry: Entry::Manual, ..card() }, queue()),
        ("entry_mode_not_allowed", settings(), Card { entry: Entry::Unknown, ..card() }, queue()),
        ("fallback_not_allowed", settings(), Card { fallback: true, ..card() }, queue()),
        ("cashback_not_allowed", settings(), Card { cashback_minor: 500, ..card() }, queue()),
        ("queue_too_old", settings(), card(), QueueState { oldest_age: hours(25), ..queue() }),
    ];
    // Not reachable here: `refund_offline` (a payment is never a refund) and
    // `card_data_unavailable` (a card without data is failed before sending).
    for (code, settings, card, queue) in cases {
        let step = refused_offline(settings, card, queue);
        let reason = step.transition.reason.expect("a reason");
        assert_eq!(reason.code, code);
        let prefix = format!("The gateway cannot be reached ({NOT_SENT}) and the payment may not be taken offline: ");
        assert!(reason.message.starts_with(&prefix), "{code}: {}", reason.message);
        assert_eq!(step.transition.cause, format!("gateway unreachable and offline approval refused: {code}"));
    }
}

#[test]
fn limits_that_cannot_be_read_refuse_offline() {
    let mut p = authorizing(settings(), card());
    p.handle(Event::GatewayNotSent { message: NOT_SENT.into() }, T0 + 2_000);
    let refused = p.handle(Event::OfflineQueueUnreadable, T0 + 2_010);
    assert_eq!(refused[0], Command::ReleaseOfflineGate);
    assert_eq!(persisted(&refused).0, vec![Status::Failed]);
    let message = format!(
        "The gateway cannot be reached ({NOT_SENT}) and posd cannot read its offline queue (a database error; see \
         posd's log); nothing was charged"
    );
    assert_eq!(reason(&refused), ("store_unavailable".into(), message));
    assert_eq!(commit(&mut p), shown(false, Status::Failed));
}

#[test]
fn a_fault_on_this_machine_fails_without_asking_the_offline_rules() {
    let mut p = authorizing(settings(), card());
    let failed = p.handle(Event::GatewayLocalFault { message: "too many open files".into() }, T0 + 1_200);
    assert!(!failed.iter().any(|c| matches!(c, Command::ReadOfflineQueue { .. })));
    assert_eq!(persisted(&failed).0, vec![Status::Failed]);
    let message = "posd could not reach out to the gateway because of a fault on the lane PC (too many open files); \
                   nothing was charged; take the payment again, and if this repeats, tell store IT";
    assert_eq!(reason(&failed), ("local_resource_exhausted".into(), message.into()));
    assert_eq!(commit(&mut p), shown(false, Status::Failed));
}

#[test]
fn a_lost_answer_is_settled_by_status_query() {
    let mut p = in_doubt(settings());
    let found = p.handle(Event::StatusAnswer(approved(true)), T0 + 2_100);
    assert_eq!(persisted(&found).0, vec![Status::Captured]);
    assert!(matches!(steps(&found)[0].data, Data::Approval { .. }));
    assert_eq!(commit(&mut p), shown(true, Status::Captured));

    let mut p = in_doubt(settings());
    let found = p.handle(Event::StatusAnswer(declined()), T0 + 2_100);
    assert_eq!(persisted(&found).0, vec![Status::Declined]);
    assert_eq!(commit(&mut p), shown(false, Status::Declined));
}

#[test]
fn status_queries_wait_n_times_the_backoff_then_a_reversal_is_queued() {
    let mut p = in_doubt(settings());
    let t1 = T0 + 3_000;
    assert!(p.handle(Event::StatusNoRecord, t1).is_empty());
    assert_eq!(p.poll_timeout(), Some(t1 + 500));
    assert!(p.handle_timeout(t1 + 499).is_empty(), "not before the deadline");
    assert_eq!(p.handle_timeout(t1 + 500), vec![query()]);
    assert_eq!(p.poll_timeout(), None);
    let t2 = t1 + 800;
    assert!(p.handle(Event::StatusFailed { message: "deadline exceeded".into() }, t2).is_empty());
    assert_eq!(p.poll_timeout(), Some(t2 + 1_000), "the second wait is twice the backoff");
    assert_eq!(p.handle_timeout(t2 + 1_000), vec![query()]);
    let gave_up = p.handle(Event::StatusAnswer(Answer::NoOutcome), t2 + 1_500);
    assert_eq!(persisted(&gave_up).0, vec![Status::ReversalPending]);
    assert_eq!(cause(&gave_up), "outcome still unknown (the gateway answered without an outcome); reversal queued");
    assert_eq!(reason(&gave_up).0, "outcome_unknown");
    let after = commit(&mut p);
    let expected = [
        Command::NotifyReversal,
        Command::ShowResult { approved: false },
        Command::AutoPrint,
        settled(Status::ReversalPending),
    ];
    assert_eq!(after, expected);
}

#[test]
fn each_query_failure_is_remembered_as_the_reason() {
    let cases = [
        (Event::StatusNoRecord, "the gateway has no record of the request (yet)"),
        (Event::StatusFailed { message: "deadline exceeded".into() }, "deadline exceeded"),
        (Event::StatusAnswer(Answer::NoOutcome), "the gateway answered without an outcome"),
    ];
    for (event, why) in cases {
        let mut p = in_doubt(Settings { status_attempts: 1, ..settings() });
        let gave_up = p.handle(event, T0 + 3_000);
        assert_eq!(cause(&gave_up), format!("outcome still unknown ({why}); reversal queued"));
    }
}

#[test]
fn a_key_held_as_reversed_ends_the_queries_at_once() {
    let mut p = in_doubt(settings());
    let gave_up = p.handle(Event::StatusAnswer(Answer::Reversed), T0 + 2_100);
    assert_eq!(persisted(&gave_up).0, vec![Status::ReversalPending]);
    assert_eq!(cause(&gave_up), "outcome still unknown (the gateway holds the key as reversed); reversal queued");
}

#[test]
fn without_status_attempts_a_lost_answer_is_reversed_at_once() {
    let mut p = authorizing(Settings { status_attempts: 0, ..settings() }, card());
    p.handle(Event::GatewayUnknown { message: "no answer within 5s".into() }, T0 + 2_000);
    let gave_up = commit(&mut p);
    assert_eq!(persisted(&gave_up).0, vec![Status::ReversalPending]);
    assert_eq!(cause(&gave_up), "outcome still unknown (no status query was made); reversal queued");
}

#[test]
fn an_answer_that_settles_nothing_counts_as_lost() {
    for answer in [Answer::Reversed, Answer::NoOutcome] {
        let mut p = authorizing(settings(), card());
        let lost = p.handle(Event::GatewayAnswer(answer), T0 + 1_200);
        assert_eq!(persisted(&lost).0, vec![Status::Unknown]);
        assert_eq!(cause(&lost), "no answer from the gateway: the gateway's answer did not settle the payment");
        assert_eq!(commit(&mut p), vec![query()]);
    }
}

#[test]
fn no_card_in_time_fails_the_payment_and_stops_the_reader() {
    let mut p = collecting(settings(), payment(Status::Created));
    assert!(p.handle_timeout(T0 + 59_999).is_empty());
    let timed_out = p.handle_timeout(T0 + 60_000);
    assert_eq!(timed_out[0], Command::CancelReader);
    assert_eq!(persisted(&timed_out), (vec![Status::Failed], Durability::Synced));
    assert_eq!(reason(&timed_out), ("reader_timeout".into(), "no card within 60s".into()));
    assert_eq!(p.poll_timeout(), None);
    assert!(p.handle(Event::CardRead(card()), T0 + 60_001).is_empty(), "a card after the end is not taken");
    assert_eq!(commit(&mut p), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn each_reader_failure_has_its_code_and_stops_the_reader() {
    let cases = [
        (Event::ReaderFailed { reason: ReaderFailure::Timeout, message: "m".into() }, "reader_timeout", "m"),
        (Event::ReaderFailed { reason: ReaderFailure::CardError, message: "m".into() }, "card_error", "m"),
        (Event::ReaderFailed { reason: ReaderFailure::Other, message: "m".into() }, "reader_error", "m"),
        (
            Event::ReaderDisconnected { reason: "unplugged".into() },
            "reader_disconnected",
            "the card reader disconnected: unplugged",
        ),
        (Event::ReaderGone, "reader_disconnected", "the card reader stopped answering"),
    ];
    for (event, code, message) in cases {
        let mut p = collecting(settings(), payment(Status::Created));
        let failed = p.handle(event, T0 + 500);
        assert_eq!(failed[0], Command::CancelReader, "{code}");
        assert_eq!(persisted(&failed).0, vec![Status::Failed]);
        assert_eq!(reason(&failed), (code.into(), message.into()));
        assert_eq!(commit(&mut p), vec![Command::AutoPrint, settled(Status::Failed)]);
    }
}

#[test]
fn the_customer_cancels_at_the_reader() {
    let mut p = collecting(settings(), payment(Status::Created));
    let canceled = p.handle(Event::ReaderFailed { reason: ReaderFailure::Canceled, message: "m".into() }, T0 + 500);
    assert_eq!(canceled[0], Command::CancelReader);
    assert_eq!(persisted(&canceled).0, vec![Status::Canceled]);
    assert_eq!(cause(&canceled), "canceled by the customer at the reader");
    assert_eq!(commit(&mut p), vec![Command::CancelReader, Command::AutoPrint, settled(Status::Canceled)]);
}

#[test]
fn the_register_cancels_during_collection() {
    let mut p = collecting(settings(), payment(Status::Created));
    let canceled = p.handle(Event::RegisterCancel, T0 + 500);
    assert_eq!(persisted(&canceled).0, vec![Status::Canceled]);
    assert!(!canceled.contains(&Command::CancelReader), "the reader is stopped by the transition's effect");
    assert_eq!(cause(&canceled), "canceled by the register");
    assert_eq!(commit(&mut p), vec![Command::CancelReader, Command::AutoPrint, settled(Status::Canceled)]);
}

#[test]
fn a_cancel_before_the_reader_collects_is_heard_once_it_does() {
    let mut p = ReaderPayment::new(payment(Status::Created), settings());
    p.start(T0);
    assert!(p.handle(Event::RegisterCancel, T0 + 1).is_empty(), "COLLECTING is being committed");
    assert_eq!(p.handle(Event::Committed, T0 + 2), vec![Command::CollectCard]);
    let canceled = p.handle(Event::ReaderCollecting, T0 + 3);
    assert_eq!(persisted(&canceled).0, vec![Status::Canceled]);

    // A reader that cannot be asked fails the payment, cancel or not.
    let mut p = ReaderPayment::new(payment(Status::Created), settings());
    p.start(T0);
    p.handle(Event::Committed, T0 + 2);
    assert!(p.handle(Event::RegisterCancel, T0 + 3).is_empty());
    let failed = p.handle(Event::ReaderUnavailable { message: "not connected".into() }, T0 + 4);
    assert_eq!(reason(&failed), ("reader_unavailable".into(), "not connected".into()));
}

#[test]
fn a_reader_that_cannot_be_asked_fails_the_payment() {
    let mut p = ReaderPayment::new(payment(Status::Created), settings());
    p.start(T0);
    p.handle(Event::Committed, T0);
    let message = "the card reader of lane-1 is not connected".to_string();
    let failed = p.handle(Event::ReaderUnavailable { message }, T0);
    assert!(!failed.contains(&Command::CancelReader));
    assert_eq!(persisted(&failed), (vec![Status::Failed], Durability::Synced));
    assert_eq!(reason(&failed).0, "reader_unavailable");
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(commit(&mut p), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn a_cancel_once_the_card_is_read_changes_nothing() {
    let mut p = collecting(settings(), payment(Status::Created));
    p.handle(Event::CardRead(card()), T0 + 900);
    assert!(p.handle(Event::RegisterCancel, T0 + 901).is_empty());
    assert_eq!(p.handle(Event::Committed, T0 + 910), vec![send(true)]);
    assert!(p.handle(Event::RegisterCancel, T0 + 911).is_empty());
}

#[test]
fn a_card_without_encrypted_data_fails_and_is_never_sent() {
    let mut p = collecting(settings(), payment(Status::Created));
    let failed = p.handle(Event::CardRead(Card { has_blob: false, ..card() }), T0 + 900);
    assert_eq!(failed[0], Command::ReleaseReader);
    assert!(!failed.contains(&Command::CancelReader));
    assert_eq!(persisted(&failed), (vec![Status::Failed], Durability::Synced));
    let message = "the reader delivered no encrypted card data (keys unavailable)";
    assert_eq!(reason(&failed), ("card_data_unavailable".into(), message.into()));
    assert_eq!(commit(&mut p), vec![Command::AutoPrint, settled(Status::Failed)]);
}

#[test]
fn reader_progress_is_published_while_collecting_only() {
    let mut p = collecting(settings(), payment(Status::Created));
    let progress = p.handle(Event::ReaderProgress { stage: Stage::PinEntry, text: "Enter PIN".into() }, T0 + 100);
    assert_eq!(progress, vec![Command::Publish { stage: Stage::PinEntry, message: "Enter PIN".into() }]);
    p.handle(Event::CardRead(card()), T0 + 900);
    assert!(p.handle(Event::ReaderProgress { stage: Stage::Reading, text: "x".into() }, T0 + 901).is_empty());
}

/// What the register hears when a commit fails before anything can be at
/// the gateway: the lane is free again and nothing was charged.
fn not_charged(error: &str, stored: Status) -> Vec<Command> {
    vec![
        Command::ReleaseReader,
        Command::FreeLane,
        Command::Publish {
            stage: Stage::Failed,
            message: format!("Not paid: posd could not record the payment ({error}). Nothing was charged."),
        },
        Command::EndStream,
        Command::CancelReader,
        Command::Done(Outcome::Unrecorded { stored: Some(stored), may_be_at_gateway: false, error: error.into() }),
    ]
}

/// What the register hears when a commit fails once the request may be at
/// the gateway: the lane stays busy until a restart settles the payment.
fn in_doubt_unrecorded(error: &str, stored: Status) -> Vec<Command> {
    vec![
        Command::ReleaseReader,
        Command::Publish {
            stage: Stage::Authorizing,
            message: format!(
                "Outcome unknown: posd could not record the gateway's answer ({error}). Do not take this payment \
                 again; posd settles payment pay_1 when it restarts, which it does by itself once its database works \
                 again."
            ),
        },
        Command::EndStream,
        Command::Done(Outcome::Unrecorded { stored: Some(stored), may_be_at_gateway: true, error: error.into() }),
    ]
}

fn commit_fails(p: &mut ReaderPayment, stored: Status) -> Vec<Command> {
    p.handle(Event::CommitFailed { error: "disk I/O error".into(), stored: Some(stored) }, T0 + 5_000)
}

#[test]
fn a_failed_collecting_commit_frees_the_lane_and_charges_nothing() {
    let mut p = ReaderPayment::new(payment(Status::Created), settings());
    p.start(T0);
    assert_eq!(commit_fails(&mut p, Status::Created), not_charged("disk I/O error", Status::Created));
    assert!(p.is_done());
    assert!(p.handle(Event::ReaderCollecting, T0 + 5_001).is_empty());
}

#[test]
fn a_failed_authorizing_commit_sends_nothing() {
    let mut p = collecting(settings(), payment(Status::Created));
    let read = p.handle(Event::CardRead(card()), T0 + 900);
    assert_eq!(persisted(&read).0, vec![Status::CardRead, Status::Authorizing]);
    let failed = commit_fails(&mut p, Status::Collecting);
    assert_eq!(failed, not_charged("disk I/O error", Status::Collecting));
    assert!(p.handle(Event::Committed, T0 + 5_001).is_empty(), "a late Committed does not send either");
    assert_eq!(p.status(), Status::Collecting);
}

#[test]
fn a_failed_commit_after_the_gateway_answered_leaves_the_outcome_unknown_and_the_lane_busy() {
    for answer in [approved(true), declined()] {
        let mut p = authorizing(settings(), card());
        p.handle(Event::GatewayAnswer(answer), T0 + 1_200);
        let failed = commit_fails(&mut p, Status::Authorizing);
        assert_eq!(failed, in_doubt_unrecorded("disk I/O error", Status::Authorizing));
        assert!(!failed.contains(&Command::FreeLane));
    }
}

#[test]
fn failed_commits_of_a_lost_answer_and_of_its_reversal_stay_in_doubt() {
    let mut p = authorizing(settings(), card());
    p.handle(Event::GatewayUnknown { message: "no answer within 5s".into() }, T0 + 2_000);
    assert_eq!(commit_fails(&mut p, Status::Authorizing), in_doubt_unrecorded("disk I/O error", Status::Authorizing));

    let mut p = in_doubt(Settings { status_attempts: 1, ..settings() });
    p.handle(Event::StatusNoRecord, T0 + 3_000);
    assert_eq!(commit_fails(&mut p, Status::Unknown), in_doubt_unrecorded("disk I/O error", Status::Unknown));
}

#[test]
fn a_failed_offline_approval_commit_frees_the_gate_and_stays_in_doubt() {
    let mut p = authorizing(settings(), card());
    p.handle(Event::GatewayNotSent { message: NOT_SENT.into() }, T0 + 2_000);
    p.handle(Event::OfflineQueue { queue: queue(), queued_at_ms: 5 }, T0 + 2_010);
    let failed = commit_fails(&mut p, Status::Authorizing);
    assert_eq!(failed[0], Command::ReleaseOfflineGate);
    assert_eq!(failed[1..], in_doubt_unrecorded("disk I/O error", Status::Authorizing)[..]);
}

#[test]
fn failed_commits_that_end_a_collection_charge_nothing() {
    let mut p = collecting(settings(), payment(Status::Created));
    p.handle(Event::RegisterCancel, T0 + 500);
    assert_eq!(commit_fails(&mut p, Status::Collecting), not_charged("disk I/O error", Status::Collecting));

    let mut p = collecting(settings(), payment(Status::Created));
    p.handle(Event::CardRead(Card { has_blob: false, ..card() }), T0 + 500);
    assert_eq!(commit_fails(&mut p, Status::Collecting), not_charged("disk I/O error", Status::Collecting));
}

#[test]
fn a_payment_that_cannot_be_read_back_is_left_to_the_restart() {
    let mut p = authorizing(settings(), card());
    p.handle(Event::GatewayAnswer(approved(true)), T0 + 1_200);
    let failed = p.handle(Event::CommitFailed { error: "database is locked".into(), stored: None }, T0 + 1_300);
    let unrecorded = Outcome::Unrecorded { stored: None, may_be_at_gateway: true, error: "database is locked".into() };
    assert_eq!(failed, vec![Command::ReleaseReader, Command::EndStream, Command::Done(unrecorded)]);
}

#[test]
fn recovery_ends_what_never_left_and_settles_what_may_have() {
    for status in [Status::Created, Status::Collecting, Status::CardRead] {
        let Ok(Recover::Persist(step)) = recover(status) else { panic!("{status}: interrupted") };
        assert_eq!(step.transition.to, Status::Failed);
        assert_eq!(step.transition.reason.expect("a reason").code, "interrupted");
    }
    let Ok(Recover::Settle { first: Some(lost) }) = recover(Status::Authorizing) else { panic!("settled") };
    assert_eq!(lost.transition.to, Status::Unknown);
    assert_eq!(lost.transition.cause, "no answer from the gateway: posd restarted while waiting for the gateway");
    assert_eq!(recover(Status::Unknown), Ok(Recover::Settle { first: None }));
    assert_eq!(recover(Status::ReversalPending), Ok(Recover::NotifyReversal));
    let Ok(Recover::Persist(requeued)) = recover(Status::Forwarding) else { panic!("requeued") };
    assert_eq!(requeued.transition.to, Status::OfflineApproved);
    assert!(requeued.transition.cause.contains("posd restarted during forwarding"));
    for status in [Status::Captured, Status::Authorized, Status::OfflineApproved, Status::Failed, Status::Confirming] {
        assert_eq!(recover(status), Ok(Recover::Nothing), "{status}");
    }
}

#[test]
fn a_payment_settled_at_start_up_is_neither_followed_nor_printed() {
    let mut p = ReaderPayment::settling(payment(Status::Unknown), settings());
    assert_eq!(p.start(T0), vec![query()]);
    let found = p.handle(Event::StatusAnswer(approved(true)), T0 + 100);
    assert_eq!(persisted(&found).0, vec![Status::Captured]);
    assert_eq!(commit(&mut p), vec![Command::ShowResult { approved: true }, settled(Status::Captured)]);

    let mut p = ReaderPayment::settling(payment(Status::Unknown), settings());
    p.start(T0);
    p.handle(Event::StatusAnswer(declined()), T0 + 100);
    let unrecorded =
        Outcome::Unrecorded { stored: Some(Status::Unknown), may_be_at_gateway: true, error: "disk I/O error".into() };
    assert_eq!(commit_fails(&mut p, Status::Unknown), vec![Command::Done(unrecorded)]);
}

#[test]
fn settling_refuses_a_payment_not_in_doubt() {
    let mut p = ReaderPayment::settling(payment(Status::Captured), settings());
    let refused = p.start(T0);
    let [Command::Done(Outcome::Unrecorded { stored: Some(Status::Captured), error, .. })] = &refused[..] else {
        panic!("{refused:?}")
    };
    assert!(error.starts_with("refused by the payment state machine"), "{error}");
}

/// Everything the runtime can feed, by number; the last number fires the timer.
fn scripted(i: usize, p: &ReaderPayment) -> Option<Event> {
    let full = QueueState { count: 500, ..queue() };
    Some(match i {
        0..=5 => Event::Committed,
        6 => Event::CommitFailed { error: "disk I/O error".into(), stored: Some(p.status()) },
        7 => Event::CommitFailed { error: "disk I/O error".into(), stored: None },
        8 => Event::ReaderCollecting,
        9 => Event::ReaderUnavailable { message: "not connected".into() },
        10 => Event::ReaderProgress { stage: Stage::Reading, text: "Reading".into() },
        11 | 12 => Event::CardRead(card()),
        13 => Event::CardRead(Card { has_blob: false, ..card() }),
        14 => Event::ReaderFailed { reason: ReaderFailure::Canceled, message: "m".into() },
        15 => Event::ReaderFailed { reason: ReaderFailure::Timeout, message: "m".into() },
        16 => Event::ReaderDisconnected { reason: "unplugged".into() },
        17 => Event::ReaderGone,
        18 => Event::RegisterCancel,
        19 => Event::GatewayAnswer(approved(true)),
        20 => Event::GatewayAnswer(declined()),
        21 => Event::GatewayAnswer(Answer::NoOutcome),
        22 => Event::GatewayRejected { message: "m".into() },
        23 => Event::GatewayNotSent { message: NOT_SENT.into() },
        24 => Event::GatewayLocalFault { message: "m".into() },
        25 => Event::GatewayUnknown { message: "m".into() },
        26 => Event::OfflineQueue { queue: queue(), queued_at_ms: 5 },
        27 => Event::OfflineQueue { queue: full, queued_at_ms: 5 },
        28 => Event::OfflineQueueUnreadable,
        29 => Event::StatusAnswer(approved(false)),
        30 => Event::StatusAnswer(Answer::Reversed),
        31 => Event::StatusNoRecord,
        32 => Event::StatusFailed { message: "m".into() },
        _ => return None,
    })
}

/// What a script has seen so far.
#[derive(Default)]
struct Watch {
    /// The status the Persist awaiting its answer moves to.
    pending: Option<Status>,
    sent: u32,
    done: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever happens in whatever order: an authorization leaves only in
    /// answer to the commit that moved the payment to AUTHORIZING, at most
    /// once; one commit is out at a time and each starts from the committed
    /// status; the lane is freed only if nothing was sent; nothing follows
    /// the end.
    #[test]
    fn no_authorization_leaves_before_the_authorizing_commit(
        settling in any::<bool>(),
        attempts in 0u32..4,
        script in prop::collection::vec((0usize..34, 0u64..90_000), 0..60),
    ) {
        let settings = Settings { status_attempts: attempts, ..settings() };
        let mut p = if settling {
            ReaderPayment::settling(payment(Status::Unknown), settings)
        } else {
            ReaderPayment::new(payment(Status::Created), settings)
        };
        let mut now = T0;
        let mut w = Watch::default();
        let mut first = Some(p.start(now));
        let mut script = script.into_iter();
        loop {
            let before = p.status();
            let (commands, answered) = if let Some(commands) = first.take() {
                (commands, None)
            } else if let Some((i, dt)) = script.next() {
                now += dt;
                match scripted(i, &p) {
                    Some(event) => {
                        let answer = matches!(event, Event::Committed | Event::CommitFailed { .. });
                        let ok = matches!(event, Event::Committed);
                        let answered = answer.then(|| w.pending.take().map(|to| (to, ok)));
                        (p.handle(event, now), answered)
                    }
                    None => {
                        now = now.max(p.poll_timeout().unwrap_or(now));
                        (p.handle_timeout(now), None)
                    }
                }
            } else {
                break;
            };
            if w.done || answered == Some(None) {
                prop_assert!(commands.is_empty(), "{commands:?}");
            }
            let committed = match answered {
                Some(Some((to, true))) => Some(to),
                _ => None,
            };
            if committed.is_none() {
                prop_assert_eq!(p.status(), before, "the status moves only on a commit");
            }
            for (k, c) in commands.iter().enumerate() {
                match c {
                    Command::SendAuthorization { .. } => {
                        prop_assert_eq!(committed, Some(Status::Authorizing));
                        prop_assert!(!settling);
                        w.sent += 1;
                        prop_assert!(w.sent <= 1);
                    }
                    Command::Persist { steps, .. } => {
                        prop_assert!(w.pending.is_none(), "two commits out");
                        prop_assert_eq!(steps[0].transition.from, p.status());
                        for pair in steps.windows(2) {
                            prop_assert_eq!(pair[0].transition.to, pair[1].transition.from);
                        }
                        w.pending = steps.last().map(|s| s.transition.to);
                    }
                    Command::FreeLane => prop_assert_eq!(w.sent, 0, "the lane is freed only if nothing was sent"),
                    Command::Done(_) => {
                        prop_assert_eq!(k + 1, commands.len(), "Done comes last");
                        w.done = true;
                    }
                    _ => {}
                }
            }
            if let Some(to) = committed.filter(|to| to.is_settled_for_register()) {
                prop_assert_eq!(commands.last(), Some(&Command::Done(Outcome::Settled(to))));
            }
        }
    }
}
