//! One payment on a lane's own card reader, as a sans-IO state machine (the
//! quinn-proto shape): the runtime feeds [`ReaderPayment`] its [`Event`]s and
//! the time (`now`, milliseconds on the runtime's monotonic clock) and carries
//! out the [`Command`]s it returns. The machine does no I/O and reads no clock;
//! its one deadline at a time is [`ReaderPayment::poll_timeout`].
//!
//! Every decision of the online payment path lives here: collecting the card
//! within its deadline, the authorization, offline approval or refusal when
//! nothing could be sent, status queries after a lost answer, and what the
//! register hears when a commit fails. [`next`] stays the one authority on
//! transitions: each [`Step`] is one of its answers, and the acts after a
//! commit are the committed transitions' [`Effect`]s.
//!
//! Persist before act: after a [`Command::Persist`] the machine waits for
//! [`Event::Committed`] (or [`Event::CommitFailed`]) and does nothing else;
//! [`Command::SendAuthorization`] comes only after the commit that moved the
//! payment to AUTHORIZING.
//!
//! ```text
//! start -> Persist[COLLECTING] (deferred) -> CollectCard -> ReaderCollecting (deadline set)
//! CardRead -> ReleaseReader, Persist[CARD_READ, AUTHORIZING] (synced) -> SendAuthorization
//! GatewayAnswer -> Persist[CAPTURED | AUTHORIZED | DECLINED] -> ShowResult -> Done
//! GatewayNotSent -> ReadOfflineQueue -> OfflineQueue -> Persist[OFFLINE_APPROVED | FAILED] -> ShowResult -> Done
//! GatewayUnknown -> Persist[UNKNOWN] -> QueryStatus (wait n x backoff before query n) ...
//!     -> Persist[CAPTURED | AUTHORIZED | DECLINED | REVERSAL_PENDING] -> Done
//! ```
//!
//! [`recover`] says what posd does at start-up with a reader payment it
//! finds unfinished; [`ReaderPayment::settling`] settles one by status query.

use std::time::Duration;

use crate::offline::{self, Entry, OfflineCandidate, OfflinePolicy, QueueState, Refusal};
use crate::{Effect, Input, Recovery, Status, Transition, TransitionError, next};

/// A time on the runtime's monotonic clock, in milliseconds.
pub type Millis = u64;

/// What a payment on the lane is run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long the reader may take to return a card.
    pub collect_timeout: Duration,
    /// Status queries after a lost answer, before a reversal is queued.
    pub status_attempts: u32,
    /// The wait before status query `n` (counted from 0) is `n` times this.
    pub status_backoff: Duration,
    /// The lane's offline limits.
    pub offline: OfflinePolicy,
}

/// The stored payment's essentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub status: Status,
    pub amount_minor: i64,
    pub currency: String,
    /// Authorize only; the register captures later.
    pub manual_capture: bool,
    /// The key every request about this payment goes to the gateway under.
    pub gateway_key: String,
}

/// What the decisions need of the card the reader returned. The runtime
/// keeps the card itself (its details and encrypted data) and stores it
/// where a step carries [`Data::Card`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The reader delivered encrypted card data.
    pub has_blob: bool,
    /// The brand, scrubbed of device text (a refusal's message shows it).
    pub brand: String,
    /// The reader's card fingerprint, scrubbed; empty: none given.
    pub fingerprint: String,
    pub entry: Entry,
    /// A chip card fell back to swipe.
    pub fallback: bool,
    pub cashback_minor: i64,
}

/// Why the reader ended a collection without a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderFailure {
    /// Canceled by the customer at the reader.
    Canceled,
    /// No card presented in the reader's own time.
    Timeout,
    CardError,
    /// A device error, or a reason posd does not know.
    Other,
}

/// What the register is shown, besides the stage of each committed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    PresentCard,
    Reading,
    PinEntry,
    Authorizing,
    Failed,
}

