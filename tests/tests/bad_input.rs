//! Every RPC field with bad input gets the canonical code, a google.rpc
//! ErrorInfo reason (and for field errors a BadRequest naming the field), and
//! changes nothing.

use pos_proto::terminal::{self as pb};
use posd_e2e::{Lane, request};
use tonic::Code;
use tonic_types::StatusExt;

struct Case {
    name: &'static str,
    status: tonic::Status,
    code: Code,
    reason: &'static str,
    field: Option<&'static str>,
}

fn check(case: &Case) {
    assert_eq!(case.status.code(), case.code, "{}: {}", case.name, case.status.message());
    let details = case.status.get_error_details();
    let info = details.error_info().unwrap_or_else(|| panic!("{}: no ErrorInfo", case.name));
    assert_eq!(info.reason, case.reason, "{}", case.name);
    assert_eq!(info.domain, "posd.pos.terminal.v1");
    match case.field {
        Some(f) => {
            let br = details.bad_request().unwrap_or_else(|| panic!("{}: no BadRequest", case.name));
            assert_eq!(br.field_violations[0].field, f, "{}", case.name);
            assert!(!br.field_violations[0].description.is_empty());
        }
        None => assert!(details.bad_request().is_none(), "{}", case.name),
    }
}

#[tokio::test]
async fn bad_input_table() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let mut c = lane.client().await;
    let ok = posd_e2e::final_payment(&lane.pay("k-ok", 1_000).await);
    let before = c.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner().payments.len();

    async fn take_err(
        c: &mut pos_proto::terminal::payment_terminal_client::PaymentTerminalClient<tonic::transport::Channel>,
        r: pb::TakePaymentRequest,
    ) -> tonic::Status {
        match c.take_payment(r).await {
            Err(s) => s,
            Ok(mut stream) => match stream.get_mut().message().await {
                Err(s) => s,
                Ok(m) => panic!("accepted: {m:?}"),
            },
        }
    }
    let money = |amount_minor: i64, currency: &str| Some(pb::Money { amount_minor, currency: currency.into() });
    let cases = vec![
        (
            "empty key",
            take_err(&mut c, request("", 100)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("idempotency_key"),
        ),
        (
            "key too long",
            take_err(&mut c, request(&"k".repeat(256), 100)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("idempotency_key"),
        ),
        (
            "order reference too long",
            take_err(&mut c, pb::TakePaymentRequest { order_reference: "o".repeat(256), ..request("k-o", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("order_reference"),
        ),
        (
            "no amount",
            take_err(&mut c, pb::TakePaymentRequest { amount: None, ..request("k-a", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount"),
        ),
        (
            "zero amount",
            take_err(&mut c, request("k-zero", 0)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.amount_minor"),
        ),
        (
            "negative amount",
            take_err(&mut c, request("k-neg", -1)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.amount_minor"),
        ),
        (
            "i64::MAX amount",
            take_err(&mut c, request("k-max", i64::MAX)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.amount_minor"),
        ),
        (
            "unknown currency",
            take_err(&mut c, pb::TakePaymentRequest { amount: money(100, "XYZ"), ..request("k-cur", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.currency"),
        ),
        (
            "lower-case currency",
            take_err(&mut c, pb::TakePaymentRequest { amount: money(100, "eur"), ..request("k-lc", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.currency"),
        ),
        (
            "another lane's currency",
            take_err(&mut c, pb::TakePaymentRequest { amount: money(100, "JPY"), ..request("k-jpy", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.currency"),
        ),
        (
            "unknown terminal",
            take_err(&mut c, pb::TakePaymentRequest { terminal_id: "lane-9".into(), ..request("k-t", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("terminal_id"),
        ),
        (
            "unknown capture mode",
            take_err(&mut c, pb::TakePaymentRequest { capture_mode: 9, ..request("k-cm", 100) }).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("capture_mode"),
        ),
        (
            "key reused with another amount",
            take_err(&mut c, request("k-ok", 1_001)).await,
            Code::AlreadyExists,
            "IDEMPOTENCY_KEY_REUSED",
            None,
        ),
        (
            "unknown payment",
            c.get_payment(pb::GetPaymentRequest { payment_id: "pay_nope".into() }).await.unwrap_err(),
            Code::NotFound,
            "NOT_FOUND",
            None,
        ),
        (
            "unknown terminal status",
            c.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-9".into() }).await.unwrap_err(),
            Code::NotFound,
            "NOT_FOUND",
            None,
        ),
        (
            "page size too large",
            c.list_payments(pb::ListPaymentsRequest { page_size: 501, ..Default::default() }).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("page_size"),
        ),
        (
            "malformed page token",
            c.list_payments(pb::ListPaymentsRequest { page_token: "x".into(), ..Default::default() })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("page_token"),
        ),
        (
            "unknown status filter",
            c.list_payments(pb::ListPaymentsRequest { statuses: vec![99], ..Default::default() }).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("statuses"),
        ),
        (
            "cancel a finished payment",
            c.cancel_payment(pb::CancelPaymentRequest { payment_id: ok.payment_id.clone() }).await.unwrap_err(),
            Code::FailedPrecondition,
            "WRONG_STATE",
            None,
        ),
        (
            "cancel an unknown payment",
            c.cancel_payment(pb::CancelPaymentRequest { payment_id: "pay_nope".into() }).await.unwrap_err(),
            Code::NotFound,
            "NOT_FOUND",
            None,
        ),
        (
            "capture a captured payment for another amount",
            c.capture_payment(pb::CapturePaymentRequest { payment_id: ok.payment_id.clone(), amount_minor: 500 })
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
            "WRONG_STATE",
            None,
        ),
        (
            "capture a negative amount",
            c.capture_payment(pb::CapturePaymentRequest { payment_id: ok.payment_id.clone(), amount_minor: -5 })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount_minor"),
        ),
        (
            "void a captured payment",
            c.void_payment(pb::VoidPaymentRequest { payment_id: ok.payment_id.clone(), reason: String::new() })
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
            "WRONG_STATE",
            None,
        ),
        (
            "refund with an empty key",
            c.refund_payment(pb::RefundPaymentRequest {
                idempotency_key: String::new(),
                payment_id: ok.payment_id.clone(),
                amount_minor: 1,
                reason: String::new(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("idempotency_key"),
        ),
        (
            "refund a negative amount",
            c.refund_payment(pb::RefundPaymentRequest {
                idempotency_key: "r".into(),
                payment_id: ok.payment_id.clone(),
                amount_minor: -1,
                reason: String::new(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount_minor"),
        ),
        (
            "refund more than captured",
            c.refund_payment(pb::RefundPaymentRequest {
                idempotency_key: "r-big".into(),
                payment_id: ok.payment_id.clone(),
                amount_minor: 1_001,
                reason: String::new(),
            })
            .await
            .unwrap_err(),
            Code::FailedPrecondition,
            "REFUND_EXCEEDS_CAPTURE",
            None,
        ),
        (
            "refund an unknown payment",
            c.refund_payment(pb::RefundPaymentRequest {
                idempotency_key: "r-x".into(),
                payment_id: "pay_nope".into(),
                amount_minor: 1,
                reason: String::new(),
            })
            .await
            .unwrap_err(),
            Code::NotFound,
            "NOT_FOUND",
            None,
        ),
        (
            "refund reason too long",
            c.refund_payment(pb::RefundPaymentRequest {
                idempotency_key: "r-y".into(),
                payment_id: ok.payment_id.clone(),
                amount_minor: 1,
                reason: "x".repeat(256),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("reason"),
        ),
    ]
    .into_iter()
    .map(|(name, status, code, reason, field)| Case { name, status, code, reason, field })
    .collect::<Vec<_>>();
    let mut again = lane.client().await;
    for case in &cases {
        check(case);
    }
    let after = again.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner().payments.len();
    assert_eq!(after, before, "bad input changed nothing");
    assert_eq!(lane.ledger().len(), 1, "bad input charged nothing");
    lane.finish();
}

#[tokio::test]
async fn a_busy_terminal_is_a_precondition_failure_with_its_own_reason() {
    let mut lane = Lane::start(&["--no-card"]);
    lane.ready().await;
    let mut c = lane.client().await;
    let mut stream = c.take_payment(request("k-first", 100)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let err = posd_e2e::take(&mut lane.client().await, "k-second", 200).await.unwrap_err();
    check(&Case { name: "busy", status: err, code: Code::FailedPrecondition, reason: "TERMINAL_BUSY", field: None });
    lane.wait_status(&first.payment_id, pb::PaymentStatus::Collecting).await;
    c.cancel_payment(pb::CancelPaymentRequest { payment_id: first.payment_id }).await.unwrap();
    lane.finish();
}
