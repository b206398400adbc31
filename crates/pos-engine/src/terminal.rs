//! One payment on a lane's payment terminal that authorizes by itself (ZVT),
//! as a sans-IO state machine in the shape of [`crate::payment`]: the
//! runtime feeds [`TerminalPayment`] its [`Event`]s and the time (`now`,
//! milliseconds on the runtime's monotonic clock) and carries out the
//! [`Command`]s it returns. The machine does no I/O and reads no clock; its
//! one deadline at a time is [`TerminalPayment::poll_timeout`].
//!
//! The terminal decides with its own acquirer; posd records what it decided.
//! Persist before act: a result (04 0F) is committed, CONFIRMING or
//! DECLINED, before [`Command::Confirm`]`(true)` lets the runtime answer it
//! with `80 00`, the acknowledgement after which the terminal counts the
//! payment done; a result posd cannot commit, or must not let the terminal
//! book, is answered `84 66` ("goods not issued") and the terminal reverses
//! it. Whenever posd cannot know what the terminal booked (the line failed
//! after the terminal took the command, posd restarted), it asks the
//! terminal (Repeat Receipt, judged by the runtime against the receipt
//! numbers posd kept) and reports exactly what the terminal shows, once, or
//! leaves the payment UNKNOWN for a person: never a guess. Every commit is
//! synced: the terminal decides by itself once it has the command.
//!
//! ```text
//! start -> ReadLastReceipt -> Persist[COLLECTING] -> RunPayment
//! Progress -> Publish          RegisterCancel (COLLECTING) -> Abort
//! Result -> Persist[CONFIRMING | DECLINED] -> Confirm(true)   (unacceptable or not stored: Confirm(false))
//! Confirmed (80 00 reached the terminal) -> Persist[CAPTURED] -> WakeRecorder
//! Ended -> (after a refusal: AskTerminal, only to learn its last receipt number)
//!   -> Persist[CANCELED | FAILED] -> AutoPrint -> Done
//!   -> in doubt: Persist[UNKNOWN] -> Publish, ReadStored -> AskTerminal (again after the backoff while lost)
//!        -> Persist[CAPTURED | FAILED] -> AutoPrint -> Done
//!        -> OutcomeUnknown, FreeLane, Publish, EndStream -> AutoPrint -> Done   (left to a person)
//! ```
//!
//! [`TerminalPayment::settling`] settles a payment found in doubt at
//! start-up the same way, and [`recover`] says which ones.

use std::time::Duration;

pub use crate::payment::{Durability, Millis, Outcome, Stage, Step};

use crate::payment::refused;
use crate::{Input, Recovery, Status, Transition, TransitionError, next, recovery_on_terminal};

/// The terminal's result code for a payment the customer canceled there
/// (abort key or timeout).
pub const CANCELED_AT_TERMINAL: u8 = 0x6C;
/// The terminal's result code for "initialisation required".
pub const INITIALISATION_REQUIRED: u8 = 0x51;
/// The terminal's result codes for "busy".
pub const BUSY: [u8; 2] = [0xA0, 0x9C];

/// The `terminal_approved_offline` event's message.
const APPROVED_OFFLINE: &str = "the payment terminal approved offline; it forwards the payment to its acquirer later";

/// What a payment on the lane's terminal is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Asked after a lost line, the terminal gets four times this many
    /// attempts (at least four) before the payment is left to a person.
    pub status_attempts: u32,
    /// The wait between two attempts.
    pub status_backoff: Duration,
}

/// The stored payment's essentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub status: Status,
    pub amount_minor: i64,
}

/// What a Status-Information (04 0F) said, as far as the decisions need it.
/// The runtime keeps the rest (card, authorization code, trace) and stores
/// it where a step carries [`Data::Result`] or [`Data::Booked`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// `None`: the terminal sent none.
    pub result_code: Option<u8>,
    pub amount_minor: Option<u64>,
    pub receipt_no: Option<u16>,
    /// Approved offline by the terminal (payment type 0x40).
    pub offline: bool,
    /// A clear text for the result code (0xFF's when there is none): a
    /// decline's message.
    pub result_text: String,
}

impl StatusInfo {
    pub fn approved(&self) -> bool {
        self.result_code == Some(0)
    }
}

/// The terminal's result as stored with the payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub receipt_no: Option<u16>,
    pub approved: bool,
    pub offline: bool,
}

