//! posd's NexoCrypto against the reference implementation, Adyen's own Node
//! library (`@adyen/api-library`, pinned with its lockfile in tests/node):
//! what posd encrypts decrypts there, what the library encrypts decrypts
//! here, and a tampered message or a wrong passphrase is refused by both.
//! npm installs the library under the target directory on first use
//! (`posd_e2e::node_modules`); tests/node/nexo_crypto.js runs its NexoCrypto.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use data_encoding::BASE64;
use pos_nexo::codes::{DocumentQualifier, MessageCategory, OutputFormat, ResultType};
use pos_nexo::crypto::SecuredDocument;
use pos_nexo::payment::{
    AmountsReq, AmountsResp, OutputContent, OutputText, PaymentReceipt, PaymentRequest, PaymentResponse, PaymentResult,
    PaymentTransaction, PoiData, SaleData,
};
use pos_nexo::{
    CryptoError, Key, MessageHeader, Response, ResponseBody, SaleToPoiRequest, SaleToPoiResponse, ServiceId,
    TransactionIdentification,
};
use serde_json::{Value, json};

const PASSPHRASE: &str = "posd-oracle-Passphrase.2026";
const KEY_ID: &str = "posd-oracle";
const KEY_VERSION: u32 = 2;

fn node_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/node"))
}

/// The library's `node_modules`, installed once for all the tests here.
fn node_path() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(|| posd_e2e::node_modules(&node_dir())).clone()
}

/// One request to tests/node/nexo_crypto.js, and its answer.
fn library(request: &Value) -> Value {
    let script = node_dir().join("nexo_crypto.js");
    let mut child = Command::new("node")
        .arg(&script)
        .env("NODE_PATH", node_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{} failed: {stdout}{}", script.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{} answered {stdout:?}: {e}", script.display()))
}

/// A request to the library under `passphrase` and the shared key's name.
fn under(passphrase: &str, op: &str, field: &str, text: &str) -> Value {
    json!({"op": op, "passphrase": passphrase, "keyId": KEY_ID, "keyVersion": KEY_VERSION, field: text})
}

fn key() -> Key {
    Key::derive(PASSPHRASE, KEY_ID, KEY_VERSION).unwrap()
}

fn header(category: MessageCategory) -> MessageHeader {
    MessageHeader::request(category, &ServiceId::from_counter(7), "POSD-lane-1", "V400m-324688179")
}

/// Clear documents as posd writes them: a payment request, and an answer
/// with a receipt, non-ASCII text and an amount with a fraction.
fn documents() -> Vec<String> {
    let sale = SaleData {
        sale_transaction_id: TransactionIdentification {
            transaction_id: "01JF3Q5W7Y00000000000000OR".into(),
            time_stamp: "2026-12-07T10:00:00Z".into(),
        },
        ..SaleData::default()
    };
    let request = SaleToPoiRequest {
        header: header(MessageCategory::Payment),
        body: PaymentRequest {
            sale_data: sale.clone(),
            payment_transaction: PaymentTransaction { amounts_req: AmountsReq::new("EUR", 1999).unwrap() },
            payment_data: None,
        }
        .into(),
    };
    let response = SaleToPoiResponse {
        header: header(MessageCategory::Payment).response(),
        body: ResponseBody::from(PaymentResponse {
            response: Response::success(),
            sale_data: Some(sale),
            poi_data: Some(PoiData {
                poi_transaction_id: TransactionIdentification {
                    transaction_id: "4r7i001557325515012.8815573255107661".into(),
                    time_stamp: "2026-12-07T10:00:31.000Z".into(),
                },
                poi_reconciliation_id: None,
            }),
            payment_result: Some(PaymentResult {
                amounts_resp: Some(AmountsResp {
                    currency: Some("EUR".into()),
                    authorized_amount: Some(pos_nexo::Decimal::from_minor(1999, "EUR").unwrap()),
                    ..AmountsResp::default()
                }),
                ..PaymentResult::default()
            }),
            payment_receipt: vec![PaymentReceipt {
                document_qualifier: DocumentQualifier::CustomerReceipt,
                required_signature_flag: false,
                output_content: OutputContent {
                    output_format: OutputFormat::Text,
                    output_text: vec![
                        OutputText {
                            text: "name=TOTAL&value=%e2%82%ac%c2%a019.99&key=totalAmount".into(),
                            ..OutputText::default()
                        },
                        OutputText { text: "Vielen Dank – Grüße €".into(), ..OutputText::default() },
                    ],
                },
            }],
        }),
    };
    vec![serde_json::to_string(&request).unwrap(), serde_json::to_string(&response).unwrap()]
}

/// An encrypted document with one of its fields changed.
fn tampered(document: &str, change: impl Fn(&mut pos_nexo::crypto::SecuredMessage)) -> String {
    let mut doc: SecuredDocument = serde_json::from_str(document).unwrap();
    change(doc.request.as_mut().or(doc.response.as_mut()).unwrap());
    serde_json::to_string(&doc).unwrap()
}

