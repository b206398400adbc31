//! Receipts, the drawer and the printer's events in one process
//! (`engine::test_support`): the lane's printer is served in process
//! (`printer::fake`), what it printed is read back with pos-escpos's
//! decoder, and a printer that cannot print is an event and a clear error
//! for the register, never a change to the payment.

use pos_engine::Status;
use pos_escpos::decode::{Decoder, Op};
use pos_escpos::{PaperLevel, PrinterState};

use crate::engine::test_support::{LANE, Rig, next_event, rig_with_lane, settings};
use crate::engine::{EngineError, EngineSettings};
use crate::printer::PrinterStatus;
use crate::printer::fake::Sent;
use crate::receipt::Copy;
use crate::store::EventKind;

/// A rig whose payments print their customer copy by themselves.
async fn printing_customer_copies() -> Rig {
    rig_with_lane(EngineSettings { auto_print: vec![Copy::Customer], ..settings() }).await
}

/// The text a job prints: PC858 decoded, a line break per line feed.
fn text(job: &[u8]) -> String {
    let mut text = String::new();
    for op in Decoder::new().push(job) {
        match op {
            Op::Text(bytes) => text.extend(bytes.iter().map(|&b| pos_escpos::codepage::decode_byte(b))),
            Op::LineFeed => text.push('\n'),
            _ => {}
        }
    }
    text
}

/// The jobs the lane's printer printed, as text, in order.
fn printed(r: &Rig) -> Vec<String> {
    let sent = r.printer().sent();
    sent.iter()
        .filter_map(|s| match s {
            Sent::Job(job) => Some(text(job)),
            Sent::RealTime(_) => None,
        })
        .collect()
}

fn not_connected(detail: &str) -> PrinterStatus {
    PrinterStatus { connected: false, detail: detail.into(), ..Default::default() }
}

fn connected(state: PrinterState) -> PrinterStatus {
    PrinterStatus { connected: true, state, detail: String::new() }
}

#[tokio::test(start_paused = true)]
async fn an_approved_payment_prints_its_configured_copy_by_itself() {
    let r = printing_customer_copies().await;
    let p = r.pay(2_000, false).await;
    assert_eq!(p.status, Status::Captured);

    let jobs = printed(&r);
    assert_eq!(jobs.len(), 1, "one copy: {jobs:?}");
    let receipt = &jobs[0];
    // Dated by the engine's wall clock (the rig's epoch), in UTC.
    let expected = ["SALE", "Customer copy", "424242******4242", "2026-03-02 09:0", "20.00 EUR"];
    for part in expected.into_iter().chain([p.id.as_str(), p.auth_code.as_str()]) {
        assert!(receipt.contains(part), "{part:?} on the receipt:\n{receipt}");
    }
    assert!(!receipt.contains("REPRINT"), "{receipt}");
    assert!(!receipt.contains("4242424242424242"), "never the whole card number");
    let events = r.events(EventKind::ReceiptPrinted);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!((event.payment_id.as_str(), event.message.as_str()), (p.id.as_str(), "customer receipt printed"));
}

