//! Receipts through posd to the simulated printer, over a PTY: what comes
//! out on paper, and a paper-out in the middle of a job.

use std::process::Command;

use pos_proto::terminal as pb;
use posd_e2e::{Lane, Proc, bin, final_payment, status};

struct PrinterSim {
    proc: Proc,
    control: String,
}

impl PrinterSim {
    fn start(lane: &Lane, args: &[&str]) -> PrinterSim {
        let out = lane.dir.path().join("printed");
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.arg("printer").arg("--pty-link").arg(lane.dir.path().join("printer-link"));
        cmd.arg("--out").arg(out).args(["--control", "127.0.0.1:0"]).args(args);
        let (mut proc, control) =
            Proc::start(cmd, &lane.dir.path().join("printer.log"), "firmware-sim printer control on ");
        proc.wait_line("firmware-sim printer on ").expect("printer PTY");
        PrinterSim { proc, control }
    }

    /// Sends a technician command; returns the printer's answer.
    fn ctl(&self, command: &str) -> String {
        posd_e2e::control(&self.control, command)
    }

    /// Waits for the next saved job and returns its text.
    fn next_job(&mut self) -> String {
        let path = self.proc.wait_line("firmware-sim printer job ").expect("a printed job");
        let path = path.split_once(" saved ").expect("job line").1.to_string();
        std::fs::read_to_string(path).unwrap()
    }
}

fn lane_with_printer(args: &[&str], baud: u32, auto_print: &str) -> (Lane, PrinterSim) {
    let receipt = format!(
        "[receipt]\nheader = [\"ACME STORE\", \"Main Street 1\"]\nfooter = [\"Thank you\"]\nauto_print = [{auto_print}]\n"
    );
    let mut lane = Lane::prepare(&[], &receipt);
    let sim = PrinterSim::start(&lane, args);
    lane.lane_config = format!("printer = {{ device = {:?}, baud = {baud} }}\n", lane.dir.path().join("printer-link"));
    lane.start_posd();
    (lane, sim)
}

