//! Amounts typed by people ("12.34") to integer minor units, by the
//! currency's ISO 4217 exponent. Never through floating point.

/// Minor-unit exponent of an ISO 4217 currency.
pub fn exponent(currency: &str) -> Result<u32, String> {
    pos_engine::money::exponent(currency).ok_or_else(|| format!("{currency:?} is not an ISO 4217 currency code"))
}

pub fn parse_amount(text: &str, currency: &str) -> Result<i64, String> {
    let exp = exponent(currency)?;
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("amount {text:?}: write it as digits with an optional decimal point, e.g. 12.34"));
    }
    if frac.len() > exp as usize {
        return Err(format!("amount {text:?}: {currency} has {exp} decimal places"));
    }
    if text.ends_with('.') {
        return Err(format!("amount {text:?}: digits must follow the decimal point"));
    }
    let scale = 10i64.pow(exp);
    let whole: i64 = whole.parse().map_err(|_| format!("amount {text:?} is too large"))?;
    let frac_val: i64 =
        if frac.is_empty() { 0 } else { frac.parse::<i64>().unwrap() * 10i64.pow(exp - frac.len() as u32) };
    let minor = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_val))
        .ok_or(format!("amount {text:?} is too large"))?;
    if minor == 0 {
        return Err("amount must be more than zero".into());
    }
    Ok(minor)
}

pub fn format_amount(minor: i64, currency: &str) -> String {
    pos_engine::money::format(minor, currency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_the_currency_exponent() {
        assert_eq!(parse_amount("12.34", "EUR"), Ok(1234));
        assert_eq!(parse_amount("12.3", "EUR"), Ok(1230));
        assert_eq!(parse_amount("12", "EUR"), Ok(1200));
        assert_eq!(parse_amount("1234", "JPY"), Ok(1234));
        assert!(parse_amount("12.5", "JPY").is_err());
        assert_eq!(parse_amount("1.234", "KWD"), Ok(1234));
        assert!(parse_amount("12.345", "EUR").is_err());
        assert!(parse_amount("12.34", "XYZ").is_err());
        for bad in ["", "-1", "1,00", "abc", "0", "0.00", "12.", ".5", "99999999999999999999"] {
            assert!(parse_amount(bad, "EUR").is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_by_the_currency_exponent() {
        assert_eq!(format_amount(1234, "EUR"), "12.34 EUR");
        assert_eq!(format_amount(5, "EUR"), "0.05 EUR");
        assert_eq!(format_amount(1234, "JPY"), "1234 JPY");
        assert_eq!(format_amount(1234, "KWD"), "1.234 KWD");
    }
}
