//! What the engine takes from the world besides its store, gateway and
//! lanes: the wall clock, where new ids and the jitter of retries come
//! from, where blocking work runs, and (in the simulator only) a planted
//! bug. posd runs on the system's clock, UUIDv7 ids, the OS's randomness and
//! tokio's blocking pool with nothing planted ([`Environment::system`]); the
//! deterministic simulator (`crates/posd-sim`) passes a clock that follows
//! tokio's paused one, ids from a counter, seeded jitter, blocking work
//! inline and the bug a run asks for, so that a seed replays exactly and the
//! simulator can show it catches a known mistake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::WallClock;

/// The engine's clock, ids, randomness, blocking work and planted bug.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub wall: WallClock,
    pub ids: Ids,
    /// Set only by the simulator; never read from the environment or a file.
    pub planted: Option<Bug>,
    /// Where the jitter of retry waits comes from.
    pub random: Random,
    /// Blocking work (a WAL checkpoint, a database probe) runs where it is
    /// awaited instead of on tokio's blocking pool: the simulator's single
    /// thread, whose runs must not depend on another thread's timing.
    pub inline_blocking: bool,
}

impl Environment {
    /// What posd runs on: the system's wall clock, UUIDv7 ids, the OS's
    /// randomness, tokio's blocking pool, no bug.
    pub fn system() -> Self {
        Self::default()
    }

    /// Runs blocking work on tokio's blocking pool (or inline, see
    /// [`Environment::inline_blocking`]).
    pub(crate) async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, tokio::task::JoinError> {
        if self.inline_blocking { Ok(work()) } else { tokio::task::spawn_blocking(work).await }
    }

    /// `d` give or take 20 %, so that retries of many lanes (or stores) do
    /// not fall into step.
    pub(crate) fn jitter(&self, d: Duration) -> Duration {
        d * (800 + (self.random.next() % 401) as u32) / 1000
    }

    /// Whether the simulator planted `bug` in this engine.
    pub(crate) fn planted(&self, bug: Bug) -> bool {
        self.planted == Some(bug)
    }
}

/// Where new ids (payments, refunds, gateway keys, batches) come from.
#[derive(Debug, Clone, Default)]
pub enum Ids {
    /// A UUIDv7 each: what posd uses.
    #[default]
    Uuid,
    /// The next value of a counter shared across the engine's restarts (the
    /// simulator: the same seed makes the same ids).
    Counter(Arc<AtomicU64>),
}

impl Ids {
    /// 128 bits no other id of this store has.
    fn next(&self) -> [u8; 16] {
        match self {
            Ids::Uuid => *uuid::Uuid::now_v7().as_bytes(),
            Ids::Counter(n) => u128::from(n.fetch_add(1, Ordering::Relaxed) + 1).to_be_bytes(),
        }
    }

    /// A new id: `prefix` and 26 characters of Crockford base32.
    pub(crate) fn make(&self, prefix: &str) -> String {
        format!("{prefix}{}", pos_mask::crockford32(&self.next()))
    }

    /// A new key for the gateway, in Crockford base32 and ending in a letter.
    /// The store keeps the payment's masked PAN right after its gateway key;
    /// a key ending in digits would run into the PAN's first six digits and
    /// make a digit run that looks like a card number in the database file.
    pub(crate) fn gateway_key(&self) -> String {
        format!("{}K", pos_mask::crockford32(&self.next()))
    }
}

/// A known mistake the simulator can re-introduce (`simulate --plant NAME`)
/// to show that its invariants catch it. posd never plants one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A later "not sent" settles a refund that may have been sent: the
    /// double refund the money-safety issue fixed.
    RefundNotSentSettles,
    /// Synced commits at `synchronous=NORMAL` instead of FULL: a power cut
    /// undoes commits posd acted on (found only with `--power-loss`).
    SynchronousNormal,
    /// A ZVT result confirmed (80 00) before it is stored: a crash between
    /// the two leaves a payment the terminal booked and posd cannot show.
    ZvtConfirmBeforeStore,
    /// CARD_READ → AUTHORIZING committed after the authorization is sent
    /// instead of before: a crash between leaves a charge posd never asks about.
    AuthorizingAfterSend,
    /// An offline payment forwarded before it is claimed (FORWARDING, its
    /// attempt counted) instead of after: a crash during the call leaves a
    /// payment that looks never sent, which expires while the gateway holds
    /// its charge.
    ForwardUnclaimed,
    /// The offline gate released once the queue is read instead of after the
    /// approval is stored: an offline approval counts against the limits
    /// only after it was given, so lanes deciding at the same moment all see
    /// room for one more payment.
    OfflineCountedAfterApproval,
}

impl Bug {
    /// Every bug, by the name `--plant` takes.
    pub const ALL: &[(&str, Bug)] = &[
        ("refund-not-sent-settles", Bug::RefundNotSentSettles),
        ("synchronous-normal", Bug::SynchronousNormal),
        ("zvt-confirm-before-store", Bug::ZvtConfirmBeforeStore),
        ("authorizing-after-send", Bug::AuthorizingAfterSend),
        ("forward-unclaimed", Bug::ForwardUnclaimed),
        ("offline-counted-after-approval", Bug::OfflineCountedAfterApproval),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, b)| *b == self).map(|(n, _)| *n).expect("every bug is named")
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

/// A source of numbers that need not be secret (jitter).
#[derive(Debug, Clone, Default)]
pub enum Random {
    /// Different in every process: what posd uses.
    #[default]
    System,
    /// A sequence fixed by its start (the simulator's seed).
    Seeded(Arc<AtomicU64>),
}

impl Random {
    pub fn seeded(seed: u64) -> Self {
        Random::Seeded(Arc::new(AtomicU64::new(seed)))
    }

    fn next(&self) -> u64 {
        use std::hash::{BuildHasher, RandomState};
        match self {
            Random::System => RandomState::new().hash_one(std::time::Instant::now()),
            // SplitMix64: a counter through a bijective mix.
            Random::Seeded(state) => {
                let mut z =
                    state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
        }
    }
}
