//! Receipts, end-of-day slips and the cash drawer on the lane's printer.
//! A printer fault never changes a payment.

use std::sync::Arc;

use pos_engine::Status;
use pos_proto::terminal as pb;

use super::{Engine, EngineError};
use crate::store::EventKind;

impl Engine {
    /// Prints the configured copies of a payment that ended (approved or
    /// declined) on its lane's printer. A printer fault is reported as an
    /// event and never touches the payment.
    pub(super) async fn auto_print(&self, id: &str) {
        let Ok(Some(rec)) = self.store.get(id) else { return };
        let ended = rec.status.is_approved() || matches!(rec.status, Status::Declined);
        if !ended || self.lanes.get(&rec.terminal_id).is_none_or(|l| l.printer.is_none()) {
            return;
        }
        for copy in self.settings.auto_print.clone() {
            if let Err(e) = self.print_receipt(id, copy).await {
                tracing::warn!(payment = %id, copy = copy.name(), error = %e, "receipt not printed");
            }
        }
    }

    /// Prints a payment's receipt and waits for the printer's confirmation.
    /// Returns the lane and whether it was a reprint.
    pub async fn print_receipt(&self, id: &str, copy: crate::receipt::Copy) -> Result<(String, bool), EngineError> {
        let rec = self.store.get(id)?.ok_or_else(|| EngineError::NotFound(format!("no payment {id}")))?;
        let printer = self.printer_of(&rec.terminal_id)?;
        let marker = format!("{} receipt", copy.name());
        let reprint = self.store.has_event(EventKind::ReceiptPrinted, id, &marker)?;
        let refunds = self.store.refunds_of(id)?;
        let lines = if rec.on_terminal() {
            self.store.terminal_result(id)?.map(|t| t.lines).unwrap_or_default()
        } else {
            vec![]
        };
        let job = crate::receipt::payment_receipt(
            &self.settings.receipt,
            printer.width,
            &rec,
            &refunds,
            copy,
            reprint,
            &lines,
        );
        match printer.print(job.into_bytes()).await {
            Ok(()) => {
                self.emit(EventKind::ReceiptPrinted, &rec.terminal_id, id, format!("{marker} printed")).await;
                Ok((rec.terminal_id, reprint))
            }
            Err(e) => {
                self.emit(
                    EventKind::ReceiptFailed,
                    &rec.terminal_id,
                    id,
                    format!(
                        "{marker} not printed: {e}; the payment is unchanged, print it again once the printer is ready"
                    ),
                )
                .await;
                Err(print_error(e))
            }
        }
    }

    /// Opens the lane's cash drawer.
    pub async fn open_drawer(&self, terminal: &str) -> Result<(), EngineError> {
        let printer = self.printer_of(terminal)?;
        // In real time: a drawer opens even when the printer is out of paper.
        printer.real_time(pos_escpos::cmd::drawer_pulse_now(false, 100).to_vec()).await.map_err(print_error)
    }

    /// Prints the end-of-day slip on the lane's printer, when it has one. A
    /// printer fault does not undo the end-of-day: it is reported as an
    /// event, and the batch's totals stay in the answer and the event log.
    pub(super) async fn print_slip(&self, b: &pb::BatchSummary, terminal_lines: &[String]) {
        let Ok(printer) = self.printer_of(&b.terminal_id) else { return };
        let job = crate::receipt::end_of_day_slip(&self.settings.receipt, printer.width, b, terminal_lines);
        match printer.print(job.into_bytes()).await {
            Ok(()) => {
                let message = format!("end-of-day slip {} printed", b.batch_id);
                self.emit(EventKind::SlipPrinted, &b.terminal_id, "", message).await
            }
            Err(e) => {
                self.emit(
                    EventKind::SlipFailed,
                    &b.terminal_id,
                    "",
                    format!("end-of-day slip {} not printed: {e}; the batch is closed all the same", b.batch_id),
                )
                .await
            }
        }
    }

    fn printer_of(&self, terminal: &str) -> Result<&crate::printer::Printer, EngineError> {
        let lane =
            self.lanes.get(terminal).ok_or_else(|| EngineError::NotFound(format!("unknown terminal {terminal:?}")))?;
        lane.printer.as_ref().ok_or_else(|| {
            EngineError::FailedPrecondition("NO_PRINTER", format!("terminal {terminal} has no printer configured"))
        })
    }

    /// Reports each lane's printer changes as events: ready, fault, paper
    /// near its end, disconnected.
    pub async fn printer_events(self: Arc<Self>) {
        let mut tasks = Vec::new();
        for lane in self.lanes.values() {
            let Some(printer) = &lane.printer else { continue };
            let (engine, lane_id, mut rx) = (self.clone(), lane.id.clone(), printer.watch());
            tasks.push(tokio::spawn(async move {
                let mut last: Option<EventKind> = None;
                loop {
                    let status = rx.borrow_and_update().clone();
                    let (kind, text) = if !status.connected {
                        (EventKind::PrinterDisconnected, status.describe())
                    } else if let Some(f) = status.state.fault() {
                        (EventKind::PrinterFault, f.to_string())
                    } else if status.state.paper == pos_escpos::PaperLevel::NearEnd {
                        let text = "the printer's paper is near its end; replace the roll soon";
                        (EventKind::PrinterPaperNearEnd, text.into())
                    } else {
                        (EventKind::PrinterReady, "the printer is ready".into())
                    };
                    // The first state is news only if it is not "ready".
                    if last != Some(kind) && !(last.is_none() && kind == EventKind::PrinterReady) {
                        tracing::info!(lane = %lane_id, %kind, detail = %text, "printer status");
                        engine.emit(kind, &lane_id, "", text).await;
                    }
                    last = Some(kind);
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn print_error(e: crate::printer::PrintError) -> EngineError {
    use crate::printer::PrintError;
    match e {
        PrintError::NotConnected(_) | PrintError::Line(_) => {
            EngineError::Unavailable("PRINTER_NOT_CONNECTED", format!("{e}; the payment is unchanged"))
        }
        PrintError::Fault(_) => EngineError::FailedPrecondition(
            "PRINTER_FAULT",
            format!("{e}; the payment is unchanged: print the receipt again once the printer is ready"),
        ),
        PrintError::Timeout(_) => EngineError::DeadlineExceeded(
            "PRINTER_TIMEOUT",
            format!("{e}; the payment is unchanged: check the printer, then print again"),
        ),
    }
}

#[cfg(test)]
mod tests;
