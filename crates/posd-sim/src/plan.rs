//! A seed's store day, drawn before anything runs: the lanes, what each
//! register will do, the gateway's faults and the crashes. Drawing it all up
//! front keeps the plan independent of how the run interleaves; what is
//! drawn during the run (a register's backoff) comes from generators seeded
//! from the same seed, one per register.

use std::time::Duration;

use gateway_sim::Fault;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gateway::{CallMoment, METHODS};

/// The span of the registers' busy day (simulated time) that faults and
/// crashes fall into.
pub const DAY: Duration = Duration::from_secs(20 * 60);

/// The seed's day.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lanes: Vec<LanePlan>,
    /// The gateway's fault from each moment of the day on (ms since the
    /// day began), in order; `Fault::None` from the start.
    pub faults: Vec<(u64, Fault)>,
    /// posd's crashes, in order.
    pub crashes: Vec<Crash>,
    /// How many times other tasks run before each commit starts (the time
    /// a commit takes on a disk).
    pub commit_yields: u32,
}

/// posd stops dead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crash {
    /// When (ms since the day began)...
    pub at: u64,
    /// ...or, when set, once the gateway has received (or answered) the
    /// n-th call (of a method) in the life: a crash in the window between a
    /// call and what posd does with its answer...
    pub after_calls: Option<CallMoment>,
    /// ...after letting the scheduler run this many more polls.
    pub polls: u32,
    /// The machine loses power (unsynced writes are lost, as `Loss` says);
    /// `None`: only posd's process dies (kill -9).
    pub power: Option<crate::vfs::Loss>,
    /// How long posd stays down (ms): mostly under a minute; sometimes
    /// days (a lane PC left off over a long weekend), which ages the
    /// offline queue past its expiry.
    pub down_for: u64,
}

#[derive(Debug, Clone)]
pub struct LanePlan {
    pub id: String,
    pub kind: LaneKind,
    pub ops: Vec<Op>,
}

/// The lane's card device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneKind {
    /// A card reader (firmware-sim's): the gateway authorizes.
    Reader,
    /// A ZVT payment terminal (firmware-sim's): it authorizes by itself.
    Zvt,
    /// A nexo terminal (firmware-sim's, Adyen's local Terminal API): it
    /// authorizes by itself.
    Nexo,
}

impl LaneKind {
    /// A payment terminal that authorizes by itself (captured with the
    /// sale; voided by a reversal at the terminal).
    pub fn is_terminal(self) -> bool {
        self != LaneKind::Reader
    }
}

/// One thing a register does.
#[derive(Debug, Clone)]
pub enum Op {
    /// Takes a payment.
    Pay {
        amount_minor: i64,
        manual_capture: bool,
        customer: CustomerPlan,
        /// The register cancels this long after it asked, if still running.
        cancel_after: Option<Duration>,
        /// How the sale goes on a ZVT terminal.
        terminal: firmware_sim::zvt::Plan,
        /// How it goes on a nexo terminal.
        nexo: firmware_sim::nexo::Scenario,
        /// A rush: the register asks no earlier than this moment of the day
        /// (ms), with no pause before it, as another lane's register does.
        not_before: Option<u64>,
    },
    /// Refunds a payment this register took earlier (by its place among the
    /// register's payments, modulo their number).
    Refund { of: usize, amount: RefundAmount },
    /// Captures a payment taken for manual capture.
    Capture { of: usize },
    /// Voids a payment taken for manual capture.
    Void { of: usize },
    /// Nothing for a while.
    Idle(Duration),
}

#[derive(Debug, Clone, Copy)]
pub enum RefundAmount {
    /// Everything not refunded yet (amount 0).
    Rest,
    /// A part of the captured amount, in per mille.
    Part(u16),
    /// More than was captured.
    Over,
}

/// The customer at the reader.
#[derive(Debug, Clone)]
pub struct CustomerPlan {
    /// One of firmware-sim's named test cards.
    pub card: &'static str,
    pub present_after: Duration,
    pub pin: firmware_sim::reader::PinOutcome,
    pub cancels_after: Option<Duration>,
    pub card_error: bool,
    pub fault: Option<(firmware_sim::reader::Step, firmware_sim::reader::Fault)>,
}

