//! `firmware-sim nexo` against an independent Sale system: Adyen's own
//! TerminalLocalAPI (`@adyen/api-library`, pinned in tests/node, installed
//! by `posd_e2e::node_modules`) pays, asks TransactionStatus and is refused
//! under a wrong passphrase, over HTTPS and encrypted, exactly as it talks to
//! a real terminal. tests/node/terminal_local.js drives the library.
//!
//! The library always appends `:8443/nexo/` to its endpoint, so the
//! simulator listens on port 8443 of a random loopback address 127.X.Y.Z
//! (X, Y, Z ≥ 1), one no other run here holds. It pins the CA file the
//! simulator wrote through its `certificatePath` setting (read with `fs`,
//! handed to Node's https as `ca`) and checks the certificate's common name
//! with its `checkServerIdentity` (`<model>-<serial>.test|live.terminal.adyen.com`)
//! instead of the host name, so no NODE_EXTRA_CA_CERTS is needed.

use std::hash::BuildHasher;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use posd_e2e::{Proc, bin, control};
use serde_json::{Value, json};

const POI: &str = "V400m-324688179";
const SALE: &str = "ORACLE";
const KEY_ID: &str = "sim-oracle";
const KEY_VERSION: u32 = 3;
const PASSPHRASE: &str = "sim-oracle-Passphrase.2026";

fn node_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/node"))
}

/// A loopback address 127.X.Y.Z whose port 8443 is free now.
fn free_loopback() -> String {
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..100 {
        let r = random.hash_one((std::process::id(), attempt));
        let host = format!("127.{}.{}.{}", 1 + r % 254, 1 + (r >> 8) % 254, 1 + (r >> 16) % 254);
        if std::net::TcpListener::bind((host.as_str(), 8443)).is_ok() {
            return host;
        }
    }
    panic!("no loopback address with a free port 8443");
}

struct Sim {
    _proc: Proc,
    control: String,
    host: String,
    ca: PathBuf,
    transcript: PathBuf,
    _dir: tempfile::TempDir,
}

/// `firmware-sim nexo`, encrypted, on port 8443 of a free loopback address.
fn start() -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, format!("{PASSPHRASE}\n")).unwrap();
    let ca = dir.path().join("ca.pem");
    let transcript = dir.path().join("transcript.log");
    for _ in 0..5 {
        let host = free_loopback();
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.arg("nexo")
            .args(["--listen", &format!("{host}:8443"), "--poi-id", POI, "--key-id", KEY_ID])
            .args(["--key-version", &KEY_VERSION.to_string(), "--step-ms", "20", "--control", "127.0.0.1:0"])
            .arg("--passphrase-file")
            .arg(&passphrase)
            .arg("--ca-out")
            .arg(&ca)
            .arg("--transcript")
            .arg(&transcript);
        let log = dir.path().join("firmware-sim.log");
        let (mut proc, control) = Proc::start(cmd, &log, "firmware-sim nexo control on ");
        // Another run may take the address between the probe and the bind
        // (AddrInUse): the simulator then exits, and another address is tried.
        if proc.wait_line("firmware-sim nexo listening on ").is_some() {
            return Sim { _proc: proc, control, host, ca, transcript, _dir: dir };
        }
    }
    panic!("firmware-sim nexo did not start on any address tried");
}

/// Runs `steps` through the library as the Sale system `SALE`; one result each.
fn sale_system(sim: &Sim, passphrase: &str, steps: Value) -> Vec<Value> {
    static MODULES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let modules = MODULES.get_or_init(|| posd_e2e::node_modules(&node_dir()));
    let job = json!({
        "endpoint": format!("https://{}", sim.host),
        "ca": sim.ca,
        "poiId": POI,
        "saleId": SALE,
        "keyId": KEY_ID,
        "keyVersion": KEY_VERSION,
        "passphrase": passphrase,
        "steps": steps,
    });
    let script = node_dir().join("terminal_local.js");
    let mut child = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{} failed: {stdout}{}", script.display(), String::from_utf8_lossy(&out.stderr));
    let answer: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{} answered {stdout:?}: {e}", script.display()));
    answer["results"].as_array().expect("results").clone()
}