/// The gateway's record of the payment: its answer to the authorization or
/// to a status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved {
        captured: bool,
        auth_code: String,
        gateway_reference: String,
    },
    Declined {
        code: String,
        message: String,
    },
    /// The key is held as reversed or voided.
    Reversed,
    /// An answer without an outcome.
    NoOutcome,
}

/// What happened, as the runtime saw it.
#[derive(Debug, Clone)]
pub enum Event {
    /// The last [`Command::Persist`] is committed.
    Committed,
    /// The last [`Command::Persist`] failed (all of it: a commit is all or
    /// none). `stored`: the payment's status as the runtime reads it back,
    /// `None` if it cannot.
    CommitFailed {
        error: String,
        stored: Option<Status>,
    },
    /// The reader took the [`Command::CollectCard`] request; the deadline runs from now.
    ReaderCollecting,
    /// The reader could not be asked for a card.
    ReaderUnavailable {
        message: String,
    },
    ReaderProgress {
        stage: Stage,
        text: String,
    },
    CardRead(Card),
    ReaderFailed {
        reason: ReaderFailure,
        message: String,
    },
    ReaderDisconnected {
        reason: String,
    },
    /// The reader's event stream ended.
    ReaderGone,
    /// The register asked to cancel.
    RegisterCancel,
    /// The gateway answered the authorization.
    GatewayAnswer(Answer),
    /// The gateway refused the request as malformed; nothing was charged.
    GatewayRejected {
        message: String,
    },
    /// No connection could be made: the request never left posd.
    GatewayNotSent {
        message: String,
    },
    /// The request never left posd, for a fault on this machine: no ground
    /// for an offline approval.
    GatewayLocalFault {
        message: String,
    },
    /// The request may have reached the gateway, but no answer came back.
    GatewayUnknown {
        message: String,
    },
    /// The offline queue as stored, read under the offline gate, with the
    /// ageing clock's time of the read (the queue position if approved).
    OfflineQueue {
        queue: QueueState,
        queued_at_ms: i64,
    },
    /// The offline queue could not be read (the runtime logs why).
    OfflineQueueUnreadable,
    /// The gateway's record under the payment's key.
    StatusAnswer(Answer),
    /// The gateway has no record under the key (yet).
    StatusNoRecord,
    /// The status query failed.
    StatusFailed {
        message: String,
    },
}

/// How a commit must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before the runtime feeds back [`Event::Committed`].
    Synced,
    /// Committed without a sync of its own, durable with the next synced
    /// commit: for state whose loss recovery treats like the state before it.
    Deferred,
}

/// What a step stores besides its transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    None,
    /// The card from the [`Event::CardRead`]: its details and encrypted data.
    Card,
    /// The gateway's approval.
    Approval {
        auth_code: String,
        gateway_reference: String,
    },
    /// Entering the offline queue: its position (ageing-clock time), the
    /// reason nothing was sent, and the `approved_offline` event's message.
    Queued {
        queued_at_ms: i64,
        last_error: String,
        event: String,
    },
}

/// One transition to commit, with what it stores (`D`: [`Data`] on a card
/// reader, [`crate::terminal::Data`] on a payment terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<D = Data> {
    pub transition: Transition,
    pub data: D,
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Commit the steps in one commit, all or none; then, per step, send its
    /// register event and announce the new status (a status settled for the
    /// register frees the lane before its event goes out); then feed back
    /// [`Event::Committed`] or [`Event::CommitFailed`].
    Persist {
        steps: Vec<Step>,
        durability: Durability,
    },
    /// Ask the reader for a card; feed back [`Event::ReaderCollecting`] or
    /// [`Event::ReaderUnavailable`], then the reader's events.
    CollectCard,
    /// Stop routing the reader's messages to this payment.
    ReleaseReader,
    /// Tell the reader to stop collecting (it also releases it).
    CancelReader,
    ShowResult {
        approved: bool,
    },
    /// Send the authorization with the card read, under `gateway_key`,
    /// captured at once when `capture` (not for a manual-capture payment);
    /// feed back the gateway's result as a `Gateway*` event.
    SendAuthorization {
        gateway_key: String,
        capture: bool,
    },
    /// Take the offline gate (offline decisions one at a time across lanes),
    /// read the queue and feed back [`Event::OfflineQueue`] or
    /// [`Event::OfflineQueueUnreadable`].
    ReadOfflineQueue {
        currency: String,
        fingerprint: String,
    },
    ReleaseOfflineGate,
    /// A payment entered the offline queue: wake the forwarder.
    WakeForwarder,
    /// Ask the gateway for its record under the key; feed back a `Status*` event.
    QueryStatus {
        gateway_key: String,
    },
    /// A reversal is queued: wake the reversal worker.
    NotifyReversal,
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
    /// The machine is finished; it returns nothing more.
    Done(Outcome),
}

