//! ZVT text as Rust strings: 8-bit bytes, each read as the character of the
//! same number (Latin-1; a CP437 `ü`, 0x81, becomes U+0081). Shared by the
//! BMP accessors, Print Line and the receipt lines of a TLV container.

/// Bytes as text, each byte one character (ZVT text is 8-bit).
///
/// ASCII, nearly every receipt line, is already UTF-8: it is copied in one
/// go instead of pushed character by character.
pub fn latin1(b: &[u8]) -> String {
    if b.is_ascii() {
        return String::from_utf8(b.to_vec()).expect("ASCII is UTF-8");
    }
    let mut s = String::with_capacity(b.len() + b.iter().filter(|&&c| c >= 0x80).count());
    s.extend(b.iter().map(|&c| char::from(c)));
    s
}

/// `b` without the leading and trailing bytes whose character is whitespace:
/// `latin1(trim_latin1(b)) == latin1(b).trim()`, with one allocation.
pub(crate) fn trim_latin1(b: &[u8]) -> &[u8] {
    let text = |c: &u8| !char::from(*c).is_whitespace();
    let start = b.iter().position(text).unwrap_or(b.len());
    let end = b.iter().rposition(text).map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_the_character_of_its_number() {
        let all: Vec<u8> = (0..=255u8).collect();
        let expected: String = all.iter().map(|&c| char::from(c)).collect();
        assert_eq!(latin1(&all), expected);
        assert_eq!(latin1(b"Betrag EUR 25,00"), "Betrag EUR 25,00");
        assert_eq!(latin1(b"G\x81ltigkeit"), "G\u{81}ltigkeit");
        assert_eq!(latin1(b""), "");
    }

    #[test]
    fn trimming_bytes_is_trimming_the_text() {
        let cases: [&[u8]; 7] = [b"", b"   ", b" 750071 ", b"750071", b"\xA0x\x85", b"\t a b \r\n", b"\x00a\x00"];
        for b in cases {
            assert_eq!(latin1(trim_latin1(b)), latin1(b).trim(), "{b:02X?}");
        }
        let all: Vec<u8> = (0..=255u8).collect();
        for &c in &all {
            let b = [c, b'x', c];
            assert_eq!(latin1(trim_latin1(&b)), latin1(&b).trim(), "{c:02X}");
        }
    }
}
