//! The engine's clocks. [`WallClock`]: the wall time of every commit, event
//! and capture window (the system's; in tests one that follows tokio's clock
//! from a fixed epoch). [`AgeClock`]: how old a queued payment is, immune to
//! wall-clock jumps.
//!
//! The ageing clock advances with the monotonic clock while posd runs. At
//! start-up it resumes from the later of the wall clock and the last time posd saw
//! (persisted), so a clock set backwards never makes a queued payment younger.
//! Jumps between the wall clock and the ageing clock are logged. The
//! monotonic clock is tokio's (the system's outside tests), so a test under
//! tokio's paused clock ages the queue by advancing it.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::store::{Store, now_ms};

/// The wall clock the engine reads its times from: Unix milliseconds, as
/// [`crate::store::now_ms`] reads them. In process (the engine's tests, the
/// simulator) it can instead follow tokio's clock from a given epoch
/// ([`WallClock::following_tokio`]), so a run under the paused clock moves
/// the wall time by advancing tokio's (capture windows, the times in the
/// audit log).
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock {
    /// The epoch (ms) and the instant of tokio's clock it stands for.
    following: Option<(i64, Instant)>,
}

impl WallClock {
    /// The system's wall clock: what posd runs on.
    pub fn system() -> Self {
        Self::default()
    }

    /// A wall clock that reads `epoch_ms` now and advances with tokio's
    /// clock; posd itself never makes one.
    pub fn following_tokio(epoch_ms: i64) -> Self {
        Self { following: Some((epoch_ms, Instant::now())) }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self.following {
            Some((epoch_ms, at)) => epoch_ms + at.elapsed().as_millis() as i64,
            None => now_ms(),
        }
    }
}

const HIGH_WATER: &str = "ageing_clock_high_water_ms";
/// A difference between wall and ageing clock above this is logged as a jump.
const JUMP_MS: i64 = 5 * 60 * 1000;
/// A start-up this far after the last recorded time is logged.
const FORWARD_JUMP_MS: i64 = 24 * 3600 * 1000;

pub struct AgeClock {
    /// The wall clock it starts from and compares itself with.
    wall: WallClock,
    base_ms: i64,
    base: Instant,
    last_logged_drift: Mutex<i64>,
}

impl AgeClock {
    pub fn start(store: &Store, clock: WallClock) -> Self {
        let wall = clock.now_ms();
        let high_water = store.meta(HIGH_WATER).ok().flatten().unwrap_or(0);
        if high_water > wall + JUMP_MS {
            tracing::warn!(
                behind_s = (high_water - wall) / 1000,
                "the wall clock is behind the last time posd recorded; ageing continues from the later time"
            );
        } else if high_water > 0 && wall > high_water + FORWARD_JUMP_MS {
            tracing::warn!(
                ahead_s = (wall - high_water) / 1000,
                "the wall clock is far ahead of the last time posd recorded (a long stop, or the clock was set forward); \
                 queued payments age by it; those already sent wait for the gateway's answer instead of expiring"
            );
        }
        Self { wall: clock, base_ms: wall.max(high_water), base: Instant::now(), last_logged_drift: Mutex::new(0) }
    }

    /// Milliseconds on the ageing clock (Unix epoch based, never backwards).
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// Logs a wall-clock jump, once per jump. No I/O.
    pub fn check(&self) {
        let drift = self.wall.now_ms() - self.now_ms();
        let mut last = self.last_logged_drift.lock().unwrap();
        if drift.abs() > JUMP_MS && (drift - *last).abs() > JUMP_MS {
            tracing::warn!(drift_s = drift / 1000, "wall clock jumped; queued payments age by the monotonic clock");
            *last = drift;
        }
    }

    /// Persists the high-water mark a restart resumes from (a synced commit
    /// through the store's group commit).
    pub async fn persist(&self, store: &Arc<Store>) {
        if let Err(e) = store.set_meta(HIGH_WATER, self.now_ms()).await {
            tracing::warn!(error = %e, "cannot persist the ageing clock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_clock_set_backwards_across_a_restart_never_makes_the_queue_younger() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
        // posd last ran "a day in the future": the wall clock was set back since.
        let later = now_ms() + 86_400_000;
        store.set_meta(HIGH_WATER, later).await.unwrap();
        let clock = AgeClock::start(&store, WallClock::system());
        assert!(clock.now_ms() >= later);
        clock.check();
        clock.persist(&store).await;
        assert!(store.meta(HIGH_WATER).unwrap().unwrap() >= later, "the high-water mark never goes back");
    }

    #[test]
    fn the_ageing_clock_advances_monotonically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.db")).unwrap();
        let clock = AgeClock::start(&store, WallClock::system());
        let a = clock.now_ms();
        let b = clock.now_ms();
        assert!(b >= a);
    }
}
