//! Code page PC858 (CP850 with the euro sign at 0xD5), the Western European
//! code page of ESC/POS printers (`ESC t 19`).

/// The characters of bytes 0x80..=0xFF.
const HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', // 0x80
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', 'ø', '£', 'Ø', '×', 'ƒ', // 0x90
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '®', '¬', '½', '¼', '¡', '«', '»', // 0xA0
    '░', '▒', '▓', '│', '┤', 'Á', 'Â', 'À', '©', '╣', '║', '╗', '╝', '¢', '¥', '┐', // 0xB0
    '└', '┴', '┬', '├', '─', '┼', 'ã', 'Ã', '╚', '╔', '╩', '╦', '╠', '═', '╬', '¤', // 0xC0
    'ð', 'Ð', 'Ê', 'Ë', 'È', '€', 'Í', 'Î', 'Ï', '┘', '┌', '█', '▄', '¦', 'Ì', '▀', // 0xD0
    'Ó', 'ß', 'Ô', 'Ò', 'õ', 'Õ', 'µ', 'þ', 'Þ', 'Ú', 'Û', 'Ù', 'ý', 'Ý', '¯', '´', // 0xE0
    '\u{AD}', '±', '‗', '¾', '¶', '§', '÷', '¸', '°', '¨', '·', '¹', '³', '²', '■', '\u{A0}', // 0xF0
];

/// What a character PC858 cannot print becomes: visible, never dropped.
pub const FALLBACK: u8 = b'?';

/// The PC858 byte of `c`, if it has one. Control characters have none.
pub fn encode_char(c: char) -> Option<u8> {
    match c {
        ' '..='~' => Some(c as u8),
        _ => HIGH.iter().position(|&h| h == c).map(|i| 0x80 + i as u8),
    }
}

/// Encodes text for the printer. Characters PC858 lacks are first folded to
/// a close printable form where one is obvious (typographic quotes and
/// dashes, the ellipsis), otherwise printed as `?`. Returns the bytes and
/// how many characters fell back to `?`.
pub fn encode(text: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(text.len());
    let mut missing = 0;
    for c in text.chars() {
        if let Some(b) = encode_char(c) {
            out.push(b);
            continue;
        }
        let folded: &str = match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{2032}' => "'",
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => "\"",
            '\u{2010}'..='\u{2015}' | '\u{2212}' => "-",
            '\u{2026}' => "...",
            '\u{2022}' => "·",
            '\t' => " ",
            '\u{2007}' | '\u{2009}' | '\u{202F}' => " ",
            _ => "",
        };
        if folded.is_empty() {
            out.push(FALLBACK);
            missing += 1;
        } else {
            out.extend(folded.chars().filter_map(encode_char));
        }
    }
    (out, missing)
}

/// Decodes PC858 bytes (a printer simulator's view); controls become `?`.
pub fn decode_byte(b: u8) -> char {
    match b {
        0x20..=0x7e => b as char,
        0x80..=0xff => HIGH[(b - 0x80) as usize],
        _ => '?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn western_european_text_and_the_euro_sign_map_to_pc858() {
        let (bytes, missing) = encode("Müller Straße 5 € £ ñ Ç");
        assert_eq!(missing, 0);
        assert_eq!(bytes, b"M\x81ller Stra\xe1e 5 \xd5 \x9c \xa4 \x80");
    }

    #[test]
    fn unmappable_characters_are_visible_and_counted() {
        let (bytes, missing) = encode("Łódź 東京 “ok” – fine…");
        assert_eq!(missing, 4, "Ł, ź, 東, 京");
        assert_eq!(bytes, b"?\xa2d? ?? \"ok\" - fine...");
    }

    #[test]
    fn every_byte_of_the_table_roundtrips() {
        for b in 0x80..=0xffu8 {
            assert_eq!(encode_char(decode_byte(b)), Some(b), "byte {b:#04x}");
        }
        assert_eq!(HIGH.len(), 128);
    }
}
