//! The payment state machine, with no I/O: given a payment's status and what
//! happened, [`next`] says the new status and what must be done about it.
//!
//! The daemon commits each [`Transition`] (status, audit entry, data) to its
//! store *before* it performs the transition's [`Effect`]s or reports it, so a
//! crash at any point leaves a status from which [`recovery`] knows the safe
//! way on.
//!
//! # Layout
//! - this file: [`Status`], [`Input`], [`Effect`], the transition table [`next`] and [`recovery`].
//! - [`payment`]: one payment on a lane's card reader as a sans-IO machine driven on
//!   [`next`] (events and `now` in, commands out), and its start-up decision.
//! - [`terminal`]: one payment on a payment terminal that authorizes by itself (ZVT),
//!   the same way, and its start-up decision.
//! - [`nexo`]: one payment on a nexo terminal (Adyen's local Terminal API), the same
//!   way, its start-up decision, and its voids and refunds (reversals, unreferenced refunds).
//! - [`offline`]: the offline approval rules.
//! - [`transitions`]: every status change posd may make ([`transitions::ALLOWED`], [`allowed`]),
//!   each with where posd makes it.
//! - [`money`]: currencies and minor units.
//!
//! ```text
//! CREATED -> COLLECTING -(card read, stored)-> CARD_READ -(about to send)-> AUTHORIZING
//! COLLECTING -> CANCELED | FAILED          CARD_READ | AUTHORIZING -(not sent, offline refused)-> FAILED
//! AUTHORIZING -> CAPTURED | AUTHORIZED | DECLINED
//! AUTHORIZING -(answer lost)-> UNKNOWN -(status query)-> CAPTURED | AUTHORIZED | DECLINED
//! UNKNOWN -(still unknown)-> REVERSAL_PENDING -(acknowledged)-> REVERSED
//! CARD_READ | AUTHORIZING -(not sent, eligible)-> OFFLINE_APPROVED (queued)
//! OFFLINE_APPROVED -> FORWARDING -> CAPTURED | AUTHORIZED | OFFLINE_DECLINED | QUARANTINED
//!                                 | OFFLINE_APPROVED (link error: retried under the same key)
//! OFFLINE_APPROVED | QUARANTINED -(too old)-> EXPIRED
//! QUARANTINED -(requeued by a person)-> OFFLINE_APPROVED
//! FORWARDING -(past the expiry age, the gateway has no record)-> REVERSAL_PENDING (reversed under its key)
//! AUTHORIZED -> CAPTURED (captured) | VOIDED (voided) | REVERSAL_PENDING (capture window passed)
//! CREATED | COLLECTING | CARD_READ -(posd restarted, nothing sent)-> FAILED
//!
//! A payment terminal that authorizes by itself (ZVT):
//! CREATED -> COLLECTING -(result stored, before 80 00)-> CONFIRMING -(80 00 sent)-> CAPTURED -(reversed)-> VOIDED
//! COLLECTING -> DECLINED | CANCELED | FAILED
//! COLLECTING | CONFIRMING -(line lost)-> UNKNOWN -(asked the terminal)-> CAPTURED | FAILED (not booked)
//! CONFIRMING -(posd could not confirm it in time and told the terminal not to book it)-> FAILED
//! (otherwise a stored approval is never failed: CONFIRMING settles as CAPTURED or stays in doubt)
//! CREATED -(posd restarted)-> FAILED
//!
//! A nexo terminal (one POST per payment, its answer final):
//! CREATED -(ServiceID stored, before the POST)-> COLLECTING -(answer stored)-> CONFIRMING -> CAPTURED (one commit)
//! COLLECTING -> DECLINED (also a partial approval, reversed) | CANCELED | FAILED
//! COLLECTING -(TransactionStatus could not tell)-> UNKNOWN -> CAPTURED | FAILED (not booked)
//! CREATED -> CANCELED (before the POST) | FAILED (posd restarted)
//! CAPTURED -(reversed: a void, or approved after the register's cancel)-> VOIDED
//!
//! On a payment terminal (ZVT or nexo), a person who checked its journal settles an
//! UNKNOWN payment posd left in doubt (resolve_payment): UNKNOWN -> CAPTURED | FAILED.
//! ```

