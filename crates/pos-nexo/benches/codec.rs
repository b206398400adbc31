//! nexo codec cost per message, the way posd and the terminal handle one:
//! encode + encrypt (serde to JSON, NexoCrypto v1 seal: AES-256-CBC and
//! HMAC-SHA256) and decrypt + decode (open, verify, serde from JSON), for a
//! PaymentRequest, a PaymentResponse with its receipt, and a
//! TransactionStatusResponse repeating that PaymentResponse. The documents
//! are the known-answer vectors in tests/vectors. Prints a markdown table;
//! timing goals are read off it, never asserted.
//! `cargo bench -p pos-nexo --bench codec`

use std::hint::black_box;
use std::time::{Duration, Instant};

use pos_nexo::crypto::NONCE_LEN;
use pos_nexo::{Key, SaleToPoiRequest, SaleToPoiResponse};
use serde_json::{Value, json};

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// A vector's clear document.
fn plaintext(vector: &str) -> String {
    let v: Value = serde_json::from_str(vector).expect("a vector is JSON");
    v["plaintext"].as_str().expect("a vector has its plaintext").to_owned()
}

/// A TransactionStatusResponse repeating the PaymentResponse of `payment`.
fn transaction_status(payment: &str) -> String {
    let doc: Value = serde_json::from_str(payment).expect("the vector is JSON");
    let inner = &doc["SaleToPOIResponse"];
    let original = &inner["MessageHeader"];
    let mut header = original.clone();
    header["MessageCategory"] = json!("TransactionStatus");
    header["ServiceID"] = json!("0000000003");
    json!({"SaleToPOIResponse": {
        "MessageHeader": header,
        "TransactionStatusResponse": {
            "Response": {"Result": "Success"},
            "MessageReference": {
                "MessageCategory": "Payment",
                "SaleID": original["SaleID"],
                "ServiceID": original["ServiceID"]
            },
            "RepeatedMessageResponse": {
                "MessageHeader": original,
                "RepeatedResponseMessageBody": {"PaymentResponse": inner["PaymentResponse"]}
            }
        }
    }})
    .to_string()
}

fn main() {
    let budget = Duration::from_millis(400);
    let key = Key::derive("bench-Passphrase.2026", "bench", 1).expect("an ASCII passphrase");
    let nonce = [7u8; NONCE_LEN];
    let request = plaintext(include_str!("../tests/vectors/payment_request.json"));
    let response = plaintext(include_str!("../tests/vectors/payment_response.json"));
    let status = transaction_status(&response);
    let request: SaleToPoiRequest = serde_json::from_str(&request).expect("the request vector decodes");
    let response: SaleToPoiResponse = serde_json::from_str(&response).expect("the response vector decodes");
    let status: SaleToPoiResponse = serde_json::from_str(&status).expect("the status response decodes");

    println!("| message | clear bytes | sent bytes | encode + encrypt ns | decrypt + decode ns |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, clear: usize, sent: usize, encode: f64, decode: f64| {
        println!("| {name} | {clear} | {sent} | {encode:.0} | {decode:.0} |");
    };

    let clear = serde_json::to_vec(&request).unwrap();
    let sent = key.encrypt(&clear, nonce).unwrap();
    let encode = time(budget, || {
        let clear = serde_json::to_vec(black_box(&request)).unwrap();
        black_box(key.encrypt(&clear, nonce).unwrap());
    });
    let decode = time(budget, || {
        let clear = key.decrypt(black_box(sent.as_bytes())).unwrap();
        black_box(serde_json::from_slice::<SaleToPoiRequest>(&clear).unwrap());
    });
    row("PaymentRequest", clear.len(), sent.len(), encode, decode);

    for (name, document) in
        [("PaymentResponse (receipt)", &response), ("TransactionStatusResponse (repeated payment)", &status)]
    {
        let clear = serde_json::to_vec(document).unwrap();
        let sent = key.encrypt(&clear, nonce).unwrap();
        let encode = time(budget, || {
            let clear = serde_json::to_vec(black_box(document)).unwrap();
            black_box(key.encrypt(&clear, nonce).unwrap());
        });
        let decode = time(budget, || {
            let clear = key.decrypt(black_box(sent.as_bytes())).unwrap();
            black_box(serde_json::from_slice::<SaleToPoiResponse>(&clear).unwrap());
        });
        row(name, clear.len(), sent.len(), encode, decode);
    }
}
