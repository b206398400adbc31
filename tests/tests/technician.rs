//! A technician's live session with `firmware-sim lane` and posd: cards
//! tapped and picked by hand, plugs pulled and put back, paper taken out,
//! through `firmware-sim ctl` and through the console, on PTYs and on TCP.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pos_proto::terminal as pb;
use posd_e2e::{Lane, Proc, bin, eventually, final_payment, run, status, take};

/// A running `firmware-sim lane` in the lane's directory, posd configured for it.
struct Sim {
    _proc: Proc,
    dir: PathBuf,
}

impl Sim {
    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// `firmware-sim ctl --socket ... <command>`: (success, stdout, stderr).
    fn ctl(&self, command: &str) -> (bool, String, String) {
        let (st, out, err) = run(Command::new(bin("firmware-sim"))
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(command.split(' ')));
        (st.success(), out, err)
    }

    fn ok(&self, command: &str) -> String {
        let (ok, out, err) = self.ctl(command);
        assert!(ok, "ctl {command}: {out}{err}");
        out
    }
}

fn start(args: &[&str]) -> (Lane, Sim) {
    let mut lane = Lane::prepare_external(
        "[receipt]\nheader = [\"LANE CHECK\"]\nfooter = [\"Thank you\"]\nauto_print = [\"customer\"]\n",
    );
    let dir = lane.dir.path().join("lane-sim");
    let mut cmd = Command::new(bin("firmware-sim"));
    cmd.arg("lane").arg("--dir").arg(&dir).args(["--present-after-ms", "0", "--pin-after-ms", "0"]).args(args);
    let (proc, _) = Proc::start(cmd, &lane.dir.path().join("lane-sim.log"), "firmware-sim lane ready");
    lane.lane_table = Some(std::fs::read_to_string(dir.join("posd-lane.toml")).unwrap());
    lane.start_posd();
    (lane, Sim { _proc: proc, dir })
}

async fn terminal_status(lane: &Lane) -> pb::TerminalStatus {
    let mut client = lane.client().await;
    client
        .get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-1".into() })
        .await
        .unwrap()
        .into_inner()
}

fn receipts(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_technician_taps_picks_cards_pulls_plugs_and_takes_the_paper_out() {
    let (mut lane, sim) = start(&["--manual"]);
    lane.ready().await;
    assert!(sim.ok("status").contains("reader idle"), "{}", sim.ok("status"));

    // The next customer brings a Mastercard; the reader waits for the tap.
    sim.ok("card mastercard");
    let mut client = lane.client().await;
    let paying = tokio::spawn(async move { take(&mut client, "tapped", 1200).await });
    eventually("the reader to wait for a tap", async || sim.ok("status").contains("waiting for a tap").then_some(()))
        .await;
    sim.ok("tap");
    let events = paying.await.unwrap().expect("payment");
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "{p:?}");
    assert_eq!(p.card.as_ref().unwrap().brand, "mastercard");
    assert_eq!(p.card.as_ref().unwrap().masked_pan, "555555******4444");
    // Its receipt, as text and as a picture of the paper.
    eventually("the receipt", async || (!receipts(&sim.dir, "png").is_empty()).then_some(())).await;
    let text = std::fs::read_to_string(&receipts(&sim.dir, "txt")[0]).unwrap();
    assert!(text.contains("555555******4444") && text.contains("MASTERCARD"), "{text}");

    // Unplugged, posd sees the reader gone; plugged back, it is found again.
    sim.ok("unplug reader");
    eventually("posd to see the reader gone", async || (!terminal_status(&lane).await.reader_connected).then_some(()))
        .await;
    assert!(sim.ok("status").contains("card device unplugged"));
    sim.ok("plug reader");
    lane.reader_ready().await;

    // No paper: posd's printer is not ready; paper back: it is.
    sim.ok("paper out");
    eventually("posd to see the paper out", async || {
        terminal_status(&lane).await.printer.is_some_and(|p| !p.ready).then_some(())
    })
    .await;
    sim.ok("paper ok");
    eventually("the printer to be ready again", async || {
        terminal_status(&lane).await.printer.is_some_and(|p| p.ready).then_some(())
    })
    .await;

    // Mistakes are named, and change nothing.
    let (ok, _, err) = sim.ctl("card diners");
    assert!(!ok && err.contains("unknown card \"diners\""), "{err}");
    let (ok, _, err) = sim.ctl("outcome approve");
    assert!(!ok && err.contains("comes from the gateway"), "{err}");
    let (ok, _, err) = sim.ctl("juggle");
    assert!(!ok && err.contains("try help"), "{err}");

    // The transcript has every frame, the technician's commands, no card number.
    let transcript = std::fs::read_to_string(sim.dir.join("transcript.log")).unwrap();
    assert!(transcript.contains("CardResult") && transcript.contains("555555******4444"), "{transcript}");
    assert!(transcript.contains("technician: tap"), "{transcript}");
    assert!(transcript.lines().any(|l| l.split_whitespace().nth(1) == Some("printer")), "printer bytes too");
    assert_eq!(posd_e2e::card_numbers(transcript.as_bytes()), Vec::<String>::new());
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zvt_lane_on_tcp_is_driven_from_the_console() {
    let mut lane = Lane::prepare_external("");
    let dir = lane.dir.path().join("lane-sim");
    let mut sim = Command::new(bin("firmware-sim"))
        .arg("lane")
        .arg("--dir")
        .arg(&dir)
        .args(["--reader", "zvt", "--tcp", "--printer", "tcp", "--step-ms", "20", "--console"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = sim.stdin.take().unwrap();
    let mut out = BufReader::new(sim.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut printed = Vec::new();
    for line in out.by_ref() {
        printed.push(line.clone());
        if line.starts_with("type help") {
            break;
        }
    }
    let table = std::fs::read_to_string(dir.join("posd-lane.toml")).unwrap();
    assert!(table.contains("kind = \"zvt\", tcp = \"127.0.0.1:"), "{table}");
    assert!(table.contains("printer = { tcp = \"127.0.0.1:"), "{table}");
    assert!(printed.join("\n").contains(table.trim()), "the table is printed too: {printed:?}");
    lane.lane_table = Some(table);
    lane.start_posd();
    lane.ready().await;

    // The technician makes the next sale a decline, at the console.
    writeln!(stdin, "outcome decline 05").unwrap();
    let answer = out.next().unwrap();
    assert!(answer.starts_with("ok terminal scenario Decline(5)"), "{answer}");
    let p = final_payment(&lane.pay("declined", 900).await);
    assert_eq!(status(&p), pb::PaymentStatus::Declined, "{p:?}");
    writeln!(stdin, "tap").unwrap();
    let answer = out.next().unwrap();
    assert!(answer.starts_with("error tap: a ZVT terminal reads cards by itself"), "{answer}");
    drop(stdin);
    let st = sim.wait().unwrap();
    assert!(st.success(), "the console's end ends the lane: {st}");
    lane.finish();
}
