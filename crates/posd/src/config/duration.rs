//! The one duration grammar of `posd.toml`: jiff's "friendly" format
//! (`500ms`, `30s`, `15 s`, `15m`, `2h30m`, `1.5h`, `30d`, `10 minutes`),
//! in units from nanoseconds up to days (a day is 24 hours), never
//! negative; and how messages write a duration back ([`show`]).
//!
//! Zero is read like any other duration: whether a setting may be zero is
//! a rule of [`Config::problems`](super::Config::problems), which points
//! at the setting.

use std::time::Duration;

use jiff::fmt::friendly::SpanParser;
use serde::Deserialize;

/// A duration written as `500ms`, `30s`, `15m`, `12h` or `30d` (any of
/// jiff's friendly spellings up to days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_span(&text).map(Span).map_err(serde::de::Error::custom)
    }
}

/// The units a duration may be written in, for messages.
const UNITS: &str = "ms, s, m, h or d (or written out: milliseconds, seconds, minutes, hours, days)";

/// Reads a duration in jiff's friendly format, e.g. `500ms`, `30s`, `15 s`,
/// `2h30m`, `1.5h` or `30d`; refuses a negative one, a bare number (its
/// unit would be a guess) and weeks, months or years.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    static PARSER: SpanParser = SpanParser::new();
    let negative = || format!("{text:?} is negative: a duration is a count of 0 or more and a unit, e.g. 30s");
    let not_a_duration =
        || format!("{text:?} is not a duration: write e.g. 500ms, 30s, 15m, 12h or 30d; the unit is one of {UNITS}");
    let t = text.trim();
    if t.starts_with('-') {
        return Err(negative());
    }
    if t.chars().any(|c| c.is_ascii_digit()) && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{text:?} has no unit: write e.g. \"{t}s\"; the unit is one of {UNITS}"));
    }
    let span = PARSER.parse_span(t).map_err(|_| not_a_duration())?;
    if span.is_negative() {
        return Err(negative());
    }
    if span.get_years() != 0 || span.get_months() != 0 || span.get_weeks() != 0 {
        return Err(format!(
            "{text:?}: weeks, months and years are not taken (a month has no fixed length); give days or less, \
             e.g. 30d"
        ));
    }
    let signed = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(|_| not_a_duration())?;
    Duration::try_from(signed).map_err(|_| not_a_duration())
}

/// A duration as the file writes it: 0s, 500ms, 30s, 15m, 12h, 2d (in the
/// largest unit that holds it whole; below a millisecond, as jiff writes it).
pub(super) fn show(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return match jiff::SignedDuration::try_from(d) {
            Ok(s) => format!("{s:#}"),
            Err(_) => format!("{d:?}"),
        };
    }
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