impl Plan {
    /// The day of `seed`; with `power_loss`, some crashes are power losses.
    pub fn draw(seed: u64, power_loss: bool) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // How the terminals' sales go, from a stream of its own.
        let mut terminals = ChaCha8Rng::seed_from_u64(seed);
        terminals.set_stream(1);
        // How many lanes of each kind: mostly one or two, up to eight. A
        // lane's register does less the more lanes there are, so that a day
        // stays about the same size (and a seed as cheap).
        let mut shape = ChaCha8Rng::seed_from_u64(seed);
        shape.set_stream(6);
        let kinds = [LaneKind::Reader, LaneKind::Zvt, LaneKind::Nexo];
        let counts = kinds.map(|_| if shape.gen_bool(0.8) { shape.gen_range(1..=2) } else { shape.gen_range(3..=8) });
        let all: usize = counts.iter().sum();
        let ops = (24 / all).max(3)..=(72 / all).max(8);
        let mut lanes: Vec<LanePlan> = Vec::new();
        for (kind, count) in kinds.into_iter().zip(counts) {
            for _ in 0..count {
                let n = lanes.len() + 1;
                lanes.push(lane(&mut rng, &mut terminals, n, kind, ops.clone()));
            }
        }
        let mut faults = Vec::new();
        let mut at = 0u64;
        while at < DAY.as_millis() as u64 {
            at += rng.gen_range(5_000..180_000);
            faults.push((at, fault(&mut rng)));
        }
        let mut crashes: Vec<Crash> = (0..rng.gen_range(0..=3))
            .map(|_| Crash {
                at: rng.gen_range(0..DAY.as_millis() as u64),
                after_calls: None,
                polls: rng.gen_range(0..200),
                power: (power_loss && rng.gen_bool(0.5)).then(|| match rng.gen_range(0..3) {
                    0 => crate::vfs::Loss::All,
                    1 => crate::vfs::Loss::Subset,
                    _ => crate::vfs::Loss::TornLast,
                }),
                down_for: 0,
            })
            .collect();
        crashes.sort_by_key(|c| (c.at, c.polls));
        // From a stream of its own, so the rest of a seed's plan stays.
        let mut more = ChaCha8Rng::seed_from_u64(seed);
        more.set_stream(3);
        let commit_yields = more.gen_range(0..=6);
        for c in &mut crashes {
            c.after_calls =
                more.gen_bool(0.5).then(|| CallMoment { method: None, n: more.gen_range(1..=40), answered: false });
            c.down_for = if more.gen_bool(0.2) {
                more.gen_range(73 * 3_600_000..100 * 3_600_000)
            } else {
                more.gen_range(1_000..60_000)
            };
        }
        let mut rushes = ChaCha8Rng::seed_from_u64(seed);
        rushes.set_stream(4);
        rush(&mut rushes, &mut lanes, &faults);
        // Which calls a crash waits for, from a stream of its own: mostly one
        // of a method, soon after the gateway carried it out (the window
        // between the gateway's act and posd storing its answer is a few
        // polls long), and then more often a long stop.
        let mut calls = ChaCha8Rng::seed_from_u64(seed);
        calls.set_stream(5);
        for c in &mut crashes {
            let Some(moment) = c.after_calls.as_mut() else { continue };
            moment.answered = calls.gen_bool(0.7);
            if calls.gen_bool(0.7) {
                moment.method = Some(METHODS[calls.gen_range(0..METHODS.len())]);
                moment.n = calls.gen_range(1..=3);
                c.polls = calls.gen_range(0..8);
                if calls.gen_bool(0.2) {
                    c.down_for = calls.gen_range(73 * 3_600_000..100 * 3_600_000);
                }
            }
        }
        Plan { lanes, faults, crashes, commit_yields }
    }
}

impl Op {
    /// A payment of a rush (see [`rush`]).
    pub fn is_rush(&self) -> bool {
        matches!(self, Op::Pay { not_before: Some(_), .. })
    }
}

/// Time between the rounds of a rush.
const RUSH_ROUND: u64 = 20_000;

