//! After a restart and for the life of the process: finishing what the
//! previous run left (payments in doubt, pending refunds, the offline queue)
//! and sending queued reversals until the gateway acknowledges each, and on
//! nexo lanes until the terminal confirms each.

use std::collections::BTreeMap;
use std::sync::Arc;

use pos_engine::nexo::{Recover as NexoRecover, recover as nexo_recovery};
use pos_engine::payment::{Recover, Step, recover as reader_recovery};
use pos_engine::terminal::{Recover as TerminalRecover, recover as terminal_recovery};
use pos_engine::{Input, Status};
use pos_proto::gateway::{Outcome, ReverseRequest};

use super::{Engine, StepError};
use crate::store::{DeviceKind, Durability, EventKind, PaymentRecord, RefundRecord, Update};

impl Engine {
    /// Finishes what a previous run left: called once before serving.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let unsent = self.store.queue_summary()?.count;
        if unsent > 0 {
            tracing::warn!(unsent, "offline payments are waiting to be forwarded");
        }
        // Per lane, what its payment terminal may have booked: settled in
        // one task that holds the lane, the payment first.
        let mut on_terminal: BTreeMap<String, InDoubtOnTerminal> = BTreeMap::new();
        for refund in self.store.pending_refunds()? {
            if let Some(rec) = self.store.get(&refund.payment_id)? {
                if rec.device == DeviceKind::Nexo {
                    // Never sent: failed; maybe sent: the reversal worker asks.
                    self.recover_nexo_refund(&refund, &rec).await;
                    continue;
                }
                if rec.on_terminal() {
                    // Asked, never sent again: a second refund could pay twice.
                    on_terminal.entry(rec.terminal_id.clone()).or_default().1.push((refund, rec));
                    continue;
                }
                let engine = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = engine.send_refund(refund, &rec).await {
                        tracing::warn!(error = %e, "a pending refund is still unsettled");
                    }
                });
            }
        }
        for rec in self.store.unfinished()? {
            if rec.on_terminal() {
                // Left to a person before (asked only for a payment in doubt).
                let left = || {
                    let left = self.store.has_event(EventKind::TerminalOutcomeUnknown, &rec.id, "");
                    left.map_err(StepError::from)
                };
                if rec.device == DeviceKind::Nexo {
                    match nexo_recovery(rec.status, left)? {
                        NexoRecover::Nothing => {}
                        NexoRecover::Persist(step) => {
                            self.commit_step(&rec, step).await?;
                        }
                        NexoRecover::Settle => {
                            let terminal = rec.terminal_id.clone();
                            on_terminal.entry(terminal).or_default().0 = Some(rec);
                        }
                    }
                    continue;
                }
                match terminal_recovery(rec.status, left)? {
                    TerminalRecover::Nothing => {}
                    TerminalRecover::Persist(step) => {
                        self.commit_step(&rec, step).await?;
                    }
                    TerminalRecover::Settle => {
                        tracing::info!(payment = %rec.id, status = %rec.status, "asking the payment terminal about a payment in doubt");
                        let terminal = rec.terminal_id.clone();
                        on_terminal.entry(terminal).or_default().0 = Some(rec);
                    }
                }
                continue;
            }
            match reader_recovery(rec.status).map_err(StepError::from)? {
                Recover::Nothing => {}
                Recover::Persist(step) => {
                    self.commit_step(&rec, step).await?;
                }
                Recover::Settle { first } => {
                    let rec = match first {
                        Some(step) => self.commit_step(&rec, step).await?,
                        None => rec,
                    };
                    tracing::info!(payment = %rec.id, "recovering a payment with an unknown outcome");
                    let engine = self.clone();
                    tokio::spawn(async move { engine.settle(rec).await });
                }
                Recover::NotifyReversal => self.reversals.notify_one(),
            }
        }
        for (terminal, (payment, refunds)) in on_terminal {
            self.recover_on_terminal(&terminal, payment, refunds);
        }
        Ok(())
    }

    /// Commits a start-up step (it stores no data besides its transition)
    /// and publishes it and performs its effects as [`Engine::step`] does.
    async fn commit_step<D>(&self, rec: &PaymentRecord, step: Step<D>) -> Result<PaymentRecord, StepError> {
        let Step { transition, .. } = step;
        let applied = self
            .store
            .apply_all(&rec.id, Durability::Synced, vec![(transition.clone(), Update::default())], self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?;
        let (new, event) = applied.into_iter().next().expect("one transition, one result");
        self.committed(&transition, &new, event).await;
        Ok(new)
    }

    /// Sends queued reversals until each is acknowledged. Runs for the life
    /// of the process.
    pub async fn reversal_worker(self: Arc<Self>) {
        let (first, longest) = self.settings.reversal_backoff;
        let mut backoff = first;
        loop {
            let filter = crate::store::ListFilter {
                statuses: vec![Status::ReversalPending],
                limit: 100,
                oldest_first: true,
                ..Default::default()
            };
            let mut failed = false;
            let pending = match self.store.list(&filter) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read pending reversals; will retry");
                    failed = true;
                    Vec::new()
                }
            };
            for rec in pending {
                let req = ReverseRequest {
                    transaction_key: rec.gateway_key.clone(),
                    // Why, for the gateway: an answer lost, a hold released, or
                    // an offline payment never confirmed.
                    reason: match rec.reason_code.as_str() {
                        why @ ("capture_window_passed" | "expired") => why,
                        _ => "timeout",
                    }
                    .into(),
                    amount_minor: rec.amount_minor,
                    currency: rec.currency.clone(),
                    terminal_id: self.gateway_terminal(&rec.terminal_id),
                };
                match self.gateway.reverse(req).await {
                    Ok(tx) if matches!(Outcome::try_from(tx.outcome), Ok(Outcome::Reversed | Outcome::Declined)) => {
                        if let Err(e) = self.step(&rec, Input::ReversalAcknowledged, Update::default()).await {
                            tracing::error!(payment = %rec.id, error = %e, "could not record the reversal");
                            failed = true;
                        }
                    }
                    Ok(tx) => {
                        tracing::error!(payment = %rec.id, outcome = tx.outcome, "ALERT: the gateway did not reverse the charge; will retry");
                        failed = true;
                    }
                    Err(e) => {
                        tracing::warn!(payment = %rec.id, error = %e, "reversal not acknowledged; will retry");
                        failed = true;
                    }
                }
            }
            // Captures and voids whose answer was lost, unless the register
            // asked again.
            if !self.settle_after_sale_in_doubt().await {
                failed = true;
            }
            // Nexo lanes: voids and refunds in doubt, and the reversals posd
            // owes (a partial approval, an approval after the register's
            // cancel), asked about or sent until the terminal confirms.
            for lane in self.lanes.values() {
                if let Some(nexo) = lane.nexo()
                    && !self.settle_nexo_lane(&lane.id, &**nexo).await
                {
                    failed = true;
                }
            }
            if failed {
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    () = self.reversals.notified() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(longest);
            } else {
                backoff = first;
                self.reversals.notified().await;
            }
        }
    }
}

/// What a lane's payment terminal may have booked when posd stopped: its
/// payment in doubt, and its refunds in doubt with their payments.
type InDoubtOnTerminal = (Option<PaymentRecord>, Vec<(RefundRecord, PaymentRecord)>);

#[cfg(test)]
mod tests;