#[tokio::test(start_paused = true)]
async fn a_copy_printed_again_is_marked_as_a_reprint() {
    let r = printing_customer_copies().await;
    let p = r.pay(2_000, false).await;

    let (lane, reprint) = r.engine.print_receipt(&p.id, Copy::Customer).await.unwrap();
    assert_eq!((lane.as_str(), reprint), (LANE, true));
    let (_, reprint) = r.engine.print_receipt(&p.id, Copy::Merchant).await.unwrap();
    assert!(!reprint, "the merchant copy was not printed before");

    let jobs = printed(&r);
    assert_eq!(jobs.len(), 3);
    assert!(!jobs[0].contains("* REPRINT *"), "{}", jobs[0]);
    assert!(jobs[1].contains("* REPRINT *") && jobs[1].contains("Customer copy"), "{}", jobs[1]);
    assert!(!jobs[2].contains("* REPRINT *") && jobs[2].contains("Merchant copy"), "{}", jobs[2]);
    assert_eq!(r.events(EventKind::ReceiptPrinted).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_receipt_for_a_printer_not_connected_fails_clearly_and_the_payment_stays_approved() {
    let r = printing_customer_copies().await;
    r.printer().set(not_connected("cannot open tcp 192.0.2.20:9100: connection refused"));

    let p = r.pay(2_000, false).await;
    assert_eq!(p.status, Status::Captured, "approved all the same");
    assert!(printed(&r).is_empty());
    let failed = r.events(EventKind::ReceiptFailed);
    assert_eq!(failed.len(), 1);
    let expected = "customer receipt not printed: the printer is not connected (cannot open tcp 192.0.2.20:9100";
    assert!(failed[0].message.starts_with(expected), "{}", failed[0].message);
    assert!(failed[0].message.contains("the payment is unchanged"), "{}", failed[0].message);

    match r.engine.print_receipt(&p.id, Copy::Customer).await.unwrap_err() {
        EngineError::Unavailable("PRINTER_NOT_CONNECTED", message) => {
            assert!(message.contains("the payment is unchanged"), "{message}");
        }
        other => panic!("the register hears that the printer is not connected, not {other:?}"),
    }
    let stored = r.stored(&p.id);
    assert_eq!((stored.status, stored.updated_at_ms), (Status::Captured, p.updated_at_ms), "the payment is untouched");
    assert!(r.events(EventKind::ReceiptPrinted).is_empty());

    // Back again: the copy was never printed, so it is no reprint.
    r.printer().set(connected(PrinterState::default()));
    let (_, reprint) = r.engine.print_receipt(&p.id, Copy::Customer).await.unwrap();
    assert!(!reprint);
    let jobs = printed(&r);
    assert_eq!(jobs.len(), 1);
    assert!(!jobs[0].contains("REPRINT"), "{}", jobs[0]);
}

#[tokio::test(start_paused = true)]
async fn a_receipt_for_a_printer_with_a_fault_is_refused_with_the_fault() {
    let r = rig_with_lane(settings()).await;
    let p = r.pay(2_000, false).await;
    assert!(printed(&r).is_empty(), "no copy is configured to print by itself");

    let out_of_paper = PrinterState { paper: PaperLevel::Out, ..Default::default() };
    let cover_open = PrinterState { cover_open: true, ..Default::default() };
    for (state, fault) in [(out_of_paper, "the printer is out of paper"), (cover_open, "the printer's cover is open")] {
        r.printer().set(connected(state));
        match r.engine.print_receipt(&p.id, Copy::Customer).await.unwrap_err() {
            EngineError::FailedPrecondition("PRINTER_FAULT", message) => {
                assert!(message.starts_with(fault), "{message}");
                assert!(message.contains("the payment is unchanged"), "{message}");
            }
            other => panic!("the register hears the printer's fault ({fault}), not {other:?}"),
        }
    }
    assert!(printed(&r).is_empty());
    let failed = r.events(EventKind::ReceiptFailed);
    assert_eq!(failed.len(), 2);
    assert!(failed[1].message.contains("the printer's cover is open"), "{}", failed[1].message);
    assert_eq!(r.stored(&p.id).status, Status::Captured);
}

#[tokio::test(start_paused = true)]
async fn the_drawer_opens_in_real_time_even_out_of_paper_but_not_without_a_printer() {
    let r = rig_with_lane(settings()).await;
    r.printer().set(connected(PrinterState { paper: PaperLevel::Out, ..Default::default() }));

    r.engine.open_drawer(LANE).await.unwrap();
    let sent = r.printer().sent();
    assert_eq!(sent, vec![Sent::RealTime(pos_escpos::cmd::drawer_pulse_now(false, 100).to_vec())]);
    let Sent::RealTime(pulse) = &sent[0] else { unreachable!("a real-time command") };
    // Pin 2, on and off 100 ms.
    assert_eq!(Decoder::new().push(pulse), vec![Op::DrawerKick { pin: 0, on: 1, off: 1 }]);

    r.printer().set(not_connected("the printer closed the line"));
    let e = r.engine.open_drawer(LANE).await.unwrap_err();
    assert!(matches!(e, EngineError::Unavailable("PRINTER_NOT_CONNECTED", _)), "{e:?}");
    assert_eq!(r.printer().sent().len(), 1, "nothing more reached the printer");
}

#[tokio::test(start_paused = true)]
async fn the_printers_changes_are_register_events() {
    let r = rig_with_lane(settings()).await;
    let mut events = r.engine.subscribe_events();
    let watcher = tokio::spawn(r.engine.clone().printer_events());

    r.printer().set(connected(PrinterState { cover_open: true, ..Default::default() }));
    let fault = next_event(&mut events, EventKind::PrinterFault).await;
    assert_eq!((fault.terminal_id.as_str(), fault.message.as_str()), (LANE, "the printer's cover is open"));

    r.printer().set(not_connected("the printer closed the line"));
    let gone = next_event(&mut events, EventKind::PrinterDisconnected).await;
    assert_eq!(gone.message, "not connected: the printer closed the line");

    r.printer().set(connected(PrinterState::default()));
    let ready = next_event(&mut events, EventKind::PrinterReady).await;
    assert_eq!(ready.message, "the printer is ready");
    watcher.abort();
}
