//! The checks every request's input passes before posd uses it: string
//! fields bounded and free of control characters, business days, time
//! filters; bad input quoted short in the answer.

use pos_proto::terminal as pb;
use tonic::Status;

use super::errors::invalid;
use crate::convert;

/// The most characters posd takes in a free-text field of a request:
/// idempotency keys, order references, reasons, notes, ids, page tokens.
pub const TEXT_MAX: usize = 255;
/// The most characters of a currency field (ISO 4217 codes have 3; a few
/// more get the engine's own "not an ISO 4217 currency code").
const CURRENCY_MAX: usize = 8;
/// The most characters of bad input an error message quotes.
const QUOTED_CHARS: usize = 32;

/// Bad input as an error message shows it: quoted and escaped, at most
/// `QUOTED_CHARS` (32) characters of it, and the size of the whole when it is
/// longer (`"abc…"…(1048576 bytes)`), so a huge value never comes back as
/// huge trailers.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTED_CHARS) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &input[..cut], input.len()),
    }
}

/// A character no request text may hold: the one rule for text posd did not
/// write, [`pos_mask::is_unsafe_char`] (control characters, line and
/// paragraph separators, bidirectional controls, zero-width characters),
/// with which a value could forge or hide lines of posd's log, a payment's
/// history or a CSV export.
fn forbidden(c: char) -> bool {
    pos_mask::is_unsafe_char(c)
}

/// Checks one string field of a request before posd uses it (stores, logs
/// or echoes it): at most `max` characters, none of them `forbidden`.
/// Refused, the message quotes at most a short prefix of it. Every string
/// field of every request passes here first (`RequestText`).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    // A character takes at most 4 bytes: longer input is refused uncounted.
    if value.len() > max.saturating_mul(4) || value.chars().count() > max {
        return Err(invalid(field, format!("too long: at most {max} characters, not {}", quote(value))));
    }
    if let Some((at, c)) = value.chars().enumerate().find(|&(_, c)| forbidden(c)) {
        return Err(invalid(
            field,
            format!("holds a control character (U+{:04X} at character {}): {}", u32::from(c), at + 1, quote(value)),
        ));
    }
    Ok(())
}

/// The string fields of a request, each checked with [`text`] before the
/// request is used.
pub(super) trait RequestText {
    fn check_text(&self) -> Result<(), Status>;
}

impl RequestText for pb::TakePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("idempotency_key", &self.idempotency_key, TEXT_MAX)?;
        text("order_reference", &self.order_reference, TEXT_MAX)?;
        if let Some(amount) = &self.amount {
            text("amount.currency", &amount.currency, CURRENCY_MAX)?;
        }
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::GetPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::ListPaymentsRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)?;
        text("page_token", &self.page_token, TEXT_MAX)
    }
}

impl RequestText for pb::CancelPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::GetTerminalStatusRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::CapturePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::VoidPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("reason", &self.reason, TEXT_MAX)
    }
}

impl RequestText for pb::RefundPaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("idempotency_key", &self.idempotency_key, TEXT_MAX)?;
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("reason", &self.reason, TEXT_MAX)
    }
}

impl RequestText for pb::GetReportRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("business_day", &self.business_day, TEXT_MAX)?;
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::CloseBatchRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::PrintReceiptRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::OpenDrawerRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("terminal_id", &self.terminal_id, TEXT_MAX)
    }
}

impl RequestText for pb::RequeuePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)
    }
}

impl RequestText for pb::ResolveRefundRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("refund_id", &self.refund_id, TEXT_MAX)?;
        text("note", &self.note, TEXT_MAX)
    }
}

impl RequestText for pb::ResolvePaymentRequest {
    fn check_text(&self) -> Result<(), Status> {
        text("payment_id", &self.payment_id, TEXT_MAX)?;
        text("note", &self.note, TEXT_MAX)
    }
}

/// A business day as a request names it: strictly `YYYY-MM-DD`, a day of
/// the calendar, in the years reports cover (1970 to 9998). The message
/// says what is wrong.
pub fn parse_day(day: &str) -> Result<jiff::civil::Date, String> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return Err(format!("{} is not a date as YYYY-MM-DD", quote(day)));
    }
    let number = |r: std::ops::Range<usize>| b[r].iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
    let (year, month, d) = (number(0..4), number(5..7), number(8..10));
    let date = jiff::civil::Date::new(year, month as i8, d as i8)
        .map_err(|_| format!("{day:?} is not a day of the calendar (YYYY-MM-DD)"))?;
    if !(1970..=9998).contains(&year) {
        return Err(format!("{day:?} is out of range: reports cover the years 1970 to 9998"));
    }
    Ok(date)
}

