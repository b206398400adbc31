//! Card data protection: the stand-in for P2PE with DUKPT.
//!
//! A card reader encrypts the PAN, expiry and track-equivalent data with
//! AES-256-GCM under a per-device key derived with HKDF-SHA256 from a base key
//! that only readers and the gateway hold. posd forwards the ciphertext and
//! never has a key. The GCM associated data binds the ciphertext to one
//! payment (amount, currency, terminal, gateway transaction key), so the
//! gateway refuses a blob moved to another payment.
//!
//! # Layout
//! - [`BaseKey`], [`device_key`]: key hierarchy.
//! - [`encrypt`] (reader side) and [`decrypt`] (gateway side), with [`Binding`].
//! - [`fingerprint`]: keyed hash of the PAN for per-card limits.
//! - [`mask_pan`]: first 6 / last 4, the most any other party may see;
//!   [`is_well_masked`] and [`well_masked`] hold a device's masked card
//!   number to that rule.
//! - [`scrub`]: the one way text from a device (reader, payment terminal,
//!   printer, gateway) is made safe to store, log, stream or print.
//!
//! Blob format (version 1): `"P1" | serial_len u8 | serial | nonce[12] | ciphertext+tag`.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 2] = b"P1";
const SALT: &[u8] = b"posd-p2pe-v1";

/// Base key shared by the simulated readers and gateway in tests and demo
/// mode. Real deployments load their own from a file; posd never holds one.
pub const TEST_BASE_KEY: [u8; 32] = *b"posd-demo-base-key-NOT-FOR-PROD!";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("card blob is malformed")]
    Malformed,
    #[error("card blob does not decrypt under this binding (tampered, or bound to another payment)")]
    Authentication,
    #[error("key file must hold exactly 32 bytes or 64 hex digits")]
    BadKey,
}

/// The root of the key hierarchy.
#[derive(Clone)]
pub struct BaseKey([u8; 32]);

impl std::fmt::Debug for BaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BaseKey(<redacted>)")
    }
}

impl BaseKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses a key file's contents: 32 raw bytes or 64 hex digits.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, CryptError> {
        if let Ok(text) = std::str::from_utf8(contents) {
            let text = text.trim();
            if text.len() == 64 {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text, &mut key).map_err(|_| CryptError::BadKey)?;
                return Ok(Self(key));
            }
        }
        contents.try_into().map(Self).map_err(|_| CryptError::BadKey)
    }

    pub fn test_key() -> Self {
        Self(TEST_BASE_KEY)
    }

    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(Some(SALT), &self.0).expand(info, &mut out).expect("32 bytes is a valid HKDF length");
        out
    }
}

/// The AES-256 key of one reader, by its serial number.
pub fn device_key(base: &BaseKey, device_serial: &str) -> [u8; 32] {
    base.derive(format!("card-encryption:{device_serial}").as_bytes())
}

/// Sensitive card data. Never printed: `Debug` shows the masked PAN only.
#[derive(Clone, PartialEq, Eq)]
pub struct CardData {
    pub pan: String,
    /// YYMM.
    pub expiry: String,
    /// Track 2 equivalent data (chip) or track 2 (swipe).
    pub track2_equivalent: String,
}

impl std::fmt::Debug for CardData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardData").field("pan", &mask_pan(&self.pan)).finish_non_exhaustive()
    }
}

impl CardData {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [&self.pan, &self.expiry, &self.track2_equivalent] {
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Self, CryptError> {
        let mut fields = Vec::with_capacity(3);
        for _ in 0..3 {
            let (len, rest) = bytes.split_first_chunk::<2>().ok_or(CryptError::Malformed)?;
            let len = u16::from_be_bytes(*len) as usize;
            let field = rest.get(..len).ok_or(CryptError::Malformed)?;
            fields.push(String::from_utf8(field.to_vec()).map_err(|_| CryptError::Malformed)?);
            bytes = &rest[len..];
        }
        if !bytes.is_empty() {
            return Err(CryptError::Malformed);
        }
        let track2_equivalent = fields.pop().unwrap_or_default();
        let expiry = fields.pop().unwrap_or_default();
        let pan = fields.pop().unwrap_or_default();
        Ok(Self { pan, expiry, track2_equivalent })
    }
}

/// The payment a blob is bound to (GCM associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
    pub terminal_id: &'a str,
    pub transaction_key: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = b"posd-card-binding-v1".to_vec();
        out.extend_from_slice(&self.amount_minor.to_be_bytes());
        for field in [self.currency, self.terminal_id, self.transaction_key] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

/// Reader side: encrypts card data for one payment.
pub fn encrypt(base: &BaseKey, device_serial: &str, card: &CardData, binding: &Binding<'_>) -> Vec<u8> {
    assert!(device_serial.len() <= 255, "device serial longer than 255 bytes");
    let cipher = Aes256Gcm::new(&device_key(base, device_serial).into());
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: &card.encode(), aad: &binding.aad() })
        .expect("AES-GCM encryption of a bounded message cannot fail");
    let mut blob = Vec::with_capacity(3 + device_serial.len() + 12 + ciphertext.len());
    blob.extend_from_slice(MAGIC);
    blob.push(device_serial.len() as u8);
    blob.extend_from_slice(device_serial.as_bytes());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    blob
}