pub mod money;
pub mod nexo;
pub mod offline;
pub mod payment;
pub mod terminal;
pub mod transitions;

pub use transitions::allowed;

use std::fmt;

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Created,
    Collecting,
    CardRead,
    Authorizing,
    /// The payment terminal approved; posd stored its result and is
    /// confirming it (80 00). Not yet settled: the terminal reverses a result
    /// it never sees confirmed.
    Confirming,
    Unknown,
    Authorized,
    Captured,
    Declined,
    Canceled,
    Failed,
    ReversalPending,
    Reversed,
    /// Approved offline: the register was told "approved"; queued for the gateway.
    OfflineApproved,
    /// A forwarding attempt is (or may be) at the gateway.
    Forwarding,
    /// The gateway declined a payment approved offline: the merchant's loss.
    OfflineDeclined,
    /// The gateway refused the item itself (malformed, account mismatch): a person must look.
    Quarantined,
    /// Not forwarded in time; the card data is deleted.
    Expired,
    /// Voided before capture; nothing is charged.
    Voided,
}

impl Status {
    pub const ALL: [Status; 19] = [
        Status::Created,
        Status::Collecting,
        Status::CardRead,
        Status::Authorizing,
        Status::Confirming,
        Status::Unknown,
        Status::Authorized,
        Status::Captured,
        Status::Declined,
        Status::Canceled,
        Status::Failed,
        Status::ReversalPending,
        Status::Reversed,
        Status::OfflineApproved,
        Status::Forwarding,
        Status::OfflineDeclined,
        Status::Quarantined,
        Status::Expired,
        Status::Voided,
    ];

    /// Stable name, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Collecting => "collecting",
            Status::CardRead => "card_read",
            Status::Authorizing => "authorizing",
            Status::Confirming => "confirming",
            Status::Unknown => "unknown",
            Status::Authorized => "authorized",
            Status::Captured => "captured",
            Status::Declined => "declined",
            Status::Canceled => "canceled",
            Status::Failed => "failed",
            Status::ReversalPending => "reversal_pending",
            Status::Reversed => "reversed",
            Status::OfflineApproved => "offline_approved",
            Status::Forwarding => "forwarding",
            Status::OfflineDeclined => "offline_declined",
            Status::Quarantined => "quarantined",
            Status::Expired => "expired",
            Status::Voided => "voided",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The register has its answer: the payment will not change from the
    /// register's point of view (approved, or definitely not charged).
    pub fn is_settled_for_register(self) -> bool {
        !matches!(
            self,
            Status::Created
                | Status::Collecting
                | Status::CardRead
                | Status::Authorizing
                | Status::Confirming
                | Status::Unknown
        )
    }

    /// Nothing more will ever happen to the payment's status. (A captured
    /// payment may still be reversed at a payment terminal; refunds of it
    /// are kept apart from its status.)
    pub fn is_final(self) -> bool {
        self.is_settled_for_register()
            && !self.is_unsent()
            && !matches!(self, Status::ReversalPending | Status::Authorized | Status::Captured)
    }

    /// The register treats the payment as paid.
    pub fn is_approved(self) -> bool {
        matches!(self, Status::Authorized | Status::Captured) || self.is_unsent()
    }

    /// Approved offline and not yet settled with the gateway: the outbox.
    pub fn is_unsent(self) -> bool {
        matches!(self, Status::OfflineApproved | Status::Forwarding | Status::Quarantined)
    }

