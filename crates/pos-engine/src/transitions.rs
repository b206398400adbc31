//! Every status change posd may make, as one table.
//!
//! posd changes a payment's status only by committing a
//! [`Transition`](crate::Transition) that [`next`](crate::next) made, and the
//! store moves the status only from the transition's `from` (`UPDATE payments
//! .. WHERE id = ? AND status = :from`; it keeps no table of its own). So
//! [`ALLOWED`] is exactly the pairs `(from, to)`, `from != to`, that
//! [`next`](crate::next) returns for some input; the tests hold it to that,
//! both ways. Each pair says where posd makes it, for any device: a card
//! reader (the gateway authorizes), a ZVT terminal, a nexo terminal.
//!
//! A payment's audit history records each change as one entry, also when
//! several go in one commit (COLLECTING -> CARD_READ -> AUTHORIZING on a
//! reader; COLLECTING -> CONFIRMING -> CAPTURED on a nexo terminal). Its
//! first entry comes from no status (the payment is created in CREATED); an
//! entry from a status to itself is an audit line, not a change.

use crate::Status;
use crate::Status::*;

/// Every `(from, to)` status change posd may make, `from != to`, grouped by
/// `from` in the order of [`Status::ALL`].
pub const ALLOWED: &[(Status, Status)] = &[
    // CREATED
    // Reader: `ReaderPayment::start` (Start), run by `drive_reader` (posd engine/payment.rs).
    // ZVT: `TerminalPayment` once the terminal's last receipt number is read (StartOnTerminal), engine/terminal.rs.
    // nexo: `NexoPayment` once its ServiceID is read, committed with it (StartOnTerminal), engine/nexo/payment.rs.
    (Created, Collecting),
    // nexo: the register canceled before the POST went out (`NexoPayment`, on the ServiceID; Cancel).
    (Created, Canceled),
    // Start-up (`Engine::recover`, engine/recovery.rs): `payment::recover`, `terminal::recover` and
    // `nexo::recover` end a payment found in CREATED as Interrupted; nothing went out.
    (Created, Failed),
    // COLLECTING
    // Reader: the card read, in one commit with CARD_READ -> AUTHORIZING (`ReaderPayment::card_read`).
    (Collecting, CardRead),
    // Reader: no card (timeout, reader error, reader gone, no card data; CollectFailed), or found at start-up
    // (Interrupted). ZVT: the terminal ended the command without a result, or posd refused its result
    // (`TerminalPayment::settle_command`; CollectFailed). nexo: the POST could not reach the terminal, a failure
    // that booked nothing, TransactionStatus NotFound (`NexoPayment::not_sent`, `not_booked`, `not_found`).
    (Collecting, Failed),
    // Reader, ZVT, nexo: canceled by the register or by the customer at the device (Cancel).
    (Collecting, Canceled),
    // ZVT: the terminal's approval stored before 80 00 (TerminalApproved). nexo: its answer, in one commit with
    // CONFIRMING -> CAPTURED (`NexoPayment::answered`).
    (Collecting, Confirming),
    // ZVT, nexo: the terminal declined (TerminalDeclined); nexo also a partial approval, which posd reverses.
    (Collecting, Declined),
    // ZVT: the line lost after the terminal took the command, or posd restarted while it had it (TerminalLost).
    // nexo: TransactionStatus could not tell (`NexoPayment::give_up`; TerminalLost).
    (Collecting, Unknown),
    // CARD_READ
    // Reader: in one commit with COLLECTING -> CARD_READ, before the request leaves (Sending).
    (CardRead, Authorizing),
    // `next` allows these two, but posd never stores CARD_READ alone (see `NOT_MADE_BY_POSD`): offline approval
    // and its refusal start from AUTHORIZING, and start-up never finds a payment in CARD_READ (Interrupted).
    (CardRead, OfflineApproved),
    (CardRead, Failed),
    // AUTHORIZING (reader lanes, `ReaderPayment`)
    // Nothing sent (gateway unreachable) and eligible offline (`ReaderPayment::offline_decision`; ApprovedOffline).
    (Authorizing, OfflineApproved),
    // Nothing sent and offline approval refused, the offline queue unreadable, or a fault on the lane PC
    // (OfflineRefused).
    (Authorizing, Failed),
    // The gateway approved: captured, or authorized for a manual capture (Approved).
    (Authorizing, Captured),
    (Authorizing, Authorized),
    // The gateway declined, or rejected the request (Declined).
    (Authorizing, Declined),
    // The answer was lost (AnswerLost); at start-up before the status queries (`payment::recover`).
    (Authorizing, Unknown),
    // CONFIRMING
    // ZVT: 80 00 sent, or asked, the terminal shows it booked the stored result (TerminalConfirmed).
    // nexo: in the commit that stores its answer (`NexoPayment::answered`).
    (Confirming, Captured),
    // ZVT: the line lost before 80 00, or asking could not tell (`TerminalPayment::act`; TerminalLost).
    (Confirming, Unknown),
    // ZVT: posd could not confirm the result in time and told the terminal not to book it; the terminal
    // reverses it (`TerminalPayment::settle_command`; TerminalRefused).
    (Confirming, Failed),
    // UNKNOWN
    // Reader: a status query found the charge (`ReaderPayment`, live or at start-up through `Engine::settle`;
    // Approved). ZVT, nexo: the terminal shows it booked the payment (TerminalConfirmed), asked by posd, or by a
    // person: `resolve_payment` (engine/terminal.rs) "booked under receipt N", only for a payment on a payment
    // terminal (ZVT or nexo) in UNKNOWN that posd is not asking about at the time.
    (Unknown, Captured),
    // Reader: a status query found an authorization (manual capture; Approved).
    (Unknown, Authorized),
    // Reader: a status query found a decline (Declined). (A payment terminal's doubt never ends DECLINED.)
    (Unknown, Declined),
    // Reader: the status queries did not settle it; reversal queued (`ReaderPayment::still_unknown`; StillUnknown).
    (Unknown, ReversalPending),
    // ZVT, nexo: the terminal shows it did not book the payment (TerminalNotBooked), asked by posd, or by a
    // person: `resolve_payment` "not booked", under the same conditions as above. These two pairs are all
    // `resolve_payment` permits.
    (Unknown, Failed),
    // AUTHORIZED (reader lanes, manual capture; posd engine/after_sale.rs)
    // `capture_payment`; a capture in doubt the gateway shows (`settle_after_sale_in_doubt`); a capture the
    // gateway holds when the capture window passes (`expire_authorizations`). (Capture)
    (Authorized, Captured),
    // `void_payment`; a void in doubt the gateway shows (`settle_after_sale_in_doubt`). (Void)
    (Authorized, Voided),
    // Not captured within the capture window: reversed (`expire_authorizations`; CaptureWindowPassed).
    (Authorized, ReversalPending),
    // CAPTURED
    // Payment terminals only (TerminalReversed): ZVT `reverse_on_terminal` (engine/terminal/after_sale.rs, on
    // `void_payment`); nexo a void, or a reversal posd owes (approved after the register's cancel), once the
    // terminal booked it (`persist_after_sale`, engine/nexo/after_sale.rs, committed by `Store::settle_reversal`).
    (Captured, Voided),
    // REVERSAL_PENDING
    // `Engine::reversal_worker` (engine/recovery.rs): the gateway acknowledged the reversal (ReversalAcknowledged).
    (ReversalPending, Reversed),
    // OFFLINE_APPROVED (the offline queue, posd engine/queue.rs)
    // `claim_for_forwarding`, before a round (`forward_once`) or before asking about an overdue payment
    // (`settle_overdue`) (ForwardSending).
    (OfflineApproved, Forwarding),
    // `age_queue`: past the expiry age and never sent (Expire).
    (OfflineApproved, Expired),
    // FORWARDING (posd engine/queue.rs)
    // Back in the queue under the same key (ForwardRetry): a link error (`forward_once`), an unclear answer
    // (`apply_forward_results`), a round cut short (`requeue_stranded`), posd restarted (`payment::recover`).
    (Forwarding, OfflineApproved),
    // The gateway approved, or holds the charge of an overdue payment (`apply_forward_results`; Approved).
    (Forwarding, Captured),
    (Forwarding, Authorized),
    // The gateway declined it: the merchant's loss (`apply_forward_results`; Declined).
    (Forwarding, OfflineDeclined),
    // The gateway refused the item itself, or holds its key as reversed (`apply_forward_results`; Quarantine).
    (Forwarding, Quarantined),
    // Overdue and the gateway has no record: reversed under its key (`settle_overdue`; NoRecordAfterExpiry).
    (Forwarding, ReversalPending),
    // QUARANTINED
    // A person puts it back in the queue (`requeue_payment`, engine/queue.rs; Requeue).
    (Quarantined, OfflineApproved),
    // `age_queue`: past the expiry age (Expire).
    (Quarantined, Expired),
];

