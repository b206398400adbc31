//! Arbitrary bytes as a device's text (lossy UTF-8), through the one scrub
//! posd applies before it stores, logs, streams or prints any: no control
//! character or line separator comes out, the length is bounded, no
//! card-number-like digit run (13 or more digits, up to three spaces or
//! hyphens between groups) remains, and a second scrub changes nothing. The masked
//! card numbers posd keeps follow the one masking rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_mask::{SCRUB_LIMIT, is_well_masked, luhn_valid, scrub, scrub_with_limit, well_masked};

/// Every maximal run of ASCII digits joined by up to three spaces or
/// hyphens, as digits (an oracle written apart from the scrub).
fn digit_runs(text: &str) -> Vec<String> {
    let spaced: String = text.chars().map(|c| if c == '-' { ' ' } else { c }).collect();
    let mut runs: Vec<String> = Vec::new();
    let mut gap = usize::MAX;
    for c in spaced.chars() {
        match c {
            '0'..='9' if gap <= 3 && !runs.is_empty() => runs.last_mut().unwrap().push(c),
            '0'..='9' => runs.push(c.to_string()),
            ' ' if gap < usize::MAX => gap += 1,
            _ => gap = usize::MAX,
        }
        if c.is_ascii_digit() {
            gap = 0;
        }
    }
    runs
}

fn check(text: &str, out: &str, limit: usize) {
    assert!(out.chars().count() <= limit, "{text:?} -> {out:?}: longer than {limit} characters");
    for c in out.chars() {
        assert!(
            !c.is_control()
                && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
            "{text:?} -> {out:?}: {c:?} remains"
        );
    }
    for run in digit_runs(out) {
        assert!(!(run.len() >= 13 && luhn_valid(&run)), "{text:?} -> {out:?}: card number {run} remains");
        assert!(run.len() < 13, "{text:?} -> {out:?}: a run of {} digits remains", run.len());
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
