//! The lane's card reader in process: firmware-sim's reader, served on
//! in-memory pipes that posd's lane dials as it would a TCP reader, with a
//! desk the registers' customers step up to.

use std::sync::{Arc, Mutex};

use firmware_sim::line::{Line, LineFaults};
use firmware_sim::reader::{CardProfile, Customer, Desk, ReaderOptions, Step};
use posd::line::InProcessLine;

use crate::plan::CustomerPlan;

/// Starts a reader for `lane` in this runtime: the line posd's lane opens,
/// and the reader's desk.
pub fn serve(lane: &str) -> (InProcessLine, Arc<Desk>) {
    // Between payments nobody is at the reader: a payment's customer is
    // planned by its register.
    let idle = Customer { present_after: None, ..Customer::default() };
    let desk = Desk::new(idle.clone());
    let opts = ReaderOptions { serial: format!("SIM-{lane}"), customer: idle, ..ReaderOptions::default() };
    let (line, mut incoming) = crate::line::pair(format!("reader of {lane}"));
    let served = desk.clone();
    tokio::spawn(async move {
        // One connection at a time, as a reader on a serial line; a new one
        // (posd reconnecting) replaces the one before.
        while let Some(pipe) = incoming.next().await {
            let faults = Arc::new(Mutex::new(LineFaults::default()));
            let line = Line::open(pipe, faults, false, None, firmware_sim::reader::describe);
            let ended = firmware_sim::reader::serve(line, &opts, &served).await;
            if let firmware_sim::reader::Ended::Unplugged { back_after } = ended {
                incoming.unplug_for(back_after).await;
            }
        }
    });
    (line, desk)
}

/// The planned customer as firmware-sim's reader plays one.
pub fn customer(plan: &CustomerPlan) -> Customer {
    let faults: Vec<(Step, firmware_sim::reader::Fault)> = plan.fault.clone().into_iter().collect();
    Customer {
        card: CardProfile::named(plan.card).unwrap_or_default(),
        present_after: Some(plan.present_after),
        pin: plan.pin,
        pin_after: std::time::Duration::from_millis(800),
        cancel_after: plan.cancels_after,
        collect_fails: plan.card_error.then(|| "card read error".to_string()),
        faults,
    }
}
