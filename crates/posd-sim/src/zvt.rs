//! The lane's ZVT payment terminal in process: firmware-sim's terminal,
//! served on in-memory pipes that posd's lane dials as it would a terminal
//! on TCP. The terminal (its journal, its receipt numbers) outlives posd's
//! crashes, as a real one does; each life serves it anew.

use std::sync::Arc;

use firmware_sim::line::Line;
use firmware_sim::zvt::Terminal;
use posd::line::InProcessLine;

/// Serves `terminal` for `lane` in this runtime: the line posd's lane opens.
pub fn serve(lane: &str, terminal: Arc<Terminal>) -> InProcessLine {
    let (line, mut incoming) = crate::line::pair(format!("ZVT terminal of {lane}"));
    tokio::spawn(async move {
        // One register connection at a time; a new one (posd reconnecting)
        // is served once the one before has ended.
        while let Some(pipe) = incoming.next().await {
            let line = Line::open(pipe, terminal.faults.clone(), false, None, firmware_sim::zvt::describe);
            let why = firmware_sim::zvt::serve(line, terminal.clone()).await;
            tracing::debug!(%why, "simulated terminal: connection ended");
        }
    });
    line
}

/// A new terminal for a seed, as a store sets one up.
pub fn terminal() -> Arc<Terminal> {
    Terminal::new(firmware_sim::zvt::ZvtOptions::default(), firmware_sim::zvt::Scenario::Approve)
}
