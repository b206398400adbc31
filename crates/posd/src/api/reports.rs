//! What the register reads about the day and the queue: the business-day
//! report, the offline queue's status (and forwarding it now, requeuing a
//! quarantined payment), and the stream of terminal events.

use pos_proto::terminal as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::errors::{db_status, invalid};
use super::identity::caller;
use super::request::{RequestText, parse_day, quote};
use super::{TerminalApi, TerminalEventStream};
use crate::convert;

impl TerminalApi {
    pub(super) async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let day = if r.business_day.is_empty() {
            self.reports.business_day(crate::store::now_ms())
        } else {
            let day = parse_day(&r.business_day).map_err(|m| invalid("business_day", m))?;
            // The day's span must be a span of time posd can count in.
            self.reports.bounds(day).map_err(|e| {
                invalid(
                    "business_day",
                    format!("{:?} is out of range in time zone {}: {e}", r.business_day, self.reports.tz_name),
                )
            })?;
            day
        };
        let terminal = (!r.terminal_id.is_empty()).then_some(r.terminal_id.as_str());
        if let Some(t) = terminal
            && self.engine.lane(t).is_none()
        {
            return Err(invalid("terminal_id", format!("unknown terminal {}", quote(t))));
        }
        let report = crate::report::build(self.engine.store(), &self.reports, day, terminal).map_err(self.db())?;
        Ok(Response::new(report))
    }

    pub(super) async fn get_sync_status(
        &self,
        _: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatus>, Status> {
        let report = self.engine.sync_report().map_err(self.db())?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    pub(super) async fn sync_now(&self, _: Request<pb::SyncNowRequest>) -> Result<Response<pb::SyncStatus>, Status> {
        self.engine.sync_now();
        let report = self.engine.sync_report().map_err(self.db())?;
        Ok(Response::new(convert::sync_status(&report)))
    }

    pub(super) async fn requeue_payment(
        &self,
        request: Request<pb::RequeuePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let r = request.into_inner();
        self.changed_payment(|engine| async move { engine.requeue_payment(&r.payment_id, &who.description).await })
            .await
    }

    pub(super) async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<TerminalEventStream>, Status> {
        let from = i64::try_from(request.get_ref().from_cursor).map_err(|_| invalid("from_cursor", "out of range"))?;
        let newest = self.engine.store().last_event_cursor().map_err(self.db())?;
        if from > newest {
            return Err(invalid(
                "from_cursor",
                format!(
                    "{from} is beyond the newest event ({newest}); this posd's events were reset (reinstall?): \
                     resume from 0"
                ),
            ));
        }
        // Subscribe first, then read the stored backlog: an event committed in
        // between is in both and is skipped by cursor, so none is missed.
        let mut live = self.engine.subscribe_events();
        let engine = self.engine.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = from;
            loop {
                // Catch up from the database (at start, and after lagging behind).
                loop {
                    let batch = match engine.store().events_after(last, 500) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(db_status(&engine, e))).await;
                            return;
                        }
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for e in batch {
                        last = e.cursor;
                        if tx.send(Ok(convert::event(&e))).await.is_err() {
                            return;
                        }
                    }
                }
                loop {
                    let received = tokio::select! {
                        r = live.recv() => r,
                        () = tx.closed() => return,
                    };
                    match received {
                        Ok(e) if e.cursor <= last => continue,
                        Ok(e) if e.cursor == last + 1 => {
                            last = e.cursor;
                            if tx.send(Ok(convert::event(&e))).await.is_err() {
                                return;
                            }
                        }
                        // A gap (an event committed by another writer first) or
                        // lag: read what is missing from the database.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
