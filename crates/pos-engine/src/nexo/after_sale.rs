//! After the sale on a nexo terminal: what a void or refund sends ([`void`],
//! [`refund`]) and [`AfterSale`], the machine that runs one under its own
//! idempotency key and ServiceID (committed before the request; the answer
//! committed before anyone hears it; an outcome in doubt asked about by that
//! ServiceID only).

use super::*;

/// What a void or refund of a nexo payment sends to the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A ReversalRequest (MerchantCancel) of the payment's POI transaction:
    /// all of it (`reversed_minor: None`, no ReversedAmount) or this much.
    Reversal { original: PoiTransaction, reversed_minor: Option<u64> },
    /// A PaymentRequest of type Refund, referring to nothing: the customer
    /// presents a card at the terminal.
    Refund { amount_minor: u64 },
}

impl Operation {
    /// The `MessageCategory` its TransactionStatus refers to.
    pub fn category(&self) -> Category {
        match self {
            Operation::Reversal { .. } => Category::Reversal,
            Operation::Refund { .. } => Category::Payment,
        }
    }
}

/// The `MessageCategory` of a request a TransactionStatus asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Payment,
    Reversal,
}

/// Why a void or refund cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AfterSaleError {
    #[error("the payment has no POI transaction id to reverse; refund it instead")]
    NoPoiTransaction,
    #[error("{refunded_minor} of the payment is refunded already; a reversal would pay back twice")]
    AlreadyRefunded { refunded_minor: u64 },
    #[error("a refund of nothing is not sent")]
    NothingToRefund,
    #[error("a refund of {amount_minor} exceeds the {left_minor} left to refund")]
    ExceedsCapture { amount_minor: u64, left_minor: u64 },
}

/// A void of a booked nexo payment: a whole Reversal of its POI
/// transaction, if nothing of it is refunded yet.
pub fn void(original: Option<&PoiTransaction>, refunded_minor: u64) -> Result<Operation, AfterSaleError> {
    if refunded_minor > 0 {
        return Err(AfterSaleError::AlreadyRefunded { refunded_minor });
    }
    let original = original.ok_or(AfterSaleError::NoPoiTransaction)?.clone();
    Ok(Operation::Reversal { original, reversed_minor: None })
}

/// A refund of `amount_minor`: of a booked nexo payment (`original`, its
/// POI transaction; `captured_minor` and `refunded_minor` so far), a
/// Reversal of it, whole when it pays back everything at once, in part
/// otherwise; without `original`, an unreferenced Refund (nothing to check
/// it against but the amounts given).
pub fn refund(
    original: Option<&PoiTransaction>,
    amount_minor: u64,
    captured_minor: u64,
    refunded_minor: u64,
) -> Result<Operation, AfterSaleError> {
    if amount_minor == 0 {
        return Err(AfterSaleError::NothingToRefund);
    }
    let left_minor = captured_minor.saturating_sub(refunded_minor);
    if amount_minor > left_minor {
        return Err(AfterSaleError::ExceedsCapture { amount_minor, left_minor });
    }
    Ok(match original {
        Some(original) => {
            let whole = refunded_minor == 0 && amount_minor == captured_minor;
            Operation::Reversal { original: original.clone(), reversed_minor: (!whole).then_some(amount_minor) }
        }
        None => Operation::Refund { amount_minor },
    })
}

/// What an after-sale operation stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Sent under this ServiceID; the lane's counter moves past it in the same commit.
    Started { service_id: String },
    /// The terminal booked it (in full or, as its answer says, in part).
    Booked(Answer),
    /// It was not booked: the register API's code and a message.
    NotBooked { code: String, message: String },
}

/// How an after-sale operation's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSaleOutcome {
    /// Committed as booked.
    Booked(Answer),
    /// Committed as not booked.
    NotBooked { code: String, message: String },
    /// The terminal could not tell in any attempt: it stays pending, under
    /// its ServiceID, to be asked again (never sent again).
    InDoubt { message: String },
    /// A commit or read failed. `sent`: the request may be at the terminal.
    Unrecorded { error: String, sent: bool },
}

/// What happened to an after-sale operation, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSaleEvent {
    Committed,
    StoreFailed { error: String },
    ServiceId(String),
    Answered(Answer),
    NotSent { message: String, identity: bool },
    InDoubt { message: String },
    Status(StatusAnswer),
}

