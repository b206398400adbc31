//! A payment's run on a card reader: collecting the card, the online
//! authorization, offline approval within the lane's limits when the
//! request never left, and settling a payment whose answer was lost.

use std::sync::Arc;
use std::time::Duration;

use pos_engine::offline::{self, Entry, OfflineCandidate, QueueState};
use pos_engine::{Input, Status, next};
use pos_proto::gateway::{AuthorizeRequest, Outcome, Transaction};
use pos_proto::reader::{CardResult, CollectCard, FailReason};
use pos_proto::terminal as pb;
use tokio::sync::mpsc;

use super::{Engine, LAST_ONLINE, StepError};
use crate::convert;
use crate::failpoint;
use crate::gateway::AuthOutcome;
use crate::lane::{Lane, ReaderEvent};
use crate::store::{CardInfo, Durability, NewEvent, PaymentRecord, StoreError, Update, now_ms};

impl Engine {
    pub(super) async fn run_payment(
        self: Arc<Self>,
        lane: Arc<Lane>,
        rec: PaymentRecord,
        mut cancel: mpsc::Receiver<()>,
    ) {
        let id = rec.id.clone();
        let Err(e) = self.drive(&lane, rec, &mut cancel).await else {
            self.auto_print(&id).await;
            return;
        };
        lane.release(&id);
        let stored = self.store.get(&id).ok().flatten();
        // A payment terminal decides by itself once it has the payment.
        let may_be_at_gateway = stored.as_ref().is_none_or(|r| {
            !matches!(r.status, Status::Created | Status::Collecting | Status::CardRead)
                || (r.on_terminal() && r.status != Status::Created)
        });
        tracing::error!(payment = %id, error = %e, may_be_at_gateway, "payment stopped");
        match stored {
            Some(rec) if !may_be_at_gateway => {
                // Nothing was sent: the register may safely try again.
                self.free_lane(&rec);
                self.publish(
                    &rec,
                    pb::PaymentStage::Failed,
                    format!("Not paid: posd could not record the payment ({e}). Nothing was charged."),
                );
                self.end_live(&id);
                lane.cancel(&id).await;
            }
            Some(rec) => {
                // The request may be at the gateway: do not let the register
                // retry as if nothing happened. The lane stays busy; a restart
                // settles the payment by status query.
                self.publish(
                    &rec,
                    pb::PaymentStage::Authorizing,
                    format!(
                        "Outcome unknown: posd could not record the gateway's answer ({e}). Do not take this payment again; posd settles payment {id} when it restarts, which it does by itself once its database works again."
                    ),
                );
                self.end_live(&id);
            }
            None => {
                self.end_live(&id);
            }
        }
    }

