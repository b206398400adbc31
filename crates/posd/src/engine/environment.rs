//! What the engine takes from the world besides its store, gateway and
//! lanes: the wall clock, where new ids come from, and (in the simulator
//! only) a planted bug. posd runs on the system's clock and UUIDv7 ids with
//! nothing planted ([`Environment::system`]); the deterministic simulator
//! (`crates/posd-sim`) passes a clock that follows tokio's paused one, ids
//! from a counter, and the bug a run asks for, so that a seed replays
//! exactly and the simulator can show it catches a known mistake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::WallClock;

/// The engine's clock, ids and planted bug.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub wall: WallClock,
    pub ids: Ids,
    /// Set only by the simulator; never read from the environment or a file.
    pub planted: Option<Bug>,
}

impl Environment {
    /// What posd runs on: the system's wall clock, UUIDv7 ids, no bug.
    pub fn system() -> Self {
        Self::default()
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
}

impl Bug {
    /// Every bug, by the name `--plant` takes.
    pub const ALL: &[(&str, Bug)] = &[("refund-not-sent-settles", Bug::RefundNotSentSettles)];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, b)| *b == self).map(|(n, _)| *n).expect("every bug is named")
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}
