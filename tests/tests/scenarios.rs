//! Every scenario shipped in `firmware-sim/scenarios/` played against posd:
//! `firmware-sim lane --scenario FILE` provides the lane's devices (its card
//! device the kind the file is written for: `device = "native"`, `"zvt"` or
//! `"nexo"`), posd is
//! configured with the `[[lane]]` table the lane printed, the register takes
//! the scenario's payments, and `[expect]` is checked for the last: its final
//! status and code, the register events, the printed receipt text, the
//! gateway's charges, the lane recovering for a next payment; and the
//! transcript records frames both ways without a card number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firmware_sim::scenario::{Device, ScenarioFile};
use pos_proto::terminal as pb;
use posd_e2e::{Lane, PATIENCE, Proc, bin, card_numbers, events_from, final_payment, take};

const OFFLINE_LIMITS: &str =
    "offline = { max_payment_minor = 100000, max_total_minor = 1000000, max_payments = 100, max_per_card = 100 }";

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-sim/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_ends_as_it_expects() {
    let mut files = scenario_files();
    assert!(files.len() >= 20, "the scenario library has only {} files", files.len());
    // POSD_SCENARIO=part-of-a-name plays only the matching ones (while writing one).
    if let Ok(only) = std::env::var("POSD_SCENARIO") {
        files.retain(|f| f.to_string_lossy().contains(&only));
        assert!(!files.is_empty(), "no scenario matches POSD_SCENARIO={only:?}");
    }
    // Three lanes at a time (each runs gateway-sim, firmware-sim and posd),
    // each on a thread with a runtime of its own.
    let queue = Arc::new(Mutex::new(files));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                while let Some(path) = queue.lock().unwrap().pop() {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(play(path))));
                    let outcome = outcome.unwrap_or_else(|p| {
                        let text = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(format!("panicked: {text}"))
                    });
                    results.lock().unwrap().push((name, outcome));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    for (name, r) in &results {
        println!("{name}: {}", if r.is_ok() { "ok" } else { "FAILED" });
    }
    let failures: Vec<String> =
        results.iter().filter_map(|(name, r)| r.as_ref().err().map(|why| format!("{name}: {why}"))).collect();
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), results.len(), failures.join("\n"));
}

/// `firmware-sim lane --reader` for the device a scenario is written for.
fn reader_kind(device: Device) -> &'static str {
    match device {
        Device::Native => "native",
        Device::Zvt => "zvt",
        Device::Nexo => "nexo",
    }
}

/// posd's name for a status, as the scenario files write it.
fn status_name(p: &pb::Payment) -> String {
    let s = pb::PaymentStatus::try_from(p.status).unwrap();
    s.as_str_name().trim_start_matches("PAYMENT_STATUS_").to_lowercase()
}

fn code(p: &pb::Payment) -> String {
    p.failure
        .as_ref()
        .map(|f| f.code.clone())
        .or_else(|| p.decline.as_ref().map(|d| d.code.clone()))
        .unwrap_or_default()
}

/// Polls `check` until it answers, for at most [`PATIENCE`]; `Err` names what never happened.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not happen within {PATIENCE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes one payment and waits until its status is `want` (it may get there
/// after the stream ended, e.g. by recovery); returns it either way.
async fn pay(lane: &Lane, key: &str, amount: i64, want: &str) -> Result<pb::Payment, String> {
    let mut client = lane.client().await;
    let terminal_id = "lane-1";
    let events = take(&mut client, key, amount).await.map_err(|e| format!("TakePayment {key} refused: {e}"))?;
    let id = final_payment(&events).payment_id;
    assert_eq!(final_payment(&events).terminal_id, terminal_id);
    let mut last = None;
    let settled = until(&format!("payment {key} to become {want}"), async || {
        let p = client.get_payment(pb::GetPaymentRequest { payment_id: id.clone() }).await.ok()?.into_inner();
        let done = status_name(&p) == want;
        last = Some(p.clone());
        done.then_some(p)
    })
    .await;
    settled.map_err(|e| {
        let p = last.unwrap_or_default();
        format!("{e}; it is {} ({}: {:?} {:?})", status_name(&p), code(&p), p.failure, p.decline)
    })
}

