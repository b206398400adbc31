//! The invariants checked at the end of a seed, after a last start and an
//! hour for posd to settle with a healthy gateway: what the registers were
//! told, posd's store and the gateway's ledger must agree.

use std::collections::{BTreeMap, HashMap, HashSet};

use firmware_sim::zvt::{Kind, Txn};
use gateway_sim::ledger::{Charge, Ledger};
use pos_engine::Status;
use posd::store::{DeviceKind, EventKind, HistoryEntry, ListFilter, PaymentRecord, RefundRecord, RefundStatus, Store};

/// What a lane's payment terminal booked, as its journal has it.
pub enum Journal {
    Zvt(Vec<Txn>),
    /// Each booked transaction with the amount reversed.
    Nexo(Vec<(firmware_sim::nexo::journal::Booked, Option<i64>)>),
}

/// What a register was told, kept across posd's crashes.
#[derive(Debug, Clone)]
pub enum Told {
    /// A payment's answer: the status it had when the register stopped waiting.
    Payment { key: String, id: String, status: Status, manual_capture: bool },
    /// The payment request was refused outright (not retried).
    Refused { key: String },
    /// A refund's answer.
    Refund { key: String, payment_id: String, told: ToldRefund },
    /// A capture's or void's answer: the payment as posd returned it.
    AfterSale { id: String, status: Status },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToldRefund {
    Succeeded(i64),
    Failed,
    /// Refused before anything was sent (over the captured amount, say).
    Refused,
}

/// An invariant that did not hold, and how.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

pub fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation { invariant, detail: detail.into() }
}

/// What the checks found.
pub struct Report {
    pub violations: Vec<Violation>,
    /// posd's payments by status.
    pub statuses: BTreeMap<&'static str, u64>,
    /// Payments and refunds left to a person by design.
    pub left_to_person: u64,
    /// The ledger, one line per charge and refund, for the trace.
    pub ledger: Vec<String>,
    /// The status changes posd's payments went through, and how often.
    pub transitions: BTreeMap<(&'static str, &'static str), u64>,
}

impl Report {
    /// Nothing could be checked: the one violation says why.
    fn unreadable(v: Violation) -> Report {
        Report {
            violations: vec![v],
            statuses: BTreeMap::new(),
            left_to_person: 0,
            ledger: vec![],
            transitions: BTreeMap::new(),
        }
    }
}

/// The card numbers the simulated readers present: none may be anywhere
/// in posd's files.
pub(crate) const PANS: &[&str] = &["4242424242424242", "5555555555554444", "378282246310005", "6799998900000060018"];

