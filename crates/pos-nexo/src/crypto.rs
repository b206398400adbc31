//! Local message encryption, Adyen's "NexoCrypto" version 1.
//!
//! Key material: PBKDF2-HMAC-SHA1 of the passphrase (its bytes; it must be
//! ASCII, which the terminal reads as Latin-1), salt `AdyenNexoV1Salt`, 4000
//! iterations, 80 bytes: the HMAC key `[0..32)`, the AES key `[32..64)`, the
//! IV `[64..80)`. It is derived once per passphrase ([`Key::derive`]).
//!
//! Per message: the whole clear document (`{"SaleToPOIRequest": {...}}`) is
//! encrypted with AES-256-CBC, PKCS#7 padding, IV = IV XOR the message's
//! 16-byte random nonce, and authenticated by HMAC-SHA256 over the
//! **plaintext**. The document sent keeps the header in clear:
//! `{"SaleToPOIRequest": {"MessageHeader": ..., "NexoBlob": base64(ciphertext),
//! "SecurityTrailer": {"AdyenCryptoVersion": 1, "Hmac", "KeyIdentifier",
//! "KeyVersion", "Nonce"}}}` (responses the same under `SaleToPOIResponse`).
//!
//! Decrypting checks the padding and the HMAC both, in constant time over
//! their bytes, and a failure of either (or a blob, nonce or HMAC that is not
//! base64 of the right length) is the one [`CryptoError::Refused`]: nothing
//! tells a caller which check failed. What still varies with the padding is
//! the length hashed (at most one SHA-256 block), as in every
//! MAC-then-encrypt scheme of this kind.
//!
//! The crate has no random number generator: callers pass the nonce (16
//! bytes from the operating system's generator, e.g. `getrandom`).

use std::fmt;

use aes::Aes256;
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use data_encoding::BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeGreater};

use crate::message::{MessageHeader, REQUEST_KEY, RESPONSE_KEY};

type Encryptor = cbc::Encryptor<Aes256>;
type Decryptor = cbc::Decryptor<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The `AdyenCryptoVersion` this module speaks.
pub const CRYPTO_VERSION: u32 = 1;
/// The PBKDF2 salt.
pub const SALT: &[u8] = b"AdyenNexoV1Salt";
/// The PBKDF2 iteration count.
pub const ITERATIONS: u32 = 4000;
/// The length of the derived key material.
pub const KEY_MATERIAL_LEN: usize = 80;
/// The length of a message's nonce.
pub const NONCE_LEN: usize = 16;

const BLOCK: usize = 16;
const HMAC_LEN: usize = 32;

/// Why a key cannot be made. The messages never show the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("the passphrase has a character that is not ASCII (the terminal reads it as Latin-1 bytes)")]
    NotAscii,
    #[error("the key identifier is empty")]
    EmptyKeyIdentifier,
}

/// Why a document cannot be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not a nexo document of the expected shape (said before any key is used).
    #[error("not a nexo document: {0}")]
    Malformed(String),
    #[error("AdyenCryptoVersion {0} is not supported (only 1)")]
    UnsupportedVersion(u32),
    /// The document names another key than the one configured.
    #[error("the message is under key {key_identifier:?} version {key_version}, not the configured one")]
    OtherKey { key_identifier: String, key_version: u32 },
    /// The ciphertext, nonce or HMAC did not check out under the shared key:
    /// a wrong passphrase, a damaged or forged message. Deliberately one
    /// error for all of them.
    #[error("the message did not decrypt and verify under the shared key")]
    Refused,
}

/// `SecurityTrailer`: how the message was encrypted, in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityTrailer {
    #[serde(rename = "AdyenCryptoVersion")]
    pub adyen_crypto_version: u32,
    /// base64 of HMAC-SHA256 over the plaintext.
    #[serde(rename = "Hmac")]
    pub hmac: String,
    #[serde(rename = "KeyIdentifier")]
    pub key_identifier: String,
    #[serde(rename = "KeyVersion")]
    pub key_version: u32,
    /// base64 of the 16-byte nonce.
    #[serde(rename = "Nonce")]
    pub nonce: String,
}

