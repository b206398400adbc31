//! Device text made safe: [`scrub`] and [`scrub_with_limit`], the one way
//! text from a device (reader, payment terminal, printer, gateway) is made
//! safe to store, log, stream or print: unsafe characters become spaces,
//! card numbers are masked by the one rule ([`mask_pan`]), the length is
//! bounded.

use crate::pan::{PAN_MIN_DIGITS, mask_pan};

/// How many characters [`scrub`] keeps of a text: more than any display
/// line, receipt line, decline reason or error message a device has reason
/// to send, few enough that one message cannot flood a log line, a database
/// row or the register's stream. A longer text is cut to this many
/// characters in all, the last of them [`CUT_MARKER`].
pub const SCRUB_LIMIT: usize = 256;

/// Ends a text [`scrub`] had to cut.
pub const CUT_MARKER: char = '…';

/// Characters [`scrub`] replaces with a space: control characters (C0 with
/// newline, CR, tab and the ESC of ANSI sequences; DEL; C1), the Unicode
/// line and paragraph separators, bidirectional overrides, embeddings,
/// isolates and marks, and zero-width characters. Any of them could end a
/// log line, forge the next one, reorder what a reader sees, or hide a card
/// number from masking and leak scans.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{200E}' | '\u{200F}' | '\u{061C}' // bidi marks
            | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' // zero-width characters
        )
}

/// How many separators in a row may stand between two digit groups of one
/// card number for [`scrub`] ("4111  1111", a CR LF turned into spaces).
pub const MAX_SEPARATORS: usize = 3;

/// Characters that may stand between the digit groups of one card
/// number ("4242 4242 4242 4242", "4242-4242-4242-4242"): space, hyphen,
/// and their Unicode look-alikes (no-break and figure spaces, Unicode
/// hyphens and dashes).
pub fn is_digit_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '\u{00A0}' | '\u{2007}' | '\u{202F}' | '\u{2010}'..='\u{2015}')
}

/// Text from a device, made safe to store, log (tracing fields included),
/// stream to the register or print. The one function every reader message,
/// payment-terminal text, printer text and gateway error or decline text
/// goes through; [`scrub_with_limit`] with [`SCRUB_LIMIT`].
pub fn scrub(text: &str) -> String {
    scrub_with_limit(text, SCRUB_LIMIT)
}

/// [`scrub`], keeping at most `limit` characters:
///
/// 1. every character [`is_unsafe_char`] names becomes a space, so no text
///    can end a log line or forge another one;
/// 2. every run of [`PAN_MIN_DIGITS`] or more ASCII digits, counted across
///    up to [`MAX_SEPARATORS`] separators between digit groups (spaces,
///    hyphens, see [`is_digit_separator`], and the spaces of step 1), is
///    replaced by [`mask_pan`] of its digits:
///    first 6 and last 4 digits, `*` between, separators dropped. Shorter
///    runs (amounts, trace and receipt numbers, dates, 8-digit terminal ids)
///    stay as they are;
/// 3. a text longer than `limit` characters is cut to `limit - 1` of them
///    followed by [`CUT_MARKER`].
///
/// Masking comes before cutting, so a cut never leaves a card number's
/// first digits unmasked. The result passes through unchanged a second
/// time.
pub fn scrub_with_limit(text: &str, limit: usize) -> String {
    let chars: Vec<char> = text.chars().map(|c| if is_unsafe_char(c) { ' ' } else { c }).collect();
    let mut out = String::with_capacity(text.len().min(limit.saturating_mul(4)));
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A run: digit groups joined by single separators.
        let start = i;
        let mut digits = String::new();
        let end = loop {
            while i < chars.len() && chars[i].is_ascii_digit() {
                digits.push(chars[i]);
                i += 1;
            }
            // Up to MAX_SEPARATORS separators (a line break became a space
            // above, so "4111\r\n1111" is two) join the next digit group.
            let gap = chars[i..].iter().take(MAX_SEPARATORS + 1).take_while(|c| is_digit_separator(**c)).count();
            let joined = (1..=MAX_SEPARATORS).contains(&gap) && chars.get(i + gap).is_some_and(char::is_ascii_digit);
            if !joined {
                break i;
            }
            i += gap;
        };
        if digits.len() >= PAN_MIN_DIGITS {
            out.push_str(&mask_pan(&digits));
        } else {
            out.extend(&chars[start..end]);
        }
    }
    if out.chars().count() <= limit {
        return out;
    }
    let mut cut: String = out.chars().take(limit.saturating_sub(1)).collect();
    if limit > 0 {
        cut.push(CUT_MARKER);
    }
    cut
}