/// Unix milliseconds of a time filter a request set; refused, naming the
/// field, when out of the range of `google.protobuf.Timestamp`.
pub(super) fn time_filter(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    t.map(|t| {
        convert::checked_millis(t).ok_or_else(|| {
            invalid(
                field,
                format!(
                    "seconds {} and nanos {} are not a time: seconds from 0001-01-01 to 9999-12-31 \
                     (-62135596800 to 253402300799), nanos from 0 to 999999999",
                    t.seconds, t.nanos
                ),
            )
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::errors::tests::{field, reason};

    #[test]
    fn bad_input_is_quoted_short() {
        assert_eq!(quote("EUR"), "\"EUR\"");
        assert_eq!(quote("a\nb\u{1b}"), "\"a\\nb\\u{1b}\"");
        let huge = "E".repeat(1 << 20);
        let q = quote(&huge);
        assert_eq!(q, format!("\"{}\"…(1048576 bytes)", "E".repeat(QUOTED_CHARS)));
        // Cut on a character, never inside one.
        let q = quote(&"é".repeat(100));
        assert!(q.starts_with(&format!("\"{}\"…", "é".repeat(QUOTED_CHARS))) && q.ends_with("(200 bytes)"), "{q}");
        assert_eq!(quote(&"x".repeat(QUOTED_CHARS)), format!("{:?}", "x".repeat(QUOTED_CHARS)));
    }

    #[test]
    fn request_text_is_bounded_and_free_of_control_characters() {
        assert!(text("reason", "", TEXT_MAX).is_ok());
        assert!(text("reason", &"r".repeat(TEXT_MAX), TEXT_MAX).is_ok());
        assert!(text("reason", &"é".repeat(TEXT_MAX), TEXT_MAX).is_ok(), "characters, not bytes");
        assert!(text("reason", "order canceled: Müller & Söhne, Straße 5 – ☕", TEXT_MAX).is_ok());
        for bad in [
            "r".repeat(TEXT_MAX + 1),
            "é".repeat(TEXT_MAX + 1),
            "r".repeat(1 << 20),
            "line\nforged".into(),
            "tab\there".into(),
            "\u{1b}[31mred".into(),
            "nul\0".into(),
            "del\u{7f}".into(),
            "c1\u{85}".into(),
            "sep\u{2028}".into(),
            "bidi\u{202e}txt.exe".into(),
        ] {
            let status = text("reason", &bad, TEXT_MAX).expect_err(&quote(&bad));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!((reason(&status), field(&status)), ("INVALID_FIELD".to_string(), "reason".to_string()));
            assert!(status.message().starts_with("reason: "), "{}", status.message());
            assert!(status.message().len() < 200, "{}", status.message());
            assert!(!status.message().contains(['\n', '\u{1b}', '\u{2028}', '\u{202e}']), "{:?}", status.message());
        }
    }

    #[test]
    fn every_string_field_of_every_request_is_checked() {
        let huge = || "x".repeat(1 << 20);
        let cases: Vec<(&str, Result<(), Status>)> = vec![
            ("idempotency_key", pb::TakePaymentRequest { idempotency_key: huge(), ..Default::default() }.check_text()),
            ("order_reference", pb::TakePaymentRequest { order_reference: huge(), ..Default::default() }.check_text()),
            (
                "amount.currency",
                pb::TakePaymentRequest {
                    amount: Some(pb::Money { amount_minor: 1, currency: huge() }),
                    ..Default::default()
                }
                .check_text(),
            ),
            ("terminal_id", pb::TakePaymentRequest { terminal_id: huge(), ..Default::default() }.check_text()),
            ("payment_id", pb::GetPaymentRequest { payment_id: huge() }.check_text()),
            ("terminal_id", pb::ListPaymentsRequest { terminal_id: huge(), ..Default::default() }.check_text()),
            ("page_token", pb::ListPaymentsRequest { page_token: huge(), ..Default::default() }.check_text()),
            ("payment_id", pb::CancelPaymentRequest { payment_id: huge() }.check_text()),
            ("terminal_id", pb::GetTerminalStatusRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::CapturePaymentRequest { payment_id: huge(), amount_minor: 0 }.check_text()),
            ("payment_id", pb::VoidPaymentRequest { payment_id: huge(), reason: String::new() }.check_text()),
            ("reason", pb::VoidPaymentRequest { payment_id: String::new(), reason: huge() }.check_text()),
            (
                "idempotency_key",
                pb::RefundPaymentRequest { idempotency_key: huge(), ..Default::default() }.check_text(),
            ),
            ("payment_id", pb::RefundPaymentRequest { payment_id: huge(), ..Default::default() }.check_text()),
            ("reason", pb::RefundPaymentRequest { reason: huge(), ..Default::default() }.check_text()),
            ("business_day", pb::GetReportRequest { business_day: huge(), terminal_id: String::new() }.check_text()),
            ("terminal_id", pb::GetReportRequest { business_day: String::new(), terminal_id: huge() }.check_text()),
            ("terminal_id", pb::CloseBatchRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::PrintReceiptRequest { payment_id: huge(), copy: 0 }.check_text()),
            ("terminal_id", pb::OpenDrawerRequest { terminal_id: huge() }.check_text()),
            ("payment_id", pb::RequeuePaymentRequest { payment_id: huge() }.check_text()),
            ("payment_id", pb::ResolvePaymentRequest { payment_id: huge(), ..Default::default() }.check_text()),
            ("note", pb::ResolvePaymentRequest { note: huge(), ..Default::default() }.check_text()),
        ];
        for (want, result) in cases {
            let status = result.expect_err(want);
            assert_eq!(field(&status), want);
            assert!(status.message().len() < 1024, "{want}: {} bytes", status.message().len());
        }
    }

    #[test]
    fn report_days_are_strictly_yyyy_mm_dd_days_in_range() {
        for ok in ["2026-11-25", "2024-02-29", "1970-01-01", "9998-12-31"] {
            assert_eq!(parse_day(ok).map(|d| d.to_string()), Ok(ok.to_string()));
        }
        for (bad, says) in [
            ("2026-13-45", "not a day of the calendar"),
            ("2026-02-30", "not a day of the calendar"),
            ("2026-00-10", "not a day of the calendar"),
            ("2025-02-29", "not a day of the calendar"),
            ("26.11.2026", "YYYY-MM-DD"),
            ("2026-1-05", "YYYY-MM-DD"),
            ("20261125", "YYYY-MM-DD"),
            ("+002026-11-25", "YYYY-MM-DD"),
            ("2026-11-25T00:00", "YYYY-MM-DD"),
            ("2026-11-2５", "YYYY-MM-DD"),
            (" 2026-11-2", "YYYY-MM-DD"),
            ("", "YYYY-MM-DD"),
            ("9999-12-31", "out of range"),
            ("9999-01-01", "out of range"),
            ("1969-12-31", "out of range"),
            ("0000-01-01", "out of range"),
        ] {
            let message = parse_day(bad).expect_err(bad);
            assert!(message.contains(says), "{bad}: {message}");
        }
        // Every day it takes has a span of time in any zone.
        for tz in ["UTC", "Europe/Berlin", "America/New_York"] {
            let settings = crate::report::ReportSettings::new(tz, "04:00").unwrap();
            for day in ["1970-01-01", "9998-12-31"] {
                assert!(settings.bounds(parse_day(day).unwrap()).is_ok(), "{tz} {day}");
            }
        }
    }

    #[test]
    fn time_filters_out_of_the_timestamp_range_are_refused_naming_the_field() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(time_filter("created_after", None).unwrap(), None);
        assert_eq!(
            time_filter("created_after", Some(&at(1_795_656_600, 123_456_789))).unwrap(),
            Some(1_795_656_600_123)
        );
        assert_eq!(time_filter("created_after", Some(&at(-62_135_596_800, 0))).unwrap(), Some(-62_135_596_800_000));
        assert_eq!(
            time_filter("created_after", Some(&at(253_402_300_799, 999_999_999))).unwrap(),
            Some(253_402_300_799_999)
        );
        for (field_name, t) in [
            ("created_after", at(i64::MAX, 0)),
            ("created_before", at(i64::MIN, 0)),
            ("created_after", at(253_402_300_800, 0)),
            ("created_before", at(-62_135_596_801, 0)),
            ("created_after", at(0, 1_000_000_000)),
            ("created_before", at(0, -1)),
            ("created_after", at(i64::MAX, 2_000_000_000)),
        ] {
            let status = time_filter(field_name, Some(&t)).expect_err(field_name);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(field(&status), field_name);
        }
    }
}