    async fn drive(&self, lane: &Lane, rec: PaymentRecord, cancel: &mut mpsc::Receiver<()>) -> Result<(), StepError> {
        if let Some(zvt) = &lane.zvt {
            return self.drive_terminal(lane, zvt, rec, cancel).await;
        }
        // Deferred: lost to a power cut, the payment is back at CREATED,
        // which recovery ends exactly as it ends COLLECTING (nothing sent).
        let rec = self.steps(&rec, Durability::Deferred, vec![(Input::Start, Update::default())]).await?;
        let request = CollectCard {
            payment_id: rec.id.clone(),
            amount_minor: rec.amount_minor,
            currency: rec.currency.clone(),
            terminal_id: self.gateway_terminal(&rec.terminal_id),
            transaction_key: rec.gateway_key.clone(),
            cashback_minor: 0,
        };
        let mut reader = match lane.collect(request).await {
            Ok(rx) => rx,
            Err(message) => {
                self.step(&rec, Input::CollectFailed { code: "reader_unavailable".into(), message }, Update::default())
                    .await?;
                return Ok(());
            }
        };
        let deadline = tokio::time::sleep(self.settings.collect_timeout);
        tokio::pin!(deadline);
        let asked = std::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                ev = reader.recv() => match ev {
                    Some(ReaderEvent::Progress { stage, text }) => {
                        self.publish(&rec, convert::reader_stage(stage), text);
                    }
                    Some(ReaderEvent::Card(card)) => {
                        self.latencies.reader.observe(asked.elapsed());
                        break Ok(card);
                    }
                    Some(ReaderEvent::Failed { reason: FailReason::Canceled, .. }) => {
                        break Err(Input::Cancel { by: "the customer at the reader".into() });
                    }
                    Some(ReaderEvent::Failed { reason, message }) => {
                        let code = match reason {
                            FailReason::Timeout => "reader_timeout",
                            FailReason::CardError => "card_error",
                            _ => "reader_error",
                        };
                        break Err(Input::CollectFailed { code: code.into(), message });
                    }
                    Some(ReaderEvent::Disconnected(reason)) => {
                        let message = format!("the card reader disconnected: {reason}");
                        break Err(Input::CollectFailed { code: "reader_disconnected".into(), message });
                    }
                    None => {
                        let message = "the card reader stopped answering".to_string();
                        break Err(Input::CollectFailed { code: "reader_disconnected".into(), message });
                    }
                },
                Some(()) = cancel.recv() => break Err(Input::Cancel { by: "the register".into() }),
                () = &mut deadline => {
                    let message = format!("no card within {:?}", self.settings.collect_timeout);
                    break Err(Input::CollectFailed { code: "reader_timeout".into(), message });
                }
            }
        };
        match outcome {
            Ok(card) => {
                lane.release(&rec.id);
                self.authorize(rec, *card).await
            }
            Err(input) => {
                // Whatever ended the collection, the reader must stop too.
                let register_cancel = matches!(&input, Input::Cancel { by } if by == "the register");
                if !register_cancel {
                    lane.cancel(&rec.id).await;
                }
                self.step(&rec, input, Update::default()).await?;
                Ok(())
            }
        }
    }

    async fn authorize(&self, rec: PaymentRecord, card: CardResult) -> Result<(), StepError> {
        if card.encrypted_card.is_empty() {
            let input = Input::CollectFailed {
                code: "card_data_unavailable".into(),
                message: "the reader delivered no encrypted card data (keys unavailable)".into(),
            };
            self.step(&rec, input, Update::default()).await?;
            return Ok(());
        }
        let info = card_info(&card);
        let blob = card.encrypted_card.clone();
        // Card read and authorizing in one synced commit, before the request
        // leaves (persist before act): on disk, it also makes the deferred
        // COLLECTING durable.
        let card_read = Update { card: Some((info.clone(), blob.clone())), ..Default::default() };
        let rec = self
            .steps(&rec, Durability::Synced, vec![(Input::CardRead, card_read), (Input::Sending, Update::default())])
            .await?;
        let request = self.authorize_request(&rec, &info, blob);
        let sent = std::time::Instant::now();
        let outcome = self.gateway.authorize(request).await;
        if !matches!(outcome, AuthOutcome::NotSent(_) | AuthOutcome::LocalFault(_)) {
            self.latencies.gateway.observe(sent.elapsed());
        }
        match outcome {
            AuthOutcome::Answer(tx) => {
                failpoint::hit("online_after_response");
                if !self.apply_answer(&rec, tx).await? {
                    let input = Input::AnswerLost { message: "the gateway's answer did not settle the payment".into() };
                    let rec = self.step(&rec, input, Update::default()).await?;
                    self.settle_unknown(rec).await?;
                }
            }
            AuthOutcome::Rejected(message) => {
                let input = Input::Declined { code: "gateway_rejected".into(), message };
                self.step(&rec, input, Update::default()).await?;
            }
            AuthOutcome::NotSent(message) => self.offline_or_fail(rec, &card, message).await?,
            AuthOutcome::LocalFault(why) => {
                // Not the network: the gateway may be up, so no offline
                // approval; nothing was sent, so nothing is charged.
                tracing::error!(payment = %rec.id, error = %why, "payment failed: a fault on this machine, not the gateway");
                let input = Input::OfflineRefused {
                    code: "local_resource_exhausted".into(),
                    message: format!(
                        "posd could not reach out to the gateway because of a fault on the lane PC ({why}); \
                         nothing was charged; take the payment again, and if this repeats, tell store IT"
                    ),
                };
                self.step(&rec, input, Update::default()).await?;
            }
            AuthOutcome::Unknown(message) => {
                tracing::warn!(payment = %rec.id, %message, "gateway answer lost; asking for the outcome");
                let rec = self.step(&rec, Input::AnswerLost { message }, Update::default()).await?;
                self.settle_unknown(rec).await?;
            }
        }
        Ok(())
    }

    pub(super) fn authorize_request(&self, rec: &PaymentRecord, info: &CardInfo, blob: Vec<u8>) -> AuthorizeRequest {
        AuthorizeRequest {
            transaction_key: rec.gateway_key.clone(),
            terminal_id: self.gateway_terminal(&rec.terminal_id),
            amount_minor: rec.amount_minor,
            currency: rec.currency.clone(),
            encrypted_card: blob,
            masked_pan: info.masked_pan.clone(),
            brand: info.brand.clone(),
            entry_mode: convert::gateway_entry_mode(pb::EntryMode::try_from(info.entry_mode).unwrap_or_default())
                as i32,
            capture: !rec.manual_capture,
        }
    }

    /// The request never left posd: approve offline if the lane's rules allow.
    async fn offline_or_fail(&self, rec: PaymentRecord, card: &CardResult, why: String) -> Result<(), StepError> {
        let lane = self.lanes.get(&rec.terminal_id).expect("payments belong to configured lanes");
        let gate = self.offline_gate.lock().await;
        let fingerprint = pos_mask::scrub(&card.card_fingerprint);
        // The reader's brand text shows up in a refusal's message.
        let brand = pos_mask::scrub(&card.brand);
        let now = self.clock.now_ms();
        let queue = match self.queue_state(&rec.currency, &fingerprint, now) {
            Ok(queue) => queue,
            Err(e) => {
                // Limits that cannot be checked refuse: nothing was sent, so
                // the payment fails cleanly and the lane is free again.
                drop(gate);
                tracing::error!(payment = %rec.id, error = %e, "cannot read the offline queue; offline approval refused");
                self.note_store_error(&e);
                let message = format!(
                    "The gateway cannot be reached ({why}) and posd cannot read its offline queue (a database \
                     error; see posd's log); nothing was charged"
                );
                let input = Input::OfflineRefused { code: "store_unavailable".into(), message };
                self.step(&rec, input, Update::default()).await?;
                return Ok(());
            }
        };
        let entry = match pb::EntryMode::try_from(convert::entry_mode(card.entry_mode) as i32) {
            Ok(pb::EntryMode::Chip) => Entry::Chip,
            Ok(pb::EntryMode::Contactless) => Entry::Contactless,
            Ok(pb::EntryMode::Swipe) => Entry::Swipe,
            Ok(pb::EntryMode::Manual) => Entry::Manual,
            _ => Entry::Unknown,
        };
        let candidate = OfflineCandidate {
            amount_minor: rec.amount_minor,
            currency: &rec.currency,
            brand: &brand,
            entry,
            fallback: card.fallback,
            cashback_minor: card.cashback_minor,
            refund: false,
            card_data: !card.encrypted_card.is_empty(),
            card_identified: !fingerprint.is_empty(),
        };
        match offline::eligibility(&lane.offline, &candidate, &queue) {
            Ok(()) => {
                let update = Update {
                    queued_at_ms: Some(now),
                    last_error: Some(why.clone()),
                    event: Some(NewEvent {
                        kind: "approved_offline",
                        terminal_id: rec.terminal_id.clone(),
                        payment_id: rec.id.clone(),
                        message: format!("approved offline and queued ({why})"),
                    }),
                    ..Default::default()
                };
                let t = next(rec.status, &Input::ApprovedOffline)?;
                let (new, event) =
                    self.store.apply(&rec.id, &t, update).await.inspect_err(|e| self.note_store_error(e))?;
                // The limits held for this commit; no other lane waits on reader I/O.
                drop(gate);
                failpoint::hit("offline_after_persist");
                tracing::warn!(payment = %new.id, %why, "gateway unreachable: approved offline");
                if let Some(e) = event {
                    let _ = self.events.send(e);
                }
                self.announce(&new, pb::PaymentStage::Approved, convert::status_message(&new));
                self.forward_wake.notify_one();
                lane.show_result(&new.id, true, &convert::status_message(&new)).await;
            }
            Err(refusal) => {
                drop(gate);
                let message = format!(
                    "The gateway cannot be reached ({why}) and the payment may not be taken offline: {}",
                    refusal.message
                );
                self.step(&rec, Input::OfflineRefused { code: refusal.code.into(), message }, Update::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// What the offline limits are checked against: the queue as stored.
    fn queue_state(&self, currency: &str, fingerprint: &str, now: i64) -> Result<QueueState, StoreError> {
        let summary = self.store.queue_summary()?;
        let ago = |t: i64, now: i64| Duration::from_millis((now - t).max(0) as u64);
        Ok(QueueState {
            count: summary.count,
            total_minor: summary.totals.iter().find(|(c, _)| c == currency).map_or(0, |(_, t)| *t),
            same_card: if fingerprint.is_empty() { 0 } else { self.store.queued_for_card(fingerprint)? },
            oldest_age: summary.oldest_queued_at_ms.map(|t| ago(t, now)),
            since_online: self.store.meta(LAST_ONLINE)?.map(|t| ago(t, now_ms())),
        })
    }

    /// Applies the gateway's answer for a payment in AUTHORIZING or UNKNOWN.
    /// Returns false when the answer does not settle it.
    async fn apply_answer(&self, rec: &PaymentRecord, tx: Transaction) -> Result<bool, StepError> {
        match Outcome::try_from(tx.outcome).unwrap_or(Outcome::Unspecified) {
            Outcome::Approved => {
                let update = Update {
                    auth_code: Some(tx.auth_code),
                    gateway_reference: Some(tx.gateway_reference),
                    ..Default::default()
                };
                self.step(rec, Input::Approved { captured: tx.captured }, update).await?;
                Ok(true)
            }
            Outcome::Declined => {
                let input = Input::Declined { code: tx.decline_code, message: tx.decline_message };
                self.step(rec, input, Update::default()).await?;
                Ok(true)
            }
            Outcome::Reversed | Outcome::Voided | Outcome::Unspecified => Ok(false),
        }
    }

    /// Settles a payment whose answer was lost: ask for the outcome under
    /// the same key for the whole attempt budget (a delayed request may still
    /// arrive); if it stays unknown, queue a reversal.
    pub(super) async fn settle_unknown(&self, rec: PaymentRecord) -> Result<(), StepError> {
        let mut last = String::from("no status query was made");
        for attempt in 0..self.settings.status_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.settings.status_backoff * attempt).await;
            }
            match self.gateway.transaction(&rec.gateway_key).await {
                Ok(Some(tx)) => match Outcome::try_from(tx.outcome).unwrap_or(Outcome::Unspecified) {
                    Outcome::Reversed | Outcome::Voided => {
                        last = "the gateway holds the key as reversed".into();
                        break;
                    }
                    Outcome::Unspecified => last = "the gateway answered without an outcome".into(),
                    _ => {
                        self.apply_answer(&rec, tx).await?;
                        return Ok(());
                    }
                },
                Ok(None) => last = "the gateway has no record of the request (yet)".into(),
                Err(e) => last = e,
            }
        }
        self.step(&rec, Input::StillUnknown { message: last }, Update::default()).await?;
        Ok(())
    }
}

