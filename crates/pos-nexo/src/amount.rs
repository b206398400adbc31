//! nexo amounts: JSON decimal numbers in major units (`25.00`, `12.5`),
//! converted exactly to and from posd's integer minor units by the
//! currency's ISO 4217 exponent (`pos_engine::money`, the one table).
//!
//! No float is ever involved: a [`Decimal`] is read from the literal digits
//! of the JSON number (serde_json's `RawValue`) and written back as a decimal
//! literal. Negative numbers, exponents (`1e2`), strings and anything with
//! more fraction digits than the currency has (unless they are zeros) are
//! refused.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The most fraction digits a [`Decimal`] keeps (after dropping trailing
/// zeros); more than any currency has.
pub const MAX_SCALE: u32 = 18;

/// Why an amount cannot be read or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("an amount must be a plain decimal number, not {0:?}")]
    NotANumber(String),
    #[error("an amount must not be negative")]
    Negative,
    #[error("an amount must be written without an exponent")]
    Exponent,
    #[error("the amount has more digits than fit")]
    TooLarge,
    #[error("the amount has more than {MAX_SCALE} decimals")]
    TooPrecise,
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    #[error("{currency} has {exponent} decimals; the amount has {decimals}")]
    ExcessPrecision { currency: String, exponent: u32, decimals: u32 },
}

/// A non-negative decimal number as nexo writes amounts: `units / 10^scale`,
/// with no trailing zero in the fraction (`25.00` is kept as 25, scale 0), so
/// equal amounts compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    units: u64,
    scale: u32,
}

impl Decimal {
    /// Zero.
    pub const ZERO: Decimal = Decimal { units: 0, scale: 0 };

    /// Reads a JSON number literal: digits, optionally a point and more
    /// digits (`0`, `25`, `25.00`, `0.5`). Surrounding ASCII white space is
    /// ignored.
    pub fn parse(literal: &str) -> Result<Decimal, AmountError> {
        let text = literal.trim_ascii();
        if text.starts_with('-') {
            return Err(AmountError::Negative);
        }
        if text.contains(['e', 'E']) && text.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return Err(AmountError::Exponent);
        }
        let not_a_number = || AmountError::NotANumber(text.chars().take(32).collect());
        let (int, frac) = match text.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (text, None),
        };
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        // JSON's grammar: no leading zero but in "0", no bare point.
        if !digits_only(int) || (int.len() > 1 && int.starts_with('0')) || frac.is_some_and(|f| !digits_only(f)) {
            return Err(not_a_number());
        }
        let frac = frac.unwrap_or("").trim_end_matches('0');
        let scale = u32::try_from(frac.len()).map_err(|_| AmountError::TooPrecise)?;
        if scale > MAX_SCALE {
            return Err(AmountError::TooPrecise);
        }
        let mut units: u64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            units =
                units.checked_mul(10).and_then(|u| u.checked_add(u64::from(b - b'0'))).ok_or(AmountError::TooLarge)?;
        }
        Ok(Decimal { units, scale })
    }

    /// The amount of `minor` units of `currency` (2500 EUR → 25).
    pub fn from_minor(minor: i64, currency: &str) -> Result<Decimal, AmountError> {
        let exponent = exponent(currency)?;
        let mut units = u64::try_from(minor).map_err(|_| AmountError::Negative)?;
        let mut scale = exponent;
        while scale > 0 && units.is_multiple_of(10) {
            units /= 10;
            scale -= 1;
        }
        Ok(Decimal { units, scale })
    }

    /// The amount in minor units of `currency` (25.5 EUR → 2550); refused
    /// if it has more decimals than the currency, or does not fit an `i64`.
    pub fn to_minor(self, currency: &str) -> Result<i64, AmountError> {
        let exponent = exponent(currency)?;
        if self.scale > exponent {
            return Err(AmountError::ExcessPrecision { currency: currency.to_owned(), exponent, decimals: self.scale });
        }
        let minor = self.units.checked_mul(10u64.pow(exponent - self.scale)).ok_or(AmountError::TooLarge)?;
        i64::try_from(minor).map_err(|_| AmountError::TooLarge)
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.units == 0
    }
}

/// The exponent of an ISO 4217 currency, or an error naming it.
pub fn exponent(currency: &str) -> Result<u32, AmountError> {
    pos_engine::money::exponent(currency).ok_or_else(|| AmountError::UnknownCurrency(currency.to_owned()))
}

/// The shortest exact literal: `25`, `12.5`, `0.05`, as the reference
/// library writes the same numbers.
impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.units);
        }
        let divisor = 10u64.pow(self.scale);
        write!(f, "{}.{:0width$}", self.units / divisor, self.units % divisor, width = self.scale as usize)
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({self})")
    }
}

impl std::str::FromStr for Decimal {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_string()).map_err(<S::Error as serde::ser::Error>::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Decimal::parse(raw.get()).map_err(<D::Error as serde::de::Error>::custom)
    }
}