/// A rush while the gateway is down, on some days: two reader lanes take
/// payments with the same card at the same moments, a few rounds in a row,
/// so that both decide on an offline approval at once (the offline limits
/// must hold for lanes deciding together: two rounds of two reach the
/// per-card limit of 3 and pass it if both lanes see room for one more).
/// Each lane's register reaches the rush among its first operations and
/// waits for it.
fn rush(rng: &mut ChaCha8Rng, lanes: &mut [LanePlan], faults: &[(u64, Fault)]) {
    let readers: Vec<usize> = (0..lanes.len()).filter(|i| lanes[*i].kind == LaneKind::Reader).collect();
    if readers.len() < 2 || !rng.gen_bool(0.5) {
        return;
    }
    let rounds = rng.gen_range(2..=3u64);
    let needs = 2_000 + rounds * RUSH_ROUND;
    let downs: Vec<u64> =
        faults.windows(2).filter(|w| w[0].1 == Fault::Down && w[1].0 - w[0].0 >= needs).map(|w| w[0].0).collect();
    if downs.is_empty() {
        return;
    }
    let start = downs[rng.gen_range(0..downs.len())] + 2_000;
    let first = readers[rng.gen_range(0..readers.len())];
    let second = loop {
        let other = readers[rng.gen_range(0..readers.len())];
        if other != first {
            break other;
        }
    };
    let mut customer = customer(rng);
    (customer.pin, customer.cancels_after, customer.card_error, customer.fault) =
        (firmware_sim::reader::PinOutcome::Entered, None, false, None);
    let payments: Vec<Op> = (0..rounds)
        .map(|round| Op::Pay {
            amount_minor: rng.gen_range(100..10_000),
            manual_capture: false,
            customer: customer.clone(),
            cancel_after: None,
            terminal: firmware_sim::zvt::Plan { outcome: firmware_sim::zvt::Scenario::Approve, faults: vec![] },
            nexo: firmware_sim::nexo::Scenario::Approve,
            not_before: Some(start + round * RUSH_ROUND),
        })
        .collect();
    for lane in [first, second] {
        let at = rng.gen_range(0..=lanes[lane].ops.len().min(2));
        lanes[lane].ops.splice(at..at, payments.iter().cloned());
    }
}

fn lane(
    rng: &mut ChaCha8Rng,
    terminals: &mut ChaCha8Rng,
    n: usize,
    kind: LaneKind,
    count: std::ops::RangeInclusive<usize>,
) -> LanePlan {
    let ops = (0..rng.gen_range(count)).map(|_| op(rng, terminals)).collect();
    LanePlan { id: format!("lane-{n}"), kind, ops }
}

fn op(rng: &mut ChaCha8Rng, terminals: &mut ChaCha8Rng) -> Op {
    match rng.gen_range(0..100) {
        0..=59 => Op::Pay {
            amount_minor: amount(rng),
            manual_capture: rng.gen_bool(0.2),
            customer: customer(rng),
            // Some registers cancel at once (before the request can reach a
            // nexo terminal), most while the customer is at the device.
            cancel_after: rng
                .gen_bool(0.05)
                .then(|| Duration::from_millis(if rng.gen_bool(0.25) { 0 } else { rng.gen_range(0..20_000) })),
            terminal: terminal(terminals),
            nexo: nexo(terminals),
            not_before: None,
        },
        60..=74 => Op::Refund {
            of: rng.gen_range(0..64),
            amount: match rng.gen_range(0..10) {
                0..=3 => RefundAmount::Rest,
                4..=8 => RefundAmount::Part(rng.gen_range(1..=1000)),
                _ => RefundAmount::Over,
            },
        },
        75..=82 => Op::Capture { of: rng.gen_range(0..64) },
        83..=87 => Op::Void { of: rng.gen_range(0..64) },
        _ => Op::Idle(Duration::from_millis(rng.gen_range(1_000..900_000))),
    }
}

/// Mostly plain amounts; some with the gateway's test endings (declines,
/// an account mismatch).
fn amount(rng: &mut ChaCha8Rng) -> i64 {
    // Most within the offline limit of a single payment (100.00).
    let euros = if rng.gen_bool(0.8) { rng.gen_range(1..100) } else { rng.gen_range(100..300) };
    let cents = match rng.gen_range(0..20) {
        0 => 5,
        1 => 1,
        2 => gateway_sim::service::ACCOUNT_MISMATCH_CENTS,
        _ => rng.gen_range(0..100).clamp(10, 97),
    };
    euros * 100 + cents
}