/// The reader's masked PAN held to the one masking rule,
/// [`pos_mask::well_masked`] (first 6, `*`s, last 4 kept; a whole card
/// number masked so; anything else masked fully), logged as an error when
/// the reader did not mask it so itself.
fn well_masked(masked: &str) -> String {
    if !pos_mask::is_well_masked(masked) {
        tracing::error!("the reader sent a badly masked card number; masking it");
    }
    pos_mask::well_masked(masked)
}

fn card_info(c: &CardResult) -> CardInfo {
    use pos_mask::scrub;
    CardInfo {
        masked_pan: well_masked(&c.masked_pan),
        brand: scrub(&c.brand),
        entry_mode: convert::entry_mode(c.entry_mode) as i32,
        wallet: convert::wallet(c.wallet) as i32,
        aid: scrub(&c.aid),
        application_label: scrub(&c.application_label),
        verification: convert::verification(c.verification) as i32,
        fingerprint: scrub(&c.card_fingerprint),
    }
}

#[cfg(test)]
mod tests {
    use super::well_masked;

    #[test]
    fn masked_pans_keep_first_six_and_last_four_only() {
        assert_eq!(well_masked("424242******4242"), "424242******4242");
        assert_eq!(well_masked("4242424242424242"), "424242******4242");
        assert_eq!(well_masked("4242424242******"), "****************");
        assert_eq!(well_masked("garbage"), "*******");
        // The one rule of pos_mask, for the ZVT terminal's card numbers alike.
        assert_eq!(well_masked("4242 4242 4242 4242"), crate::zvt::safe_pan("4242 4242 4242 4242"));
        assert_eq!(well_masked("4242 4242 4242 4242"), "424242******4242");
        assert_eq!(well_masked("************4242"), crate::zvt::safe_pan("************4242"));
        assert_eq!(well_masked(""), "****");
    }
}
