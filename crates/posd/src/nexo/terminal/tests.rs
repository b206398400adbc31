//! A lane's nexo terminal against a fake one served in this process over
//! TLS (loopback, port 0), which decrypts with pos-nexo as a terminal does
//! and answers as each test tells it: health, a payment, a wrong key, a
//! terminal that is not the lane's, answers that are not the request's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pos_nexo::codes::GlobalStatus;
use pos_nexo::diagnosis::{DiagnosisResponse, PoiStatus};
use pos_nexo::payment::{
    AmountsReq, PaymentAcquirerData, PaymentRequest, PaymentResponse, PaymentResult, PaymentTransaction, PoiData,
    SaleData,
};
use pos_nexo::{Key, TransactionIdentification};
use tokio::net::TcpListener;

use super::*;
use crate::nexo::line::LineSettings;
use crate::nexo::line::tests::{Pki, acceptor, issue};

const POI: &str = "V400m-324688179";
const PASSPHRASE: &str = "mysupersecretpassphrase";

/// What the fake terminal answers a request it could read: the clear
/// response, and optionally another clear header to send beside the
/// encrypted one.
type Answer = Arc<dyn Fn(&SaleToPoiRequest) -> (SaleToPoiResponse, Option<MessageHeader>) + Send + Sync>;

/// A terminal on loopback.
struct Fake {
    addr: SocketAddr,
    /// Requests it read and answered (each one it would have acted on).
    answered: Arc<AtomicUsize>,
    /// Requests it rejected (could not decrypt or read).
    rejected: Arc<AtomicUsize>,
    /// The bodies as they came over the wire.
    wire: Arc<std::sync::Mutex<Vec<Bytes>>>,
}

/// The terminal's reject notice, in clear, as for a request it cannot decrypt.
fn reject_notice() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "SaleToPOIRequest": {
            "MessageHeader": {"ProtocolVersion": "3.0", "MessageClass": "Event", "MessageCategory": "Event",
                              "MessageType": "Notification", "DeviceID": "1", "POIID": POI},
            "EventNotification": {"EventToNotify": "Reject", "EventDetails": "message=Crypto+error",
                                  "TimeStamp": "2026-01-01T10:00:00Z"}
        }
    }))
    .unwrap()
}

/// Reads a request as the terminal does (decrypts it under `key` when it
/// has one) and answers by `answer`, encrypted the same way.
fn serve_one(key: Option<&Key>, body: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    let clear = match key {
        Some(key) => key.decrypt(body).ok()?,
        None => body.to_vec(),
    };
    let request: SaleToPoiRequest = serde_json::from_slice(&clear).ok()?;
    let (response, outer) = answer(&request);
    let document = serde_json::to_vec(&response).unwrap();
    Some(match key {
        None => document,
        Some(key) => {
            let mut secured = key.seal(&response.header, &document, [7; 16]);
            if let Some(outer) = outer {
                secured.message_header = outer;
            }
            serde_json::to_vec(&serde_json::json!({ "SaleToPOIResponse": secured })).unwrap()
        }
    })
}

