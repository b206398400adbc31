//! The offline queue: forwarding it to the gateway in order, ageing it,
//! its status for the register, requeuing quarantined payments, and the
//! gateway's own events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pos_engine::offline::{self, AgeLevel};
use pos_engine::{Input, Status, next};
use pos_proto::gateway::{ForwardResult, Outcome, Transaction};

use super::{Bug, Engine, EngineError, ForwardSettings, LAST_ONLINE, StepError, human, step_error};
use crate::failpoint;
use crate::gateway::{BatchOutcome, Scrubbed};
use crate::store::{Data, EventKind, NewEvent, PaymentRecord, StoreError, Update};
use crate::telemetry::SyncReport;

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    /// Puts a quarantined payment back in the offline queue: the cause was
    /// fixed at the gateway. It goes out again under the same gateway key, so
    /// it is charged at most once, and it still expires with the queue's age.
    pub async fn requeue_payment(&self, id: &str, caller: &str) -> Result<PaymentRecord, EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        if rec.status != Status::Quarantined {
            return Err(EngineError::FailedPrecondition(
                "WRONG_STATE",
                format!("payment {id} is {}; only a QUARANTINED payment can be requeued", rec.status),
            ));
        }
        let update = Update {
            event: Some(NewEvent {
                kind: EventKind::Requeued,
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message: format!(
                    "payment {id} ({}) was put back in the offline queue by {caller}, after {}",
                    pos_engine::money::format(rec.amount_minor, &rec.currency),
                    rec.reason_code
                ),
            }),
            ..Default::default()
        };
        let new = self.step(&rec, Input::Requeue { by: caller.to_string() }, update).await.map_err(step_error)?;
        tracing::warn!(payment = %id, %caller, "quarantined payment requeued");
        self.forward_wake.notify_one();
        Ok(new)
    }

    /// Wakes the forwarder now ("sync now").
    pub fn sync_now(&self) {
        self.sync.lock().unwrap().paused = false;
        self.forward_wake.notify_one();
    }

    pub fn sync_report(&self) -> Result<SyncReport, StoreError> {
        let s = self.store.queue_summary()?;
        let state = self.sync.lock().unwrap().clone();
        let now = self.clock.now_ms();
        Ok(SyncReport {
            online: self.gateway.is_online(),
            queue_depth: s.count,
            quarantined: s.quarantined,
            totals: s.totals,
            oldest_age: s
                .oldest_queued_at_ms
                .map_or(Duration::ZERO, |t| Duration::from_millis((now - t).max(0) as u64)),
            last_error: if state.last_error.is_empty() { self.gateway.last_error() } else { state.last_error },
            paused: state.paused,
            last_online_ms: self.store.meta(LAST_ONLINE)?,
        })
    }

    /// Forwards the outbox: FIFO, in batches, the same key on every attempt,
    /// backoff with jitter on link errors. Runs for the life of the process.
    pub async fn forwarder(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut backoff = f.retry_first;
        let mut wait: Option<Duration> = None;
        loop {
            if let Some(d) = wait.take() {
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    () = self.forward_wake.notified() => backoff = f.retry_first,
                    () = tokio::time::sleep(self.env.jitter(d)) => {}
                }
            }
            // Between rounds, so no round sends card data deleted meanwhile.
            self.drop_overdue_card_data(&f).await;
            let batch = match self.store.outbox_batch(f.batch_size) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    wait = Some(f.retry_max);
                    continue;
                }
            };
            // Nothing is claimed while the gateway is known to be unreachable:
            // the health checks wake the forwarder when it comes back.
            if batch.is_empty() || !self.gateway.is_online() {
                tokio::select! {
                    biased; // branches in a fixed order: a simulated run replays exactly
                    () = self.forward_wake.notified() => {}
                    () = tokio::time::sleep(f.health_interval) => {}
                }
                continue;
            }
            // Overdue payments (past the expiry age, card data deleted) are
            // asked about, never sent; the others go out in the same round.
            let (overdue, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, blob)| blob.is_empty());
            let asked = if overdue.is_empty() { Ok(None) } else { self.settle_overdue(overdue).await };
            let sent = if batch.is_empty() || asked.is_err() { Ok(None) } else { self.forward_once(batch).await };
            let round = match (asked, sent) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(a), Ok(b)) => Ok(a.into_iter().chain(b).reduce(|x, y| x || y)),
            };
            match round {
                Ok(None) => backoff = f.retry_first,
                Ok(Some(auth)) => {
                    wait = Some(if auth { f.retry_max } else { backoff });
                    backoff = (backoff * 2).min(f.retry_max);
                }
                Err(e) => {
                    tracing::error!(error = %e, "forwarding stopped by a storage error");
                    self.requeue_stranded().await;
                    wait = Some(f.retry_max);
                }
            }
        }
    }

    /// One forwarding round. `Ok(Some(auth))`: the link failed (auth:
    /// credentials), or a payment's answer was unclear and it went back to
    /// the queue; either way the next round waits.
    async fn forward_once(&self, batch: Vec<(PaymentRecord, Vec<u8>)>) -> Result<Option<bool>, StepError> {
        // The simulator's planted bug sends first and claims after.
        let unclaimed = self.env.planted(Bug::ForwardUnclaimed);
        let mut claimed = if unclaimed { batch } else { self.claim_for_forwarding(batch).await? };
        failpoint::hit("forward_after_claim");
        let requests = claimed
            .iter()
            .map(|(rec, blob)| self.authorize_request(rec, &rec.card.clone().unwrap_or_default(), blob.clone()))
            .collect();
        let outcome = self.gateway.forward_batch(requests).await;
        if unclaimed {
            claimed = self.claim_for_forwarding(claimed).await?;
        }
        match outcome {
            BatchOutcome::Results(results) => {
                failpoint::hit("forward_after_response");
                let requeued = self.apply_forward_results(claimed, results).await?;
                let mut s = self.sync.lock().unwrap();
                s.last_error.clear();
                s.paused = false;
                Ok(requeued.then_some(false))
            }
            BatchOutcome::LinkError { message, auth } => {
                tracing::warn!(items = claimed.len(), %message, auth, "forwarding failed; payments stay queued");
                let items = claimed
                    .iter()
                    .map(|(rec, _)| {
                        let t = next(rec.status, &Input::ForwardRetry { message: message.clone() });
                        (rec.id.clone(), t, Update { data: Data::ForwardError(message.clone()), ..Default::default() })
                    })
                    .filter_map(|(id, t, u)| t.ok().map(|t| (id, t, u)))
                    .collect();
                self.store.apply_batch(items, self.now_ms()).await.inspect_err(|e| self.note_store_error(e))?;
                let (first_pause, new_error) = {
                    let mut s = self.sync.lock().unwrap();
                    let new_error = s.last_error != message;
                    s.last_error = message.clone();
                    let first = auth && !s.paused;
                    s.paused = auth;
                    (first, new_error)
                };
                if first_pause {
                    tracing::error!(%message, "ALERT: forwarding paused: the gateway refuses posd's credentials");
                    self.emit(EventKind::ForwardingPaused, "", "", format!("forwarding paused: {message}")).await;
                } else if !auth && new_error {
                    let text = format!("{} payments stay queued: {message}", claimed.len());
                    self.emit(EventKind::ForwardFailed, "", "", text).await;
                }
                Ok(Some(auth))
            }
        }
    }

    /// A queued payment past the expiry age whose forwarding may have reached
    /// the gateway cannot simply expire, but it is never sent again either:
    /// its card data goes now (the forwarder calls this between rounds, at
    /// least every `health_interval` or `retry_max`), and it is asked about.
    async fn drop_overdue_card_data(&self, f: &ForwardSettings) {
        let why = format!("not confirmed by the gateway within {}", human(f.expire_after));
        let queued_before = self.clock.now_ms() - f.expire_after.as_millis() as i64;
        match self.store.drop_overdue_card_data(queued_before, &why, self.now_ms()).await {
            Ok(events) if !events.is_empty() => {
                tracing::error!(
                    count = events.len(),
                    "ALERT: queued payments overdue; card data deleted, asking the gateway"
                );
                for e in events {
                    let _ = self.events.send(e);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot delete the card data of overdue payments");
                self.note_store_error(&e);
            }
        }
    }

    /// Moves a round's payments to FORWARDING in one commit (recovery finds a
    /// payment there if posd stops before storing the answer), with their
    /// card data; a payment that moved on meanwhile is left out.
    async fn claim_for_forwarding(
        &self,
        batch: Vec<(PaymentRecord, Vec<u8>)>,
    ) -> Result<Vec<(PaymentRecord, Vec<u8>)>, StepError> {
        let mut claims = Vec::with_capacity(batch.len());
        for (rec, _) in &batch {
            claims.push((rec.id.clone(), next(rec.status, &Input::ForwardSending)?, Update::default()));
        }
        Ok(self
            .store
            .apply_batch(claims, self.now_ms())
            .await
            .inspect_err(|e| self.note_store_error(e))?
            .into_iter()
            .zip(batch)
            .filter_map(|(r, (_, blob))| r.ok().map(|(rec, _)| (rec, blob)))
            .collect())
    }

    /// Settles queued payments past the expiry age whose forwarding may have
    /// reached the gateway (their card data already deleted) by the
    /// gateway's record under each one's key: a record is stored as the
    /// forwarding's answer (captured, declined...); with no record it is
    /// reversed under its key (REVERSAL_PENDING, reason `expired`), so an
    /// earlier attempt still on its way can never charge it. `Ok(Some(false))`
    /// when one of them is still unsettled (the gateway could not be asked,
    /// or its answer was unclear).
    async fn settle_overdue(&self, overdue: Vec<(PaymentRecord, Vec<u8>)>) -> Result<Option<bool>, StepError> {
        let claimed = self.claim_for_forwarding(overdue).await?;
        let mut answered = Vec::new();
        let mut results = Vec::new();
        let mut expired = Vec::new();
        // After a link error the rest are not asked (each would wait as
        // long); they go back to the queue with it.
        let mut link_error: Option<String> = None;
        for (rec, _) in claimed {
            let answer = match &link_error {
                Some(message) => Err(message.clone()),
                None => self.gateway.transaction(&rec.gateway_key).await,
            };
            let result = match answer {
                Ok(None) => {
                    expired.push(rec);
                    continue;
                }
                Ok(Some(tx)) => ForwardResult { transaction: Some(tx), ..Default::default() },
                Err(message) => {
                    let message = link_error.get_or_insert(message);
                    ForwardResult {
                        error_code: "unavailable".into(),
                        error_message: format!("cannot ask the gateway about the overdue payment: {message}"),
                        ..Default::default()
                    }
                }
            };
            results.push(ForwardResult { transaction_key: rec.gateway_key.clone(), ..result });
            answered.push((rec, Vec::new()));
        }
        let requeued = self.apply_forward_results(answered, results).await?;
        let mut items = Vec::with_capacity(expired.len());
        for rec in expired {
            let message = format!(
                "not confirmed within {} and the gateway has no record of it; it is reversed under its key so a \
                 late arrival can never charge it. Nothing was charged",
                human(self.settings.forward.expire_after)
            );
            let t = next(rec.status, &Input::NoRecordAfterExpiry { message: message.clone() })?;
            let event = NewEvent {
                kind: EventKind::Expired,
                terminal_id: rec.terminal_id.clone(),
                payment_id: rec.id.clone(),
                message,
            };
            items.push((rec.id.clone(), t, Update { event: Some(event), ..Default::default() }));
        }
        let stored = self.store.apply_batch(items, self.now_ms()).await.inspect_err(|e| self.note_store_error(e))?;
        if stored.iter().any(Result::is_ok) {
            self.reversals.notify_one();
        }
        for (_, event) in stored.into_iter().flatten() {
            if let Some(e) = event {
                let _ = self.events.send(e);
            }
        }
        Ok(requeued.then_some(false))
    }

    /// Stores a forwarding round's answers. Results are matched to payments by
    /// transaction key and checked against the local amount and currency; only
    /// an error about the item itself (malformed, account mismatch) quarantines
    /// it; anything unclear puts it back in the queue under the same key
    /// (then true).
    async fn apply_forward_results(
        &self,
        claimed: Vec<(PaymentRecord, Vec<u8>)>,
        results: Vec<ForwardResult>,
    ) -> Result<bool, StepError> {
        let mut requeued = false;
        let mut by_key: HashMap<String, ForwardResult> =
            results.into_iter().map(|r| (r.transaction_key.clone(), r)).collect();
        let mut items = Vec::with_capacity(claimed.len());
        for (rec, _) in claimed {
            let r = by_key.remove(&rec.gateway_key).unwrap_or_default();
            let tx = match (r.transaction, r.error_code.as_str()) {
                (Some(tx), _) => Ok(tx),
                // A gateway that answers a repeated key with "conflict": the
                // charge exists, so ask for it instead of failing.
                (None, "already_exists") => match self.gateway.transaction(&rec.gateway_key).await {
                    Ok(Some(tx)) => Ok(tx),
                    Ok(None) => Err(Retry("the gateway reports a conflict but has no record".into())),
                    Err(e) => Err(Retry(format!("status query after a conflict failed: {e}"))),
                },
                (None, code @ ("invalid_argument" | "account_mismatch")) => {
                    Err(Quarantine(code.to_string(), r.error_message.clone()))
                }
                (None, "") => Err(Retry("the gateway returned no result for this payment".into())),
                (None, other) => Err(Retry(format!("gateway error {other}: {}", r.error_message))),
            };
            let tx = tx.and_then(|t| {
                if t.amount_minor != 0 && (t.amount_minor != rec.amount_minor || t.currency != rec.currency) {
                    Err(Retry(format!(
                        "the gateway's record ({} {}) does not match the payment ({} {})",
                        t.amount_minor, t.currency, rec.amount_minor, rec.currency
                    )))
                } else {
                    Ok(t)
                }
            });
            let (input, event) = match tx {
                Ok(t) => match Outcome::try_from(t.outcome).unwrap_or(Outcome::Unspecified) {
                    Outcome::Approved => (
                        Input::Approved { captured: t.captured },
                        Some((EventKind::Forwarded, "forwarded; the gateway approved".to_string(), t)),
                    ),
                    Outcome::Declined => {
                        tracing::error!(payment = %rec.id, code = %t.decline_code, "ALERT: a payment approved offline was declined when forwarded");
                        (
                            Input::Declined { code: t.decline_code.clone(), message: t.decline_message.clone() },
                            Some((
                                EventKind::OfflineDeclined,
                                format!("declined when forwarded: {} (the merchant's loss)", t.decline_code),
                                t,
                            )),
                        )
                    }
                    Outcome::Reversed | Outcome::Voided => {
                        let message = "the gateway holds this payment's key as reversed".to_string();
                        tracing::error!(payment = %rec.id, "ALERT: queued payment quarantined: {message}");
                        (
                            Input::Quarantine { code: "reversed_at_gateway".into(), message: message.clone() },
                            Some((EventKind::Quarantined, format!("reversed_at_gateway: {message}"), t)),
                        )
                    }
                    Outcome::Unspecified => {
                        (Input::ForwardRetry { message: "the gateway answered without an outcome".into() }, None)
                    }
                },
                Err(Quarantine(code, message)) => {
                    tracing::error!(payment = %rec.id, %code, %message, "ALERT: queued payment quarantined");
                    (
                        Input::Quarantine { code: code.clone(), message: message.clone() },
                        Some((EventKind::Quarantined, format!("{code}: {message}"), Transaction::default())),
                    )
                }
                Err(Retry(message)) => {
                    tracing::warn!(payment = %rec.id, %message, "forwarding result unclear; payment stays queued");
                    (Input::ForwardRetry { message }, None)
                }
            };
            requeued |= matches!(input, Input::ForwardRetry { .. });
            let t = next(rec.status, &input)?;
            let update = match event {
                Some((kind, message, answer)) => Update {
                    data: Data::GatewayAnswer {
                        auth_code: (!answer.auth_code.is_empty()).then_some(answer.auth_code),
                        gateway_reference: (!answer.gateway_reference.is_empty()).then_some(answer.gateway_reference),
                    },
                    event: Some(NewEvent {
                        kind,
                        terminal_id: rec.terminal_id.clone(),
                        payment_id: rec.id.clone(),
                        message,
                    }),
                    ..Default::default()
                },
                None => Update { data: Data::ForwardError(t.cause.clone()), ..Default::default() },
            };
            items.push((rec.id.clone(), t, update));
        }
        for r in self.store.apply_batch(items, self.now_ms()).await.inspect_err(|e| self.note_store_error(e))? {
            match r {
                Ok((rec, event)) => {
                    tracing::info!(payment = %rec.id, status = %rec.status, "forwarding result stored");
                    if let Some(e) = event {
                        let _ = self.events.send(e);
                    }
                }
                Err(e) => tracing::error!(error = %e, "forwarding result not stored"),
            }
        }
        Ok(requeued)
    }

    /// Puts payments left in FORWARDING (a round cut short by a storage
    /// error) back in the queue; the same key makes the repeat safe.
    async fn requeue_stranded(&self) {
        let filter = crate::store::ListFilter { statuses: vec![Status::Forwarding], limit: 1000, ..Default::default() };
        let Ok(stranded) = self.store.list(&filter) else { return };
        let items: Vec<_> = stranded
            .iter()
            .filter_map(|rec| {
                let t =
                    next(rec.status, &Input::ForwardRetry { message: "forwarding round interrupted".into() }).ok()?;
                Some((rec.id.clone(), t, Update::default()))
            })
            .collect();
        if !items.is_empty()
            && let Err(e) = self.store.apply_batch(items, self.now_ms()).await
        {
            tracing::error!(error = %e, "cannot put interrupted payments back in the queue");
        }
    }

    pub(super) async fn age_queue(&self, f: &ForwardSettings) {
        self.clock.check();
        let now = self.clock.now_ms();
        // Expire what is too old to forward.
        match self.store.queued_before(now - f.expire_after.as_millis() as i64) {
            Ok(old) => {
                let items: Vec<_> = old
                    .iter()
                    .filter_map(|rec| {
                        let message = format!("not forwarded within {}", human(f.expire_after));
                        let t = next(rec.status, &Input::Expire { message: message.clone() }).ok()?;
                        let event = NewEvent {
                            kind: EventKind::Expired,
                            terminal_id: rec.terminal_id.clone(),
                            payment_id: rec.id.clone(),
                            message,
                        };
                        Some((rec.id.clone(), t, Update { event: Some(event), ..Default::default() }))
                    })
                    .collect();
                if !items.is_empty() {
                    tracing::error!(count = items.len(), "ALERT: queued payments expired unsent");
                    match self.store.apply_batch(items, self.now_ms()).await {
                        Ok(results) => {
                            for (_, e) in results.into_iter().flatten() {
                                if let Some(e) = e {
                                    let _ = self.events.send(e);
                                }
                            }
                        }
                        Err(e) => self.note_store_error(&e),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot check the queue's age"),
        }
        let Ok(summary) = self.store.queue_summary() else { return };
        let level = summary.oldest_queued_at_ms.map(|t| {
            let age = Duration::from_millis((now - t).max(0) as u64);
            let policy = offline::OfflinePolicy {
                alert_after: f.alert_after,
                stop_after: f.stop_after,
                expire_after: f.expire_after,
                ..offline::OfflinePolicy::defaults_for("")
            };
            (offline::age_level(&policy, age), age)
        });
        let previous = {
            let mut s = self.sync.lock().unwrap();
            std::mem::replace(&mut s.age_level, level.map(|(l, _)| l))
        };
        if let Some((level, age)) = level
            && previous.is_none_or(|p| level > p)
        {
            match level {
                AgeLevel::Alert => {
                    tracing::warn!(age_s = age.as_secs(), "ALERT: offline payments are waiting too long");
                    let text = format!("the oldest unsent payment is {} old", human(age));
                    self.emit(EventKind::QueueAgeAlert, "", "", text).await;
                }
                AgeLevel::Stop => {
                    tracing::error!(
                        age_s = age.as_secs(),
                        "ALERT: no new offline payments until the queue is forwarded"
                    );
                    self.emit(
                        EventKind::QueueAgeStop,
                        "",
                        "",
                        format!("the oldest unsent payment is {} old; new offline payments are refused", human(age)),
                    )
                    .await;
                }
                AgeLevel::Fresh | AgeLevel::Expire => {}
            }
        }
        // Housekeeping with disk writes, at most once a minute: the ageing
        // clock's high-water mark, and a WAL checkpoint so the card data of
        // settled payments does not linger there.
        let due = {
            let mut last = self.last_housekeeping.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY);
            if due {
                *last = Some(tokio::time::Instant::now());
            }
            due
        };
        if due {
            self.clock.persist(&self.store).await;
            // The checkpoint syncs: on the blocking pool, not a worker.
            let store = Arc::clone(&self.store);
            if let Err(e) = self.env.blocking(move || store.checkpoint()).await {
                tracing::debug!(error = %e, "WAL checkpoint not run");
            }
        }
    }

    /// Follows the gateway's event stream (its webhooks), applying each
    /// event id once and re-emitting it to the register. Resumes after the
    /// last sequence seen, across reconnects and restarts.
    pub async fn gateway_events(self: Arc<Self>) {
        let f = self.settings.forward.clone();
        let mut backoff = f.retry_first;
        loop {
            let after = self.store.meta("gateway_event_sequence").ok().flatten().unwrap_or(0).max(0) as u64;
            let reason = match self.gateway.events(after).await {
                Err(e) => e,
                Ok(mut stream) => {
                    backoff = f.retry_first;
                    loop {
                        match stream.message().await.map(|e| e.map(Scrubbed::scrubbed)) {
                            Ok(Some(e)) => match self.store.apply_gateway_event(&e, self.now_ms()).await {
                                Ok(Some(rec)) => {
                                    tracing::info!(kind = %e.kind, event = %e.event_id, "gateway event applied");
                                    let _ = self.events.send(rec);
                                }
                                Ok(None) => {
                                    tracing::debug!(event = %e.event_id, "gateway event redelivered; already applied")
                                }
                                Err(err) => {
                                    self.note_store_error(&err);
                                    break format!("cannot store a gateway event: {err}");
                                }
                            },
                            Ok(None) => break "the gateway closed its event stream".to_string(),
                            Err(s) => break format!("{:?}: {}", s.code(), crate::gateway::status_text(&s)),
                        }
                    }
                }
            };
            tracing::debug!(%reason, "gateway event stream interrupted; reconnecting");
            tokio::time::sleep(self.env.jitter(backoff)).await;
            backoff = (backoff * 2).min(f.retry_max);
        }
    }

    /// Warns about unsent payments at shutdown.
    pub async fn shutdown_warning(&self) {
        if let Ok(s) = self.store.queue_summary()
            && s.count > 0
        {
            tracing::warn!(unsent = s.count, "shutting down with offline payments not yet forwarded; they are kept");
            self.emit(
                EventKind::ShutdownWithUnsent,
                "",
                "",
                format!("posd stopped with {} payments not yet forwarded", s.count),
            )
            .await;
        }
    }
}

/// What to do with a forwarded payment whose answer did not settle it.
enum Unsettled {
    /// Back to the queue, to be sent again under the same key.
    Retry(String),
    /// The gateway refused the item itself: hold it for a person.
    Quarantine(String, String),
}
use Unsettled::{Quarantine, Retry};

#[cfg(test)]
mod tests;