/// An encrypted message: the clear header, the ciphertext, the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuredMessage {
    #[serde(rename = "MessageHeader")]
    pub message_header: MessageHeader,
    /// base64 of the AES-256-CBC ciphertext of the whole clear document.
    #[serde(rename = "NexoBlob")]
    pub nexo_blob: String,
    #[serde(rename = "SecurityTrailer")]
    pub security_trailer: SecurityTrailer,
}

/// An encrypted document: a request or a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuredDocument {
    #[serde(rename = "SaleToPOIRequest", default, skip_serializing_if = "Option::is_none")]
    pub request: Option<SecuredMessage>,
    #[serde(rename = "SaleToPOIResponse", default, skip_serializing_if = "Option::is_none")]
    pub response: Option<SecuredMessage>,
}

/// The 80 bytes of key material for a passphrase (HMAC key, AES key, IV).
pub fn derive_key_material(passphrase: &str) -> Result<[u8; KEY_MATERIAL_LEN], KeyError> {
    if passphrase.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    if !passphrase.is_ascii() {
        return Err(KeyError::NotAscii);
    }
    Ok(pbkdf2::pbkdf2_hmac_array::<Sha1, KEY_MATERIAL_LEN>(passphrase.as_bytes(), SALT, ITERATIONS))
}

/// A shared key: its name and version as the terminal knows them, and the
/// material derived from its passphrase. Its `Debug` shows the name only.
#[derive(Clone)]
pub struct Key {
    key_identifier: String,
    key_version: u32,
    hmac_key: [u8; 32],
    cipher_key: [u8; 32],
    iv: [u8; BLOCK],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("key_identifier", &self.key_identifier)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Derives the key `key_identifier` version `key_version` from its passphrase.
    pub fn derive(passphrase: &str, key_identifier: &str, key_version: u32) -> Result<Key, KeyError> {
        if key_identifier.is_empty() {
            return Err(KeyError::EmptyKeyIdentifier);
        }
        let material = derive_key_material(passphrase)?;
        let mut key = Key {
            key_identifier: key_identifier.to_owned(),
            key_version,
            hmac_key: [0; 32],
            cipher_key: [0; 32],
            iv: [0; BLOCK],
        };
        key.hmac_key.copy_from_slice(&material[..32]);
        key.cipher_key.copy_from_slice(&material[32..64]);
        key.iv.copy_from_slice(&material[64..]);
        Ok(key)
    }

