//! One payment on a lane's nexo terminal ("Sale to POI", as Adyen terminals
//! speak it locally), and the after-sale operations on one, as sans-IO state
//! machines in the shape of [`crate::terminal`]: the runtime feeds
//! [`NexoPayment`] its [`Event`]s and the time (`now`, milliseconds on the
//! runtime's monotonic clock) and carries out the [`Command`]s it returns.
//! The machines do no I/O and read no clock; their one deadline at a time is
//! `poll_timeout`. They know a terminal's answer only as the plain structs
//! here ([`Answer`], [`StatusAnswer`]); the driver maps the messages of
//! `pos-nexo` to them.
//!
//! The terminal decides with its own acquirer, inside one HTTPS POST that
//! lasts as long as the customer at the terminal. Persist before act: the
//! payment's start is committed, with the ServiceID its POST goes out under,
//! before [`Command::Post`]; the POST's answer is committed before the
//! register hears it. When posd cannot know what the terminal booked (the
//! line broke or timed out once the request may have left, posd restarted
//! mid-POST) it asks the terminal by TransactionStatus for that ServiceID,
//! and only that: in progress is asked again after a backoff, not found is
//! not booked, a repeated answer is the answer; never a guess, never a
//! second POST. Every commit is synced: the terminal decides by itself once
//! it has the request.
//!
//! ```text
//! start -> NextServiceId -> ServiceId -> Persist[COLLECTING + ServiceID] -> Post
//! RegisterCancel (POST out) -> Abort (once)
//! Answered -> Persist[CAPTURED (via CONFIRMING) | DECLINED | CANCELED | FAILED] -> AutoPrint -> Done
//!   partial approval / another amount / approved after the register's cancel:
//!     NextServiceId -> Persist[DECLINED | CAPTURED + the reversal's ServiceID] -> Reverse (once) -> Done
//! NotSent -> Persist[FAILED terminal_unavailable] (and LaneUnavailable for an identity refusal) -> Done
//! InDoubt -> AskStatus -> Repeated (as Answered) | NotFound -> Persist[FAILED terminal_not_booked]
//!                      | InProgress, unanswered -> AskStatus again after n x backoff
//!                      -> (attempts spent) Persist[UNKNOWN] -> OutcomeUnknown, FreeLane, Publish, EndStream -> Done
//! ```
//!
//! The payment stays COLLECTING while the terminal is asked: a restart finds
//! it so and settles it the same way ([`recover`], [`NexoPayment::settling`]);
//! UNKNOWN is the doubt left to a person.
//!
//! After the sale: [`void`] and [`refund`] decide what a void or refund of a
//! nexo payment sends (a Reversal of its POI transaction, whole or in part,
//! or an unreferenced Payment of type Refund), and [`AfterSale`] runs one
//! under its own idempotency key and ServiceID with the same in-doubt rule.

use std::time::Duration;

pub use crate::payment::{Durability, Millis, Outcome, Stage, Step};

use crate::payment::refused;
use crate::{Input, Status, Transition, TransitionError, next};

mod after_sale;

pub use after_sale::{
    AfterSale, AfterSaleCommand, AfterSaleError, AfterSaleEvent, AfterSaleOutcome, Category, Operation, Record, refund,
    void,
};

/// Who canceled, for the audit log, when the register's cancel ended it.
const BY_REGISTER: &str = "the register";
/// What the register hears while posd asks the terminal.
const CHECKING: &str = "Checking with the payment terminal what it booked";

/// What a payment on a nexo lane is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// TransactionStatus queries that may come back without settling the
    /// outcome (in progress, or not answered) before the payment is left to
    /// a person; at least one.
    pub status_attempts: u32,
    /// The wait before query `n` (counted from 1 after the first) is `n`
    /// times this. Attempts and backoff together should outlast a payment
    /// at the terminal (up to about 150 s).
    pub status_backoff: Duration,
}

/// The stored payment's essentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub status: Status,
    /// The amount asked for (RequestedAmount).
    pub amount_minor: i64,
    pub currency: String,
    /// The payment's gateway key: its SaleTransactionID.
    pub gateway_key: String,
}

/// The `Result` of a terminal's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TerminalResult {
    Success,
    #[default]
    Failure,
    /// Approved for less than asked.
    Partial,
}