/// What the runtime must do for an after-sale operation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSaleCommand {
    /// Read the lane's next ServiceID; feed back `ServiceId` or `StoreFailed`.
    NextServiceId,
    /// Commit this (synced); feed back `Committed` or `StoreFailed`.
    Persist {
        record: Record,
        durability: Durability,
    },
    /// POST the operation under `service_id`, `sale_transaction_id` (the
    /// operation's own idempotency key) its SaleTransactionID; feed back
    /// `Answered`, `NotSent` or `InDoubt`.
    Send {
        service_id: String,
        sale_transaction_id: String,
        operation: Operation,
    },
    /// POST a TransactionStatusRequest for the request of `category` under
    /// `service_id`; feed back `Status`.
    AskStatus {
        service_id: String,
        category: Category,
    },
    /// The terminal is not the lane's: mark the lane unavailable.
    LaneUnavailable {
        message: String,
    },
    Log(Log),
    Done(AfterSaleOutcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AfterPhase {
    New,
    ReadingServiceId,
    Committing(Option<AfterSaleOutcome>),
    Sending,
    Querying(Querying),
    Backoff { querying: Querying, deadline: Millis },
    Done,
}

/// How an after-sale operation begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// Take a ServiceID and commit it, then send.
    Fresh,
    /// Its ServiceID is committed already and nothing was sent: send.
    Committed,
    /// It may have been sent: ask, never send.
    Settling,
}

/// One void or refund on a nexo terminal, under its own idempotency key and
/// ServiceID: the ServiceID committed before the request, the answer before
/// anyone hears it, an outcome in doubt asked about by that ServiceID only.
#[derive(Debug, Clone)]
pub struct AfterSale {
    operation: Operation,
    key: String,
    settings: Settings,
    begin: Begin,
    service_id: Option<String>,
    phase: AfterPhase,
    /// The request may be at the terminal.
    sent: bool,
}

impl AfterSale {
    /// A new operation under `key` (its SaleTransactionID).
    pub fn new(operation: Operation, key: String, settings: Settings) -> Self {
        Self::with(operation, key, settings, Begin::Fresh, None)
    }

    /// An operation whose ServiceID another commit stored and which was not
    /// sent yet (a reversal [`NexoPayment`] owes: [`Command::Reverse`]).
    pub fn committed(operation: Operation, key: String, settings: Settings, service_id: String) -> Self {
        Self::with(operation, key, settings, Begin::Committed, Some(service_id))
    }

    /// An operation that may have been sent under `service_id` (found
    /// pending at start-up, or left in doubt): asked about, never sent again.
    pub fn settling(operation: Operation, key: String, settings: Settings, service_id: String) -> Self {
        Self::with(operation, key, settings, Begin::Settling, Some(service_id))
    }

    fn with(operation: Operation, key: String, settings: Settings, begin: Begin, service_id: Option<String>) -> Self {
        Self { operation, key, settings, begin, service_id, phase: AfterPhase::New, sent: false }
    }

    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// True once [`AfterSaleCommand::Done`] was returned.
    pub fn is_done(&self) -> bool {
        self.phase == AfterPhase::Done
    }

