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
    // Bad input is quoted, never echoed whole: a huge value does not come
    // back as huge trailers (which a client reads as RESOURCE_EXHAUSTED).
    assert!(case.status.message().len() < 1024, "{}: a message of {} bytes", case.name, case.status.message().len());
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
    // A `google.protobuf.Timestamp` (the tests do not depend on prost-types to name it).
    let at = |seconds: i64, nanos: i32| {
        let mut t = pb::ListPaymentsRequest::default().created_after.unwrap_or_default();
        t.seconds = seconds;
        t.nanos = nanos;
        Some(t)
    };
    let megabyte = |c: &str| c.repeat(1 << 20);
    let report = |day: &str| pb::GetReportRequest { business_day: day.into(), terminal_id: String::new() };
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
            "1 MB currency",
            take_err(&mut c, pb::TakePaymentRequest { amount: money(100, &megabyte("E")), ..request("k-1mb", 100) })
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("amount.currency"),
        ),
        (
            "1 MB order reference",
            take_err(&mut c, pb::TakePaymentRequest { order_reference: megabyte("o"), ..request("k-1mb-o", 100) })
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("order_reference"),
        ),
        (
            "a line break in the key",
            take_err(&mut c, request("k-forged\nINFO payment approved", 100)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("idempotency_key"),
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
            "created_after seconds past the timestamp range",
            c.list_payments(pb::ListPaymentsRequest { created_after: at(i64::MAX, 0), ..Default::default() })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("created_after"),
        ),
        (
            "created_before nanos past a second",
            c.list_payments(pb::ListPaymentsRequest { created_before: at(0, 2_000_000_000), ..Default::default() })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("created_before"),
        ),
        (
            "created_after i64::MAX seconds and 2e9 nanos",
            c.list_payments(pb::ListPaymentsRequest {
                created_after: at(i64::MAX, 2_000_000_000),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("created_after"),
        ),
        (
            "1 MB page token",
            c.list_payments(pb::ListPaymentsRequest { page_token: megabyte("t"), ..Default::default() })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("page_token"),
        ),
        (
            "report day that is no day",
            c.get_report(report("2026-13-45")).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("business_day"),
        ),
        (
            "report day in the last year of the calendar",
            c.get_report(report("9999-12-31")).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("business_day"),
        ),
        (
            "report day in year 0",
            c.get_report(report("0000-01-01")).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("business_day"),
        ),
        (
            "report day with a time",
            c.get_report(report("2026-11-25T10:00")).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("business_day"),
        ),
        (
            "1 MB report day",
            c.get_report(report(&megabyte("2"))).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("business_day"),
        ),
        (
            "1 MB payment id",
            c.get_payment(pb::GetPaymentRequest { payment_id: megabyte("p") }).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("payment_id"),
        ),
        (
            "1 MB terminal id",
            c.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: megabyte("l") }).await.unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("terminal_id"),
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
            "1 MB void reason",
            c.void_payment(pb::VoidPaymentRequest { payment_id: ok.payment_id.clone(), reason: megabyte("r") })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("reason"),
        ),
        (
            "an escape sequence in a void reason",
            c.void_payment(pb::VoidPaymentRequest {
                payment_id: ok.payment_id.clone(),
                reason: "\u{1b}[2Kcleared".into(),
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "INVALID_FIELD",
            Some("reason"),
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
async fn a_page_token_the_client_altered_is_refused() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    for i in 0..3 {
        lane.pay(&format!("k-page-{i}"), 100 + i).await;
    }
    let mut c = lane.client().await;
    let page = |page_token: &str| pb::ListPaymentsRequest {
        page_size: 1,
        page_token: page_token.into(),
        ..Default::default()
    };
    let first = c.list_payments(page("")).await.unwrap().into_inner();
    let token = first.next_page_token.clone();
    assert!(!token.is_empty(), "{first:?}");
    // As issued, the token leads on to the next payment.
    let second = c.list_payments(page(&token)).await.unwrap().into_inner();
    assert_eq!(second.payments.len(), 1);
    assert_ne!(second.payments[0].payment_id, first.payments[0].payment_id);
    // Altered anywhere, cut, lengthened, or made up as a plain cursor: refused.
    let mut altered = Vec::new();
    for i in [0, token.len() / 2, token.len() - 1] {
        let mut t = token.clone().into_bytes();
        t[i] = if t[i] == b'0' { b'1' } else { b'0' };
        altered.push(String::from_utf8(t).unwrap());
    }
    altered.push(token[..token.len() - 1].to_string());
    altered.push(format!("{token}0"));
    let created = first.payments[0].created_at.unwrap();
    let millis = created.seconds * 1000 + i64::from(created.nanos) / 1_000_000;
    altered.push(format!("{millis}:{}", first.payments[0].payment_id));
    for t in altered {
        let status = c.list_payments(page(&t)).await.unwrap_err();
        check(&Case {
            name: "altered page token",
            status,
            code: Code::InvalidArgument,
            reason: "INVALID_FIELD",
            field: Some("page_token"),
        });
    }
    lane.finish();
}

#[tokio::test]
async fn a_refund_with_nothing_left_to_refund_is_a_precondition_failure() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let p = posd_e2e::final_payment(&lane.pay("k-refund-all", 1_000).await);
    let mut c = lane.client().await;
    let refund = |key: &str, amount_minor: i64| pb::RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: p.payment_id.clone(),
        amount_minor,
        reason: "returned".into(),
    };
    let all = c.refund_payment(refund("r-all", 0)).await.unwrap().into_inner();
    assert_eq!(all.status, pb::RefundStatus::Succeeded as i32, "{all:?}");
    assert_eq!(all.amount.as_ref().map(|m| m.amount_minor), Some(1_000), "0 refunds everything: {all:?}");
    // Fully refunded, "everything not yet refunded" is nothing: refused, not a refund of 0.
    let err = c.refund_payment(refund("r-nothing", 0)).await.expect_err("nothing is left to refund");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().len() < 1024, "{}", err.message());
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