async fn play(path: PathBuf) -> Result<(), String> {
    let s = ScenarioFile::load(&path)?;
    let mut lane = Lane::prepare_external(
        "[receipt]\nheader = [\"SCENARIO STORE\"]\nfooter = [\"Thank you\"]\nauto_print = [\"customer\"]\n",
    );
    lane.top_config = "card_timeout = \"3s\"\n".into();
    let sim_dir = lane.dir.path().join("lane-sim");
    let mut cmd = Command::new(bin("firmware-sim"));
    cmd.arg("lane").arg("--dir").arg(&sim_dir).arg("--scenario").arg(&path);
    cmd.args(["--reader", reader_kind(s.device)]);
    cmd.args(["--present-after-ms", "0", "--pin-after-ms", "0", "--step-ms", "20"]);
    let (_sim, _) = Proc::start(cmd, &lane.dir.path().join("lane-sim.log"), "firmware-sim lane ready");
    let table = std::fs::read_to_string(sim_dir.join("posd-lane.toml")).map_err(|e| format!("posd-lane.toml: {e}"))?;
    lane.lane_table = Some(table);
    if s.posd.offline_allowed {
        lane.lane_config = format!("{OFFLINE_LIMITS}\n");
    }
    lane.start_posd();
    lane.ready().await;
    if s.posd.gateway.as_deref() == Some("down") {
        lane.fault("down");
    }

    let e = &s.expect;
    // Payments before the last one only set the stage: they must settle.
    for i in 1..s.payments.len() {
        let mut client = lane.client().await;
        take(&mut client, &format!("stage-{i}"), e.amount_minor).await.map_err(|e| format!("payment {i}: {e}"))?;
    }
    let p = pay(&lane, "scenario-1", e.amount_minor, &e.status).await?;
    lane.responses.push(format!("{p:?}"));
    if let Some(want) = &e.code
        && code(&p) != *want
    {
        return Err(format!("code {:?}, expected {want:?} ({:?} {:?})", code(&p), p.failure, p.decline));
    }
    if !e.events.is_empty() {
        let mut client = lane.client().await;
        until(&format!("register events {:?}", e.events), async || {
            let events = events_from(&mut client, 0, None).await;
            e.events
                .iter()
                .all(|k| events.iter().any(|ev| ev.kind == *k && ev.payment_id == p.payment_id))
                .then_some(())
        })
        .await?;
    }
    if !e.receipt_contains.is_empty() {
        let receipts = sim_dir.join("receipts");
        let printed = || -> String {
            std::fs::read_dir(&receipts)
                .map(|d| {
                    d.filter_map(|f| f.ok().map(|f| f.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "txt"))
                        .filter_map(|f| std::fs::read_to_string(f).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        until(&format!("a receipt with {:?}", e.receipt_contains), async || {
            let text = printed();
            e.receipt_contains.iter().all(|want| text.contains(want.as_str())).then_some(())
        })
        .await
        .map_err(|why| format!("{why}; printed:\n{}", printed()))?;
    }
    if let Some(n) = e.gateway_charges {
        if s.posd.gateway.as_deref() == Some("down") {
            lane.fault("none");
        }
        // Terminal payments reach the gateway as records a moment later;
        // then the count must hold still.
        until(&format!("{n} charges at the gateway"), async || (lane.ledger().len() == n).then_some(())).await?;
    }
    if let Some(want) = &e.next_payment {
        lane.reader_ready().await;
        pay(&lane, "scenario-2", e.amount_minor, want).await.map_err(|e| format!("the next payment: {e}"))?;
    }

    let transcript = std::fs::read_to_string(sim_dir.join("transcript.log")).map_err(|e| format!("transcript: {e}"))?;
    let device = if s.device == Device::Native { "reader" } else { "terminal" };
    for dir in ["in", "out"] {
        // time, device, direction, hex, |, meaning
        if !transcript.lines().any(|l| l.split_whitespace().skip(1).take(2).eq([device, dir])) {
            return Err(format!("the transcript has no `{dir}` frame of the {device}:\n{transcript}"));
        }
    }
    for want in &e.transcript_contains {
        if !transcript.contains(want.as_str()) {
            return Err(format!("the transcript has no {want:?}:\n{transcript}"));
        }
    }
    if !card_numbers(transcript.as_bytes()).is_empty() {
        return Err(format!("card numbers in the transcript: {:?}", card_numbers(transcript.as_bytes())));
    }
    lane.finish();
    Ok(())
}