/// The pairs of [`ALLOWED`] that today's posd never commits, though
/// [`next`](crate::next) allows them: a reader payment's card read is
/// committed together with its move to AUTHORIZING, so no payment is ever
/// stored in CARD_READ to leave it otherwise. A simulator's coverage of
/// [`ALLOWED`] can leave these out.
pub const NOT_MADE_BY_POSD: &[(Status, Status)] = &[(CardRead, OfflineApproved), (CardRead, Failed)];

/// Whether posd may move a payment from `from` to `to` (true when they are
/// the same: an audit line without a change).
pub fn allowed(from: Status, to: Status) -> bool {
    from == to || ALLOWED.contains(&(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Input, next};

    /// Every [`Input`] variant (an approval both captured and not).
    fn inputs() -> Vec<Input> {
        let m = || "m".to_string();
        vec![
            Input::Start,
            Input::CardRead,
            Input::CollectFailed { code: "reader_timeout".into(), message: m() },
            Input::Cancel { by: "the register".into() },
            Input::Sending,
            Input::Approved { captured: true },
            Input::Approved { captured: false },
            Input::Declined { code: "generic_decline".into(), message: m() },
            Input::AnswerLost { message: m() },
            Input::StillUnknown { message: m() },
            Input::ReversalAcknowledged,
            Input::Interrupted,
            Input::ApprovedOffline,
            Input::OfflineRefused { code: "amount_over_limit".into(), message: m() },
            Input::ForwardSending,
            Input::ForwardRetry { message: m() },
            Input::Quarantine { code: "account_mismatch".into(), message: m() },
            Input::Expire { message: m() },
            Input::NoRecordAfterExpiry { message: m() },
            Input::Requeue { by: "posctl".into() },
            Input::Capture,
            Input::CaptureWindowPassed { window: "2d".into() },
            Input::Void { reason: m() },
            Input::StartOnTerminal,
            Input::TerminalApproved,
            Input::TerminalConfirmed,
            Input::TerminalDeclined { code: "zvt_05".into(), message: m() },
            Input::TerminalLost { message: m() },
            Input::TerminalNotBooked { message: m() },
            Input::TerminalReversed { reason: m() },
            Input::TerminalRefused { message: m() },
        ]
    }

    const VARIANTS: usize = 30;

    /// The variant's number: a new [`Input`] variant fails to compile here
    /// until it is numbered, and then [`inputs`] must have it.
    fn variant(input: &Input) -> usize {
        match input {
            Input::Start => 0,
            Input::CardRead => 1,
            Input::CollectFailed { .. } => 2,
            Input::Cancel { .. } => 3,
            Input::Sending => 4,
            Input::Approved { .. } => 5,
            Input::Declined { .. } => 6,
            Input::AnswerLost { .. } => 7,
            Input::StillUnknown { .. } => 8,
            Input::ReversalAcknowledged => 9,
            Input::Interrupted => 10,
            Input::ApprovedOffline => 11,
            Input::OfflineRefused { .. } => 12,
            Input::ForwardSending => 13,
            Input::ForwardRetry { .. } => 14,
            Input::Quarantine { .. } => 15,
            Input::Expire { .. } => 16,
            Input::NoRecordAfterExpiry { .. } => 17,
            Input::Requeue { .. } => 18,
            Input::Capture => 19,
            Input::CaptureWindowPassed { .. } => 20,
            Input::Void { .. } => 21,
            Input::StartOnTerminal => 22,
            Input::TerminalApproved => 23,
            Input::TerminalConfirmed => 24,
            Input::TerminalDeclined { .. } => 25,
            Input::TerminalLost { .. } => 26,
            Input::TerminalNotBooked { .. } => 27,
            Input::TerminalReversed { .. } => 28,
            Input::TerminalRefused { .. } => 29,
        }
    }

    #[test]
    fn the_inputs_have_every_variant() {
        let mut seen = [false; VARIANTS];
        for input in inputs() {
            seen[variant(&input)] = true;
        }
        let missing: Vec<usize> = (0..VARIANTS).filter(|n| !seen[*n]).collect();
        assert!(missing.is_empty(), "variants {missing:?} have no input");
    }

    #[test]
    fn every_status_change_next_makes_is_allowed() {
        for from in Status::ALL {
            for input in inputs() {
                let Ok(t) = next(from, &input) else { continue };
                assert_eq!(t.from, from, "{input:?}");
                if t.to != from {
                    assert!(ALLOWED.contains(&(from, t.to)), "{from} --{input:?}--> {} is not in ALLOWED", t.to);
                    assert!(allowed(from, t.to));
                }
            }
        }
    }

    #[test]
    fn every_allowed_pair_is_one_next_makes() {
        for &(from, to) in ALLOWED {
            let made = inputs().iter().any(|input| next(from, input).is_ok_and(|t| t.to == to));
            assert!(made, "{from} -> {to} is in ALLOWED but no input makes it");
        }
    }

    #[test]
    fn no_pair_is_listed_twice_and_none_stays_put() {
        for (n, &(from, to)) in ALLOWED.iter().enumerate() {
            assert_ne!(from, to, "{from} -> {to} is no change");
            assert!(!ALLOWED[..n].contains(&(from, to)), "{from} -> {to} is listed twice");
        }
        assert_eq!(ALLOWED.len(), 41);
    }

    #[test]
    fn staying_put_is_allowed_and_an_unlisted_pair_is_not() {
        for s in Status::ALL {
            assert!(allowed(s, s), "{s}");
        }
        assert!(!allowed(Status::Captured, Status::Authorizing));
        assert!(!allowed(Status::Unknown, Status::OfflineApproved), "a lost answer is never approved offline");
        assert!(!allowed(Status::Confirming, Status::Declined));
    }

    #[test]
    fn nothing_is_created_by_a_transition() {
        for &(from, to) in ALLOWED {
            assert_ne!(to, Status::Created, "{from} -> {to}");
        }
    }

    #[test]
    fn the_pairs_posd_does_not_make_are_allowed_ones() {
        for pair in NOT_MADE_BY_POSD {
            assert!(ALLOWED.contains(pair), "{pair:?}");
        }
    }

    /// The only ways out of a final status ([`Status::is_final`]). Adding one
    /// is a deliberate change: list it here, with why, and in [`ALLOWED`].
    const EXITS_FROM_FINAL: &[(Status, Status)] = &[];

    #[test]
    fn nothing_leaves_a_final_status_but_the_listed_exits() {
        let finals: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            vec![
                Status::Declined,
                Status::Canceled,
                Status::Failed,
                Status::Reversed,
                Status::OfflineDeclined,
                Status::Expired,
                Status::Voided
            ]
        );
        let exits: Vec<(Status, Status)> = ALLOWED.iter().copied().filter(|(from, _)| from.is_final()).collect();
        assert_eq!(exits, EXITS_FROM_FINAL);
    }
}
