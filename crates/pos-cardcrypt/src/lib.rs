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
//!
//! The key-free parts (masking card numbers, scrubbing device text, ids)
//! are in `pos-mask`, which the packaged posd links instead of this crate.
//!
//! Blob format (version 1): `"P1" | serial_len u8 | serial | nonce[12] | ciphertext+tag`.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use pos_mask::{crockford32, mask_pan};
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

/// Keyed hash of a PAN (Crockford base32, 128 bits): equal for the same card on every
/// reader of the chain, useless without the base key.
pub fn fingerprint(base: &BaseKey, pan: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&base.derive(b"card-fingerprint")).expect("any key length");
    mac.update(pan.as_bytes());
    crockford32(&mac.finalize().into_bytes()[..16])
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
    fn card_data_shows_the_masked_pan_only() {
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
    fn key_files_in_hex_or_raw() {
        let hexkey = "00".repeat(32);
        assert!(BaseKey::from_file_contents(format!("{hexkey}\n").as_bytes()).is_ok());
        assert!(BaseKey::from_file_contents(&[9u8; 32]).is_ok());
        assert_eq!(BaseKey::from_file_contents(b"short").unwrap_err(), CryptError::BadKey);
    }
}