/// How a command on the terminal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Completion (06 0F), with the terminal's id when it gave one.
    Completed { terminal_id: String },
    /// Abort (06 1E) with a result code.
    Aborted { code: u8, text: String },
    /// The terminal refused the command (84 xx): it did not start.
    Refused { code: u8, text: String },
    /// The line failed or a timer ran out. `started`: the terminal had
    /// accepted the command, so it may have done something.
    Lost { message: String, started: bool },
}

/// What the terminal's Repeat Receipt says of a payment whose outcome posd
/// does not know (the runtime judges it against the receipt numbers of
/// [`Command::AskTerminal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The terminal booked it: this is its result.
    Booked(StatusInfo),
    /// The terminal shows it did not book it.
    NotBooked(String),
    /// The terminal's answer does not settle it.
    Undetermined(String),
}

/// What came of one Repeat Receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repeat {
    /// The terminal repeated its last receipt (or had none): judged.
    Judged(Verdict),
    /// The terminal refused or aborted the command.
    Declined { code: u8, text: String },
    /// The terminal could not be reached.
    Lost { message: String },
}

/// Asking the terminal (Repeat Receipt) until it answers: four times
/// [`Settings::status_attempts`] at most (at least four), the backoff apart.
/// Used by [`TerminalPayment`], and by the runtime for a refund in doubt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asking {
    attempt: u32,
    attempts: u32,
}

/// What an answer to [`Asking`] means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The terminal answered (its last receipt number is worth noting): this
    /// is what it says.
    Answered(Verdict),
    /// It could not be reached: ask again after the backoff.
    Again,
    /// It could not be reached in any attempt.
    Unreachable(Verdict),
}

impl Asking {
    pub fn new(status_attempts: u32) -> Self {
        Self { attempt: 0, attempts: status_attempts.max(1).saturating_mul(4) }
    }

    pub fn answer(&mut self, answer: Repeat) -> Asked {
        match answer {
            Repeat::Judged(verdict) => Asked::Answered(verdict),
            Repeat::Declined { code, text } => Asked::Answered(Verdict::Undetermined(format!(
                "the payment terminal cannot repeat its last receipt ({code:02X} {text}); check its journal"
            ))),
            Repeat::Lost { message } => {
                self.attempt += 1;
                if self.attempt < self.attempts {
                    Asked::Again
                } else {
                    Asked::Unreachable(Verdict::Undetermined(format!(
                        "the payment terminal could not be asked: {message}"
                    )))
                }
            }
        }
    }
}

/// What happened, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The last [`Command::Persist`] is committed.
    Committed,
    /// The last [`Command::Persist`], [`Command::ReadLastReceipt`] or
    /// [`Command::ReadStored`] failed. `stored`: the payment's status as the
    /// runtime reads it back, `None` if it cannot.
    StoreFailed { error: String, stored: Option<Status> },
    /// The lane's last receipt number posd saw (`None`: none known).
    LastReceipt(Option<u16>),
    /// What is stored with the payment: the terminal's result, and the
    /// lane's last receipt number when the payment started.
    Stored { result: Option<Stored>, receipt_before: Option<u16> },
    /// An intermediate status (04 FF).
    Progress { stage: Stage, text: String },
    /// A Status-Information (04 0F); the machine answers it with one
    /// [`Command::Confirm`].
    Result(StatusInfo),
    /// The 80 00 for the last result reached the terminal.
    Confirmed,
    /// The terminal got 84 66 for the last result (posd refused it, or did
    /// not confirm it in time): it reverses that result.
    Refused,
    /// The command on the terminal is over.
    Ended(Ending),
    /// The register asked to cancel.
    RegisterCancel,
    /// The answer to [`Command::AskTerminal`], with the terminal's last
    /// receipt number if it repeated one.
    Repeated { answer: Repeat, last_receipt: Option<u16> },
}

/// What a step stores besides its transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    None,
    /// Starting on the terminal: the lane's last receipt number then, what
    /// the terminal's answers about this payment are judged against.
    Start {
        receipt_before: Option<u16>,
    },
    /// The terminal's result from the last [`Event::Result`].
    Result,
    /// The terminal booked the payment: its record for the gateway's ledger
    /// is queued, and the lane's last receipt number moves to `last_receipt`
    /// in the same commit. `with_result`: the result the terminal repeated
    /// (the last [`Event::Repeated`]) is stored too. `event`: the
    /// `terminal_approved_offline` event's message.
    Booked {
        with_result: bool,
        last_receipt: Option<u16>,
        event: Option<String>,
    },
}

