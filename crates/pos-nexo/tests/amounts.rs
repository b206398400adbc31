//! nexo amounts are decimal numbers in major units; posd counts integer minor
//! units. The conversion is exact in both directions, by the currency's
//! ISO 4217 exponent, and refuses what it cannot represent.

use pos_nexo::Decimal;
use pos_nexo::amount::{AmountError, MAX_SCALE};
use pos_nexo::payment::{AmountsReq, AmountsResp};

fn minor(literal: &str, currency: &str) -> Result<i64, AmountError> {
    Decimal::parse(literal)?.to_minor(currency)
}

#[test]
fn literals_convert_to_minor_units_by_the_currencys_exponent() {
    let table: &[(&str, &str, i64)] = &[
        ("25.00", "EUR", 2500),
        ("25", "EUR", 2500),
        ("25.0", "EUR", 2500),
        ("25.000000", "EUR", 2500),
        ("12.5", "EUR", 1250),
        ("0.01", "EUR", 1),
        ("0.10", "USD", 10),
        ("0", "EUR", 0),
        ("0.00", "EUR", 0),
        ("4.35", "EUR", 435),
        ("1.15", "GBP", 115),
        ("1234", "JPY", 1234),
        ("1234.000", "JPY", 1234),
        ("5000", "KRW", 5000),
        ("990", "ISK", 990),
        ("1500", "CLP", 1500),
        ("20000", "VND", 20000),
        ("1.234", "KWD", 1234),
        ("1.2", "BHD", 1200),
        ("0.001", "TND", 1),
        ("7", "OMR", 7000),
        ("3.5", "JOD", 3500),
        ("0.0001", "CLF", 1),
        ("92233720368547758.07", "EUR", i64::MAX),
        (" 25.00\n", "EUR", 2500),
    ];
    for &(literal, currency, expected) in table {
        assert_eq!(minor(literal, currency), Ok(expected), "{literal} {currency}");
    }
}

#[test]
fn what_cannot_be_represented_exactly_is_refused() {
    let excess = |currency: &str, exponent: u32, decimals: u32| AmountError::ExcessPrecision {
        currency: currency.to_owned(),
        exponent,
        decimals,
    };
    let table: &[(&str, &str, AmountError)] = &[
        ("1.005", "EUR", excess("EUR", 2, 3)),
        ("0.001", "EUR", excess("EUR", 2, 3)),
        ("1.5", "JPY", excess("JPY", 0, 1)),
        ("0.0001", "KWD", excess("KWD", 3, 4)),
        ("-1", "EUR", AmountError::Negative),
        ("-0", "EUR", AmountError::Negative),
        ("-0.00", "EUR", AmountError::Negative),
        ("1e2", "EUR", AmountError::Exponent),
        ("1E2", "EUR", AmountError::Exponent),
        ("2.5e-1", "EUR", AmountError::Exponent),
        ("92233720368547758.08", "EUR", AmountError::TooLarge),
        ("18446744073709551616", "JPY", AmountError::TooLarge),
        ("9223372036854775808", "JPY", AmountError::TooLarge),
        ("25.00", "XXX", AmountError::UnknownCurrency("XXX".into())),
        ("25.00", "eur", AmountError::UnknownCurrency("eur".into())),
        ("25.00", "", AmountError::UnknownCurrency(String::new())),
        ("0.0000000000000000001", "EUR", AmountError::TooPrecise),
    ];
    for (literal, currency, expected) in table {
        assert_eq!(minor(literal, currency).as_ref(), Err(expected), "{literal} {currency}");
    }
    for not_a_number in [
        "",
        " ",
        "\"25.00\"",
        "NaN",
        "Infinity",
        "01",
        "00.5",
        ".5",
        "5.",
        "+5",
        "1.2.3",
        "1,50",
        "0x10",
        "null",
        "true",
    ] {
        assert!(
            matches!(Decimal::parse(not_a_number), Err(AmountError::NotANumber(_))),
            "{not_a_number:?}: {:?}",
            Decimal::parse(not_a_number)
        );
    }
    assert_eq!(MAX_SCALE, 18);
}