async fn printer_ready(lane: &Lane) {
    let mut client = lane.client().await;
    posd_e2e::eventually("the printer to be ready", async || {
        let s = client.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-1".into() }).await.ok()?;
        s.into_inner().printer.is_some_and(|p| p.ready).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_payment_prints_its_customer_receipt() {
    let (mut lane, mut sim) = lane_with_printer(&["--xon-xoff"], 115_200, "\"customer\"");
    lane.ready().await;
    printer_ready(&lane).await;
    let p = final_payment(&lane.pay("receipt-1", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    let text = sim.next_job();
    println!("{text}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in ["A C M E   S T O R E", "Main Street 1", "S A L E", "Customer copy", "Thank you"] {
        assert!(lines.contains(&want), "{want:?} missing:\n{text}");
    }
    let field = |name: &str| lines.iter().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string());
    assert_eq!(field("Transaction").as_deref(), Some(p.payment_id.as_str()));
    assert_eq!(field("Card").as_deref(), Some("424242******4242"));
    assert_eq!(field("Terminal").as_deref(), Some("lane-1"));
    assert_eq!(field("TOTAL").as_deref(), Some("12.34 EUR"));
    assert!(posd_e2e::card_numbers(text.as_bytes()).is_empty());
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "receipt_printed" && e.payment_id == p.payment_id), "{events:?}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn paper_out_mid_job_fails_the_receipt_not_the_payment_and_a_reprint_succeeds() {
    let (mut lane, mut sim) = lane_with_printer(&[], 115_200, "");
    lane.ready().await;
    printer_ready(&lane).await;
    let p = final_payment(&lane.pay("paper-out", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);

    sim.ctl("paper out-after-lines 5");
    let (st, out, err) = lane.posctl(&["receipt", &p.payment_id]);
    assert_eq!(st.code(), Some(4), "{out}{err}");
    assert!(err.contains("out of paper") && err.contains("payment is unchanged"), "{err}");
    let torn = sim.next_job();
    assert!(!torn.contains("Customer copy"), "only the start was printed:\n{torn}");
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "printer_fault"), "{events:?}");
    assert!(events.iter().any(|e| e.kind == "receipt_failed" && e.payment_id == p.payment_id), "{events:?}");
    let now = lane.wait_status(&p.payment_id, pb::PaymentStatus::Captured).await;
    assert_eq!(now.history, p.history, "the payment did not change");

    // The cash drawer still opens: its pulse is a real-time command.
    let (st, out, err) = lane.posctl(&["drawer"]);
    assert!(st.success(), "the drawer opens out of paper: {out}{err}");
    posd_e2e::eventually("the drawer to open", async || sim.ctl("status").contains("drawer open").then_some(())).await;

    sim.ctl("paper ok");
    printer_ready(&lane).await;
    let (st, out, err) = lane.posctl(&["receipt", &p.payment_id]);
    assert!(st.success(), "{out}{err}");
    let text = sim.next_job();
    assert!(text.contains("Customer copy") && text.contains("Thank you"), "{text}");
    assert!(!text.contains("REPRINT"), "the failed print did not count as printed:\n{text}");
    let (st, out, _) = lane.posctl(&["receipt", &p.payment_id]);
    assert!(st.success() && out.contains("reprinted"), "{out}");
    assert!(sim.next_job().contains("* REPRINT *"));
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_printer_with_a_small_buffer_gets_every_byte_through_xon_xoff() {
    // 256-byte buffer, the head prints 1000 bytes/s, the line runs at 38400
    // baud (3840 bytes/s): without flow control most of a receipt is lost.
    let args = ["--buffer", "256", "--print-rate", "1000", "--xon-xoff"];
    let (mut lane, mut sim) = lane_with_printer(&args, 38_400, "");
    lane.ready().await;
    printer_ready(&lane).await;
    let p = final_payment(&lane.pay("slow-printer", 1234).await);
    let (st, out, err) = lane.posctl(&["receipt", &p.payment_id, "--copy", "merchant"]);
    assert!(st.success(), "{out}{err}");
    let text = sim.next_job();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in ["A C M E   S T O R E", "S A L E", "Merchant copy", "Thank you"] {
        assert!(lines.contains(&want), "{want:?} missing:\n{text}");
    }
    let report = sim.ctl("status");
    assert!(report.contains(" 0 bytes lost to overflow"), "{report}");
    assert!(!report.contains(" 0 XOFF sent"), "the buffer never filled, so flow control was not exercised: {report}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zvt_terminal_s_receipt_lines_and_the_end_of_day_slip_print_as_sent() {
    let receipt = "[receipt]\nheader = [\"ACME STORE\"]\nfooter = [\"Thank you\"]\nauto_print = [\"customer\"]\n";
    let mut lane = Lane::prepare_zvt(&[], false, receipt);
    let mut sim = PrinterSim::start(&lane, &[]);
    lane.lane_config = format!("printer = {{ device = {:?} }}\n", lane.dir.path().join("printer-link"));
    lane.start_posd();
    lane.ready().await;
    lane.reader_ready().await;
    printer_ready(&lane).await;
    let p = final_payment(&lane.pay("zvt-receipt", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    let text = sim.next_job();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // The terminal's lines, as it sent them, between the store's header and footer.
    for want in [
        "A C M E   S T O R E",
        "Kartenzahlung",
        "Betrag         EUR 12,34",
        "Zahlung erfolgt",
        "Customer copy",
        "Thank you",
    ] {
        assert!(lines.contains(&want), "{want:?} missing:\n{text}");
    }
    assert!(posd_e2e::card_numbers(text.as_bytes()).is_empty());

    let (st, out, err) = lane.posctl(&["end-of-day"]);
    assert!(st.success(), "{out}{err}");
    let slip = sim.next_job();
    for want in ["E N D   O F   D A Y", "Kassenschnitt", "Kassenschnitt erfolgreich", "Summe EUR          12,34"] {
        assert!(slip.lines().map(str::trim).any(|l| l == want), "{want:?} missing:\n{slip}");
    }
    let events = lane.events().await;
    assert!(events.iter().any(|e| e.kind == "slip_printed"), "{events:?}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_day_slip_prints_the_gateway_batch_totals() {
    let (mut lane, mut sim) = lane_with_printer(&[], 115_200, "");
    lane.ready().await;
    printer_ready(&lane).await;
    for (key, amount) in [("eod-1", 1000), ("eod-2", 250)] {
        assert_eq!(status(&final_payment(&lane.pay(key, amount).await)), pb::PaymentStatus::Captured);
    }
    let (st, out, err) = lane.posctl(&["end-of-day"]);
    assert!(st.success(), "{out}{err}");
    let slip = sim.next_job();
    let field = |name: &str| {
        slip.lines().map(str::trim).find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string())
    };
    assert_eq!(field("Payments (2)").as_deref(), Some("12.50 EUR"), "{slip}");
    assert_eq!(field("NET").as_deref(), Some("12.50 EUR"), "{slip}");
    assert!(slip.contains("Terminal") && slip.contains("Batch"), "{slip}");
    lane.finish();
}
