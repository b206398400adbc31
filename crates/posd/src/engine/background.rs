//! The engine's background loop and its stop: the monitor (gateway
//! reachability, queue ageing, reader events, the watchdog's heartbeat) with
//! its helper tasks, and the graceful drain of payments in progress.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pos_engine::Status;

use super::{Engine, LAST_ONLINE};
use crate::store::EventKind;

impl Engine {
    /// Starts the engine's background tasks: reversals, the offline
    /// forwarder, the terminal records' forwarder, the monitor, gateway and
    /// printer events.
    pub fn start_workers(self: &Arc<Self>) {
        tokio::spawn(self.clone().reversal_worker());
        tokio::spawn(self.clone().forwarder());
        tokio::spawn(self.clone().record_forwarder());
        tokio::spawn(self.clone().monitor());
        tokio::spawn(self.clone().gateway_events());
        tokio::spawn(self.clone().printer_events());
    }

    /// Gateway reachability (health checks plus real calls), queue ageing,
    /// reader events and the watchdog's heartbeat. The loop never waits for
    /// the gateway: health checks and capture windows run in tasks of their
    /// own, so a gateway that accepts and never answers (a WAN black hole)
    /// holds up neither the ageing nor the heartbeat. Those tasks never end:
    /// if one does (a panic), the loop stops beating and the watchdog
    /// restarts posd, as it would for the loop itself.
    pub async fn monitor(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut helpers = vec![tokio::spawn(self.clone().health_checks())];
        if self.settings.capture_window.is_some() {
            helpers.push(tokio::spawn(self.clone().capture_windows()));
        }
        let (refunds, period) = (self.clone(), f.ageing_interval);
        helpers.push(tokio::spawn(async move { every(period, || refunds.settle_pending_refunds()).await }));
        let mut online = self.gateway.subscribe_online();
        let mut ageing = tokio::time::interval(f.ageing_interval);
        let mut was_online: Option<bool> = None;
        let mut last_recorded = 0i64;
        let mut readers: HashMap<String, (bool, u64)> = HashMap::new();
        loop {
            tokio::select! {
                biased; // branches in a fixed order: a simulated run replays exactly
                _ = online.changed() => {}
                _ = ageing.tick() => {
                    if helpers.iter().any(tokio::task::JoinHandle::is_finished) {
                        tracing::error!("a monitor task stopped; the heartbeat stops so the watchdog restarts posd");
                        return;
                    }
                    self.age_queue(&f).await;
                    self.report_readers(&mut readers).await;
                    self.heartbeat.store(self.now_ms(), Ordering::Relaxed);
                    continue;
                }
            }
            let now_online = *online.borrow_and_update();
            if was_online != Some(now_online) {
                if was_online.is_some() || !now_online {
                    let (kind, text) = if now_online {
                        (EventKind::Online, "the gateway is reachable")
                    } else {
                        (EventKind::Offline, "the gateway cannot be reached")
                    };
                    self.emit(kind, "", "", text.into()).await;
                }
                was_online = Some(now_online);
                if now_online {
                    self.forward_wake.notify_one();
                }
            }
            if now_online && self.now_ms() - last_recorded > 60_000 {
                last_recorded = self.now_ms();
                if let Err(e) = self.store.set_meta(LAST_ONLINE, last_recorded).await {
                    tracing::warn!(error = %e, "cannot record the gateway's last contact");
                }
            }
        }
    }

    /// Asks the gateway whether it answers, every `health_interval`.
    async fn health_checks(self: Arc<Self>) {
        every(self.settings.forward.health_interval, || self.gateway.probe()).await
    }

    /// Emits an event when a lane's reader connects or disconnects (the lane
    /// task reopens an unplugged device by itself, with backoff).
    /// Every connection and disconnection since the last look is reported,
    /// in order, however long ago it happened (a reader that came and went
    /// between two looks, or before the first).
    async fn report_readers(&self, seen: &mut HashMap<String, (bool, u64)>) {
        for lane in self.lanes.values() {
            let state = lane.reader_state();
            let (was, before) =
                seen.insert(lane.id.clone(), (state.connected, state.connections)).unwrap_or((false, 0));
            let new = state.connections.saturating_sub(before);
            let disconnected = || {
                let message = format!("card reader on {} disconnected; reopening", lane.line);
                self.emit(EventKind::ReaderDisconnected, &lane.id, "", message)
            };
            if was && (new > 0 || !state.connected) {
                disconnected().await;
            }
            for i in 0..new {
                let message = format!("card reader {} (firmware {}) connected", state.serial, state.firmware);
                self.emit(EventKind::ReaderConnected, &lane.id, "", message).await;
                if i + 1 < new || !state.connected {
                    disconnected().await;
                }
            }
        }
    }

    /// The first part of a graceful stop: refuses new payments and lets those
    /// in progress finish within `bound`. Payments still waiting for a card
    /// then are canceled (nothing was charged); any still waiting for the
    /// gateway are left as they are stored, and the next start settles them
    /// by status query, as after a power cut.
    pub async fn drain(&self, bound: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        // An admission past its check of `stopping` registers its payment first.
        for admission in self.admission.values() {
            drop(admission.lock().await);
        }
        let running = |engine: &Self| engine.live.lock().unwrap().keys().cloned().collect::<Vec<_>>();
        let first = running(self);
        if first.is_empty() {
            return;
        }
        tracing::info!(payments = ?first, bound = ?bound, "stopping: waiting for payments in progress");
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Registered before the check, so the last payment's end is not missed.
            let ended = self.none_live.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if running(self).is_empty() || tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        for id in running(self) {
            let Ok(Some(rec)) = self.store.get(&id) else { continue };
            if matches!(rec.status, Status::Created | Status::Collecting) {
                tracing::warn!(payment = %id, "stopping: canceling a payment still waiting for a card");
                match self.cancel_payment(&id).await {
                    Ok(_) => self.emit(
                        EventKind::PaymentCanceledOnStop,
                        &rec.terminal_id,
                        &id,
                        format!("payment {id} still waited for a card when posd stopped; it was canceled, nothing was charged"),
                    ).await,
                    Err(e) => tracing::error!(payment = %id, error = %e, "stopping: cannot cancel"),
                }
            } else {
                tracing::warn!(payment = %id, status = %rec.status, "stopping: payment parked; it is settled at the next start");
                self.emit(
                    EventKind::PaymentParkedOnStop,
                    &rec.terminal_id,
                    &id,
                    format!("payment {id} was {} when posd stopped; posd settles it when it starts again", rec.status),
                )
                .await;
            }
        }
    }
}

/// Runs `work` every `period`, for good: a run that takes longer delays the
/// next, so runs never pile up.
pub(super) async fn every<F: Future<Output = ()>>(period: Duration, mut work: impl FnMut() -> F) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        work().await;
    }
}