/// A terminal's `ErrorCondition`, as far as the decisions tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Aborted,
    Busy,
    Cancel,
    DeviceOut,
    InProgress,
    NotFound,
    Refusal,
    UnavailableDevice,
    UnavailableService,
    WrongPin,
    /// Any other condition, verbatim (scrubbed by the driver).
    Other(String),
}

impl Condition {
    /// The data dictionary's name.
    pub fn as_str(&self) -> &str {
        match self {
            Condition::Aborted => "Aborted",
            Condition::Busy => "Busy",
            Condition::Cancel => "Cancel",
            Condition::DeviceOut => "DeviceOut",
            Condition::InProgress => "InProgress",
            Condition::NotFound => "NotFound",
            Condition::Refusal => "Refusal",
            Condition::UnavailableDevice => "UnavailableDevice",
            Condition::UnavailableService => "UnavailableService",
            Condition::WrongPin => "WrongPIN",
            Condition::Other(name) => name,
        }
    }

    /// From the data dictionary's name; anything else is kept as [`Condition::Other`].
    pub fn parse(name: &str) -> Condition {
        match name {
            "Aborted" => Condition::Aborted,
            "Busy" => Condition::Busy,
            "Cancel" => Condition::Cancel,
            "DeviceOut" => Condition::DeviceOut,
            "InProgress" => Condition::InProgress,
            "NotFound" => Condition::NotFound,
            "Refusal" => Condition::Refusal,
            "UnavailableDevice" => Condition::UnavailableDevice,
            "UnavailableService" => Condition::UnavailableService,
            "WrongPIN" => Condition::WrongPin,
            other => Condition::Other(other.to_string()),
        }
    }
}

/// The terminal's identification of a transaction it booked
/// (`POITransactionID`): what a reversal refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoiTransaction {
    pub transaction_id: String,
    /// As the terminal wrote it (ISO 8601).
    pub timestamp: String,
}

/// What a terminal's answer (a PaymentResponse, ReversalResponse, or one
/// repeated in a TransactionStatusResponse) says, as far as posd decides or
/// stores on it. The runtime keeps the rest (receipts) and stores it where a
/// step carries [`Data::Result`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub result: TerminalResult,
    pub condition: Option<Condition>,
    /// `AdditionalResponse` or the terminal's text, scrubbed; may be empty.
    pub message: String,
    /// `AuthorizedAmount` (a reversal's `ReversedAmount`); `None`: the
    /// terminal gave none, which counts as the amount asked.
    pub authorized_minor: Option<u64>,
    pub poi_transaction: Option<PoiTransaction>,
    pub approval_code: String,
    /// At most the first 6 and last 4 digits (the driver masks it).
    pub masked_pan: String,
    pub brand: String,
    /// A receipt asks for the customer's signature.
    pub signature_required: bool,
}

impl Answer {
    /// The terminal booked it (in full or in part).
    pub fn booked(&self) -> bool {
        matches!(self.result, TerminalResult::Success | TerminalResult::Partial)
    }
}

/// What a TransactionStatus for a ServiceID brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAnswer {
    /// `Failure`/`InProgress`: the terminal is still at it.
    InProgress,
    /// `Failure`/`NotFound`: the terminal has no such request; it was not booked.
    NotFound,
    /// The request's own answer, repeated (`RepeatedMessageResponse`).
    Repeated(Answer),
    /// No answer (the query itself not sent or in doubt), or one that does
    /// not tell (another condition).
    Unanswered { message: String },
}

/// What the register hears of a terminal's `Failure`: a decline or a
/// failure, with the register API's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// DECLINED rather than FAILED (or CANCELED).
    pub declined: bool,
    pub code: &'static str,
    pub message: String,
}

/// The register API's code and a message for a terminal's `Failure`: the
/// reader path's decline codes, the ZVT path's failure codes; a condition
/// posd does not know is kept verbatim in the message (code `terminal_error`).
pub fn failure(answer: &Answer) -> Failure {
    let said = said(answer);
    let (declined, code, message) = match &answer.condition {
        Some(Condition::Refusal) => (true, "generic_decline", format!("Declined at the payment terminal ({said})")),
        Some(Condition::WrongPin) => (true, "incorrect_pin", format!("Wrong PIN at the payment terminal ({said})")),
        Some(Condition::Cancel) => (false, "canceled", format!("Canceled at the payment terminal ({said})")),
        Some(Condition::Aborted) => (false, "canceled", format!("The payment terminal aborted it ({said})")),
        Some(Condition::Busy | Condition::InProgress) => {
            (false, "terminal_busy", format!("The payment terminal is busy ({said}); try again"))
        }
        Some(Condition::DeviceOut | Condition::UnavailableDevice | Condition::UnavailableService) => {
            (false, "terminal_unavailable", format!("The payment terminal cannot take it now ({said})"))
        }
        Some(Condition::NotFound | Condition::Other(_)) | None => {
            (false, "terminal_error", format!("The payment terminal ended it: {said}"))
        }
    };
    Failure { declined, code, message }
}