/// The reader serial a blob names, without decrypting it.
pub fn blob_device_serial(blob: &[u8]) -> Result<&str, CryptError> {
    let rest = blob.strip_prefix(MAGIC).ok_or(CryptError::Malformed)?;
    let (&len, rest) = rest.split_first().ok_or(CryptError::Malformed)?;
    std::str::from_utf8(rest.get(..len as usize).ok_or(CryptError::Malformed)?).map_err(|_| CryptError::Malformed)
}

/// Gateway side: decrypts a blob, checking that it is bound to this payment.
pub fn decrypt(base: &BaseKey, blob: &[u8], binding: &Binding<'_>) -> Result<CardData, CryptError> {
    let serial = blob_device_serial(blob)?;
    let rest = &blob[MAGIC.len() + 1 + serial.len()..];
    if rest.len() < 12 + 16 {
        return Err(CryptError::Malformed);
    }
    let (nonce, ciphertext) = rest.split_at(12);
    let cipher = Aes256Gcm::new(&device_key(base, serial).into());
    let plain = cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &binding.aad() })
        .map_err(|_| CryptError::Authentication)?;
    CardData::decode(&plain)
}

/// Crockford base32 (the ULID alphabet), used for every id posd and the
/// gateway make up. Unlike hex, its output practically never holds a run of
/// 13 or more decimal digits, so card-number leak scans see no false alarms.
pub fn crockford32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
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

/// Keyed hash of a PAN (Crockford base32, 128 bits): equal for the same card on every
/// reader of the chain, useless without the base key.
pub fn fingerprint(base: &BaseKey, pan: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&base.derive(b"card-fingerprint")).expect("any key length");
    mac.update(pan.as_bytes());
    crockford32(&mac.finalize().into_bytes()[..16])
}