    /// Only these statuses may hold the encrypted card data: it is needed to
    /// send the authorization (online, or forwarded from the outbox) and
    /// nowhere after. The store deletes it on any transition out of them, in
    /// the same commit.
    pub fn keeps_card_data(self) -> bool {
        matches!(self, Status::CardRead | Status::Authorizing) || self.is_unsent()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The payment is recorded; ask the reader for a card.
    Start,
    /// The reader returned card data (stored in the same commit).
    CardRead,
    /// The reader could not collect a card.
    CollectFailed { code: String, message: String },
    /// The register (or the customer at the reader) canceled.
    Cancel { by: String },
    /// The authorization request is about to go out.
    Sending,
    /// The gateway approved.
    Approved { captured: bool },
    /// The gateway declined.
    Declined { code: String, message: String },
    /// The request may have reached the gateway, but no answer came back.
    AnswerLost { message: String },
    /// The status query did not settle the outcome.
    StillUnknown { message: String },
    /// The gateway acknowledged the reversal.
    ReversalAcknowledged,
    /// posd restarted and found the payment before any request was sent.
    Interrupted,
    /// The gateway could not be reached and the payment is eligible offline.
    ApprovedOffline,
    /// The gateway could not be reached and offline approval was refused.
    OfflineRefused { code: String, message: String },
    /// A forwarding attempt for a queued payment is about to go out.
    ForwardSending,
    /// A forwarding attempt failed on the link; the payment waits in the queue again.
    ForwardRetry { message: String },
    /// The gateway refused the queued item itself.
    Quarantine { code: String, message: String },
    /// The queued payment passed the expiry age.
    Expire { message: String },
    /// A queued payment past the expiry age whose forwarding may have reached
    /// the gateway, asked about by its key (its card data already deleted):
    /// the gateway has no record. An earlier attempt could still arrive late,
    /// so it is reversed under its key (a tombstone) rather than just dropped.
    NoRecordAfterExpiry { message: String },
    /// An operator puts a quarantined payment back in the queue (the cause
    /// was fixed at the gateway); it is forwarded again under the same key.
    Requeue { by: String },
    /// The gateway captured the authorized payment.
    Capture,
    /// An authorized payment was not captured within the capture window
    /// (its length, for the audit log): it is reversed to release the hold.
    CaptureWindowPassed { window: String },
    /// The gateway voided the authorized payment.
    Void { reason: String },
    /// The payment is recorded; ask the payment terminal for it.
    StartOnTerminal,
    /// The terminal approved (its result stored in the same commit).
    TerminalApproved,
    /// posd confirmed the stored result to the terminal (80 00 sent), or
    /// the terminal confirmed it booked the payment when asked.
    TerminalConfirmed,
    /// The terminal declined.
    TerminalDeclined { code: String, message: String },
    /// The line to the terminal failed after it took the command: it may
    /// have approved.
    TerminalLost { message: String },
    /// Asked after a lost line or a restart, the terminal shows it did not
    /// book the payment.
    TerminalNotBooked { message: String },
    /// The terminal reversed the payment (a void on the register's request).
    TerminalReversed { reason: String },
    /// posd told the terminal not to book its stored result ("goods not
    /// issued": the result came too late to be confirmed); the terminal
    /// reverses it.
    TerminalRefused { message: String },
}

/// What the daemon must do after committing a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    CollectCard,
    CancelCollection,
    SendAuthorization,
    QueryStatus,
    SendReversal,
    ShowResult { approved: bool },
}

/// Why a payment failed or was declined, stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    /// Audit log text.
    pub cause: String,
    /// A decline reason (to DECLINED) or failure reason (to FAILED / REVERSAL_PENDING).
    pub reason: Option<Reason>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a payment in status {from} cannot take {input}")]
pub struct TransitionError {
    pub from: Status,
    pub input: String,
}

fn reason(code: &str, message: impl Into<String>) -> Option<Reason> {
    Some(Reason { code: code.to_string(), message: message.into() })
}