fn customer(rng: &mut ChaCha8Rng) -> CustomerPlan {
    use firmware_sim::reader::{Fault as ReaderFault, PinOutcome, Step};
    let fault = match rng.gen_range(0..40) {
        0 => {
            Some((Step::Card, ReaderFault::Disconnect { back_after: Duration::from_millis(rng.gen_range(100..5_000)) }))
        }
        1 => Some((Step::Collect, ReaderFault::Reboot { takes: Duration::from_millis(rng.gen_range(100..5_000)) })),
        2 => Some((
            Step::Result,
            ReaderFault::Disconnect { back_after: Duration::from_millis(rng.gen_range(100..5_000)) },
        )),
        _ => None,
    };
    const CARDS: &[&str] = &["visa", "visa-contactless", "mastercard", "mastercard-google-pay", "amex", "girocard"];
    CustomerPlan {
        card: CARDS[rng.gen_range(0..CARDS.len())],
        present_after: Duration::from_millis(rng.gen_range(200..8_000)),
        pin: match rng.gen_range(0..30) {
            0 => PinOutcome::Wrong,
            1 => PinOutcome::Abandoned,
            _ => PinOutcome::Entered,
        },
        cancels_after: rng.gen_bool(0.03).then(|| Duration::from_millis(rng.gen_range(0..10_000))),
        card_error: rng.gen_bool(0.03),
        fault,
    }
}

/// How a sale goes on a ZVT terminal: mostly approved; declines, the
/// customer's cancel, offline approvals, a busy or slow terminal, and lines
/// that drop at each step (before the result, after it, before the
/// register's 80 00 can arrive, after the receipt).
fn terminal(rng: &mut ChaCha8Rng) -> firmware_sim::zvt::Plan {
    use firmware_sim::zvt::{Scenario, Step};
    let outcome = match rng.gen_range(0..100) {
        0..=69 => Scenario::Approve,
        70..=77 => Scenario::Decline(0x05),
        78..=81 => Scenario::CustomerCancel,
        82..=84 => Scenario::Offline,
        85..=86 => Scenario::Busy,
        87..=89 => Scenario::Slow,
        90..=92 => Scenario::Disconnect,
        93..=98 => Scenario::DropAfterResult,
        _ => Scenario::InitRequired,
    };
    let faults = match rng.gen_range(0..30) {
        0 => vec![(Step::Start, "disconnect".to_string())],
        1 => vec![(Step::Result, "disconnect".to_string())],
        2 => vec![(Step::Receipt, "disconnect".to_string())],
        3 => vec![(Step::Completion, "disconnect".to_string())],
        _ => vec![],
    };
    firmware_sim::zvt::Plan { outcome, faults }
}

/// How a sale goes on a nexo terminal: mostly approved; declines, the
/// customer's cancel, a wrong PIN, a busy or slow terminal, a partial
/// approval (posd reverses it), an answer lost after booking, one past
/// posd's patience, a restart in the middle, a receipt to sign.
fn nexo(rng: &mut ChaCha8Rng) -> firmware_sim::nexo::Scenario {
    use firmware_sim::nexo::Scenario;
    match rng.gen_range(0..100) {
        0..=59 => Scenario::Approve,
        60..=67 => Scenario::Decline,
        68..=71 => Scenario::CustomerCancel,
        72..=74 => Scenario::WrongPin,
        75..=77 => Scenario::Busy,
        78..=81 => Scenario::Slow,
        82..=85 => Scenario::Partial,
        86..=90 => Scenario::LostAnswer,
        91..=93 => Scenario::LongDelay,
        94..=96 => Scenario::Restart,
        _ => Scenario::Signature,
    }
}

fn fault(rng: &mut ChaCha8Rng) -> Fault {
    match rng.gen_range(0..20) {
        0..=8 => Fault::None,
        9..=10 => Fault::Down,
        11 => Fault::Hang,
        12..=13 => Fault::Flaky(rng.gen_range(10..=90)),
        14..=15 => Fault::LoseAnswers,
        16..=17 => Fault::Latency(rng.gen_range(10..5_000)),
        18 => Fault::ConflictOnRepeat,
        _ => Fault::NoRefundStatus,
    }
}
