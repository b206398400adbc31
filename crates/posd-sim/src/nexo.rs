//! The lane's nexo terminal in process: firmware-sim's, answering HTTP/1 on
//! in-memory pipes that posd's lane dials for each POST, in clear (the
//! local API's test mode; TLS and the key are posd's nexo tests' concern,
//! money is this one's). The terminal (its journal) outlives posd's
//! crashes, as a real one does; each life serves it anew.

use std::sync::Arc;

use firmware_sim::nexo::{Clock, NexoOptions, Scenario, Terminal};
use posd::line::InProcessLine;

/// Serves `terminal` for `lane` in this runtime: the line posd's lane dials.
pub fn serve(lane: &str, terminal: Arc<Terminal>) -> InProcessLine {
    let (line, mut incoming) = crate::line::pair(format!("nexo terminal of {lane}"));
    tokio::spawn(async move {
        // A connection per POST, served side by side: an AbortRequest comes
        // while the payment's POST waits for its answer.
        while let Some(pipe) = incoming.next().await {
            let terminal = terminal.clone();
            tokio::spawn(async move {
                if let Err(e) = firmware_sim::nexo::serve_connection(pipe, terminal).await {
                    tracing::debug!(error = %e, "simulated nexo terminal: connection ended");
                }
            });
        }
    });
    line
}

/// The POIID of lane `n`'s terminal.
pub fn poi_id(n: usize) -> String {
    format!("V400m-3246881{n:02}")
}

/// A new terminal for lane `n` of a seed, stamping its transactions with
/// `now_ms` (the day's time, ms since the epoch).
pub fn terminal(n: usize, now_ms: impl Fn() -> i64 + Send + Sync + 'static) -> Arc<Terminal> {
    let clock =
        Clock(Arc::new(move || jiff::Timestamp::from_millisecond(now_ms()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)));
    let opts = NexoOptions { poi_id: poi_id(n), key: None, clock: Some(clock), ..NexoOptions::default() };
    Terminal::new(opts, Scenario::Approve, None)
}