/// First 6 and last 4 digits, the rest as `*`. Shorter inputs are fully masked.
pub fn mask_pan(pan: &str) -> String {
    let digits: Vec<char> = pan.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 13 {
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

/// The fewest digits a card number has (ISO/IEC 7812): [`scrub`] masks any
/// run of this many digits or more.
pub const PAN_MIN_DIGITS: usize = 13;

/// A masked card number as [`mask_pan`] makes it: 13 to 19 characters, the
/// first 6 and the last 4 digits, `*` between.
pub fn is_well_masked(masked: &str) -> bool {
    let b = masked.as_bytes();
    let n = b.len();
    (PAN_MIN_DIGITS..=19).contains(&n)
        && b.iter().enumerate().all(|(i, &c)| if i < 6 || i >= n - 4 { c.is_ascii_digit() } else { c == b'*' })
}

/// A card number a device reports as masked (a reader's `masked_pan`, a
/// ZVT terminal's BMP 22), held to the one masking rule: kept when
/// [`is_well_masked`]; a whole card number (13 to 19 digits and nothing
/// else) masked with [`mask_pan`]; anything else masked fully, one `*` per
/// character (4 to 19 of them).
pub fn well_masked(masked: &str) -> String {
    if is_well_masked(masked) {
        return masked.to_string();
    }
    let n = masked.chars().count();
    if (PAN_MIN_DIGITS..=19).contains(&n) && masked.bytes().all(|b| b.is_ascii_digit()) {
        return mask_pan(masked);
    }
    "*".repeat(n.clamp(4, 19))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> CardData {
        CardData {
            pan: "4242424242424242".into(),
            expiry: "3012".into(),
            track2_equivalent: "4242424242424242D3012201".into(),
        }
    }

    fn binding(key: &str) -> Binding<'_> {
        Binding { amount_minor: 1234, currency: "EUR", terminal_id: "store/lane-1", transaction_key: key }
    }

    #[test]
    fn roundtrip_under_the_same_binding() {
        let base = BaseKey::test_key();
        let blob = encrypt(&base, "SIM-0001", &card(), &binding("k1"));
        assert_eq!(decrypt(&base, &blob, &binding("k1")).unwrap(), card());
        assert_eq!(blob_device_serial(&blob).unwrap(), "SIM-0001");
    }

    #[test]
    fn rebinding_to_another_payment_fails() {
        let base = BaseKey::test_key();
        let blob = encrypt(&base, "SIM-0001", &card(), &binding("k1"));
        assert_eq!(decrypt(&base, &blob, &binding("k2")), Err(CryptError::Authentication));
        let other_amount = Binding { amount_minor: 1235, ..binding("k1") };
        assert_eq!(decrypt(&base, &blob, &other_amount), Err(CryptError::Authentication));
    }

    #[test]
    fn another_base_key_cannot_decrypt_and_the_blob_hides_the_pan() {
        let blob = encrypt(&BaseKey::test_key(), "SIM-0001", &card(), &binding("k1"));
        assert_eq!(decrypt(&BaseKey::new([7; 32]), &blob, &binding("k1")), Err(CryptError::Authentication));
        assert!(!blob.windows(4).any(|w| w == b"4242"));
    }

    #[test]
    fn truncated_or_flipped_blobs_are_rejected() {
        let base = BaseKey::test_key();
        let blob = encrypt(&base, "SIM-0001", &card(), &binding("k1"));
        for cut in 0..blob.len() {
            assert!(decrypt(&base, &blob[..cut], &binding("k1")).is_err());
        }
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decrypt(&base, &flipped, &binding("k1")), Err(CryptError::Authentication));
    }

    #[test]
    fn masking_keeps_first_six_and_last_four() {
        assert_eq!(mask_pan("4242424242424242"), "424242******4242");
        assert_eq!(mask_pan("374245455400126"), "374245*****0126");
        assert_eq!(mask_pan("1234"), "****");
        assert_eq!(format!("{:?}", card()), "CardData { pan: \"424242******4242\", .. }");
    }

    #[test]
    fn fingerprint_is_stable_and_keyed() {
        let a = fingerprint(&BaseKey::test_key(), "4242424242424242");
        assert_eq!(a, fingerprint(&BaseKey::test_key(), "4242424242424242"));
        assert_ne!(a, fingerprint(&BaseKey::new([1; 32]), "4242424242424242"));
        assert_ne!(a, fingerprint(&BaseKey::test_key(), "4000056655665556"));
        assert_eq!(a.len(), 26);
    }

    #[test]
    fn crockford_matches_known_vectors() {
        assert_eq!(crockford32(&[]), "");
        assert_eq!(crockford32(&[0xFF]), "ZW");
        assert_eq!(crockford32(&[0; 16]), "00000000000000000000000000");
        assert_eq!(crockford32(b"f"), "CR");
        assert_eq!(crockford32(b"foobar"), "CSQPYRK1E8");
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

    /// Every maximal run of ASCII digits joined by up to three spaces or
    /// hyphens, as digits: an oracle for what [`scrub`] must leave no card
    /// number in, written apart from it.
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

    /// A deterministic generator (xorshift64*), so the property test needs no
    /// dependency and fails the same way every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }

        /// A Luhn-valid card number of 13 to 19 digits.
        fn pan(&mut self) -> String {
            let len = 13 + self.below(7);
            let mut pan: String = (0..len - 1).map(|_| char::from(b'0' + self.below(10) as u8)).collect();
            let check = (b'0'..=b'9').map(char::from).find(|&d| luhn_valid(&format!("{pan}{d}"))).unwrap();
            pan.push(check);
            pan
        }

        /// Device text as an attacker or a broken device might send it.
        fn text(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a", "Z", "é", "€", "—", "…", "*", " ", "  ", "-", "--", ".", ":", "\n", "\r\n", "\t", "\x1b[2J",
                "\x7f", "\0", "\u{85}", "\u{9b}", "\u{2028}", "\u{2029}", "\u{202e}", "\u{2067}", "\u{200b}",
                "\u{feff}", "\u{a0}", "\u{2011}", "12.34", "123456",
            ];
            let mut out = String::new();
            for _ in 0..self.below(40) {
                match self.below(6) {
                    0 => {
                        // A card number, maybe grouped by a separator.
                        let pan = self.pan();
                        let sep = self.pick(&["", " ", "-", "\n", "\t", "\u{a0}", "\u{200b}", "  "]);
                        let group = 3 + self.below(4);
                        let chunks: Vec<String> =
                            pan.as_bytes().chunks(group).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
                        out.push_str(&chunks.join(sep));
                    }
                    1 | 2 => {
                        for _ in 0..1 + self.below(8) {
                            out.push(char::from(b'0' + self.below(10) as u8));
                        }
                    }
                    3 => out.push(char::from_u32(self.below(0x3000) as u32).unwrap_or('?')),
                    4 if self.below(4) == 0 => out.push_str("\n2026-01-01T00:00:00Z INFO forged"),
                    _ => out.push_str(self.pick(PIECES)),
                }
            }
            if self.below(20) == 0 {
                out = out.repeat(1 + self.below(40));
            }
            out
        }
    }

    #[test]
    fn scrubbed_text_never_holds_a_card_number_a_line_break_or_too_much() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let text = rng.text();
            let limit = if round % 4 == 0 { rng.below(40) } else { SCRUB_LIMIT };
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

    #[test]
    fn key_files_in_hex_or_raw() {
        let hexkey = "00".repeat(32);
        assert!(BaseKey::from_file_contents(format!("{hexkey}\n").as_bytes()).is_ok());
        assert!(BaseKey::from_file_contents(&[9u8; 32]).is_ok());
        assert_eq!(BaseKey::from_file_contents(b"short").unwrap_err(), CryptError::BadKey);
    }
}