/// The condition and the terminal's text, as the register is shown them.
fn said(answer: &Answer) -> String {
    let condition = answer.condition.as_ref().map_or("no ErrorCondition", Condition::as_str);
    if answer.message.is_empty() { condition.to_string() } else { format!("{condition}: {}", answer.message) }
}

/// Asking the terminal by TransactionStatus until it settles: at most
/// [`Settings::status_attempts`] answers that do not (at least one), query
/// `n` after `n` times the backoff. Used by [`NexoPayment`] and [`AfterSale`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Querying {
    attempt: u32,
    attempts: u32,
}

/// What an answer to [`Querying`] means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queried {
    /// The terminal repeated the request's answer: settle by it.
    Answered(Answer),
    /// The terminal has no record: not booked.
    NotFound,
    /// Ask again after this wait.
    Again { wait: Duration },
    /// The attempts are spent: the outcome stays in doubt, for this reason.
    Exhausted(String),
}

impl Querying {
    pub fn new(status_attempts: u32) -> Self {
        Self { attempt: 0, attempts: status_attempts.max(1) }
    }

    pub fn answer(&mut self, answer: StatusAnswer, backoff: Duration) -> Queried {
        let why = match answer {
            StatusAnswer::Repeated(answer) => return Queried::Answered(answer),
            StatusAnswer::NotFound => return Queried::NotFound,
            StatusAnswer::InProgress => "the payment terminal still has it in progress".to_string(),
            StatusAnswer::Unanswered { message } => format!("the payment terminal could not be asked: {message}"),
        };
        self.attempt += 1;
        if self.attempt >= self.attempts {
            Queried::Exhausted(format!("{why} (asked {} times); check its journal", self.attempt))
        } else {
            Queried::Again { wait: backoff.saturating_mul(self.attempt) }
        }
    }
}

/// What happened, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The last [`Command::Persist`] is committed.
    Committed,
    /// The last [`Command::Persist`] or [`Command::NextServiceId`] failed.
    /// `stored`: the payment's status as the runtime reads it back, `None`
    /// if it cannot.
    StoreFailed { error: String, stored: Option<Status> },
    /// The lane's next ServiceID (its counter as stored, not yet moved).
    ServiceId(String),
    /// The POST brought the terminal's answer.
    Answered(Answer),
    /// The POST cannot have reached the terminal (no connection, no TLS
    /// session, an HTTP refusal). `identity`: the terminal is not the
    /// lane's (certificate or POIID refused).
    NotSent { message: String, identity: bool },
    /// The POST may have reached the terminal; no (whole) answer came.
    InDoubt { message: String },
    /// The answer to [`Command::AskStatus`].
    Status(StatusAnswer),
    /// The register asked to cancel.
    RegisterCancel,
}

/// What a step stores besides its transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    None,
    /// Starting on the terminal under this ServiceID; the lane's ServiceID
    /// counter moves past it in the same commit.
    Start {
        service_id: String,
    },
    /// The terminal's answer (from the last [`Event::Answered`] or
    /// [`StatusAnswer::Repeated`]). `reversal`: the ServiceID of a reversal
    /// of it that posd owes, stored (the counter moved past it) in the same
    /// commit, for the reversal worker to run if this run does not finish it.
    Result {
        answer: Box<Answer>,
        reversal: Option<String>,
    },
}