async fn fake(pki: &Pki, key: Option<Key>, answer: Answer) -> Fake {
    let acceptor = acceptor(pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (answered, rejected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let wire = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = (answered.clone(), rejected.clone(), wire.clone(), Arc::new(key), answer);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (answered, rejected, wire, key, answer) = shared.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        wire.lock().unwrap().push(body.clone());
                        let reply = match serve_one((*key).as_ref(), &body, &answer) {
                            Some(reply) => {
                                answered.fetch_add(1, Ordering::SeqCst);
                                reply
                            }
                            None => {
                                rejected.fetch_add(1, Ordering::SeqCst);
                                reject_notice()
                            }
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(reply))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    Fake { addr, answered, rejected, wire }
}

fn key(passphrase: &str) -> Key {
    Key::derive(passphrase, "posd-test-key", 1).unwrap()
}

fn lane_terminal(ca_pem: &[u8], addr: SocketAddr, key: Option<Key>) -> NexoTerminal {
    let line = TerminalLine::new(LineSettings {
        url: format!("https://{addr}/nexo"),
        ca_pem: ca_pem.to_vec(),
        poi_id: POI.into(),
        connect_timeout: Duration::from_secs(10),
        answer_timeout: Duration::from_secs(30),
    })
    .unwrap();
    let settings = NexoSettings {
        line: Arc::new(line),
        key,
        sale_id: sale_id("lane-1"),
        health_interval: Duration::from_secs(5),
        health_ids: None,
    };
    NexoTerminal::new("lane-1".into(), &settings)
}

fn diagnosis_ok(request: &SaleToPoiRequest) -> (SaleToPoiResponse, Option<MessageHeader>) {
    let body = DiagnosisResponse {
        response: pos_nexo::Response::success(),
        poi_status: Some(PoiStatus {
            global_status: GlobalStatus::Ok,
            communication_ok_flag: Some(true),
            printer_status: None,
            card_reader_ok_flag: Some(true),
        }),
        host_status: vec![],
        logged_sale_id: vec![],
    };
    (SaleToPoiResponse { header: request.header.response(), body: body.into() }, None)
}

/// Approves a payment with approval code 123456 as POI transaction `TX-1`.
fn approve(request: &SaleToPoiRequest) -> (SaleToPoiResponse, Option<MessageHeader>) {
    let body = PaymentResponse {
        response: pos_nexo::Response::success(),
        sale_data: None,
        poi_data: Some(PoiData {
            poi_transaction_id: TransactionIdentification {
                transaction_id: "TX-1".into(),
                time_stamp: "2026-01-01T10:00:05Z".into(),
            },
            poi_reconciliation_id: None,
        }),
        payment_result: Some(PaymentResult {
            payment_acquirer_data: Some(PaymentAcquirerData {
                approval_code: Some("123456".into()),
                ..PaymentAcquirerData::default()
            }),
            ..PaymentResult::default()
        }),
        payment_receipt: vec![],
    };
    (SaleToPoiResponse { header: request.header.response(), body: body.into() }, None)
}

fn payment_of(amount_minor: i64) -> RequestBody {
    PaymentRequest {
        sale_data: SaleData {
            sale_transaction_id: TransactionIdentification {
                transaction_id: "GATEWAYKEY1".into(),
                time_stamp: "2026-01-01T10:00:00Z".into(),
            },
            ..SaleData::default()
        },
        payment_transaction: PaymentTransaction { amounts_req: AmountsReq::new("EUR", amount_minor).unwrap() },
        payment_data: None,
    }
    .into()
}

fn name(poi: &str) -> String {
    format!("{poi}.test.terminal.adyen.com")
}

#[tokio::test]
async fn a_healthy_terminal_answers_the_diagnosis_and_the_lane_shows_it_up() {
    let pki = issue(&name(POI));
    let t = fake(&pki, Some(key(PASSPHRASE)), Arc::new(diagnosis_ok)).await;
    let terminal = lane_terminal(&pki.ca_pem, t.addr, Some(key(PASSPHRASE)));
    let health = terminal.diagnose().await;
    assert_eq!(health, Health::Up { ready: true, detail: "ready".into() });
    let mut state = ReaderState::default();
    apply(&terminal, &health, &mut state);
    assert!(state.connected && state.healthy, "{state:?}");
    assert_eq!((state.serial.as_str(), state.model.as_str(), state.connections), (POI, "V400m", 1));
    assert_eq!(t.answered.load(Ordering::SeqCst), 1);

    // A health check's ServiceID is never one the counter hands out.
    let id = health_service_id(None);
    assert!(id.as_str().starts_with('H') && id.as_str().len() == 10, "{id}");
    // The simulator's: the counter's values in base 36, each once.
    let counter = std::sync::atomic::AtomicU64::new(36 + 1);
    assert_eq!(health_service_id(Some(&counter)).as_str(), "H000000011");
    assert_eq!(health_service_id(Some(&counter)).as_str(), "H000000012");
}

#[tokio::test]
async fn a_payment_goes_encrypted_and_its_answer_comes_back_decrypted_and_checked() {
    let pki = issue(&name(POI));
    let t = fake(&pki, Some(key(PASSPHRASE)), Arc::new(approve)).await;
    let terminal = lane_terminal(&pki.ca_pem, t.addr, Some(key(PASSPHRASE)));
    let service_id = ServiceId::from_counter(42);
    let response = terminal.exchange(&service_id, payment_of(2500)).await.unwrap();
    assert_eq!(response.header.service_id.as_deref(), Some("0000000042"));
    assert_eq!(response.header.sale_id.as_deref(), Some("POSD-lane-1"));
    assert_eq!(response.header.poi_id, POI);
    let ResponseBody::Payment(p) = &response.body else { panic!("not a payment response: {response:?}") };
    assert_eq!(p.poi_data.as_ref().unwrap().poi_transaction_id.transaction_id, "TX-1");
    let approval = p.payment_result.as_ref().and_then(|r| r.payment_acquirer_data.as_ref());
    assert_eq!(approval.and_then(|a| a.approval_code.as_deref()), Some("123456"));
    // On the wire: the header in clear, the amount only inside the blob.
    let wire = t.wire.lock().unwrap();
    let sent = String::from_utf8(wire[0].to_vec()).unwrap();
    assert!(sent.contains("NexoBlob") && sent.contains("\"ServiceID\":\"0000000042\""), "{sent}");
    assert!(!sent.contains("RequestedAmount") && !sent.contains("GATEWAYKEY1"), "{sent}");
    assert_eq!(terminal.busy.load(Ordering::SeqCst), 0, "the exchange is no longer counted as in flight");
    // The lane's line counters: the request's body out, the answer's in.
    assert_eq!(terminal.line_bytes.sent(), wire[0].len() as u64);
    assert!(terminal.line_bytes.received() > 0);
}

#[tokio::test]
async fn a_wrong_passphrase_is_refused_clearly_and_nothing_is_booked() {
    let pki = issue(&name(POI));
    let t = fake(&pki, Some(key("the-terminal-has-another-one")), Arc::new(approve)).await;
    let terminal = lane_terminal(&pki.ca_pem, t.addr, Some(key(PASSPHRASE)));
    let err = terminal.exchange(&ServiceId::from_counter(1), payment_of(2500)).await.unwrap_err();
    assert!(matches!(&err, NexoError::Refused(m) if m.contains("Reject") && m.contains("passphrase")), "{err}");
    assert!(err.not_booked() && !err.not_sent(), "{err:?}");
    assert_eq!((t.answered.load(Ordering::SeqCst), t.rejected.load(Ordering::SeqCst)), (0, 1), "nothing booked");
    // The health check marks the lane unavailable, with the reason.
    let health = terminal.diagnose().await;
    assert!(matches!(&health, Health::Unavailable(m) if m.contains("Reject")), "{health:?}");
    let mut state = ReaderState { connected: true, ..ReaderState::default() };
    apply(&terminal, &health, &mut state);
    assert!(!state.connected && state.detail.starts_with("unavailable: "), "{state:?}");
}

#[tokio::test]
async fn a_terminal_whose_certificate_names_another_poiid_gets_nothing() {
    let pki = issue(&name("V400m-999999999"));
    let t = fake(&pki, Some(key(PASSPHRASE)), Arc::new(approve)).await;
    let terminal = lane_terminal(&pki.ca_pem, t.addr, Some(key(PASSPHRASE)));
    let err = terminal.exchange(&ServiceId::from_counter(1), payment_of(2500)).await.unwrap_err();
    assert!(matches!(&err, NexoError::Identity(m) if m.contains(POI) && m.contains("V400m-999999999")), "{err}");
    assert!(err.not_sent());
    assert!(t.wire.lock().unwrap().is_empty(), "not a byte of the request reached it");
    assert_eq!((terminal.line_bytes.sent(), terminal.line_bytes.received()), (0, 0), "nothing counted as sent");
    assert!(matches!(terminal.diagnose().await, Health::Unavailable(_)));
}

#[tokio::test]
async fn an_answer_that_is_not_the_request_s_leaves_it_in_doubt() {
    let pki = issue(&name(POI));
    let other_service: Answer = Arc::new(|request: &SaleToPoiRequest| {
        let (mut response, _) = approve(request);
        response.header.service_id = Some("0000000041".into());
        (response, None)
    });
    let other_sale: Answer = Arc::new(|request: &SaleToPoiRequest| {
        let (mut response, _) = approve(request);
        response.header.sale_id = Some("POSD-lane-2".into());
        (response, None)
    });
    let still_a_request: Answer = Arc::new(|request: &SaleToPoiRequest| {
        let (mut response, _) = approve(request);
        response.header.message_type = pos_nexo::codes::MessageType::Request;
        (response, None)
    });
    // The clear header says what was asked; the encrypted one differs.
    let two_headers: Answer = Arc::new(|request: &SaleToPoiRequest| {
        let (mut response, _) = approve(request);
        let outer = response.header.clone();
        response.header.poi_id = "V400m-1".into();
        (response, Some(outer))
    });
    for (answer, needle) in [
        (other_service, "ServiceID \"0000000041\" (sent \"0000000042\")"),
        (other_sale, "SaleID \"POSD-lane-2\""),
        (still_a_request, "MessageType Request"),
        (two_headers, "encrypted header that differs from its clear one"),
    ] {
        let t = fake(&pki, Some(key(PASSPHRASE)), answer).await;
        let terminal = lane_terminal(&pki.ca_pem, t.addr, Some(key(PASSPHRASE)));
        let err = terminal.exchange(&ServiceId::from_counter(42), payment_of(2500)).await.unwrap_err();
        assert!(matches!(&err, NexoError::InDoubt(m) if m.contains(needle)), "{needle}: {err}");
        assert!(!err.not_booked(), "the terminal had the request: only TransactionStatus settles it");
    }
}

#[tokio::test]
async fn the_unencrypted_local_api_is_spoken_only_by_lanes_without_a_key() {
    let pki = issue(&name(POI));
    // A test terminal that takes clear requests, on loopback.
    let clear = fake(&pki, None, Arc::new(approve)).await;
    let terminal = lane_terminal(&pki.ca_pem, clear.addr, None);
    assert!(!terminal.encrypted());
    terminal.exchange(&ServiceId::from_counter(7), payment_of(100)).await.unwrap();
    let sent = String::from_utf8(clear.wire.lock().unwrap()[0].to_vec()).unwrap();
    assert!(sent.contains("RequestedAmount") && !sent.contains("NexoBlob"), "{sent}");

    // Key on one side only: the terminal rejects what it cannot read.
    let keyed = lane_terminal(&pki.ca_pem, clear.addr, Some(key(PASSPHRASE)));
    let err = keyed.exchange(&ServiceId::from_counter(8), payment_of(100)).await.unwrap_err();
    assert!(matches!(&err, NexoError::Refused(_)), "{err}");
    assert_eq!((clear.answered.load(Ordering::SeqCst), clear.rejected.load(Ordering::SeqCst)), (1, 1));
    let encrypting = fake(&pki, Some(key(PASSPHRASE)), Arc::new(approve)).await;
    let err = lane_terminal(&pki.ca_pem, encrypting.addr, None)
        .exchange(&ServiceId::from_counter(9), payment_of(100))
        .await
        .unwrap_err();
    assert!(matches!(&err, NexoError::Refused(_)), "the terminal rejects a clear request: {err}");

    // Only for a terminal on this machine (the configuration's rule).
    assert!(crate::nexo::line::is_loopback_host("127.0.0.2"));
    assert!(crate::nexo::line::is_loopback_host("::1"));
    assert!(crate::nexo::line::is_loopback_host("LOCALHOST"));
    assert!(!crate::nexo::line::is_loopback_host("192.0.2.20"));
    assert!(!crate::nexo::line::is_loopback_host("terminal.local"));
}

#[test]
fn sale_ids_and_poiids_have_their_forms() {
    assert_eq!(sale_id("lane-1"), "POSD-lane-1");
    assert_eq!(sale_id("Kasse 3/ü"), "POSD-Kasse_3__");
    assert_eq!(sale_id(&"x".repeat(60)).len(), SALE_ID_MAX);
    assert_eq!(check_poi_id(POI), Ok(()));
    assert_eq!(check_poi_id("P400Plus-1"), Ok(()));
    for bad in ["V400m324688179", "-1", "V400m-", "V400m-32-4", "V400m 1-2", "V400m-12.3"] {
        assert!(check_poi_id(bad).is_err(), "{bad}");
    }
}
