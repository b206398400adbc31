//! Arbitrary bytes as an encrypted nexo document (NexoCrypto v1): the
//! decrypting side never panics, whatever the blob, nonce, HMAC, key
//! identifier or padding; and any clear document the encrypting side takes
//! decrypts back to exactly its bytes under the same key, never under another.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pos_nexo::Key;
use pos_nexo::crypto::{NONCE_LEN, SecuredDocument};

/// The keys, derived once (PBKDF2 with 4000 rounds is too slow per input).
fn keys() -> &'static (Key, Key) {
    static KEYS: OnceLock<(Key, Key)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = Key::derive("fuzz-Passphrase.1", "fuzz", 1).expect("an ASCII passphrase");
        let other = Key::derive("fuzz-Passphrase.2", "fuzz", 1).expect("an ASCII passphrase");
        (key, other)
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, other) = keys();
    let _ = key.decrypt(data);
    if let Ok(secured) = serde_json::from_slice::<SecuredDocument>(data) {
        for message in secured.request.iter().chain(secured.response.iter()) {
            let _ = key.open(message);
        }
    }
    let mut nonce = [0u8; NONCE_LEN];
    for (n, b) in nonce.iter_mut().zip(data) {
        *n = *b;
    }
    if let Ok(sealed) = key.encrypt(data, nonce) {
        assert_eq!(key.decrypt(sealed.as_bytes()).expect("our own ciphertext decrypts"), data);
        assert!(other.decrypt(sealed.as_bytes()).is_err(), "another key's HMAC never verifies");
    }
});