/// Why the runtime logs, besides what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// A warning: the outcome is in doubt; the terminal is asked.
    InDoubt { message: String },
    /// A warning: what the terminal booked is reversed at once, and why.
    Reversing { why: String },
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read the lane's next ServiceID; feed back [`Event::ServiceId`] or
    /// [`Event::StoreFailed`].
    NextServiceId,
    /// Commit the steps in one commit, all or none; then, per step, send its
    /// register event and announce the new status; then feed back
    /// [`Event::Committed`] or [`Event::StoreFailed`].
    Persist {
        steps: Vec<Step<Data>>,
        durability: Durability,
    },
    /// POST the PaymentRequest under `service_id`, `sale_transaction_id`
    /// its SaleTransactionID; feed back `Answered`, `NotSent` or `InDoubt`.
    Post {
        service_id: String,
        sale_transaction_id: String,
        amount_minor: u64,
        currency: String,
    },
    /// POST an AbortRequest (MerchantAbort) for the payment under `service_id`.
    Abort {
        service_id: String,
    },
    /// POST a TransactionStatusRequest for the payment under `service_id`;
    /// feed back [`Event::Status`].
    AskStatus {
        service_id: String,
    },
    /// Run the reversal stored with the last commit (whole: no
    /// ReversedAmount) of `original`, `amount_minor` booked, under
    /// `service_id`: [`AfterSale::committed`], in the lane's hold.
    Reverse {
        service_id: String,
        original: PoiTransaction,
        amount_minor: u64,
    },
    /// A record for the gateway's ledger is queued: wake its sender.
    WakeRecorder,
    /// The terminal is not the lane's: mark the lane unavailable.
    LaneUnavailable {
        message: String,
    },
    /// Raise the `terminal_outcome_unknown` event: a person must check the
    /// terminal's journal.
    OutcomeUnknown {
        message: String,
    },
    /// Tell the register something that is not a committed status.
    Publish {
        stage: Stage,
        message: String,
    },
    /// Free the lane for the register's next payment.
    FreeLane,
    /// End the register's live stream of this payment.
    EndStream,
    /// Print the copies printed by themselves when a payment ends.
    AutoPrint,
    Log(Log),
    /// The machine is finished; it returns nothing more.
    Done(Outcome),
}

/// What posd does at start-up with an unfinished payment of a nexo lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    Nothing,
    /// Commit this step (synced); a failure stops the start-up.
    Persist(Step<Data>),
    /// Ask the terminal: run [`NexoPayment::settling`] with the payment's
    /// stored ServiceID in a task that holds the lane.
    Settle,
}

/// The start-up decision for a stored payment of a nexo lane. CREATED never
/// had its POST (the ServiceID is committed with COLLECTING): interrupted.
/// COLLECTING (and CONFIRMING, never stored alone on a nexo lane) is in
/// flight: settled by TransactionStatus. UNKNOWN is asked again unless it was
/// left to a person before (`left_to_a_person`, read only then: the payment
/// has a `terminal_outcome_unknown` event).
pub fn recover<E: From<TransitionError>>(
    status: Status,
    left_to_a_person: impl FnOnce() -> Result<bool, E>,
) -> Result<Recover, E> {
    Ok(match status {
        Status::Created => {
            let transition = next(status, &Input::Interrupted)?;
            Recover::Persist(Step { transition, data: Data::None })
        }
        Status::Collecting | Status::Confirming => Recover::Settle,
        Status::Unknown if left_to_a_person()? => Recover::Nothing,
        Status::Unknown => Recover::Settle,
        _ => Recover::Nothing,
    })
}

/// Who runs the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The register asked for it and follows it live.
    Register,
    /// Start-up recovery asks the terminal about it.
    Recovery,
}

/// A reversal posd owes, waiting for its ServiceID before the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owed {
    steps: Vec<(Input, Data)>,
    original: PoiTransaction,
    amount_minor: u64,
    why: String,
    /// What the register is told besides the committed status.
    told: Option<String>,
}

/// What a ServiceID is read for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wants {
    Start,
    Reversal(Owed),
}

/// What follows a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    /// POST the payment.
    Post,
    /// The run is over.
    Finish,
    /// Run the owed reversal, then the run is over.
    Reverse { service_id: String, original: PoiTransaction, amount_minor: u64, why: String, told: Option<String> },
    /// Booked, but posd cannot reverse it: a person must.
    Alert(String),
    /// Leave the payment to a person, for this reason.
    LeaveInDoubt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    New,
    /// [`Command::NextServiceId`] is out.
    ReadingServiceId(Wants),
    /// A [`Command::Persist`] is out with these transitions.
    Committing {
        transitions: Vec<Transition>,
        then: Then,
    },
    /// [`Command::Post`] is out.
    Posting,
    /// [`Command::AskStatus`] is out.
    Querying(Querying),
    /// The terminal is asked again at `deadline`.
    Backoff {
        querying: Querying,
        deadline: Millis,
    },
    Done,
}