/// Checks every invariant: against the gateway's ledger, and each
/// terminal lane's journal (`journals`, by lane); `files` are posd's
/// database files as they are now.
pub fn all(
    store: &Store,
    ledger: &Ledger,
    told: &[Vec<Told>],
    journals: &[(String, Journal)],
    files: &[(String, Vec<u8>)],
) -> Report {
    let mut v = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut left_to_person = 0;
    let payments = match store.list(&ListFilter { limit: usize::MAX >> 1, oldest_first: true, ..Default::default() }) {
        Ok(p) => p,
        Err(e) => return Report::unreadable(violation("posd's store reads", e.to_string())),
    };
    let charges: HashMap<String, Charge> = match ledger.all() {
        Ok(all) => all.into_iter().map(|c| (c.key.clone(), c)).collect(),
        Err(e) => return Report::unreadable(violation("the ledger reads", e.to_string())),
    };
    let by_id: HashMap<&str, &PaymentRecord> = payments.iter().map(|p| (p.id.as_str(), p)).collect();
    let by_key: HashMap<&str, &PaymentRecord> = payments.iter().map(|p| (p.gateway_key.as_str(), p)).collect();
    let mut ledger_lines = Vec::new();
    let mut transitions = BTreeMap::new();

    for p in &payments {
        *statuses.entry(p.status.as_str()).or_default() += 1;
        match store.history(&p.id) {
            Ok(history) => {
                check_history(p, &history, &mut transitions, &mut v);
                check_api_answer(store, p, &history, &mut v);
            }
            Err(e) => v.push(violation("posd's store reads", format!("{}'s history: {e}", p.id))),
        }
        // Settled: nothing in between after an hour with a healthy gateway.
        let settled = p.status.is_final() || matches!(p.status, Status::Authorized | Status::Captured);
        // Left to a person by design: an offline payment the gateway refused
        // as an item, and a terminal payment whose outcome the terminal
        // could not tell (posd alerted: check the terminal's journal).
        let alerted = p.device != DeviceKind::Reader
            && p.status == Status::Unknown
            && store.has_event(EventKind::TerminalOutcomeUnknown, &p.id, "").unwrap_or(false);
        if p.status == Status::Quarantined || alerted {
            left_to_person += 1;
        } else if !settled {
            v.push(violation("nothing stuck after settling", format!("{} is {}", p.id, p.status)));
        }
        if p.device != DeviceKind::Reader {
            // A terminal's payments are checked against its journal below.
            continue;
        }
        let charge = charges.get(&p.gateway_key).filter(|c| !c.tombstone);
        let charged = charge.is_some_and(|c| c.status == "approved");
        // posd's report and the gateway's ledger agree on every payment.
        match p.status {
            Status::Authorized | Status::Captured if !charged => v.push(violation(
                "every approved payment is at the gateway",
                format!("{} is {} in posd; the gateway has {}", p.id, p.status, describe(charge)),
            )),
            Status::Captured => {
                let c = charge.expect("charged");
                if c.captured_minor != p.captured_minor {
                    v.push(violation(
                        "posd's totals equal the gateway's",
                        format!("{} captured {} in posd, {} at the gateway", p.id, p.captured_minor, c.captured_minor),
                    ));
                }
            }
            s if charged && !matches!(s, Status::Authorized | Status::Captured) => v.push(violation(
                "no charge at the gateway that posd does not report",
                format!("{} is {} in posd; the gateway holds {}", p.id, p.status, describe(charge)),
            )),
            _ => {}
        }
        // Refunds: what posd says equals what the gateway booked.
        let refunds = store.refunds_of(&p.id).unwrap_or_default();
        let mut refunded = 0;
        for r in &refunds {
            let booked = ledger.refund(&r.refund_key).ok().flatten();
            let booked_ok = booked.as_ref().is_some_and(|b| b.succeeded);
            match r.status {
                RefundStatus::Succeeded => {
                    refunded += r.amount_minor;
                    if !booked_ok {
                        v.push(violation(
                            "every refund posd reports is at the gateway",
                            format!("refund {} of {} succeeded in posd, not at the gateway", r.id, p.id),
                        ));
                    }
                }
                RefundStatus::Failed if booked_ok => v.push(violation(
                    "no operation reported failed that exists at the gateway",
                    format!("refund {} of {} ({}) failed in posd; the gateway booked it", r.id, p.id, r.amount_minor),
                )),
                RefundStatus::Pending => v.push(violation(
                    "nothing stuck after settling",
                    format!("refund {} of {} is still pending", r.id, p.id),
                )),
                _ => {}
            }
        }
        if let Some(c) = charge {
            if c.refunded_minor != refunded {
                v.push(violation(
                    "posd's totals equal the gateway's",
                    format!("{} refunded {} in posd, {} at the gateway", p.id, refunded, c.refunded_minor),
                ));
            }
            if c.refunded_minor > c.captured_minor {
                v.push(violation(
                    "refunded never exceeds captured",
                    format!("{} at the gateway: refunded {} of {} captured", p.id, c.refunded_minor, c.captured_minor),
                ));
            }
        }
    }

    // Every charge the gateway holds belongs to a payment posd reports.
    let mut keys: Vec<&String> = charges.keys().collect();
    keys.sort();
    for key in keys {
        let c = &charges[key];
        ledger_lines.push(format!(
            "ledger {} {} {} captured {} refunded {}{}",
            c.key,
            c.status,
            c.amount_minor,
            c.captured_minor,
            c.refunded_minor,
            if c.tombstone { " tombstone" } else { "" }
        ));
        if !c.tombstone && c.status == "approved" && !by_key.contains_key(key.as_str()) {
            v.push(violation(
                "no charge at the gateway that posd does not report",
                format!("the gateway holds {} of {} that no payment of posd has", c.key, c.amount_minor),
            ));
        }
    }

    // Payment terminals: posd's payments and each terminal's journal agree.
    for (lane, journal) in journals {
        match journal {
            Journal::Zvt(journal) => check_terminal(store, &payments, lane, journal, &mut v),
            Journal::Nexo(booked) => check_nexo(store, &payments, lane, booked, &mut v),
        }
    }

    // What each register was told holds against both.
    let voided_by_register: HashSet<&str> = told
        .iter()
        .flatten()
        .filter_map(|t| match t {
            Told::AfterSale { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    for t in told.iter().flatten() {
        match t {
            Told::Payment { key, id, status, .. } => {
                let Some(p) = by_id.get(id.as_str()) else {
                    v.push(violation("posd keeps every payment", format!("{key}: {id} is gone")));
                    continue;
                };
                if p.device != DeviceKind::Reader {
                    let kept = matches!(p.status, Status::Captured)
                        || (matches!(p.status, Status::Reversed | Status::Voided)
                            && voided_by_register.contains(id.as_str()));
                    if status.is_approved() && !kept {
                        v.push(violation(
                            "every payment the register was told approved is booked",
                            format!("{key}: told {status}; posd has {} on its terminal", p.status),
                        ));
                    }
                    continue;
                }
                let charge = charges.get(&p.gateway_key).filter(|c| !c.tombstone);
                if status.is_approved() {
                    // Approved: at the gateway exactly once, or declined at
                    // forwarding (offline), or voided by the register since.
                    // An offline payment not confirmed in time is the merchant's
                    // loss: expired, or (when it may have been sent) reversed so
                    // that a late arrival cannot charge.
                    let expired = p.offline
                        && (p.status == Status::Expired
                            || (p.status == Status::Reversed && p.reason_code == "expired"));
                    // An authorization not captured in time is reversed.
                    let window_passed = p.status == Status::Reversed && p.reason_code == "capture_window_passed";
                    let fine = charge.is_some_and(|c| c.status == "approved")
                        || expired
                        || window_passed
                        || matches!(p.status, Status::OfflineDeclined | Status::Voided)
                        || (p.offline && p.status == Status::Quarantined);
                    if !fine {
                        v.push(violation(
                            "every payment the register was told approved is at the gateway",
                            format!("{key}: told {status}; posd has {}, the gateway {}", p.status, describe(charge)),
                        ));
                    }
                } else if charge.is_some_and(|c| c.status == "approved") {
                    v.push(violation(
                        "no charge at the gateway that posd does not report",
                        format!("{key}: told {status}; the gateway holds {}", describe(charge)),
                    ));
                }
            }
            Told::Refund { key, payment_id, told } => {
                if by_id.get(payment_id.as_str()).is_some_and(|p| p.device != DeviceKind::Reader) {
                    // Refunded at a terminal: its totals are checked against the journal.
                    continue;
                }
                let found =
                    store.refunds_of(payment_id).unwrap_or_default().into_iter().find(|r| r.idempotency_key == *key);
                let booked = found.as_ref().and_then(|r| ledger.refund(&r.refund_key).ok().flatten());
                let booked_ok = booked.as_ref().is_some_and(|b| b.succeeded);
                match told {
                    ToldRefund::Succeeded(amount)
                        if !booked.as_ref().is_some_and(|b| b.succeeded && b.amount_minor == *amount) =>
                    {
                        v.push(violation(
                            "every refund posd reports is at the gateway",
                            format!("{key}: told {amount} refunded; the gateway has {booked:?}"),
                        ))
                    }
                    ToldRefund::Failed | ToldRefund::Refused if booked_ok => v.push(violation(
                        "no operation reported failed that exists at the gateway",
                        format!("{key}: told {told:?}; the gateway booked {booked:?}"),
                    )),
                    _ => {}
                }
            }
            Told::AfterSale { id, status } => {
                if let Some(p) = by_id.get(id.as_str())
                    && p.status != *status
                    && !(*status == Status::Captured && p.status == Status::Captured)
                {
                    // A captured or voided payment stays so.
                    if matches!(status, Status::Captured | Status::Voided) {
                        v.push(violation(
                            "an answered capture or void stands",
                            format!("{id}: told {status}; posd now has {}", p.status),
                        ));
                    }
                }
            }
            Told::Refused { .. } => {}
        }
    }

    // No card data in the database or its WAL.
    for (path, bytes) in files {
        for pan in PANS {
            if contains(bytes, pan.as_bytes()) {
                v.push(violation("no card data in the database", format!("{path} holds a card number")));
            }
        }
    }

    Report { violations: v, statuses, left_to_person, ledger: ledger_lines, transitions }
}

/// Payment `p`'s history: created in CREATED, then only the status changes
/// pos-engine's state machine allows ([`pos_engine::transitions`]), each
/// counted in `seen`.
fn check_history(
    p: &PaymentRecord,
    history: &[HistoryEntry],
    seen: &mut BTreeMap<(&'static str, &'static str), u64>,
    v: &mut Vec<Violation>,
) {
    let mut now = None;
    for entry in history {
        match (entry.from, now) {
            (None, None) if entry.to == Status::Created => {}
            (Some(from), Some(was)) if from == was => {
                if from != entry.to {
                    *seen.entry((from.as_str(), entry.to.as_str())).or_default() += 1;
                    // Allowed by `next`, but posd commits CARD_READ with AUTHORIZING.
                    let unmade = pos_engine::transitions::NOT_MADE_BY_POSD.contains(&(from, entry.to));
                    if !pos_engine::transitions::allowed(from, entry.to) || unmade {
                        v.push(violation(
                            "every transition allowed by pos-engine's state machine",
                            format!("{} went from {from} to {} ({})", p.id, entry.to, entry.cause),
                        ));
                    }
                }
            }
            _ => v.push(violation(
                "every transition allowed by pos-engine's state machine",
                format!("{}: entry {:?} -> {} follows {now:?} ({})", p.id, entry.from, entry.to, entry.cause),
            )),
        }
        now = Some(entry.to);
    }
    if now != Some(p.status) {
        v.push(violation(
            "every transition allowed by pos-engine's state machine",
            format!("{} is {} but its history ends in {now:?}", p.id, p.status),
        ));
    }
}

/// A ZVT lane: every sale posd reports captured is booked (not reversed) at
/// the terminal under its receipt number, for its amount; the terminal
/// holds no sale posd does not report; refunded totals agree.
fn check_terminal(store: &Store, payments: &[PaymentRecord], lane: &str, journal: &[Txn], v: &mut Vec<Violation>) {
    let sales: HashMap<u16, &Txn> =
        journal.iter().filter(|t| t.kind == Kind::Sale && !t.reversed).map(|t| (t.receipt_no, t)).collect();
    let mut reported = HashSet::new();
    let mut refunded = 0;
    for p in payments.iter().filter(|p| p.terminal_id == lane) {
        let receipt = store.terminal_result(&p.id).ok().flatten().and_then(|r| r.receipt_no);
        let booked = receipt.and_then(|r| sales.get(&r));
        match (p.status, booked) {
            (Status::Captured, Some(t)) => {
                reported.insert(t.receipt_no);
                if t.amount as i64 != p.amount_minor {
                    v.push(violation(
                        "posd's totals equal the terminal's",
                        format!(
                            "{}: {} in posd, {} at the terminal (receipt {})",
                            p.id, p.amount_minor, t.amount, t.receipt_no
                        ),
                    ));
                }
            }
            (Status::Captured, None) => v.push(violation(
                "every approved payment is booked at its terminal",
                format!("{} is captured in posd; {lane}'s terminal has no sale under receipt {receipt:?}", p.id),
            )),
            (status, Some(t)) => {
                reported.insert(t.receipt_no);
                v.push(violation(
                    "no sale at a terminal that posd does not report",
                    format!(
                        "{} is {status} in posd; the terminal booked receipt {} ({})",
                        p.id, t.receipt_no, t.amount
                    ),
                ));
            }
            (_, None) => {}
        }
        refunded += store
            .refunds_of(&p.id)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.status == RefundStatus::Succeeded)
            .map(|r| r.amount_minor)
            .sum::<i64>();
    }
    for t in sales.values().filter(|t| !reported.contains(&t.receipt_no)) {
        v.push(violation(
            "no sale at a terminal that posd does not report",
            format!("{lane}'s terminal booked receipt {} ({}) that no payment of posd has", t.receipt_no, t.amount),
        ));
    }
    let at_terminal: i64 =
        journal.iter().filter(|t| t.kind == Kind::Refund && !t.reversed).map(|t| t.amount as i64).sum();
    if at_terminal != refunded {
        v.push(violation(
            "posd's totals equal the terminal's",
            format!("{lane}: refunded {refunded} in posd, {at_terminal} at the terminal"),
        ));
    }
}

/// A nexo lane: what each payment nets at the terminal (booked less
/// reversed, found by its SaleTransactionID, the payment's gateway key)
/// equals what posd reports: its amount less what was refunded when
/// captured, nothing otherwise; nothing is booked that no payment of posd
/// has, and no refund is left pending.
fn check_nexo(
    store: &Store,
    payments: &[PaymentRecord],
    lane: &str,
    booked: &[(firmware_sim::nexo::journal::Booked, Option<i64>)],
    v: &mut Vec<Violation>,
) {
    let lane_payments: Vec<(&PaymentRecord, Vec<RefundRecord>)> = payments
        .iter()
        .filter(|p| p.terminal_id == lane)
        .map(|p| (p, store.refunds_of(&p.id).unwrap_or_default()))
        .collect();
    // An unreferenced refund (PaymentType Refund) is booked under its own
    // key: it counts against the payment it refunds.
    let refunded_by: HashMap<&str, &str> = lane_payments
        .iter()
        .flat_map(|(p, refunds)| refunds.iter().map(|r| (r.refund_key.as_str(), p.gateway_key.as_str())))
        .collect();
    let mut net: BTreeMap<&str, i64> = BTreeMap::new();
    for (b, reversed) in booked {
        let left = b.amount - reversed.unwrap_or(0);
        match refunded_by.get(b.sale_transaction_id.as_str()) {
            Some(key) if b.refund => *net.entry(*key).or_default() -= left,
            _ => *net.entry(b.sale_transaction_id.as_str()).or_default() += left,
        }
    }
    for (p, refunds) in &lane_payments {
        let at_terminal = net.remove(p.gateway_key.as_str()).unwrap_or(0);
        for r in refunds.iter().filter(|r| r.status == RefundStatus::Pending) {
            v.push(violation("nothing stuck after settling", format!("refund {} of {} is still pending", r.id, p.id)));
        }
        let refunded: i64 =
            refunds.iter().filter(|r| r.status == RefundStatus::Succeeded).map(|r| r.amount_minor).sum();
        let in_posd = match p.status {
            Status::Captured => p.amount_minor - refunded,
            // Left to a person: posd alerted that the terminal could not tell.
            Status::Unknown => continue,
            _ => 0,
        };
        if in_posd != at_terminal {
            v.push(violation(
                "posd's totals equal the terminal's",
                format!("{} is {} in posd ({in_posd} net); {lane}'s terminal nets {at_terminal}", p.id, p.status),
            ));
        }
    }
    for (key, left) in net.into_iter().filter(|(_, n)| *n != 0) {
        v.push(violation(
            "no sale at a terminal that posd does not report",
            format!("{lane}'s terminal booked {left} net under {key}, which no payment of posd has"),
        ));
    }
}

/// Payment `p` as the register API answers it (GetPayment: the payment, its
/// history, refunds and terminal result) holds no card number.
fn check_api_answer(store: &Store, p: &PaymentRecord, history: &[HistoryEntry], v: &mut Vec<Violation>) {
    let refunds = store.refunds_of(&p.id).unwrap_or_default();
    let answer = posd::convert::with_refunds(posd::convert::payment(p, history), &refunds);
    let terminal = store.terminal_result(&p.id).ok().flatten().map(|t| posd::convert::terminal(&t));
    let text = format!("{answer:?} {terminal:?}");
    if PANS.iter().any(|pan| text.contains(pan)) {
        v.push(violation("no card data in API answers", format!("{}'s answer holds a card number", p.id)));
    }
}

fn describe(charge: Option<&Charge>) -> String {
    match charge {
        Some(c) => format!("{} {} (captured {}, refunded {})", c.key, c.status, c.captured_minor, c.refunded_minor),
        None => "no charge".into(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The offline limits (the lanes' policy, store-wide as posd counts them)
/// hold for the unsent payments now: checked whenever a register hears an
/// offline approval.
/// A queued offline payment posd holds as never sent (no forwarding
/// attempt counted: it may expire as unsent, and is not asked about) has
/// no record at the gateway. Checked on the disk a crash left, before posd
/// recovers.
pub fn never_sent(store: &Store, ledger: &Ledger) -> Vec<Violation> {
    let queued = ListFilter { statuses: vec![Status::OfflineApproved], limit: usize::MAX, ..Default::default() };
    let Ok(queued) = store.list(&queued) else {
        return vec![violation("posd starts", "the offline queue cannot be read")];
    };
    queued
        .iter()
        .filter(|p| p.forward_attempts == 0)
        .filter_map(|p| {
            let charge = ledger.get(&p.gateway_key).ok().flatten()?;
            Some(violation(
                "a payment held as never sent is not at the gateway",
                format!(
                    "{} is queued with no forwarding attempt; the gateway holds {} ({})",
                    p.id, charge.key, charge.status
                ),
            ))
        })
        .collect()
}

pub fn offline_limits(
    store: &Store,
    policy: &pos_engine::offline::OfflinePolicy,
    p: &PaymentRecord,
) -> Option<Violation> {
    let queue = store.queue_summary().ok()?;
    let total: i64 = queue.totals.iter().filter(|(c, _)| *c == p.currency).map(|(_, t)| *t).sum();
    let per_card = match p.card.as_ref().map(|c| c.fingerprint.as_str()) {
        Some(fp) if !fp.is_empty() => store.queued_for_card(fp).ok()?,
        _ => 0,
    };
    let over = queue.count > policy.max_payments
        || total > policy.max_total_minor
        || per_card > policy.max_per_card
        || (p.status.is_unsent() && p.amount_minor > policy.max_payment_minor);
    over.then(|| {
        violation(
            "offline limits never exceeded",
            format!(
                "after {} ({}): {} unsent, {total} {} in all, {per_card} for its card; limits {}, {}, {} per card, {} each",
                p.id,
                p.amount_minor,
                queue.count,
                p.currency,
                policy.max_payments,
                policy.max_total_minor,
                policy.max_per_card,
                policy.max_payment_minor
            ),
        )
    })
}