/// Why the runtime logs, besides what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// An error: posd refuses the terminal's result (`why`).
    RefusingResult { why: String },
    /// A warning: the outcome is in doubt; the terminal is asked.
    InDoubt { message: String },
    /// The terminal was asked; what it says.
    Asked { verdict: Verdict },
    /// A warning: the terminal's last receipt number could not be learned.
    ReceiptNumberUnknown { why: String },
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Commit the steps in one commit, all or none; then, per step, send its
    /// register event and announce the new status; then feed back
    /// [`Event::Committed`] or [`Event::StoreFailed`].
    Persist {
        steps: Vec<Step<Data>>,
        durability: Durability,
    },
    /// Read the lane's last receipt number; feed back [`Event::LastReceipt`]
    /// or [`Event::StoreFailed`].
    ReadLastReceipt,
    /// Run the payment command (06 01) for the amount on the terminal; feed
    /// back its course as it comes (`Progress`, `Result`, `Confirmed`,
    /// `Refused`, then `Ended`).
    RunPayment {
        amount_minor: u64,
    },
    /// Answer the last result: `true` 80 00 (it is stored), `false` 84 66.
    Confirm(bool),
    /// Ask the terminal to abort the payment command (06 B0).
    Abort,
    /// Read what is stored with the payment; feed back [`Event::Stored`] or
    /// [`Event::StoreFailed`].
    ReadStored,
    /// Run Repeat Receipt and judge the terminal's last receipt against an
    /// operation of `amount_minor` stored under receipt `stored`, or started
    /// after receipt `before`; feed back [`Event::Repeated`].
    AskTerminal {
        amount_minor: u64,
        stored: Option<u16>,
        before: Option<u16>,
    },
    /// Remember this as the lane's last receipt number.
    NoteReceipt(u16),
    /// A record for the gateway's ledger is queued: wake its sender.
    WakeRecorder,
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

/// What posd does at start-up with an unfinished payment of a payment
/// terminal's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    Nothing,
    /// Commit this step (synced); a failure stops the start-up.
    Persist(Step<Data>),
    /// Ask the terminal: run [`TerminalPayment::settling`] in a task that
    /// holds the lane.
    Settle,
}