    pub fn key_identifier(&self) -> &str {
        &self.key_identifier
    }

    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// Encrypts `plaintext` (a whole clear document) under this key with
    /// `nonce`, sending `header` in clear beside it.
    pub fn seal(&self, header: &MessageHeader, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> SecuredMessage {
        let ciphertext = Encryptor::new(&self.cipher_key.into(), &self.iv_for(&nonce).into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
        let hmac = self.mac(plaintext).finalize().into_bytes();
        SecuredMessage {
            message_header: header.clone(),
            nexo_blob: BASE64.encode(&ciphertext),
            security_trailer: SecurityTrailer {
                adyen_crypto_version: CRYPTO_VERSION,
                hmac: BASE64.encode(&hmac),
                key_identifier: self.key_identifier.clone(),
                key_version: self.key_version,
                nonce: BASE64.encode(&nonce),
            },
        }
    }

    /// Decrypts a message and verifies its HMAC; the plaintext only if both
    /// check out.
    pub fn open(&self, message: &SecuredMessage) -> Result<Vec<u8>, CryptoError> {
        let trailer = &message.security_trailer;
        if trailer.adyen_crypto_version != CRYPTO_VERSION {
            return Err(CryptoError::UnsupportedVersion(trailer.adyen_crypto_version));
        }
        if trailer.key_identifier != self.key_identifier || trailer.key_version != self.key_version {
            return Err(CryptoError::OtherKey {
                key_identifier: trailer.key_identifier.clone(),
                key_version: trailer.key_version,
            });
        }
        let mut plain = BASE64.decode(message.nexo_blob.as_bytes()).map_err(|_| CryptoError::Refused)?;
        let nonce: [u8; NONCE_LEN] = BASE64
            .decode(trailer.nonce.as_bytes())
            .ok()
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or(CryptoError::Refused)?;
        let tag = BASE64.decode(trailer.hmac.as_bytes()).map_err(|_| CryptoError::Refused)?;
        if plain.is_empty() || !plain.len().is_multiple_of(BLOCK) || tag.len() != HMAC_LEN {
            return Err(CryptoError::Refused);
        }
        Decryptor::new(&self.cipher_key.into(), &self.iv_for(&nonce).into())
            .decrypt_padded_mut::<NoPadding>(&mut plain)
            .map_err(|_| CryptoError::Refused)?;
        let (padding_ok, padding) = pkcs7_padding(&plain);
        let length = plain.len() - padding;
        let expected = self.mac(&plain[..length]).finalize().into_bytes();
        let tag_ok = expected.as_slice().ct_eq(tag.as_slice());
        if bool::from(padding_ok & tag_ok) {
            plain.truncate(length);
            Ok(plain)
        } else {
            Err(CryptoError::Refused)
        }
    }

    /// Encrypts a clear document (`{"SaleToPOIRequest": ...}` or
    /// `{"SaleToPOIResponse": ...}`, exactly these bytes) into the document
    /// sent, with its header in clear.
    pub fn encrypt(&self, document: &[u8], nonce: [u8; NONCE_LEN]) -> Result<String, CryptoError> {
        let clear: ClearDocument = serde_json::from_slice(document).map_err(malformed)?;
        let secured = match (clear.request, clear.response) {
            (Some(request), None) => {
                SecuredDocument { request: Some(self.seal(&request.message_header, document, nonce)), response: None }
            }
            (None, Some(response)) => {
                SecuredDocument { request: None, response: Some(self.seal(&response.message_header, document, nonce)) }
            }
            _ => return Err(one_document()),
        };
        serde_json::to_string(&secured).map_err(malformed)
    }

    /// Decrypts a document as sent into the clear document's bytes.
    pub fn decrypt(&self, document: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let secured: SecuredDocument = serde_json::from_slice(document).map_err(malformed)?;
        match (&secured.request, &secured.response) {
            (Some(message), None) | (None, Some(message)) => self.open(message),
            _ => Err(one_document()),
        }
    }

    /// The IV of one message: the derived IV XOR its nonce.
    fn iv_for(&self, nonce: &[u8; NONCE_LEN]) -> [u8; BLOCK] {
        let mut iv = self.iv;
        for (byte, n) in iv.iter_mut().zip(nonce) {
            *byte ^= n;
        }
        iv
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.hmac_key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac
    }
}

/// A clear document, read only as far as its header.
#[derive(Deserialize)]
struct ClearDocument {
    #[serde(rename = "SaleToPOIRequest")]
    request: Option<ClearMessage>,
    #[serde(rename = "SaleToPOIResponse")]
    response: Option<ClearMessage>,
}

#[derive(Deserialize)]
struct ClearMessage {
    #[serde(rename = "MessageHeader")]
    message_header: MessageHeader,
}

fn malformed(error: serde_json::Error) -> CryptoError {
    CryptoError::Malformed(error.to_string())
}

fn one_document() -> CryptoError {
    CryptoError::Malformed(format!("expected exactly one of {REQUEST_KEY} and {RESPONSE_KEY}"))
}

/// Checks the PKCS#7 padding of the last block without branching on its
/// bytes: whether it is valid, and how many bytes to remove (none when not).
fn pkcs7_padding(plain: &[u8]) -> (Choice, usize) {
    let block = &plain[plain.len() - BLOCK..];
    let pad = block[BLOCK - 1];
    let mut ok = !pad.ct_eq(&0) & !pad.ct_gt(&(BLOCK as u8));
    for (i, byte) in block.iter().enumerate() {
        // Byte i of the block is padding when it is among the last `pad`.
        let in_padding = !((BLOCK - i) as u8).ct_gt(&pad);
        ok &= !in_padding | byte.ct_eq(&pad);
    }
    (ok, usize::from(u8::conditional_select(&0, &pad, ok)))
}