/// The one place that decides how a payment moves.
pub fn next(from: Status, input: &Input) -> Result<Transition, TransitionError> {
    use Effect::*;
    use Status::*;
    let t = |to: Status, cause: String, reason: Option<Reason>, effects: Vec<Effect>| {
        Ok(Transition { from, to, cause, reason, effects })
    };
    match (from, input) {
        (Created, Input::Start) => t(Collecting, "reader asked for a card".into(), None, vec![CollectCard]),
        (Collecting, Input::CardRead) => t(CardRead, "card read; encrypted card data stored".into(), None, vec![]),
        (Collecting, Input::CollectFailed { code, message }) => {
            t(Failed, format!("reader: {message}"), reason(code, message.clone()), vec![])
        }
        (Created | Collecting, Input::Cancel { by }) => t(
            Canceled,
            format!("canceled by {by}"),
            reason("canceled", format!("canceled by {by}")),
            vec![CancelCollection],
        ),
        (CardRead, Input::Sending) => {
            t(Authorizing, "authorization request sent to the gateway".into(), None, vec![SendAuthorization])
        }
        (CardRead | Authorizing, Input::ApprovedOffline) => t(
            OfflineApproved,
            "gateway unreachable, nothing sent; approved offline and queued for forwarding".into(),
            None,
            vec![ShowResult { approved: true }],
        ),
        (CardRead | Authorizing, Input::OfflineRefused { code, message }) => t(
            Failed,
            format!("gateway unreachable and offline approval refused: {code}"),
            reason(code, message.clone()),
            vec![ShowResult { approved: false }],
        ),
        (OfflineApproved, Input::ForwardSending) => t(Forwarding, "forwarding to the gateway".into(), None, vec![]),
        (Forwarding, Input::ForwardRetry { message }) => {
            t(OfflineApproved, format!("forwarding failed, will retry under the same key: {message}"), None, vec![])
        }
        (Forwarding, Input::Approved { captured }) => {
            t(if *captured { Captured } else { Authorized }, "forwarded; gateway approved".into(), None, vec![])
        }
        (Forwarding, Input::Declined { code, message }) => t(
            OfflineDeclined,
            format!("forwarded; gateway declined: {code}"),
            reason(code, format!("Approved offline but declined when forwarded: {message}")),
            vec![],
        ),
        (Forwarding, Input::Quarantine { code, message }) => {
            t(Quarantined, format!("gateway refused the item: {code}"), reason(code, message.clone()), vec![])
        }
        (Authorized, Input::Capture) => t(Captured, "captured".into(), None, vec![]),
        (Authorized, Input::CaptureWindowPassed { window }) => t(
            ReversalPending,
            format!("not captured within the capture window ({window}); reversal queued to release the hold"),
            reason(
                "capture_window_passed",
                format!(
                    "Not captured within the capture window ({window}); the authorization is reversed. Nothing is charged."
                ),
            ),
            vec![SendReversal],
        ),
        (Authorized, Input::Void { reason: why }) => {
            t(Voided, format!("voided: {why}"), reason("voided", format!("Voided before capture: {why}")), vec![])
        }
        (Quarantined, Input::Requeue { by }) => {
            t(OfflineApproved, format!("requeued by {by}; forwarded again under the same gateway key"), None, vec![])
        }
        (OfflineApproved | Quarantined, Input::Expire { message }) => {
            t(Expired, format!("expired unsent: {message}"), reason("expired", message.clone()), vec![])
        }
        (Forwarding, Input::NoRecordAfterExpiry { message }) => t(
            ReversalPending,
            format!("expired: the gateway has no record of it; reversal queued under its key ({message})"),
            reason("expired", message.clone()),
            vec![SendReversal],
        ),
        (Authorizing | Unknown, Input::Approved { captured }) => t(
            if *captured { Captured } else { Authorized },
            "gateway approved".into(),
            None,
            vec![ShowResult { approved: true }],
        ),
        (Authorizing | Unknown, Input::Declined { code, message }) => t(
            Declined,
            format!("gateway declined: {code}"),
            reason(code, message.clone()),
            vec![ShowResult { approved: false }],
        ),
        (Authorizing, Input::AnswerLost { message }) => {
            t(Unknown, format!("no answer from the gateway: {message}"), None, vec![QueryStatus])
        }
        (Unknown, Input::StillUnknown { message }) => t(
            ReversalPending,
            format!("outcome still unknown ({message}); reversal queued"),
            reason("outcome_unknown", "The gateway did not answer; the payment is being reversed. Nothing is charged."),
            vec![SendReversal, ShowResult { approved: false }],
        ),
        (ReversalPending, Input::ReversalAcknowledged) => {
            t(Reversed, "gateway acknowledged the reversal".into(), None, vec![])
        }
        (Created, Input::StartOnTerminal) => {
            t(Collecting, "payment terminal asked to take the payment".into(), None, vec![])
        }
        (Collecting, Input::TerminalApproved) => {
            t(Confirming, "payment terminal approved; result stored before confirming it".into(), None, vec![])
        }
        (Confirming | Unknown, Input::TerminalConfirmed) => {
            t(Captured, "payment terminal's result confirmed; record queued for the gateway".into(), None, vec![])
        }
        (Collecting, Input::TerminalDeclined { code, message }) => {
            t(Declined, format!("payment terminal declined: {code}"), reason(code, message.clone()), vec![])
        }
        (Collecting | Confirming, Input::TerminalLost { message }) => {
            t(Unknown, format!("line to the payment terminal lost: {message}"), None, vec![])
        }
        // Never from CONFIRMING: posd holds the terminal's approval then.
        (Unknown, Input::TerminalNotBooked { message }) => t(
            Failed,
            "the payment terminal shows the payment was not booked".into(),
            reason("terminal_not_booked", message.clone()),
            vec![],
        ),
        (Confirming, Input::TerminalRefused { message }) => t(
            Failed,
            "posd refused the payment terminal's result; the terminal reverses it".into(),
            reason("terminal_result_refused", message.clone()),
            vec![],
        ),
        (Captured, Input::TerminalReversed { reason: why }) => t(
            Voided,
            format!("reversed at the payment terminal: {why}"),
            reason("voided", format!("Reversed at the payment terminal: {why}")),
            vec![],
        ),
        (Created | Collecting | CardRead, Input::Interrupted) => t(
            Failed,
            "posd restarted before the authorization was sent".into(),
            reason("interrupted", "posd restarted during the payment; nothing was charged"),
            vec![],
        ),
        _ => Err(TransitionError { from, input: format!("{input:?}") }),
    }
}