/// The start-up decision for a stored payment of a payment terminal's lane
/// (see [`recovery_on_terminal`]): anything the terminal may have booked is
/// asked about, unless it was left to a person before (`left_to_a_person`,
/// read only then: the payment has a `terminal_outcome_unknown` event).
pub fn recover<E: From<TransitionError>>(
    status: Status,
    left_to_a_person: impl FnOnce() -> Result<bool, E>,
) -> Result<Recover, E> {
    Ok(match recovery_on_terminal(status) {
        Recovery::Interrupt => {
            let transition = next(status, &Input::Interrupted)?;
            Recover::Persist(Step { transition, data: Data::None })
        }
        // Already left to a person: asking again changes nothing.
        Recovery::AskTerminal if left_to_a_person()? => Recover::Nothing,
        Recovery::AskTerminal => Recover::Settle,
        Recovery::QueryStatus | Recovery::Reverse | Recovery::Requeue | Recovery::None => Recover::Nothing,
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

/// What follows a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Then {
    /// Run the payment command.
    Run,
    /// Confirm the result just stored (80 00).
    Confirm(Stored),
    /// Go on following the command.
    Continue,
    /// The run is over.
    Finish,
    /// Ask the terminal what it booked.
    Resolve,
    /// Leave the payment to a person, for this reason.
    LeaveInDoubt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    New,
    /// [`Command::ReadLastReceipt`] is out.
    ReadingLastReceipt,
    /// A [`Command::Persist`] is out with these transitions.
    Committing {
        transitions: Vec<Transition>,
        then: Then,
    },
    /// The payment command runs on the terminal.
    Running,
    /// Repeat Receipt is out only to learn the terminal's last receipt
    /// number; the command ended so.
    Resyncing(Ending),
    /// [`Command::ReadStored`] is out.
    ReadingStored,
    /// [`Command::AskTerminal`] is out.
    Asking(Asking),
    /// The terminal is asked again at `deadline`.
    Backoff {
        asking: Asking,
        deadline: Millis,
    },
    Done,
}

/// One payment on a payment terminal, from CREATED (or, at start-up, from
/// COLLECTING, CONFIRMING or UNKNOWN) to the end of its run.
#[derive(Debug, Clone)]
pub struct TerminalPayment {
    payment: Payment,
    settings: Settings,
    origin: Origin,
    phase: Phase,
    /// The terminal's result as stored with the payment, once known.
    stored: Option<Stored>,
    /// The lane's last receipt number when the payment started.
    before: Option<u16>,
    /// The register's cancel was passed on to the terminal.
    register_cancel: bool,
    /// Why posd refused a result (84 66): the first reason.
    refused: Option<String>,
    /// The terminal got 84 66 for the stored result: it reverses it.
    refused_late: bool,
}

impl TerminalPayment {
    /// A payment the register asked for, stored as CREATED.
    pub fn new(payment: Payment, settings: Settings) -> Self {
        Self::with_origin(payment, settings, Origin::Register)
    }

    /// A payment found COLLECTING, CONFIRMING or UNKNOWN at start-up (see
    /// [`recover`]), to settle by asking the terminal. Nothing is printed.
    pub fn settling(payment: Payment, settings: Settings) -> Self {
        Self::with_origin(payment, settings, Origin::Recovery)
    }

    fn with_origin(payment: Payment, settings: Settings, origin: Origin) -> Self {
        Self {
            payment,
            settings,
            origin,
            phase: Phase::New,
            stored: None,
            before: None,
            register_cancel: false,
            refused: None,
            refused_late: false,
        }
    }

    /// The status as last committed.
    pub fn status(&self) -> Status {
        self.payment.status
    }

    pub fn payment(&self) -> &Payment {
        &self.payment
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
                self.phase = Phase::ReadingLastReceipt;
                vec![Command::ReadLastReceipt]
            }
            (Origin::Recovery, Status::Collecting) => {
                let message = "posd restarted while the payment terminal had the payment".to_string();
                self.persist(vec![(Input::TerminalLost { message }, Data::None)], Then::Resolve)
            }
            (Origin::Recovery, Status::Confirming | Status::Unknown) => self.begin_resolve(),
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
            Phase::Backoff { asking, deadline } if now >= deadline => {
                self.phase = Phase::Asking(asking);
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
        let running = self.phase == Phase::Running;
        match event {
            Event::Committed => match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Committing { transitions, then } => self.committed(transitions, then),
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            Event::StoreFailed { error, stored } => {
                let waiting =
                    matches!(self.phase, Phase::Committing { .. } | Phase::ReadingLastReceipt | Phase::ReadingStored);
                // A result not stored: the terminal hears "goods not issued" and reverses.
                let answer = matches!(self.phase, Phase::Committing { then: Then::Confirm(_), .. });
                let mut out = if answer { vec![Command::Confirm(false)] } else { Vec::new() };
                if waiting {
                    out.extend(self.unrecorded(stored, error));
                }
                out
            }
            Event::LastReceipt(receipt_before) if self.phase == Phase::ReadingLastReceipt => {
                self.before = receipt_before;
                // Kept with the payment in the commit that starts it on the terminal.
                self.persist(vec![(Input::StartOnTerminal, Data::Start { receipt_before })], Then::Run)
            }
            Event::Stored { result, receipt_before } if self.phase == Phase::ReadingStored => {
                self.stored = result;
                self.before = receipt_before;
                self.phase = Phase::Asking(Asking::new(self.settings.status_attempts));
                vec![self.ask()]
            }
            Event::Progress { stage, text } if running => vec![Command::Publish { stage, message: text }],
            Event::Result(info) if running => self.result(info),
            Event::Confirmed if running && self.payment.status == Status::Confirming => {
                let stored = self.stored.unwrap_or_default();
                let data = booked(false, stored.receipt_no, stored.offline);
                self.persist(vec![(Input::TerminalConfirmed, data)], Then::Continue)
            }
            Event::Refused if running => {
                self.refused_late = self.payment.status == Status::Confirming;
                Vec::new()
            }
            Event::Ended(ending) if running => self.ended(ending),
            Event::RegisterCancel if running && self.payment.status == Status::Collecting && !self.register_cancel => {
                self.register_cancel = true;
                vec![Command::Abort]
            }
            Event::Repeated { answer, last_receipt } => match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Resyncing(ending) => {
                    let mut out = match (&answer, last_receipt) {
                        (Repeat::Judged(_), Some(receipt)) => vec![Command::NoteReceipt(receipt)],
                        (Repeat::Judged(_), None) => Vec::new(),
                        _ => vec![Command::Log(Log::ReceiptNumberUnknown { why: format!("{answer:?}") })],
                    };
                    out.extend(self.settle_command(ending));
                    out
                }
                Phase::Asking(mut asking) => match asking.answer(answer) {
                    Asked::Answered(verdict) => {
                        // The terminal's own last receipt: what later payments compare with.
                        let mut out: Vec<Command> = last_receipt.map(Command::NoteReceipt).into_iter().collect();
                        out.extend(self.act(verdict));
                        out
                    }
                    Asked::Again => {
                        let wait = millis(self.settings.status_backoff);
                        self.phase = Phase::Backoff { asking, deadline: now.saturating_add(wait) };
                        Vec::new()
                    }
                    Asked::Unreachable(verdict) => self.act(verdict),
                },
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            _ => Vec::new(),
        }
    }

    fn amount(&self) -> u64 {
        u64::try_from(self.payment.amount_minor).unwrap_or_default()
    }

    fn ask(&self) -> Command {
        let stored = self.stored.and_then(|s| s.receipt_no);
        Command::AskTerminal { amount_minor: self.amount(), stored, before: self.before }
    }

    /// A Status-Information while the payment command runs.
    fn result(&mut self, info: StatusInfo) -> Vec<Command> {
        if let Some(why) = self.unacceptable(&info) {
            // "Goods not issued": the terminal reverses it.
            self.refused.get_or_insert_with(|| why.clone());
            return vec![Command::Log(Log::RefusingResult { why }), Command::Confirm(false)];
        }
        if self.payment.status != Status::Collecting {
            // The same result again: it is stored already.
            return vec![Command::Confirm(true)];
        }
        let input = if info.approved() {
            Input::TerminalApproved
        } else {
            let code = info.result_code.unwrap_or(0xFF);
            Input::TerminalDeclined { code: format!("zvt_{code:02x}"), message: info.result_text.clone() }
        };
        let stored = Stored { receipt_no: info.receipt_no, approved: info.approved(), offline: info.offline };
        self.persist(vec![(input, Data::Result)], Then::Confirm(stored))
    }

    /// Why posd must not let the terminal book this result, if it must not:
    /// no result code, another amount than asked, or a second, different
    /// result for a payment that already has one.
    fn unacceptable(&self, info: &StatusInfo) -> Option<String> {
        if info.result_code.is_none() {
            return Some("the result carries no result code".into());
        }
        if info.approved() && info.amount_minor.is_some_and(|a| a != self.amount()) {
            return Some(format!(
                "the terminal approved {:?} instead of {}",
                info.amount_minor, self.payment.amount_minor
            ));
        }
        if self.payment.status != Status::Collecting {
            let same = self.stored.is_some_and(|s| s.receipt_no == info.receipt_no && s.approved == info.approved());
            if !same {
                return Some(format!("a second, different result for a payment that is {}", self.payment.status));
            }
        }
        None
    }

    /// The payment command ended. The terminal reverses what posd refused,
    /// under receipt numbers posd did not see: its last one is learned again
    /// first.
    fn ended(&mut self, ending: Ending) -> Vec<Command> {
        if self.refused.is_some() || self.refused_late {
            self.phase = Phase::Resyncing(ending);
            return vec![self.ask()];
        }
        self.settle_command(ending)
    }

    /// What the payment command's end leaves the payment at.
    fn settle_command(&mut self, ending: Ending) -> Vec<Command> {
        let failed = |code: &str, message: String| (Input::CollectFailed { code: code.into(), message }, Data::None);
        let step = match (self.payment.status, ending) {
            (Status::Confirming, _) if self.refused_late => {
                let message = "posd could not confirm the payment terminal's approval in time and told it not to \
                               book it; the terminal reverses it. Nothing was charged."
                    .to_string();
                (Input::TerminalRefused { message }, Data::None)
            }
            (Status::Collecting, _) if self.refused.is_some() => {
                let message = format!(
                    "posd refused the payment terminal's result ({}); the terminal reverses it. Nothing was charged.",
                    self.refused.clone().unwrap_or_default()
                );
                failed("terminal_result_refused", message)
            }
            (Status::Collecting, Ending::Aborted { code: CANCELED_AT_TERMINAL, .. }) => {
                let by = if self.register_cancel { "the register" } else { "the customer at the payment terminal" };
                (Input::Cancel { by: by.into() }, Data::None)
            }
            (Status::Collecting, Ending::Aborted { code, text } | Ending::Refused { code, text }) => match code {
                INITIALISATION_REQUIRED => failed(
                    "terminal_not_initialised",
                    format!(
                        "The payment terminal must be initialised before it takes payments ({text}); a technician \
                         runs its initialisation, then take the payment again. Nothing was charged."
                    ),
                ),
                c if BUSY.contains(&c) => failed(
                    "terminal_busy",
                    format!("The payment terminal is busy ({text}); take the payment again. Nothing was charged."),
                ),
                _ => failed(
                    format!("terminal_{code:02x}").as_str(),
                    format!("The payment terminal ended the payment: {text}. Nothing was charged."),
                ),
            },
            (Status::Collecting, Ending::Lost { message, started: false }) => failed(
                "terminal_unavailable",
                format!("The payment terminal did not take the payment ({message}). Nothing was charged."),
            ),
            // The terminal may have booked it: ask, never guess.
            (Status::Collecting | Status::Confirming, ending) => {
                let message = match ending {
                    Ending::Lost { message, .. } => message,
                    other => format!("the terminal ended without a result ({other:?})"),
                };
                let mut out = vec![Command::Log(Log::InDoubt { message: message.clone() })];
                out.extend(self.persist(vec![(Input::TerminalLost { message }, Data::None)], Then::Resolve));
                return out;
            }
            // Settled (captured, declined) before the command ended.
            _ => return self.finish(),
        };
        self.persist(vec![step], Then::Finish)
    }

    /// Asks the terminal what it booked for the payment in doubt, judged
    /// against what is stored with it: the same every time posd asks.
    fn begin_resolve(&mut self) -> Vec<Command> {
        self.phase = Phase::ReadingStored;
        let message = "Checking with the payment terminal what it booked".to_string();
        vec![Command::Publish { stage: Stage::Authorizing, message }, Command::ReadStored]
    }

    /// Settles the payment in doubt by what the terminal says.
    fn act(&mut self, verdict: Verdict) -> Vec<Command> {
        let mut out = vec![Command::Log(Log::Asked { verdict: verdict.clone() })];
        out.extend(match verdict {
            Verdict::Booked(info) => {
                // From UNKNOWN posd learns the result only now; from
                // CONFIRMING it has it stored.
                let with_result = self.payment.status == Status::Unknown;
                let (receipt, offline) = if with_result {
                    (info.receipt_no, info.offline)
                } else {
                    self.stored.map_or((None, false), |s| (s.receipt_no, s.offline))
                };
                self.persist(vec![(Input::TerminalConfirmed, booked(with_result, receipt, offline))], Then::Finish)
            }
            Verdict::NotBooked(message) => {
                self.persist(vec![(Input::TerminalNotBooked { message }, Data::None)], Then::Finish)
            }
            Verdict::Undetermined(message) if self.payment.status == Status::Confirming => {
                let input = Input::TerminalLost { message: message.clone() };
                self.persist(vec![(input, Data::None)], Then::LeaveInDoubt(message))
            }
            Verdict::Undetermined(message) => self.leave_in_doubt(message),
        });
        out
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
                Err(e) => {
                    let mut out = if matches!(then, Then::Confirm(_)) { vec![Command::Confirm(false)] } else { vec![] };
                    out.extend(self.unrecorded(Some(self.payment.status), refused(&e)));
                    return out;
                }
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
            Then::Run => {
                self.phase = Phase::Running;
                out.push(Command::RunPayment { amount_minor: self.amount() });
            }
            Then::Confirm(stored) => {
                self.stored = Some(stored);
                self.phase = Phase::Running;
                out.push(Command::Confirm(true));
            }
            Then::Continue => self.phase = Phase::Running,
            Then::Finish => out.extend(self.finish()),
            Then::Resolve => out.extend(self.begin_resolve()),
            Then::LeaveInDoubt(message) => out.extend(self.leave_in_doubt(message)),
        }
        out
    }

    /// A commit or a read failed (or a step was refused): the payment stays
    /// as stored. A payment terminal decides by itself once it has the
    /// payment, so only one still CREATED is certainly not charged: then the
    /// lane is freed and the register may try again. Otherwise the lane
    /// stays busy and the register is told not to take the payment again; a
    /// restart settles it by asking the terminal.
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
                    "Outcome unknown: posd could not record the gateway's answer ({error}). Do not take this payment \
                     again; posd settles payment {} when it restarts, which it does by itself once its database \
                     works again.",
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

fn booked(with_result: bool, last_receipt: Option<u16>, offline: bool) -> Data {
    Data::Booked { with_result, last_receipt, event: offline.then(|| APPROVED_OFFLINE.to_string()) }
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}