    pub fn start(&mut self, _now: Millis) -> Vec<AfterSaleCommand> {
        if self.phase != AfterPhase::New {
            return Vec::new();
        }
        match self.begin {
            Begin::Fresh => {
                self.phase = AfterPhase::ReadingServiceId;
                vec![AfterSaleCommand::NextServiceId]
            }
            Begin::Committed => self.send(),
            Begin::Settling => {
                self.sent = true;
                self.begin_queries("asking the payment terminal about an operation that may have reached it".into())
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.phase {
            AfterPhase::Backoff { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Millis) -> Vec<AfterSaleCommand> {
        match std::mem::replace(&mut self.phase, AfterPhase::Done) {
            AfterPhase::Backoff { querying, deadline } if now >= deadline => {
                self.phase = AfterPhase::Querying(querying);
                vec![self.ask()]
            }
            other => {
                self.phase = other;
                Vec::new()
            }
        }
    }

    pub fn handle(&mut self, event: AfterSaleEvent, now: Millis) -> Vec<AfterSaleCommand> {
        let sending = self.phase == AfterPhase::Sending;
        match event {
            AfterSaleEvent::Committed => match std::mem::replace(&mut self.phase, AfterPhase::Done) {
                AfterPhase::Committing(None) => self.send(),
                AfterPhase::Committing(Some(outcome)) => vec![AfterSaleCommand::Done(outcome)],
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            AfterSaleEvent::StoreFailed { error } => {
                if matches!(self.phase, AfterPhase::Committing(_) | AfterPhase::ReadingServiceId) {
                    self.phase = AfterPhase::Done;
                    vec![AfterSaleCommand::Done(AfterSaleOutcome::Unrecorded { error, sent: self.sent })]
                } else {
                    Vec::new()
                }
            }
            AfterSaleEvent::ServiceId(id) if self.phase == AfterPhase::ReadingServiceId => {
                self.service_id = Some(id.clone());
                self.commit(Record::Started { service_id: id }, None)
            }
            AfterSaleEvent::Answered(answer) if sending => self.answered(answer),
            AfterSaleEvent::NotSent { message, identity } if sending => {
                let mut out = Vec::new();
                if identity {
                    out.push(AfterSaleCommand::LaneUnavailable { message: message.clone() });
                }
                // Nothing left posd: it is not at the terminal.
                self.sent = false;
                let message = format!("The payment terminal could not be reached ({message}); nothing was sent to it");
                out.extend(self.not_booked("terminal_unavailable".into(), message));
                out
            }
            AfterSaleEvent::InDoubt { message } if sending => self.begin_queries(message),
            AfterSaleEvent::Status(answer) => match std::mem::replace(&mut self.phase, AfterPhase::Done) {
                AfterPhase::Querying(mut querying) => match querying.answer(answer, self.settings.status_backoff) {
                    Queried::Answered(answer) => self.answered(answer),
                    Queried::NotFound => {
                        let message = "The payment terminal has no record of it (TransactionStatus: NotFound); it \
                                       was not booked"
                            .to_string();
                        self.not_booked("terminal_not_booked".into(), message)
                    }
                    Queried::Again { wait } => {
                        self.phase = AfterPhase::Backoff { querying, deadline: now.saturating_add(millis(wait)) };
                        Vec::new()
                    }
                    Queried::Exhausted(message) => {
                        vec![AfterSaleCommand::Done(AfterSaleOutcome::InDoubt { message })]
                    }
                },
                other => {
                    self.phase = other;
                    Vec::new()
                }
            },
            _ => Vec::new(),
        }
    }

    fn ask(&self) -> AfterSaleCommand {
        let service_id = self.service_id.clone().unwrap_or_default();
        AfterSaleCommand::AskStatus { service_id, category: self.operation.category() }
    }

    fn send(&mut self) -> Vec<AfterSaleCommand> {
        self.phase = AfterPhase::Sending;
        self.sent = true;
        vec![AfterSaleCommand::Send {
            service_id: self.service_id.clone().unwrap_or_default(),
            sale_transaction_id: self.key.clone(),
            operation: self.operation.clone(),
        }]
    }

    fn begin_queries(&mut self, message: String) -> Vec<AfterSaleCommand> {
        self.phase = AfterPhase::Querying(Querying::new(self.settings.status_attempts));
        vec![AfterSaleCommand::Log(Log::InDoubt { message }), self.ask()]
    }

    fn answered(&mut self, answer: Answer) -> Vec<AfterSaleCommand> {
        if answer.booked() {
            return self.commit(Record::Booked(answer.clone()), Some(AfterSaleOutcome::Booked(answer)));
        }
        let f = failure(&answer);
        self.not_booked(f.code.into(), f.message)
    }

    fn not_booked(&mut self, code: String, message: String) -> Vec<AfterSaleCommand> {
        let outcome = AfterSaleOutcome::NotBooked { code: code.clone(), message: message.clone() };
        self.commit(Record::NotBooked { code, message }, Some(outcome))
    }

    fn commit(&mut self, record: Record, then: Option<AfterSaleOutcome>) -> Vec<AfterSaleCommand> {
        self.phase = AfterPhase::Committing(then);
        vec![AfterSaleCommand::Persist { record, durability: Durability::Synced }]
    }
}