/// How the terminal's answer is taken.
enum Judged {
    /// Booked for the amount asked: captured.
    Captured,
    /// Booked, and reversed at once: declined with this (code, message), or,
    /// `None`, honoured as captured first (the register had canceled).
    Reverse { decline: Option<(String, String)>, why: String, told: Option<String> },
    /// Not booked.
    NotBooked,
}

/// One payment on a nexo terminal, from CREATED (or, at start-up, from
/// COLLECTING or UNKNOWN) to the end of its run.
#[derive(Debug, Clone)]
pub struct NexoPayment {
    payment: Payment,
    settings: Settings,
    origin: Origin,
    phase: Phase,
    /// The ServiceID of the payment's POST, once committed (or as stored).
    service_id: Option<String>,
    /// The register canceled before the POST went out.
    cancel_requested: bool,
    /// The register's cancel was passed on to the terminal (Abort).
    abort_sent: bool,
}

impl NexoPayment {
    /// A payment the register asked for, stored as CREATED.
    pub fn new(payment: Payment, settings: Settings) -> Self {
        Self::with_origin(payment, settings, Origin::Register, None)
    }

    /// A payment found COLLECTING or UNKNOWN at start-up (see [`recover`]),
    /// with the ServiceID stored with it, to settle by TransactionStatus.
    /// Nothing is printed.
    pub fn settling(payment: Payment, settings: Settings, service_id: String) -> Self {
        Self::with_origin(payment, settings, Origin::Recovery, Some(service_id))
    }

    fn with_origin(payment: Payment, settings: Settings, origin: Origin, service_id: Option<String>) -> Self {
        Self { payment, settings, origin, phase: Phase::New, service_id, cancel_requested: false, abort_sent: false }
    }

    /// The status as last committed.
    pub fn status(&self) -> Status {
        self.payment.status
    }

    pub fn payment(&self) -> &Payment {
        &self.payment
    }

    /// The ServiceID of the payment's POST, once committed.
    pub fn service_id(&self) -> Option<&str> {
        self.service_id.as_deref()
    }

    /// True once [`Command::Done`] was returned.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Starts the run: the first commands.
    /// (`_now` is there for the day a start needs the time.)
    pub fn start(&mut self, _now: Millis) -> Vec<Command> {
        if self.phase != Phase::New {
            return Vec::new();
        }
        match (self.origin, self.payment.status) {
            (Origin::Register, _) => {
                self.phase = Phase::ReadingServiceId(Wants::Start);
                vec![Command::NextServiceId]
            }
            (Origin::Recovery, Status::Collecting | Status::Confirming | Status::Unknown) => {
                self.begin_queries("posd restarted while the payment terminal had the payment".into())
            }
            (Origin::Recovery, status) => {
                let e = TransitionError { from: status, input: "asking the payment terminal".into() };
                self.unrecorded(Some(status), refused(&e))
            }
        }
    }