/// How a payment's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payment reached this status, committed: settled for the register
    /// or, on a payment terminal, left UNKNOWN for a person (the register
    /// was told so).
    Settled(Status),
    /// A commit failed, or the state machine refused a step: the payment is
    /// left as stored, for the next start to settle.
    Unrecorded { stored: Option<Status>, may_be_at_gateway: bool, error: String },
}

/// Who runs the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The register asked for it and follows it live.
    Register,
    /// Start-up recovery settles it by status query; nobody follows it.
    Recovery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Not started.
    New,
    /// A [`Command::Persist`] is out with these transitions.
    Committing(Vec<Transition>),
    /// [`Command::CollectCard`] is out; the reader has not taken it yet.
    Accepting,
    /// The reader is collecting until `deadline`.
    Collecting {
        deadline: Millis,
    },
    /// [`Command::SendAuthorization`] is out.
    Authorizing,
    /// [`Command::ReadOfflineQueue`] is out; `why` nothing was sent.
    ReadingQueue {
        why: String,
    },
    /// Status query `attempt` is out.
    Querying {
        attempt: u32,
    },
    /// Status query `attempt` goes out at `deadline`.
    Backoff {
        attempt: u32,
        deadline: Millis,
    },
    Done,
}

/// One payment on a native card reader, from CREATED (or, at start-up,
/// from UNKNOWN) to a status settled for the register.
#[derive(Debug, Clone)]
pub struct ReaderPayment {
    payment: Payment,
    settings: Settings,
    origin: Origin,
    phase: Phase,
    card: Option<Card>,
    /// The register asked to cancel before the reader took the request.
    cancel_requested: bool,
    /// The runtime holds the offline gate for this payment.
    gate_held: bool,
    /// Why the outcome is still unknown, as of the last status query.
    last_query: String,
}

const BY_REGISTER: &str = "the register";
/// Why an answer that is neither approval nor decline counts as lost.
const UNSETTLED: &str = "the gateway's answer did not settle the payment";

impl ReaderPayment {
    /// A payment the register asked for, stored as CREATED.
    pub fn new(payment: Payment, settings: Settings) -> Self {
        Self::with_origin(payment, settings, Origin::Register)
    }

    /// A payment found UNKNOWN at start-up (see [`recover`]), to settle by
    /// status query. Nobody follows it live and nothing is printed.
    pub fn settling(payment: Payment, settings: Settings) -> Self {
        Self::with_origin(payment, settings, Origin::Recovery)
    }