/// `field` (base64) with bit `bit` of its bytes flipped.
fn flip(field: &str, bit: usize) -> String {
    let mut bytes = BASE64.decode(field.as_bytes()).unwrap();
    bytes[bit / 8] ^= 1 << (bit % 8);
    BASE64.encode(&bytes)
}

#[test]
fn what_posd_encrypts_the_reference_library_decrypts() {
    for (i, clear) in documents().iter().enumerate() {
        let nonce = [u8::try_from(i).unwrap() * 41 + 3; 16];
        let envelope = key().encrypt(clear.as_bytes(), nonce).unwrap();
        let answer = library(&under(PASSPHRASE, "decrypt", "envelope", &envelope));
        assert_eq!(answer["ok"], true, "the library refused posd's document: {answer}\n{envelope}");
        assert_eq!(answer["message"].as_str(), Some(clear.as_str()));
    }
}

#[test]
fn what_the_reference_library_encrypts_posd_decrypts() {
    let key = key();
    for clear in documents() {
        // The library draws its own nonce.
        let answer = library(&under(PASSPHRASE, "encrypt", "message", &clear));
        assert_eq!(answer["ok"], true, "{answer}");
        let envelope = answer["envelope"].as_str().unwrap();
        let decrypted = key.decrypt(envelope.as_bytes()).unwrap_or_else(|e| panic!("{e}: {envelope}"));
        assert_eq!(String::from_utf8(decrypted).unwrap(), clear);
    }
    // The answer the terminal would send reads as a payment response.
    let answer = library(&under(PASSPHRASE, "encrypt", "message", &documents()[1]));
    let clear = key.decrypt(answer["envelope"].as_str().unwrap().as_bytes()).unwrap();
    let response: SaleToPoiResponse = serde_json::from_slice(&clear).unwrap();
    let ResponseBody::Payment(payment) = response.body else { panic!("{:?}", response.body) };
    assert_eq!(payment.response.result, ResultType::Success);
    let authorized = payment.payment_result.unwrap().amounts_resp.unwrap().authorized_amount.unwrap();
    assert_eq!(authorized.to_minor("EUR"), Ok(1999));
}

#[test]
fn a_tampered_message_or_a_wrong_passphrase_is_refused_by_both() {
    let key = key();
    let documents = documents();
    let clear = &documents[0];
    let ours = key.encrypt(clear.as_bytes(), [0x5a; 16]).unwrap();
    let theirs = library(&under(PASSPHRASE, "encrypt", "message", clear))["envelope"].as_str().unwrap().to_owned();
    for (origin, document) in [("posd's", &ours), ("the library's", &theirs)] {
        let secured: SecuredDocument = serde_json::from_str(document).unwrap();
        let blob_bits = BASE64.decode(secured.request.unwrap().nexo_blob.as_bytes()).unwrap().len() * 8;
        let cases = [
            ("a bit of the first block", tampered(document, |m| m.nexo_blob = flip(&m.nexo_blob, 3))),
            ("a bit of the padding", tampered(document, |m| m.nexo_blob = flip(&m.nexo_blob, blob_bits - 1))),
            ("a bit before the padding", tampered(document, |m| m.nexo_blob = flip(&m.nexo_blob, blob_bits - 129))),
            (
                "a bit of the HMAC",
                tampered(document, |m| m.security_trailer.hmac = flip(&m.security_trailer.hmac, 200)),
            ),
            (
                "a bit of the nonce",
                tampered(document, |m| m.security_trailer.nonce = flip(&m.security_trailer.nonce, 9)),
            ),
        ];
        for (what, bad) in &cases {
            assert_eq!(key.decrypt(bad.as_bytes()), Err(CryptoError::Refused), "{origin} document, {what}");
            let answer = library(&under(PASSPHRASE, "decrypt", "envelope", bad));
            assert_eq!(answer["ok"], false, "the library took {origin} document with {what}: {answer}");
        }
        // Untouched, both take it.
        assert_eq!(key.decrypt(document.as_bytes()).unwrap(), clear.as_bytes());
        assert_eq!(library(&under(PASSPHRASE, "decrypt", "envelope", document))["ok"], true);
    }

    // A wrong passphrase, on either side.
    let wrong = "posd-oracle-Passphrase.2025";
    let answer = library(&under(wrong, "decrypt", "envelope", &ours));
    assert_eq!(answer["ok"], false, "the library decrypted under a wrong passphrase: {answer}");
    let theirs_wrong = library(&under(wrong, "encrypt", "message", clear))["envelope"].as_str().unwrap().to_owned();
    assert_eq!(key.decrypt(theirs_wrong.as_bytes()), Err(CryptoError::Refused));
}
