//! Crockford base32 (the ULID alphabet) for the ids posd and the gateway
//! make up, and its decoder for the ids posd reads back (page tokens), both
//! by the `data-encoding` crate.

use std::sync::LazyLock;

use data_encoding::{BitOrder, Encoding, Specification};

/// Crockford's alphabet: the digits, then the upper case letters without
/// I, L, O and U.
const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford base32 as posd has always written it: 5 bits a character, most
/// significant first; the last character of an input whose bits are not a
/// multiple of 5 holds its remaining bits followed by zero bits; no padding,
/// no separators. Decoding takes upper case only (no translation of lower
/// case or of I, L, O to 1, 1, 0) and checks the trailing bits, so it takes
/// exactly the strings [`crockford32`] writes.
static CROCKFORD: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str(ALPHABET);
    spec.bit_order = BitOrder::MostSignificantFirst;
    spec.check_trailing_bits = true;
    spec.padding = None;
    spec.encoding().expect("32 distinct ASCII symbols make a valid base32 specification")
});

/// Crockford base32 (the ULID alphabet), used for every id posd and the
/// gateway make up. Unlike hex, its output practically never holds a run of
/// 13 or more decimal digits, so card-number leak scans see no false alarms.
///
/// Bits are taken most significant first, 5 to a character; the last
/// character is padded with zero bits, and there is no `=` padding: `n`
/// bytes make `ceil(8 * n / 5)` characters.
pub fn crockford32(bytes: &[u8]) -> String {
    CROCKFORD.encode(bytes)
}

/// The bytes [`crockford32`] made `text` of; `None` for any string it does
/// not write: a character not of its alphabet (upper case only, as
/// [`crockford32`] writes it), a length no byte string encodes to (1, 3 or 6
/// more than a multiple of 8), or a last character whose bits past the last
/// whole byte are not zero.
///
/// Until it was built on `data-encoding` the decoder also took those last two
/// (dropping the extra bits); posd only decodes what it wrote itself, behind
/// a MAC over the text (page tokens), so only strings nobody could pass in
/// are now refused.
pub fn crockford32_decode(text: &str) -> Option<Vec<u8>> {
    CROCKFORD.decode(text.as_bytes()).ok()
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

    #[test]
    fn what_the_old_decoder_refused_is_refused() {
        for text in [
            "csqpyrk1e8",
            "CSQPYRK1Ec",
            "CSQPYRK1EU",
            "CSQPYRK1EI",
            "CSQPYRK1EL",
            "CSQPYRK1EO",
            "CSQPYRK1E=",
            "CSQPYRK1E8========",
            "CSQPY RK1E8",
            "CSQPY-RK1E8",
            "CSQPYRK1E8\n",
            "CSQPYRK1Eé",
            "é",
            "ZW\0",
        ] {
            assert_eq!(reference::crockford32_decode(text), None, "{text:?}");
            assert_eq!(crockford32_decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn what_crockford32_does_not_write_is_refused() {
        // The old decoder took these, dropping the bits past the last byte.
        let cases: [(&str, &[u8]); 5] =
            [("Z", b""), ("ZZZ", b"\xFF"), ("ZZZZZZ", b"\xFF\xFF\xFF"), ("ZX", b"\xFF"), ("ZZ", b"\xFF")];
        for (text, old) in cases {
            assert_eq!(reference::crockford32_decode(text).as_deref(), Some(old), "{text}");
            assert_eq!(crockford32_decode(text), None, "{text}");
        }
    }

    /// The alphabet, with characters not of it: lower case, I, L, O, U,
    /// padding, separators, non-ASCII, NUL.
    const MIXED: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghijklmnopqrstuvwxyzILOU=- \né\0";

    /// Any string of `chars`, up to 24 long.
    fn text_of(chars: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        let chars: Vec<char> = chars.chars().collect();
        proptest::collection::vec(proptest::sample::select(chars), 0..24).prop_map(String::from_iter)
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(crockford32_decode(&crockford32(&bytes)), Some(bytes));
        }

        #[test]
        fn encoding_is_what_it_was(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(crockford32(&bytes), reference::crockford32(&bytes));
        }

        /// The new decoder takes what the old one took and crockford32 writes,
        /// with the same bytes, and nothing else.
        #[test]
        fn decoding_is_the_old_one_on_what_crockford32_writes(text in text_of(ALPHABET)) {
            let old = reference::crockford32_decode(&text).filter(|bytes| reference::crockford32(bytes) == text);
            proptest::prop_assert_eq!(crockford32_decode(&text), old);
        }

        #[test]
        fn a_string_the_old_decoder_refused_is_refused(text in text_of(MIXED)) {
            if reference::crockford32_decode(&text).is_none() {
                proptest::prop_assert_eq!(crockford32_decode(&text), None);
            }
        }
    }

    /// The hand-written encoder and decoder the `data-encoding` ones replaced,
    /// kept to check that ids keep their form.
    mod reference {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

        pub(super) fn crockford32(bytes: &[u8]) -> String {
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

        pub(super) fn crockford32_decode(text: &str) -> Option<Vec<u8>> {
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
    }
}