/// Every maximal run of ASCII digits joined by up to [`MAX_SEPARATORS`]
/// spaces or hyphens, as its digits: the oracle the tests and the fuzz
/// target check [`scrub`]'s output against (no run of [`PAN_MIN_DIGITS`] or
/// more digits may remain), written apart from it. For tests only.
#[doc(hidden)]
pub fn digit_runs(text: &str) -> Vec<String> {
    let spaced: String = text.chars().map(|c| if c == '-' { ' ' } else { c }).collect();
    let mut runs: Vec<String> = Vec::new();
    let mut gap = usize::MAX;
    for c in spaced.chars() {
        match c {
            '0'..='9' if gap <= MAX_SEPARATORS && !runs.is_empty() => runs.last_mut().unwrap().push(c),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;
    use crate::pan::luhn_valid;

    #[test]
    fn scrub_masks_card_numbers_by_the_one_rule() {
        assert_eq!(scrub("PAN 4242424242424242 ok"), "PAN 424242******4242 ok");
        assert_eq!(scrub("card 4242 4242 4242 4242."), "card 424242******4242.");
        assert_eq!(scrub("4242-4242-4242-4242"), "424242******4242");
        assert_eq!(scrub("amex 3782 822463 10005"), "amex 378282*****0005");
        assert_eq!(scrub("6799998900000060018"), "679999*********0018");
        assert_eq!(scrub("4242\u{a0}4242\u{a0}4242\u{a0}4242"), "424242******4242");
        // Not only Luhn-valid numbers, and longer runs too.
        assert_eq!(scrub("1234567890123"), "123456***0123");
        assert_eq!(scrub(&"9".repeat(25)), format!("999999{}9999", "*".repeat(15)));
        // Glued to letters, or split by a newline, a tab or an invisible character.
        assert_eq!(scrub("PAN4242424242424242X"), "PAN424242******4242X");
        assert_eq!(scrub("4242424242\n424242"), "424242******4242");
        assert_eq!(scrub("4242\t4242\t4242\t4242"), "424242******4242");
        assert_eq!(scrub("4242\u{200b}4242\u{200b}4242\u{200b}4242"), "424242******4242");
        // What is already masked stays as it is.
        assert_eq!(scrub("card 424242******4242"), "card 424242******4242");
    }

    #[test]
    fn scrub_leaves_short_numbers_alone() {
        for text in [
            "Amount 12.34 EUR, trace 123456, receipt 0001",
            "Terminal-ID 52523535",
            "2026-01-01T12:00:00Z",
            "date 2026-01-01 time 12:00",
            "call 0800 123 4567",
            "123456789012",
            // Four separators part groups (three join them: see the line-break test).
            "4242    4242    4242    4242",
            "4242 -4242",
            "Zahlung erfolgt — Karte ✓ 10,00 €",
            "",
        ] {
            assert_eq!(scrub(text), text);
        }
    }

    #[test]
    fn scrub_replaces_what_could_forge_a_log_line() {
        let forged = "collect failed\n2026-01-01T00:00:00Z  INFO posd: payment approved";
        assert_eq!(scrub(forged), "collect failed 2026-01-01T00:00:00Z  INFO posd: payment approved");
        assert_eq!(scrub("a\r\nb"), "a  b");
        assert_eq!(scrub("\x1b[31mred\x1b[0m"), " [31mred [0m");
        assert_eq!(scrub("del\x7f nul\0 c1\u{85}\u{9b}"), "del  nul  c1  ");
        assert_eq!(scrub("l\u{2028}p\u{2029}"), "l p ");
        assert_eq!(scrub("\u{202e}txt.exe\u{202c} \u{2066}x\u{2069} \u{200f}"), " txt.exe   x   ");
        for c in ('\0'..='\u{10ffff}').filter(|&c| is_unsafe_char(c)) {
            let out = scrub(&format!("a{c}b"));
            assert_eq!(out, "a b", "{:?}", c);
        }
    }

    #[test]
    fn scrub_bounds_the_length() {
        assert_eq!(SCRUB_LIMIT, 256);
        let exact = "a".repeat(SCRUB_LIMIT);
        assert_eq!(scrub(&exact), exact);
        let long = scrub(&"é".repeat(10_000));
        assert_eq!(long.chars().count(), SCRUB_LIMIT);
        assert!(long.ends_with(CUT_MARKER));
        assert_eq!(long.chars().filter(|&c| c == 'é').count(), SCRUB_LIMIT - 1);
        assert_eq!(scrub_with_limit("abcdef", 4), "abc…");
        assert_eq!(scrub_with_limit("abcdef", 1), "…");
        assert_eq!(scrub_with_limit("abcdef", 0), "");
        assert_eq!(scrub_with_limit("abc", 3), "abc");
        // Masked before it is cut: a cut never shows more of a card number.
        let text = format!("{} 4242424242424242 and more", "x".repeat(SCRUB_LIMIT - 12));
        let out = scrub(&text);
        assert_eq!(out.chars().count(), SCRUB_LIMIT);
        assert!(out.ends_with(" 424242****…"), "{out}");
        assert_eq!(scrub_with_limit("4242424242424242", 10), "424242***…");
    }

    #[test]
    fn a_card_number_split_by_line_breaks_is_still_masked() {
        assert_eq!(scrub("4111\r\n1111\r\n1111\r\n1111"), "411111******1111");
        assert_eq!(scrub("PAN 4111 - 1111 - 1111 - 1111 ok"), "PAN 411111******1111 ok");
        // Four separators and more part the groups: amounts and dates stay.
        assert_eq!(scrub("12.34    2026-12-07    0815"), "12.34    2026-12-07    0815");
    }

    /// A Luhn-valid card number of 13 to 19 digits.
    fn card_number() -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..10, 12..19).prop_map(|digits| {
            let mut pan: String = digits.into_iter().map(|d| char::from(b'0' + d)).collect();
            let check = (b'0'..=b'9').map(char::from).find(|&d| luhn_valid(&format!("{pan}{d}"))).unwrap();
            pan.push(check);
            pan
        })
    }

    /// One piece of device text as an attacker or a broken device might send it.
    fn piece() -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "a", "Z", "é", "€", "—", "…", "*", " ", "  ", "-", "--", ".", ":", "\n", "\r\n", "\t", "\x1b[2J", "\x7f",
            "\0", "\u{85}", "\u{9b}", "\u{2028}", "\u{2029}", "\u{202e}", "\u{2067}", "\u{200b}", "\u{feff}", "\u{a0}",
            "\u{2011}", "12.34", "123456",
        ];
        const SEPARATORS: &[&str] = &["", " ", "-", "\n", "\t", "\u{a0}", "\u{200b}", "  "];
        prop_oneof![
            // A card number, maybe grouped by a separator.
            4 => (card_number(), select(SEPARATORS), 3usize..7).prop_map(|(pan, separator, group)| {
                let groups: Vec<&str> = pan.as_bytes().chunks(group).map(|c| std::str::from_utf8(c).unwrap()).collect();
                groups.join(separator)
            }),
            8 => "[0-9]{1,8}",
            4 => (0u32..0x3000).prop_map(|c| char::from_u32(c).unwrap_or('?').to_string()),
            1 => Just("\n2026-01-01T00:00:00Z INFO forged".to_string()),
            7 => select(PIECES).prop_map(str::to_string),
        ]
    }

    /// Device text: up to 40 pieces, now and then repeated many times.
    fn device_text() -> impl Strategy<Value = String> {
        let pieces = proptest::collection::vec(piece(), 0..40);
        let times = prop_oneof![19 => Just(1usize), 1 => 1usize..41];
        (pieces, times).prop_map(|(pieces, times)| pieces.concat().repeat(times))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn scrubbed_text_never_holds_a_card_number_a_line_break_or_too_much(
            text in device_text(),
            limit in prop_oneof![3 => Just(SCRUB_LIMIT), 1 => 0usize..40],
        ) {
            let out = scrub_with_limit(&text, limit);
            assert!(out.chars().count() <= limit, "{text:?} -> {out:?}: longer than {limit}");
            assert!(!out.chars().any(is_unsafe_char), "{text:?} -> {out:?}: an unsafe character remains");
            assert!(!out.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'));
            for run in digit_runs(&out) {
                assert!(!(run.len() >= PAN_MIN_DIGITS && luhn_valid(&run)), "{text:?} -> {out:?}: card number {run}");
                assert!(run.len() < PAN_MIN_DIGITS, "{text:?} -> {out:?}: a digit run of {}", run.len());
            }
            assert_eq!(scrub_with_limit(&out, limit), out, "{text:?}: a second scrub changed it");
            if text.chars().count() <= limit && !text.chars().any(is_unsafe_char) && digit_runs(&text).is_empty() {
                assert_eq!(out, text);
            }
        }
    }
}
