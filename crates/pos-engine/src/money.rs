//! ISO 4217 currencies and their minor-unit exponents. Money is always an
//! integer count of minor units plus one of these codes; never a float.

/// Currencies with no minor unit.
const ZERO: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF",
    "XPF",
];
/// Currencies with three decimals.
const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
/// Currencies with four decimals.
const FOUR: &[&str] = &["CLF", "UYW"];
/// Currencies with two decimals (the active ISO 4217 list).
const TWO: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD", "BND",
    "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CUP", "CVE", "CZK",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON",
    "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD",
    "YER", "ZAR", "ZMW", "ZWG",
];

/// The largest amount posd accepts, in minor units (a guard against typos
/// and overflow, far above any lane's sale).
pub const MAX_AMOUNT_MINOR: i64 = 100_000_000_000;

/// An amount for people: "12.34 EUR", "1234 JPY", "1.234 KWD".
pub fn format(minor: i64, currency: &str) -> String {
    let exp = exponent(currency).unwrap_or(2);
    if exp == 0 {
        return format!("{minor} {currency}");
    }
    let scale = 10i64.pow(exp);
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:0width$} {currency}", m / scale as u64, m % scale as u64, width = exp as usize)
}

/// The number of decimals of an ISO 4217 currency, or `None` for an unknown code.
pub fn exponent(code: &str) -> Option<u32> {
    if TWO.contains(&code) {
        Some(2)
    } else if ZERO.contains(&code) {
        Some(0)
    } else if THREE.contains(&code) {
        Some(3)
    } else if FOUR.contains(&code) {
        Some(4)
    } else {
        None
    }
}

/// ISO 4217 numeric codes of the currencies payment terminals in Europe
/// and the larger markets use (ZVT sends currencies as numbers).
const NUMERIC: &[(&str, u16)] = &[
    ("AUD", 36),
    ("BGN", 975),
    ("BRL", 986),
    ("CAD", 124),
    ("CHF", 756),
    ("CNY", 156),
    ("CZK", 203),
    ("DKK", 208),
    ("EUR", 978),
    ("GBP", 826),
    ("HKD", 344),
    ("HUF", 348),
    ("ILS", 376),
    ("INR", 356),
    ("ISK", 352),
    ("JPY", 392),
    ("KRW", 410),
    ("KWD", 414),
    ("MXN", 484),
    ("NOK", 578),
    ("NZD", 554),
    ("PLN", 985),
    ("RON", 946),
    ("RSD", 941),
    ("SEK", 752),
    ("SGD", 702),
    ("TRY", 949),
    ("UAH", 980),
    ("USD", 840),
    ("ZAR", 710),
];

/// The ISO 4217 numeric code of a currency posd knows it for.
pub fn numeric(code: &str) -> Option<u16> {
    NUMERIC.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents() {
        assert_eq!(exponent("EUR"), Some(2));
        assert_eq!(exponent("JPY"), Some(0));
        assert_eq!(exponent("KWD"), Some(3));
        assert_eq!(exponent("eur"), None);
        assert_eq!(exponent("XXX"), None);
    }

    #[test]
    fn numeric_codes_belong_to_known_currencies() {
        assert_eq!(numeric("EUR"), Some(978));
        assert_eq!(numeric("CHF"), Some(756));
        for (code, n) in NUMERIC {
            assert!(exponent(code).is_some(), "{code}");
            assert!((1..1000).contains(n), "{code}");
        }
        assert_eq!(numeric("XXX"), None);
    }
}
