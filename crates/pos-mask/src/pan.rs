//! The one masking rule for card numbers (see the crate's documentation):
//! [`mask_pan`] for a card number posd or a simulator holds, [`well_masked`]
//! for one a device says it masked, and [`luhn_valid`] for leak scans and
//! the simulators.

use crate::text::scrub;

/// The fewest digits a card number has (ISO/IEC 7812): [`mask_pan`] shows
/// no digit of a shorter one, and [`scrub`] masks any run of this many
/// digits or more.
pub const PAN_MIN_DIGITS: usize = 13;

/// The most digits a card number has (ISO/IEC 7812).
const PAN_MAX_DIGITS: usize = 19;

/// First 6 and last 4 digits, the rest as `*`: the most any other party
/// may see of a card number. Characters other than ASCII digits are not
/// part of the number and are dropped; a number of fewer than
/// [`PAN_MIN_DIGITS`] digits shows none (one `*` per digit).
pub fn mask_pan(pan: &str) -> String {
    let digits: Vec<char> = pan.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < PAN_MIN_DIGITS {
        return "*".repeat(digits.len());
    }
    let n = digits.len();
    digits.iter().enumerate().map(|(i, &c)| if i < 6 || i >= n - 4 { c } else { '*' }).collect()
}

/// Luhn check of a digit string (used by leak scans and the simulators).
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = (b - b'0') as u32;
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A masked card number as [`mask_pan`] makes it: 13 to 19 characters, the
/// first 6 and the last 4 ASCII digits, ASCII `*` between.
pub fn is_well_masked(masked: &str) -> bool {
    let b = masked.as_bytes();
    let n = b.len();
    (PAN_MIN_DIGITS..=PAN_MAX_DIGITS).contains(&n)
        && b.iter().enumerate().all(|(i, &c)| if i < 6 || i >= n - 4 { c.is_ascii_digit() } else { c == b'*' })
}