#[test]
fn minor_units_are_written_as_the_shortest_exact_literal() {
    let table: &[(i64, &str, &str)] = &[
        (2500, "EUR", "25"),
        (2550, "EUR", "25.5"),
        (2555, "EUR", "25.55"),
        (1, "EUR", "0.01"),
        (10, "EUR", "0.1"),
        (0, "EUR", "0"),
        (1234, "JPY", "1234"),
        (1234, "KWD", "1.234"),
        (1000, "KWD", "1"),
        (1, "BHD", "0.001"),
        (i64::MAX, "EUR", "92233720368547758.07"),
    ];
    for &(minor_units, currency, literal) in table {
        let decimal = Decimal::from_minor(minor_units, currency).unwrap();
        assert_eq!(decimal.to_string(), literal);
        assert_eq!(serde_json::to_string(&decimal).unwrap(), literal);
        assert_eq!(decimal.to_minor(currency), Ok(minor_units));
    }
    assert_eq!(Decimal::from_minor(-1, "EUR"), Err(AmountError::Negative));
    assert_eq!(Decimal::from_minor(1, "XXX"), Err(AmountError::UnknownCurrency("XXX".into())));
}

#[test]
fn every_amount_survives_the_trip_through_json_in_every_exponent() {
    for currency in ["JPY", "EUR", "KWD", "CLF"] {
        let values = (0..20_000).chain([99_999, 100_000, 123_456_789, 100_000_000_000, i64::MAX / 10, i64::MAX]);
        for minor_units in values {
            let request = AmountsReq::new(currency, minor_units).unwrap();
            let text = serde_json::to_string(&request).unwrap();
            let back: AmountsReq = serde_json::from_str(&text).unwrap();
            assert_eq!(back, request, "{text}");
            assert_eq!(back.requested_amount.unwrap().to_minor(currency), Ok(minor_units), "{text}");
        }
    }
}

#[test]
fn equal_amounts_compare_equal_whatever_their_trailing_zeros() {
    assert_eq!(Decimal::parse("25.00").unwrap(), Decimal::parse("25").unwrap());
    assert_eq!(Decimal::parse("0.50").unwrap(), Decimal::from_minor(50, "EUR").unwrap());
    assert_eq!(Decimal::parse("0").unwrap(), Decimal::ZERO);
    assert!(Decimal::parse("0.000").unwrap().is_zero());
    assert_ne!(Decimal::parse("0.5").unwrap(), Decimal::parse("5").unwrap());
}

#[test]
fn json_numbers_are_read_from_their_digits_not_through_a_float() {
    // Each of these is a classic binary floating point trap (x * 100 is not an integer).
    for (literal, expected) in [("0.1", 10), ("1.15", 115), ("4.35", 435), ("8.2", 820), ("1.005", -1)] {
        let text = format!(r#"{{"Currency":"EUR","AuthorizedAmount":{literal}}}"#);
        let resp: AmountsResp = serde_json::from_str(&text).unwrap();
        let converted = resp.authorized_amount.unwrap().to_minor("EUR");
        if expected < 0 {
            assert!(converted.is_err(), "{literal}");
        } else {
            assert_eq!(converted, Ok(expected), "{literal}");
        }
    }
    // A number with more digits than an f64 holds is still exact.
    let text = r#"{"Currency":"EUR","AuthorizedAmount":90071992547409.93}"#;
    let resp: AmountsResp = serde_json::from_str(text).unwrap();
    assert_eq!(resp.authorized_amount.unwrap().to_minor("EUR"), Ok(9_007_199_254_740_993));
    assert_eq!(serde_json::to_string(&resp).unwrap(), text);
    // Written amounts are JSON numbers, never strings.
    let request = AmountsReq::new("EUR", 1999).unwrap();
    assert_eq!(serde_json::to_string(&request).unwrap(), r#"{"Currency":"EUR","RequestedAmount":19.99}"#);
    for bad in [r#"{"Currency":"EUR","AuthorizedAmount":"19.99"}"#, r#"{"Currency":"EUR","AuthorizedAmount":-19.99}"#] {
        assert!(serde_json::from_str::<AmountsResp>(bad).is_err(), "{bad}");
    }
}