/// What posd does with a payment it finds after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing can have reached the gateway: end it as [`Input::Interrupted`].
    Interrupt,
    /// A request may be at the gateway: settle it by status query (AUTHORIZING
    /// first moves to UNKNOWN).
    QueryStatus,
    /// Keep retrying the reversal.
    Reverse,
    /// A forwarding attempt was cut short: back to the queue (the same key
    /// makes a repeat safe).
    Requeue,
    /// Ask the payment terminal what it booked (Repeat Receipt).
    AskTerminal,
    /// Nothing to do.
    None,
}

/// What posd does after a restart with a payment taken on a payment
/// terminal that authorizes by itself: anything the terminal may have booked
/// is settled by asking the terminal, never by a guess.
pub fn recovery_on_terminal(status: Status) -> Recovery {
    match status {
        Status::Created => Recovery::Interrupt,
        Status::Collecting | Status::Confirming | Status::Unknown => Recovery::AskTerminal,
        _ => Recovery::None,
    }
}

pub fn recovery(status: Status) -> Recovery {
    match status {
        Status::Created | Status::Collecting | Status::CardRead => Recovery::Interrupt,
        Status::Authorizing | Status::Unknown => Recovery::QueryStatus,
        Status::ReversalPending => Recovery::Reverse,
        Status::Forwarding => Recovery::Requeue,
        _ => Recovery::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_inputs() -> Vec<Input> {
        vec![
            Input::Start,
            Input::CardRead,
            Input::CollectFailed { code: "c".into(), message: "m".into() },
            Input::Cancel { by: "register".into() },
            Input::Sending,
            Input::Approved { captured: true },
            Input::Approved { captured: false },
            Input::Declined { code: "generic_decline".into(), message: "m".into() },
            Input::AnswerLost { message: "m".into() },
            Input::StillUnknown { message: "m".into() },
            Input::ReversalAcknowledged,
            Input::Interrupted,
            Input::ApprovedOffline,
            Input::OfflineRefused { code: "amount_over_limit".into(), message: "m".into() },
            Input::ForwardSending,
            Input::ForwardRetry { message: "m".into() },
            Input::Quarantine { code: "account_mismatch".into(), message: "m".into() },
            Input::Expire { message: "m".into() },
            Input::NoRecordAfterExpiry { message: "m".into() },
            Input::Requeue { by: "m".into() },
            Input::Capture,
            Input::CaptureWindowPassed { window: "2d".into() },
            Input::Void { reason: "m".into() },
            Input::StartOnTerminal,
            Input::TerminalApproved,
            Input::TerminalConfirmed,
            Input::TerminalDeclined { code: "zvt_05".into(), message: "m".into() },
            Input::TerminalLost { message: "m".into() },
            Input::TerminalNotBooked { message: "m".into() },
            Input::TerminalReversed { reason: "m".into() },
            Input::TerminalRefused { message: "m".into() },
        ]
    }

    #[test]
    fn a_terminal_result_is_approved_only_once_confirmed_and_never_failed_when_in_doubt() {
        let t = next(Status::Collecting, &Input::TerminalApproved).unwrap();
        assert_eq!(t.to, Status::Confirming);
        assert!(!t.to.is_approved() && !t.to.is_settled_for_register());
        assert_eq!(next(Status::Confirming, &Input::TerminalConfirmed).unwrap().to, Status::Captured);
        // A lost line after the result is a doubt, not a failure.
        let lost = next(Status::Confirming, &Input::TerminalLost { message: "m".into() }).unwrap();
        assert_eq!(lost.to, Status::Unknown);
        // Only the terminal's own answer settles the doubt.
        assert_eq!(next(Status::Unknown, &Input::TerminalConfirmed).unwrap().to, Status::Captured);
        assert_eq!(
            next(Status::Unknown, &Input::TerminalNotBooked { message: "m".into() }).unwrap().to,
            Status::Failed
        );
        // The terminal's stored approval is never turned into "not charged".
        assert!(next(Status::Confirming, &Input::TerminalNotBooked { message: "m".into() }).is_err());
        for s in [Status::Collecting, Status::Confirming, Status::Unknown] {
            assert_eq!(recovery_on_terminal(s), Recovery::AskTerminal);
        }
        assert_eq!(recovery_on_terminal(Status::Created), Recovery::Interrupt);
    }

    #[test]
    fn only_a_payment_being_asked_about_expires_for_want_of_a_gateway_record() {
        let gone = Input::NoRecordAfterExpiry { message: "m".into() };
        let t = next(Status::Forwarding, &gone).unwrap();
        // Reversed under its key, so a late forwarding can never charge it.
        assert_eq!(t.to, Status::ReversalPending);
        assert_eq!(t.effects, vec![Effect::SendReversal]);
        assert_eq!(t.reason.as_ref().unwrap().code, "expired");
        assert!(!t.to.keeps_card_data());
        for s in Status::ALL.into_iter().filter(|s| *s != Status::Forwarding) {
            assert!(next(s, &gone).is_err(), "{s} expires only through a forwarding round");
        }
    }

    #[test]
    fn names_roundtrip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn final_statuses_take_no_input() {
        for s in Status::ALL.into_iter().filter(|s| s.is_final()) {
            for i in all_inputs() {
                assert!(next(s, &i).is_err(), "{s} took {i:?}");
            }
        }
    }

    #[test]
    fn a_lost_answer_is_never_a_decline_and_never_approved_without_the_gateway() {
        let t = next(Status::Authorizing, &Input::AnswerLost { message: "deadline".into() }).unwrap();
        assert_eq!(t.to, Status::Unknown);
        assert_eq!(t.effects, vec![Effect::QueryStatus]);
        let t = next(Status::Unknown, &Input::StillUnknown { message: "x".into() }).unwrap();
        assert_eq!(t.to, Status::ReversalPending);
        assert!(t.effects.contains(&Effect::SendReversal));
        assert!(!t.to.is_approved());
    }

    #[test]
    fn an_offline_refusal_is_only_possible_before_the_answer_is_in_doubt() {
        let refused = Input::OfflineRefused { code: "amount_over_limit".into(), message: "x".into() };
        assert!(next(Status::Unknown, &refused).is_err());
        assert_eq!(next(Status::CardRead, &refused).unwrap().to, Status::Failed);
    }

    #[test]
    fn cancel_only_while_collecting() {
        assert_eq!(next(Status::Collecting, &Input::Cancel { by: "register".into() }).unwrap().to, Status::Canceled);
        for s in [Status::CardRead, Status::Authorizing, Status::Unknown] {
            assert!(next(s, &Input::Cancel { by: "register".into() }).is_err());
        }
    }

    #[test]
    fn card_data_is_kept_only_until_the_gateway_has_answered() {
        let keepers: Vec<Status> = Status::ALL.into_iter().filter(|s| s.keeps_card_data()).collect();
        assert_eq!(
            keepers,
            vec![
                Status::CardRead,
                Status::Authorizing,
                Status::OfflineApproved,
                Status::Forwarding,
                Status::Quarantined
            ]
        );
    }

    #[test]
    fn only_a_payment_that_was_never_sent_is_approved_offline() {
        for s in Status::ALL {
            let ok = next(s, &Input::ApprovedOffline).is_ok();
            assert_eq!(ok, matches!(s, Status::CardRead | Status::Authorizing), "{s}");
        }
        // A lost answer never turns into an offline approval.
        assert!(next(Status::Unknown, &Input::ApprovedOffline).is_err());
    }

    #[test]
    fn a_forwarded_decline_is_the_merchants_loss_not_a_plain_decline() {
        let t =
            next(Status::Forwarding, &Input::Declined { code: "generic_decline".into(), message: "m".into() }).unwrap();
        assert_eq!(t.to, Status::OfflineDeclined);
        assert!(!t.to.is_approved() && t.to.is_final());
    }

    #[test]
    fn only_a_quarantined_payment_is_requeued_and_it_keeps_its_card_data_for_the_next_attempt() {
        for s in Status::ALL {
            let t = next(s, &Input::Requeue { by: "posctl".into() });
            assert_eq!(t.is_ok(), s == Status::Quarantined, "{s}");
        }
        let t = next(Status::Quarantined, &Input::Requeue { by: "posctl".into() }).unwrap();
        assert_eq!(t.to, Status::OfflineApproved);
        assert!(t.to.keeps_card_data() && t.to.is_approved());
        assert!(t.cause.contains("posctl"), "{}", t.cause);
    }

    #[test]
    fn an_authorization_left_uncaptured_past_its_window_is_reversed_not_charged() {
        for s in Status::ALL {
            let ok = next(s, &Input::CaptureWindowPassed { window: "2d".into() }).is_ok();
            assert_eq!(ok, s == Status::Authorized, "{s}");
        }
        let t = next(Status::Authorized, &Input::CaptureWindowPassed { window: "2d".into() }).unwrap();
        assert_eq!(t.to, Status::ReversalPending);
        assert_eq!(t.reason.unwrap().code, "capture_window_passed");
        assert!(t.effects.contains(&Effect::SendReversal));
        assert!(!t.to.is_approved());
        assert!(next(Status::ReversalPending, &Input::Capture).is_err(), "no capture once the reversal is queued");
    }

    #[test]
    fn forwarding_cut_short_is_requeued_and_retried_under_the_same_key() {
        assert_eq!(recovery(Status::Forwarding), Recovery::Requeue);
        let t = next(Status::Forwarding, &Input::ForwardRetry { message: "m".into() }).unwrap();
        assert_eq!(t.to, Status::OfflineApproved);
        assert_eq!(recovery(Status::OfflineApproved), Recovery::None);
    }

    #[test]
    fn recovery_never_interrupts_a_payment_that_may_be_at_the_gateway() {
        for s in [Status::Authorizing, Status::Unknown] {
            assert_eq!(recovery(s), Recovery::QueryStatus);
            assert!(next(s, &Input::Interrupted).is_err());
        }
    }

    #[test]
    fn every_register_settled_status_is_reached_only_with_a_reason_or_approval() {
        for s in Status::ALL {
            for i in all_inputs() {
                if let Ok(t) = next(s, &i)
                    && matches!(
                        t.to,
                        Status::Failed
                            | Status::Declined
                            | Status::ReversalPending
                            | Status::Canceled
                            | Status::OfflineDeclined
                            | Status::Quarantined
                            | Status::Expired
                            | Status::Voided
                    )
                {
                    assert!(t.reason.is_some(), "{s} --{i:?}--> {} has no reason", t.to);
                }
            }
        }
    }
}