/// The response of a step the library completed.
fn response(result: &Value) -> &Value {
    assert_eq!(result["ok"], true, "the library failed: {result}");
    &result["response"]
}

#[test]
fn the_reference_library_pays_asks_transaction_status_and_is_declined() {
    let sim = start();
    let results = sale_system(
        &sim,
        PASSPHRASE,
        json!([
            {"op": "pay", "serviceId": "P1", "amount": 12.5, "currency": "EUR"},
            {"op": "status", "serviceId": "S1", "of": "P1"},
            {"op": "status", "serviceId": "S2", "of": "NEVER1"},
        ]),
    );
    let pay = response(&results[0]);
    assert_eq!(pay["MessageHeader"]["MessageType"], "Response");
    assert_eq!(pay["MessageHeader"]["ServiceID"], "P1");
    assert_eq!(pay["MessageHeader"]["POIID"], POI);
    let payment = &pay["PaymentResponse"];
    assert_eq!(payment["Response"]["Result"], "Success", "{payment}");
    assert_eq!(payment["PaymentResult"]["AmountsResp"]["AuthorizedAmount"], 12.5);
    assert_eq!(payment["PaymentResult"]["AmountsResp"]["Currency"], "EUR");
    assert_eq!(payment["PaymentResult"]["PaymentInstrumentData"]["CardData"]["MaskedPan"], "411111 **** 1111");
    assert_eq!(payment["PaymentResult"]["PaymentAcquirerData"]["ApprovalCode"].as_str().map(str::len), Some(6));
    let transaction = payment["POIData"]["POITransactionID"]["TransactionID"].as_str().unwrap();
    assert!(!transaction.is_empty());
    let receipts = payment["PaymentReceipt"].as_array().unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0]["DocumentQualifier"], "CashierReceipt");
    assert!(receipts[1]["OutputContent"]["OutputText"][0]["Text"].as_str().unwrap().starts_with("key="));

    // TransactionStatus for that ServiceID repeats the payment's answer.
    let status = &response(&results[1])["TransactionStatusResponse"];
    assert_eq!(status["Response"]["Result"], "Success", "{status}");
    assert_eq!(status["MessageReference"]["ServiceID"], "P1");
    let repeated = &status["RepeatedMessageResponse"];
    assert_eq!(repeated["MessageHeader"]["ServiceID"], "P1");
    assert_eq!(repeated["RepeatedResponseMessageBody"]["PaymentResponse"], *payment);

    // A ServiceID the terminal never saw: not found (never booked).
    let unknown = &response(&results[2])["TransactionStatusResponse"];
    assert_eq!(unknown["Response"]["Result"], "Failure");
    assert_eq!(unknown["Response"]["ErrorCondition"], "NotFound");

    // The issuer declines the next payment.
    control(&sim.control, "scenario decline");
    let results = sale_system(&sim, PASSPHRASE, json!([{"op": "pay", "serviceId": "P2", "amount": 30}]));
    let declined = &response(&results[0])["PaymentResponse"];
    assert_eq!(declined["Response"]["Result"], "Failure", "{declined}");
    assert_eq!(declined["Response"]["ErrorCondition"], "Refusal");

    // Under a wrong passphrase the terminal answers its crypto error, which the library raises.
    let results =
        sale_system(&sim, "sim-oracle-Passphrase.2025", json!([{"op": "pay", "serviceId": "P3", "amount": 1}]));
    assert_eq!(results[0]["ok"], false, "{}", results[0]);
    assert!(results[0]["error"].as_str().unwrap().contains("crypto error"), "{}", results[0]);

    // The transcript has every request decrypted, and no card number.
    let transcript = std::fs::read_to_string(&sim.transcript).unwrap();
    assert!(transcript.contains("PaymentRequest P1 of ORACLE (encrypted"), "{transcript}");
    assert!(transcript.contains("TransactionStatusResponse Failure NotFound"), "{transcript}");
    assert!(posd_e2e::card_numbers(transcript.as_bytes()).is_empty(), "{transcript}");
}
