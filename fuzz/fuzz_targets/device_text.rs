//! Arbitrary bytes as a device's text (lossy UTF-8), through the one scrub
//! posd applies before it stores, logs, streams or prints any: no character
//! pos-mask calls unsafe (control characters, line separators, bidi and
//! zero-width ones) comes out, the length is bounded, no card-number-like
//! digit run (`PAN_MIN_DIGITS` or more digits, up to three spaces or hyphens
//! between groups: pos-mask's `digit_runs` oracle) remains, and a second
//! scrub changes nothing. The masked card numbers posd keeps follow the one
//! masking rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_mask::{
    PAN_MIN_DIGITS, SCRUB_LIMIT, digit_runs, is_unsafe_char, is_well_masked, luhn_valid, scrub, scrub_with_limit,
    well_masked,
};

fn check(text: &str, out: &str, limit: usize) {
    assert!(out.chars().count() <= limit, "{text:?} -> {out:?}: longer than {limit} characters");
    if let Some(c) = out.chars().find(|&c| is_unsafe_char(c)) {
        panic!("{text:?} -> {out:?}: {c:?} remains");
    }
    for run in digit_runs(out) {
        assert!(!(run.len() >= PAN_MIN_DIGITS && luhn_valid(&run)), "{text:?} -> {out:?}: card number {run} remains");
        assert!(run.len() < PAN_MIN_DIGITS, "{text:?} -> {out:?}: a run of {} digits remains", run.len());
    }
    assert_eq!(scrub_with_limit(out, limit), out, "{text:?}: a second scrub changed it");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text, &scrub(&text), SCRUB_LIMIT);
    // A small limit too, taken from the input, so cuts land everywhere.
    let limit = data.first().map_or(0, |&b| usize::from(b % 64));
    check(&text, &scrub_with_limit(&text, limit), limit);

    let masked = well_masked(&text);
    assert!(is_well_masked(&masked) || masked.chars().all(|c| c == '*'), "{text:?} -> {masked:?}");
    assert!(masked.chars().count() <= 19);
    assert_eq!(well_masked(&masked), masked);
});