    fn with_origin(payment: Payment, settings: Settings, origin: Origin) -> Self {
        Self {
            payment,
            settings,
            origin,
            phase: Phase::New,
            card: None,
            cancel_requested: false,
            gate_held: false,
            last_query: String::new(),
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

    /// Starts the payment: the first commands.
    /// (`_now` is there for the day a start needs the time.)
    pub fn start(&mut self, _now: Millis) -> Vec<Command> {
        if self.phase != Phase::New {
            return Vec::new();
        }
        match self.origin {
            Origin::Register => self.persist(vec![(Input::Start, Data::None)], Durability::Deferred),
            Origin::Recovery if self.payment.status == Status::Unknown => self.begin_queries(),
            Origin::Recovery => {
                let e = TransitionError { from: self.payment.status, input: "a status query".into() };
                self.unrecorded(Some(self.payment.status), refused(&e))
            }
        }
    }

    /// When [`Self::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.phase {
            Phase::Collecting { deadline } | Phase::Backoff { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// The deadline of [`Self::poll_timeout`] may have passed.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<Command> {
        match self.phase {
            Phase::Collecting { deadline } if now >= deadline => {
                let message = format!("no card within {:?}", self.settings.collect_timeout);
                self.end_collection(Input::CollectFailed { code: "reader_timeout".into(), message }, true)
            }
            Phase::Backoff { attempt, deadline } if now >= deadline => {
                self.phase = Phase::Querying { attempt };
                vec![Command::QueryStatus { gateway_key: self.payment.gateway_key.clone() }]
            }
            _ => Vec::new(),
        }
    }

    /// Something happened. An event the payment does not wait for now is ignored.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Command> {
        let collecting = matches!(self.phase, Phase::Accepting | Phase::Collecting { .. });
        let authorizing = self.phase == Phase::Authorizing;
        match event {
            Event::Committed => match &mut self.phase {
                Phase::Committing(transitions) => {
                    let transitions = std::mem::take(transitions);
                    self.committed(transitions)
                }
                _ => Vec::new(),
            },
            Event::CommitFailed { error, stored } if matches!(self.phase, Phase::Committing(_)) => {
                self.unrecorded(stored, error)
            }
            Event::ReaderCollecting if self.phase == Phase::Accepting => {
                let deadline = now.saturating_add(millis(self.settings.collect_timeout));
                self.phase = Phase::Collecting { deadline };
                if self.cancel_requested {
                    self.end_collection(Input::Cancel { by: BY_REGISTER.into() }, false)
                } else {
                    Vec::new()
                }
            }
            Event::ReaderUnavailable { message } if self.phase == Phase::Accepting => {
                let input = Input::CollectFailed { code: "reader_unavailable".into(), message };
                self.persist(vec![(input, Data::None)], Durability::Synced)
            }
            Event::ReaderProgress { stage, text } if collecting => vec![Command::Publish { stage, message: text }],
            Event::CardRead(card) if collecting => self.card_read(card),
            Event::ReaderFailed { reason: ReaderFailure::Canceled, .. } if collecting => {
                self.end_collection(Input::Cancel { by: "the customer at the reader".into() }, true)
            }
            Event::ReaderFailed { reason, message } if collecting => {
                let code = match reason {
                    ReaderFailure::Timeout => "reader_timeout",
                    ReaderFailure::CardError => "card_error",
                    ReaderFailure::Canceled | ReaderFailure::Other => "reader_error",
                };
                self.end_collection(Input::CollectFailed { code: code.into(), message }, true)
            }
            Event::ReaderDisconnected { reason } if collecting => {
                let message = format!("the card reader disconnected: {reason}");
                self.end_collection(Input::CollectFailed { code: "reader_disconnected".into(), message }, true)
            }
            Event::ReaderGone if collecting => {
                let message = "the card reader stopped answering".to_string();
                self.end_collection(Input::CollectFailed { code: "reader_disconnected".into(), message }, true)
            }
            Event::RegisterCancel => match self.phase {
                Phase::Collecting { .. } => self.end_collection(Input::Cancel { by: BY_REGISTER.into() }, false),
                // Heard once the reader collects (as the runtime's cancel
                // channel is read only then).
                Phase::New | Phase::Accepting => {
                    self.cancel_requested = true;
                    Vec::new()
                }
                Phase::Committing(_) if self.payment.status == Status::Created => {
                    self.cancel_requested = true;
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Event::GatewayAnswer(answer) if authorizing => self.apply_answer(answer, UNSETTLED),
            Event::GatewayRejected { message } if authorizing => {
                let input = Input::Declined { code: "gateway_rejected".into(), message };
                self.persist(vec![(input, Data::None)], Durability::Synced)
            }
            Event::GatewayNotSent { message } if authorizing => {
                self.gate_held = true;
                self.phase = Phase::ReadingQueue { why: message };
                let fingerprint = self.card.as_ref().map(|c| c.fingerprint.clone()).unwrap_or_default();
                vec![Command::ReadOfflineQueue { currency: self.payment.currency.clone(), fingerprint }]
            }
            Event::GatewayLocalFault { message: why } if authorizing => {
                // Not the network: the gateway may be up, so no offline
                // approval; nothing was sent, so nothing is charged.
                let input = Input::OfflineRefused {
                    code: "local_resource_exhausted".into(),
                    message: format!(
                        "posd could not reach out to the gateway because of a fault on the lane PC ({why}); \
                         nothing was charged; take the payment again, and if this repeats, tell store IT"
                    ),
                };
                self.persist(vec![(input, Data::None)], Durability::Synced)
            }
            Event::GatewayUnknown { message } if authorizing => {
                self.persist(vec![(Input::AnswerLost { message }, Data::None)], Durability::Synced)
            }
            Event::OfflineQueue { queue, queued_at_ms } => match &mut self.phase {
                Phase::ReadingQueue { why } => {
                    let why = std::mem::take(why);
                    self.offline_decision(&queue, queued_at_ms, why)
                }
                _ => Vec::new(),
            },
            Event::OfflineQueueUnreadable => match &mut self.phase {
                Phase::ReadingQueue { why } => {
                    // Limits that cannot be checked refuse: nothing was sent,
                    // so the payment fails cleanly and the lane is free again.
                    let message = format!(
                        "The gateway cannot be reached ({why}) and posd cannot read its offline queue (a database \
                         error; see posd's log); nothing was charged"
                    );
                    let input = Input::OfflineRefused { code: "store_unavailable".into(), message };
                    let mut out = self.release_gate();
                    out.extend(self.persist(vec![(input, Data::None)], Durability::Synced));
                    out
                }
                _ => Vec::new(),
            },
            Event::StatusAnswer(answer) => match self.phase {
                Phase::Querying { attempt } => match answer {
                    Answer::Reversed => {
                        self.last_query = "the gateway holds the key as reversed".into();
                        self.still_unknown()
                    }
                    Answer::NoOutcome => {
                        self.last_query = "the gateway answered without an outcome".into();
                        self.query_again(attempt, now)
                    }
                    settled => self.apply_answer(settled, UNSETTLED),
                },
                _ => Vec::new(),
            },
            Event::StatusNoRecord => match self.phase {
                Phase::Querying { attempt } => {
                    self.last_query = "the gateway has no record of the request (yet)".into();
                    self.query_again(attempt, now)
                }
                _ => Vec::new(),
            },
            Event::StatusFailed { message } => match self.phase {
                Phase::Querying { attempt } => {
                    self.last_query = message;
                    self.query_again(attempt, now)
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// The collection ended without a card. Whatever ended it, the reader
    /// must stop too: told at once (`stop_reader`), or, for the register's
    /// cancel, by the transition's own effect.
    fn end_collection(&mut self, input: Input, stop_reader: bool) -> Vec<Command> {
        let mut out = if stop_reader { vec![Command::CancelReader] } else { Vec::new() };
        out.extend(self.persist(vec![(input, Data::None)], Durability::Synced));
        out
    }

    fn card_read(&mut self, card: Card) -> Vec<Command> {
        let mut out = vec![Command::ReleaseReader];
        if card.has_blob {
            // Card read and authorizing in one synced commit, before the
            // request leaves; on disk it also makes the deferred COLLECTING durable.
            let steps = vec![(Input::CardRead, Data::Card), (Input::Sending, Data::None)];
            out.extend(self.persist(steps, Durability::Synced));
        } else {
            let input = Input::CollectFailed {
                code: "card_data_unavailable".into(),
                message: "the reader delivered no encrypted card data (keys unavailable)".into(),
            };
            out.extend(self.persist(vec![(input, Data::None)], Durability::Synced));
        }
        self.card = Some(card);
        out
    }

    /// The gateway's answer for a payment in AUTHORIZING or UNKNOWN; one that
    /// does not settle it is a lost answer (`lost`).
    fn apply_answer(&mut self, answer: Answer, lost: &str) -> Vec<Command> {
        let step = match answer {
            Answer::Approved { captured, auth_code, gateway_reference } => {
                (Input::Approved { captured }, Data::Approval { auth_code, gateway_reference })
            }
            Answer::Declined { code, message } => (Input::Declined { code, message }, Data::None),
            Answer::Reversed | Answer::NoOutcome => (Input::AnswerLost { message: lost.into() }, Data::None),
        };
        self.persist(vec![step], Durability::Synced)
    }

    /// The request never left posd: approve offline if the lane's rules allow.
    fn offline_decision(&mut self, queue: &QueueState, queued_at_ms: i64, why: String) -> Vec<Command> {
        let decision = match &self.card {
            Some(card) => {
                let candidate = OfflineCandidate {
                    amount_minor: self.payment.amount_minor,
                    currency: &self.payment.currency,
                    brand: &card.brand,
                    entry: card.entry,
                    fallback: card.fallback,
                    cashback_minor: card.cashback_minor,
                    refund: false,
                    card_data: card.has_blob,
                    card_identified: !card.fingerprint.is_empty(),
                };
                offline::eligibility(&self.settings.offline, &candidate, queue)
            }
            None => Err(Refusal {
                code: "card_data_unavailable",
                message: "The reader delivered no encrypted card data (keys unavailable)".into(),
            }),
        };
        match decision {
            // The gate stays held until this commit is in: the limits hold for it.
            Ok(()) => {
                let event = format!("approved offline and queued ({why})");
                let data = Data::Queued { queued_at_ms, last_error: why, event };
                self.persist(vec![(Input::ApprovedOffline, data)], Durability::Synced)
            }
            Err(refusal) => {
                let message = format!(
                    "The gateway cannot be reached ({why}) and the payment may not be taken offline: {}",
                    refusal.message
                );
                let input = Input::OfflineRefused { code: refusal.code.into(), message };
                let mut out = self.release_gate();
                out.extend(self.persist(vec![(input, Data::None)], Durability::Synced));
                out
            }
        }
    }

    /// The answer was lost: ask for the outcome under the same key for the
    /// whole attempt budget (a delayed request may still arrive).
    fn begin_queries(&mut self) -> Vec<Command> {
        self.last_query = "no status query was made".into();
        if self.settings.status_attempts == 0 {
            return self.still_unknown();
        }
        self.phase = Phase::Querying { attempt: 0 };
        vec![Command::QueryStatus { gateway_key: self.payment.gateway_key.clone() }]
    }

    fn query_again(&mut self, attempt: u32, now: Millis) -> Vec<Command> {
        let attempt = attempt + 1;
        if attempt >= self.settings.status_attempts {
            return self.still_unknown();
        }
        let wait = millis(self.settings.status_backoff.saturating_mul(attempt));
        self.phase = Phase::Backoff { attempt, deadline: now.saturating_add(wait) };
        Vec::new()
    }

    /// The outcome stays unknown: queue a reversal.
    fn still_unknown(&mut self) -> Vec<Command> {
        let input = Input::StillUnknown { message: self.last_query.clone() };
        self.persist(vec![(input, Data::None)], Durability::Synced)
    }

    fn release_gate(&mut self) -> Vec<Command> {
        if std::mem::take(&mut self.gate_held) { vec![Command::ReleaseOfflineGate] } else { Vec::new() }
    }

    /// Asks [`next`] for each step from the current status and sends them to
    /// be committed together.
    fn persist(&mut self, inputs: Vec<(Input, Data)>, durability: Durability) -> Vec<Command> {
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
        self.phase = Phase::Committing(steps.iter().map(|s| s.transition.clone()).collect());
        vec![Command::Persist { steps, durability }]
    }

    /// A commit is in: the transitions' effects, then the next request or the end.
    fn committed(&mut self, transitions: Vec<Transition>) -> Vec<Command> {
        let mut out = self.release_gate();
        let Some(last) = transitions.last() else { return out };
        self.payment.status = last.to;
        self.phase = Phase::Done;
        if self.payment.status == Status::OfflineApproved {
            out.push(Command::WakeForwarder);
        }
        for effect in transitions.iter().flat_map(|t| t.effects.iter()) {
            match effect {
                Effect::CollectCard => {
                    self.phase = Phase::Accepting;
                    out.push(Command::CollectCard);
                }
                Effect::CancelCollection => out.push(Command::CancelReader),
                Effect::SendAuthorization => {
                    self.phase = Phase::Authorizing;
                    let (gateway_key, capture) = (self.payment.gateway_key.clone(), !self.payment.manual_capture);
                    out.push(Command::SendAuthorization { gateway_key, capture });
                }
                Effect::QueryStatus => out.extend(self.begin_queries()),
                Effect::SendReversal => out.push(Command::NotifyReversal),
                Effect::ShowResult { approved } => out.push(Command::ShowResult { approved: *approved }),
            }
        }
        if self.payment.status.is_settled_for_register() {
            if self.origin == Origin::Register {
                out.push(Command::AutoPrint);
            }
            out.push(Command::Done(Outcome::Settled(self.payment.status)));
        }
        out
    }

    /// A commit failed (or a step was refused): the payment stays as stored.
    /// If nothing can have reached the gateway, the register may safely try
    /// again: the lane is freed. Otherwise the lane stays busy and the
    /// register is told not to take the payment again; a restart settles it
    /// by status query.
    fn unrecorded(&mut self, stored: Option<Status>, error: String) -> Vec<Command> {
        self.phase = Phase::Done;
        let mut out = self.release_gate();
        let may_be_at_gateway =
            stored.is_none_or(|s| !matches!(s, Status::Created | Status::Collecting | Status::CardRead));
        if self.origin == Origin::Register {
            out.push(Command::ReleaseReader);
            if stored.is_some() && !may_be_at_gateway {
                let message = format!("Not paid: posd could not record the payment ({error}). Nothing was charged.");
                out.extend([Command::FreeLane, Command::Publish { stage: Stage::Failed, message }]);
                out.extend([Command::EndStream, Command::CancelReader]);
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

/// What posd does at start-up with an unfinished payment of a card-reader lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    Nothing,
    /// Commit this step (synced); a failure stops the start-up.
    Persist(Step),
    /// Settle by status query: commit `first` if there is one (a failure
    /// stops the start-up), then run [`ReaderPayment::settling`] in a task of
    /// its own.
    Settle {
        first: Option<Step>,
    },
    /// Wake the reversal worker: it retries until acknowledged.
    NotifyReversal,
}

/// The start-up decision for a stored payment of a card-reader lane (see [`crate::recovery`]).
pub fn recover(status: Status) -> Result<Recover, TransitionError> {
    let step = |input: Input| next(status, &input).map(|transition| Step { transition, data: Data::None });
    Ok(match crate::recovery(status) {
        Recovery::Interrupt => Recover::Persist(step(Input::Interrupted)?),
        Recovery::QueryStatus if status == Status::Authorizing => {
            let lost = Input::AnswerLost { message: "posd restarted while waiting for the gateway".into() };
            Recover::Settle { first: Some(step(lost)?) }
        }
        Recovery::QueryStatus => Recover::Settle { first: None },
        Recovery::Requeue => {
            let cut_short = Input::ForwardRetry { message: "posd restarted during forwarding".into() };
            Recover::Persist(step(cut_short)?)
        }
        Recovery::Reverse => Recover::NotifyReversal,
        Recovery::AskTerminal | Recovery::None => Recover::Nothing,
    })
}

pub(crate) fn refused(e: &TransitionError) -> String {
    format!("refused by the payment state machine: {e}")
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}
