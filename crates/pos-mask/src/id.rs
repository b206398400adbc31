//! Crockford base32 (the ULID alphabet) for the ids posd and the gateway
//! make up, and its decoder for the ids posd reads back (page tokens).

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford base32 (the ULID alphabet), used for every id posd and the
/// gateway make up. Unlike hex, its output practically never holds a run of
/// 13 or more decimal digits, so card-number leak scans see no false alarms.
pub fn crockford32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The bytes [`crockford32`] made `text` of; `None` when a character is not
/// of its alphabet (upper case only, as [`crockford32`] writes it).
pub fn crockford32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crockford_matches_known_vectors() {
        assert_eq!(crockford32(&[]), "");
        assert_eq!(crockford32(&[0xFF]), "ZW");
        assert_eq!(crockford32(&[0; 16]), "00000000000000000000000000");
        assert_eq!(crockford32(b"f"), "CR");
        assert_eq!(crockford32(b"foobar"), "CSQPYRK1E8");
    }

    #[test]
    fn decoding_gives_back_the_bytes() {
        assert_eq!(crockford32_decode(&crockford32(b"hello, world")).unwrap(), b"hello, world");
        assert_eq!(crockford32_decode("CSQPYRK1E8").unwrap(), b"foobar");
        assert_eq!(crockford32_decode("").unwrap(), b"");
        assert_eq!(crockford32_decode("csqpyrk1e8"), None, "lower case is not what crockford32 writes");
        assert_eq!(crockford32_decode("CSQPYRK1EU"), None, "U is not in the alphabet");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(crockford32_decode(&crockford32(&bytes)), Some(bytes));
        }
    }
}