    /// When [`Self::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.phase {
            Phase::Backoff { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// The deadline of [`Self::poll_timeout`] may have passed.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<Command> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Backoff { querying, deadline } if now >= deadline => {
                self.phase = Phase::Querying(querying);
                vec![self.ask()]
            }
            other => {
                self.phase = other;
                Vec::new()
            }
        }
    }

    /// Something happened. An event the payment does not wait for now is ignored.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Command> {
        let posting = self.phase == Phase::Posting;
        match event {
            Event::Committed => match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Committing { transitions, then } => self.committed(transitions, then),
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            Event::StoreFailed { error, stored } => {
                if matches!(self.phase, Phase::Committing { .. } | Phase::ReadingServiceId(_)) {
                    self.unrecorded(stored, error)
                } else {
                    Vec::new()
                }
            }
            Event::ServiceId(id) => match std::mem::replace(&mut self.phase, Phase::Done) {
                // Canceled before anything went out: nothing to send.
                Phase::ReadingServiceId(Wants::Start) if self.cancel_requested => {
                    self.persist(vec![(Input::Cancel { by: BY_REGISTER.into() }, Data::None)], Then::Finish)
                }
                Phase::ReadingServiceId(Wants::Start) => {
                    let data = Data::Start { service_id: id.clone() };
                    self.service_id = Some(id);
                    self.persist(vec![(Input::StartOnTerminal, data)], Then::Post)
                }
                Phase::ReadingServiceId(Wants::Reversal(owed)) => self.owe_reversal(owed, id),
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            Event::Answered(answer) if posting => self.answered(answer),
            Event::NotSent { message, identity } if posting => self.not_sent(message, identity),
            Event::InDoubt { message } if posting => self.begin_queries(message),
            Event::Status(answer) => match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Querying(mut querying) => match querying.answer(answer, self.settings.status_backoff) {
                    Queried::Answered(answer) => self.answered(answer),
                    Queried::NotFound => self.not_found(),
                    Queried::Again { wait } => {
                        self.phase = Phase::Backoff { querying, deadline: now.saturating_add(millis(wait)) };
                        Vec::new()
                    }
                    Queried::Exhausted(message) => self.give_up(message),
                },
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            Event::RegisterCancel => self.register_cancel(),
            _ => Vec::new(),
        }
    }

    fn amount(&self) -> u64 {
        u64::try_from(self.payment.amount_minor).unwrap_or_default()
    }

    fn ask(&self) -> Command {
        Command::AskStatus { service_id: self.service_id.clone().unwrap_or_default() }
    }

    /// The register's cancel: remembered before the POST, passed on to the
    /// terminal once while the terminal may have the payment.
    fn register_cancel(&mut self) -> Vec<Command> {
        match &self.phase {
            Phase::New | Phase::ReadingServiceId(Wants::Start) | Phase::Committing { then: Then::Post, .. } => {
                self.cancel_requested = true;
                Vec::new()
            }
            Phase::Posting | Phase::Querying(_) | Phase::Backoff { .. } if !self.abort_sent => {
                self.abort_sent = true;
                vec![Command::Abort { service_id: self.service_id.clone().unwrap_or_default() }]
            }
            _ => Vec::new(),
        }
    }

    /// How the terminal's answer is taken, whether it came with the POST or
    /// repeated by TransactionStatus.
    fn judge(&self, answer: &Answer) -> Judged {
        if !answer.booked() {
            return Judged::NotBooked;
        }
        let asked = self.amount();
        let authorized = answer.authorized_minor.unwrap_or(asked);
        if answer.result == TerminalResult::Partial || authorized < asked {
            let message = format!(
                "The payment terminal approved {authorized} of {asked} (minor units); a partial approval is not \
                 accepted, so posd reverses it. Take the payment again or with another tender."
            );
            let why = format!("partial approval: {authorized} of {asked}");
            return Judged::Reverse {
                decline: Some(("partial_approval_not_allowed".into(), message)),
                why,
                told: None,
            };
        }
        if authorized > asked {
            let message = format!(
                "The payment terminal approved {authorized} instead of {asked} (minor units); posd reverses it. \
                 Take the payment again."
            );
            let why = format!("approved {authorized} instead of {asked}");
            return Judged::Reverse { decline: Some(("terminal_result_refused".into(), message)), why, told: None };
        }
        if self.abort_sent || self.cancel_requested {
            let told = "The payment terminal approved the payment after the register canceled it; posd reverses \
                        it now."
                .to_string();
            let why = "approved after the register canceled".to_string();
            return Judged::Reverse { decline: None, why, told: Some(told) };
        }
        Judged::Captured
    }

    /// The terminal's answer: committed, then acted on.
    fn answered(&mut self, answer: Answer) -> Vec<Command> {
        let from_doubt = self.payment.status != Status::Collecting;
        let result = |answer: &Answer| Data::Result { answer: Box::new(answer.clone()), reversal: None };
        // Booked: from COLLECTING through CONFIRMING in one commit; from
        // UNKNOWN (or CONFIRMING) confirmed as it stands.
        let booked = |answer: &Answer| {
            if from_doubt {
                vec![(Input::TerminalConfirmed, result(answer))]
            } else {
                vec![(Input::TerminalApproved, result(answer)), (Input::TerminalConfirmed, Data::None)]
            }
        };
        match self.judge(&answer) {
            Judged::Captured => self.persist(booked(&answer), Then::Finish),
            Judged::NotBooked => {
                let step = if from_doubt {
                    let message = format!("{}. Nothing was charged.", failure(&answer).message);
                    (Input::TerminalNotBooked { message }, result(&answer))
                } else {
                    (self.not_booked(&answer), result(&answer))
                };
                self.persist(vec![step], Then::Finish)
            }
            Judged::Reverse { decline, why, told } => {
                let steps = match decline {
                    // UNKNOWN has no way to DECLINED: captured, then voided by the reversal.
                    Some((code, message)) if !from_doubt => {
                        vec![(Input::TerminalDeclined { code, message }, result(&answer))]
                    }
                    _ => booked(&answer),
                };
                let asked = self.amount();
                let amount_minor = answer.authorized_minor.unwrap_or(asked);
                match answer.poi_transaction.clone() {
                    Some(original) => {
                        let owed = Owed { steps, original, amount_minor, why, told };
                        self.phase = Phase::ReadingServiceId(Wants::Reversal(owed));
                        vec![Command::NextServiceId]
                    }
                    None => {
                        let message = format!(
                            "the payment terminal booked {amount_minor} ({why}) without a POI transaction id, so \
                             posd cannot reverse it; reverse it at the terminal"
                        );
                        self.persist(steps, Then::Alert(message))
                    }
                }
            }
        }
    }

    /// The step for a terminal's `Failure` on a payment it had from the POST.
    fn not_booked(&self, answer: &Answer) -> Input {
        match answer.condition {
            Some(Condition::Cancel) => Input::Cancel { by: "the customer at the payment terminal".into() },
            Some(Condition::Aborted) => {
                let canceled = self.abort_sent || self.cancel_requested;
                Input::Cancel { by: if canceled { BY_REGISTER } else { "the payment terminal" }.into() }
            }
            _ => {
                let f = failure(answer);
                if f.declined {
                    Input::TerminalDeclined { code: f.code.into(), message: f.message }
                } else {
                    let message = format!("{}. Nothing was charged.", f.message);
                    Input::CollectFailed { code: f.code.into(), message }
                }
            }
        }
    }

    /// The reversal's ServiceID is read: commit the answer with it, then reverse.
    fn owe_reversal(&mut self, owed: Owed, service_id: String) -> Vec<Command> {
        let Owed { mut steps, original, amount_minor, why, told } = owed;
        for (_, data) in &mut steps {
            if let Data::Result { reversal, .. } = data {
                *reversal = Some(service_id.clone());
            }
        }
        self.persist(steps, Then::Reverse { service_id, original, amount_minor, why, told })
    }

    /// The POST cannot have reached the terminal: nothing was charged.
    fn not_sent(&mut self, message: String, identity: bool) -> Vec<Command> {
        let mut out = Vec::new();
        let text = if identity {
            out.push(Command::LaneUnavailable { message: message.clone() });
            format!(
                "The payment terminal is not the one configured for this lane ({message}); nothing was sent to it. \
                 Nothing was charged."
            )
        } else {
            format!(
                "The payment terminal could not be reached ({message}); nothing was sent to it. Nothing was \
                 charged."
            )
        };
        let input = Input::CollectFailed { code: "terminal_unavailable".into(), message: text };
        out.extend(self.persist(vec![(input, Data::None)], Then::Finish));
        out
    }

    /// The outcome is in doubt: ask the terminal by the payment's ServiceID.
    fn begin_queries(&mut self, message: String) -> Vec<Command> {
        self.phase = Phase::Querying(Querying::new(self.settings.status_attempts));
        vec![
            Command::Log(Log::InDoubt { message }),
            Command::Publish { stage: Stage::Authorizing, message: CHECKING.into() },
            self.ask(),
        ]
    }

    /// The terminal has no record of the payment: not booked.
    fn not_found(&mut self) -> Vec<Command> {
        let message = "The payment terminal has no record of the payment (TransactionStatus: NotFound); it was not \
                       booked. Nothing was charged."
            .to_string();
        let input = if self.payment.status == Status::Collecting {
            Input::CollectFailed { code: "terminal_not_booked".into(), message }
        } else {
            Input::TerminalNotBooked { message }
        };
        self.persist(vec![(input, Data::None)], Then::Finish)
    }

    /// The terminal could not tell in any attempt: UNKNOWN, for a person.
    fn give_up(&mut self, message: String) -> Vec<Command> {
        if self.payment.status == Status::Unknown {
            return self.leave_in_doubt(message);
        }
        let input = Input::TerminalLost { message: message.clone() };
        self.persist(vec![(input, Data::None)], Then::LeaveInDoubt(message))
    }

    /// The payment stays UNKNOWN for a person; the register hears why and
    /// the lane is free for the next customer.
    fn leave_in_doubt(&mut self, message: String) -> Vec<Command> {
        let told = format!("Outcome unknown: {message}. Do not take this payment again before checking.");
        let mut out = vec![
            Command::OutcomeUnknown { message },
            Command::FreeLane,
            Command::Publish { stage: Stage::Authorizing, message: told },
            Command::EndStream,
        ];
        out.extend(self.finish());
        out
    }

    /// The run is over with the payment as committed.
    fn finish(&mut self) -> Vec<Command> {
        self.phase = Phase::Done;
        let mut out = Vec::new();
        if self.origin == Origin::Register {
            out.push(Command::AutoPrint);
        }
        out.push(Command::Done(Outcome::Settled(self.payment.status)));
        out
    }

    /// Asks [`next`] for each step from the current status and sends them to
    /// be committed together, synced.
    fn persist(&mut self, inputs: Vec<(Input, Data)>, then: Then) -> Vec<Command> {
        let mut status = self.payment.status;
        let mut steps = Vec::with_capacity(inputs.len());
        for (input, data) in inputs {
            match next(status, &input) {
                Ok(transition) => {
                    status = transition.to;
                    steps.push(Step { transition, data });
                }
                Err(e) => return self.unrecorded(Some(self.payment.status), refused(&e)),
            }
        }
        let transitions = steps.iter().map(|s| s.transition.clone()).collect();
        self.phase = Phase::Committing { transitions, then };
        vec![Command::Persist { steps, durability: Durability::Synced }]
    }

    /// A commit is in: what follows it.
    fn committed(&mut self, transitions: Vec<Transition>, then: Then) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(last) = transitions.last() {
            self.payment.status = last.to;
        }
        if transitions.iter().any(|t| t.to == Status::Captured) {
            out.push(Command::WakeRecorder);
        }
        match then {
            // Canceled while the start was being committed: the POST never goes out.
            Then::Post if self.cancel_requested => {
                out.extend(self.persist(vec![(Input::Cancel { by: BY_REGISTER.into() }, Data::None)], Then::Finish));
            }
            Then::Post => {
                self.phase = Phase::Posting;
                out.push(Command::Post {
                    service_id: self.service_id.clone().unwrap_or_default(),
                    sale_transaction_id: self.payment.gateway_key.clone(),
                    amount_minor: self.amount(),
                    currency: self.payment.currency.clone(),
                });
            }
            Then::Finish => out.extend(self.finish()),
            Then::Reverse { service_id, original, amount_minor, why, told } => {
                out.push(Command::Log(Log::Reversing { why }));
                if let Some(message) = told {
                    out.push(Command::Publish { stage: Stage::Authorizing, message });
                }
                out.push(Command::Reverse { service_id, original, amount_minor });
                out.extend(self.finish());
            }
            Then::Alert(message) => {
                out.push(Command::OutcomeUnknown { message });
                out.extend(self.finish());
            }
            Then::LeaveInDoubt(message) => out.extend(self.leave_in_doubt(message)),
        }
        out
    }

    /// A commit or a read failed (or a step was refused): the payment stays
    /// as stored. Only one still CREATED is certainly not at the terminal:
    /// then the lane is freed and the register may try again. Otherwise the
    /// lane stays busy and the register is told not to take the payment
    /// again; a restart settles it by TransactionStatus.
    fn unrecorded(&mut self, stored: Option<Status>, error: String) -> Vec<Command> {
        self.phase = Phase::Done;
        let may_be_at_gateway = stored.is_none_or(|s| s != Status::Created);
        let mut out = Vec::new();
        if self.origin == Origin::Register {
            if stored.is_some() && !may_be_at_gateway {
                let message = format!("Not paid: posd could not record the payment ({error}). Nothing was charged.");
                out.extend([Command::FreeLane, Command::Publish { stage: Stage::Failed, message }, Command::EndStream]);
            } else if stored.is_some() {
                let message = format!(
                    "Outcome unknown: posd could not record the payment terminal's answer ({error}). Do not take \
                     this payment again; posd settles payment {} when it restarts, which it does by itself once its \
                     database works again.",
                    self.payment.id
                );
                out.extend([Command::Publish { stage: Stage::Authorizing, message }, Command::EndStream]);
            } else {
                out.push(Command::EndStream);
            }
        }
        out.push(Command::Done(Outcome::Unrecorded { stored, may_be_at_gateway, error }));
        out
    }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}