/// A card number a device reports as masked (a reader's `masked_pan`, a
/// ZVT terminal's BMP 22), held to the one masking rule:
/// - kept when [`is_well_masked`];
/// - a whole card number sent unmasked (13 to 19 digits, bare or in groups
///   joined as [`scrub`] joins them, and nothing else) masked as [`scrub`]
///   masks it, with [`mask_pan`];
/// - anything else masked fully, one `*` per character (4 to 19 of them):
///   masked another way, middle digits shown, letters, fewer than 13 or
///   more than 19 digits, empty.
///
/// The result is [`is_well_masked`] or all `*`, at most 19 characters, and
/// passes through unchanged a second time.
pub fn well_masked(masked: &str) -> String {
    if is_well_masked(masked) {
        return masked.to_string();
    }
    let scrubbed = scrub(masked);
    if is_well_masked(&scrubbed) {
        return scrubbed;
    }
    "*".repeat(masked.chars().count().clamp(4, PAN_MAX_DIGITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_first_six_and_last_four() {
        assert_eq!(mask_pan("4242424242424242"), "424242******4242");
        assert_eq!(mask_pan("374245455400126"), "374245*****0126");
        assert_eq!(mask_pan("1234"), "****");
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4242424242424242"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn well_masked_numbers_follow_the_one_rule() {
        assert!(is_well_masked("424242******4242"));
        assert!(is_well_masked("374245*****0126"));
        assert!(is_well_masked("424242***4242"));
        assert!(is_well_masked("679999*********0018"));
        assert!(!is_well_masked("4242424242424242"), "not masked at all");
        assert!(!is_well_masked("4242424242******"), "middle digits shown");
        assert!(!is_well_masked("************4242"), "masked another way");
        assert!(!is_well_masked("424242**4242"), "too short for a card number");
        assert!(!is_well_masked("424242**********4242"), "too long for a card number");
        assert!(!is_well_masked("424242＊＊＊＊＊＊4242"), "only ASCII '*' masks");
        assert!(!is_well_masked(""));

        assert_eq!(well_masked("424242******4242"), "424242******4242");
        assert_eq!(well_masked("4242424242424242"), "424242******4242");
        assert_eq!(well_masked("6725904411001000014"), "672590*********0014");
        assert_eq!(well_masked("4242424242******"), "****************");
        assert_eq!(well_masked("garbage"), "*******");
        assert_eq!(well_masked("12345"), "*****");
        assert_eq!(well_masked(""), "****");
        assert_eq!(well_masked(&"4".repeat(40)), "*".repeat(19));
        for masked in ["4242424242424242", "4242424242******", "garbage", "12345", ""] {
            let once = well_masked(masked);
            assert_eq!(well_masked(&once), once, "{masked:?}");
        }
    }

    /// The inputs on which the maskers posd had before this crate (in
    /// pos-cardcrypt, the engine, the ZVT client and the lane's old scrub)
    /// gave different answers, each with the one answer now.
    #[test]
    fn the_cases_the_old_maskers_disagreed_on() {
        // Grouped by spaces or hyphens: `mask_pan` and `scrub` showed first 6 /
        // last 4, `well_masked` nothing, the lane's old scrub every digit.
        for grouped in ["4242 4242 4242 4242", "4242-4242-4242-4242", "4242\u{a0}4242\u{a0}4242\u{a0}4242"] {
            assert_eq!(mask_pan(grouped), "424242******4242", "{grouped:?}");
            assert_eq!(crate::scrub(grouped), "424242******4242", "{grouped:?}");
            assert_eq!(well_masked(grouped), "424242******4242", "{grouped:?}");
        }
        assert_eq!(well_masked("3782 822463 10005"), "378282*****0005");
        // Grouped farther apart than scrub joins: no digit shown.
        assert_eq!(well_masked("4242    4242    4242    4242"), "*".repeat(19));
        // A number with text around it is not a masked card number: no digit shown.
        assert_eq!(well_masked("PAN 4242424242424242"), "*".repeat(19));
        assert_eq!(well_masked("4242424242424242 "), "*".repeat(17));
        // Ten digits: the old ZVT masker showed all of them (first 6 + last 4).
        assert_eq!(well_masked("4242424242"), "**********");
        assert_eq!(mask_pan("4242424242"), "**********");
        // Masked another way: the old ZVT masker kept it, the others masked it fully.
        assert_eq!(well_masked("************4242"), "****************");
        assert_eq!(well_masked("XXXXXXXXXXXX4242"), "****************");
        // Middle digits shown: the old ZVT masker cut it to "424242**********",
        // the others masked it fully.
        assert_eq!(well_masked("4242424242******"), "****************");
        // More than 19 digits: not a card number; the old engine masker gave one
        // `*` per digit, unbounded. In free text `scrub` still shows first 6 /
        // last 4 of such a run (it may be a card number glued to other digits).
        assert_eq!(well_masked(&"4".repeat(20)), "*".repeat(19));
        assert_eq!(well_masked(&"4".repeat(40)), "*".repeat(19));
        assert_eq!(mask_pan(&"4".repeat(20)), format!("444444{}4444", "*".repeat(10)));
        // Non-ASCII digits are not digits, and only ASCII '*' masks.
        assert_eq!(well_masked("４２４２４２４２４２４２４２４２"), "*".repeat(16));
        assert_eq!(well_masked("424242＊＊＊＊＊＊4242"), "*".repeat(16));
        // Empty: `mask_pan` has no digit to show, `well_masked` says a number was masked.
        assert_eq!(mask_pan(""), "");
        assert_eq!(well_masked(""), "****");
        // Shorter than a card number: no digit, whichever masker.
        assert_eq!(mask_pan("123456789012"), "************");
        assert_eq!(well_masked("123456789012"), "************");
    }

    proptest::proptest! {
        #[test]
        fn a_masked_card_number_never_shows_more_than_first_six_and_last_four(
            text in "[0-9* \\-a-zX\u{a0}\n]{0,40}",
        ) {
            let masked = well_masked(&text);
            proptest::prop_assert!(is_well_masked(&masked) || masked.chars().all(|c| c == '*'), "{:?}", masked);
            proptest::prop_assert!((4..=19).contains(&masked.chars().count()) || is_well_masked(&masked));
            proptest::prop_assert_eq!(well_masked(&masked), masked.clone());
            if is_well_masked(&masked) && masked != text {
                // Re-masked: the digits shown are the first 6 and last 4 of the
                // digits the device sent.
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                proptest::prop_assert_eq!(mask_pan(&digits), masked);
            }
            let shown = mask_pan(&text);
            let digits = text.chars().filter(char::is_ascii_digit).count();
            proptest::prop_assert_eq!(shown.chars().count(), digits);
            proptest::prop_assert!(shown.chars().filter(char::is_ascii_digit).count() <= 10);
        }
    }
}
