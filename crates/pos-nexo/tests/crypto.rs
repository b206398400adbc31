//! NexoCrypto v1: known-answer vectors written by the reference library
//! (tests/vectors, made by tests/node/make_vectors.js), round trips, and
//! every kind of damage refused with the one error.

use data_encoding::{BASE64, HEXLOWER};
use pos_nexo::crypto::{SecuredDocument, SecuredMessage, derive_key_material};
use pos_nexo::{CryptoError, Key, KeyError, SaleToPoiRequest};
use serde_json::Value;

const PASSPHRASE: &str = "mysupersecretpassphrase";
const NONCE: [u8; 16] = [7; 16];

/// A clear request document as posd sends it.
const CLEAR: &str = concat!(
    r#"{"SaleToPOIRequest":{"MessageHeader":{"ProtocolVersion":"3.0","MessageClass":"Service","#,
    r#""MessageCategory":"Payment","MessageType":"Request","ServiceID":"0000000042","SaleID":"POSD-lane-1","#,
    r#""POIID":"V400m-324688179"},"PaymentRequest":{"SaleData":{"SaleTransactionID":{"#,
    r#""TransactionID":"01JF3Q5W7Y0000000000000042","TimeStamp":"2026-12-07T10:00:00Z"}},"#,
    r#""PaymentTransaction":{"AmountsReq":{"Currency":"EUR","RequestedAmount":12.5}}}}}"#
);

fn key() -> Key {
    Key::derive(PASSPHRASE, "posd-lane-key", 1).unwrap()
}

fn vectors() -> Vec<(String, Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let mut vectors: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.display().to_string(), serde_json::from_str(&text).unwrap())
        })
        .collect();
    vectors.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(vectors.len() >= 3, "the known-answer vectors are missing from {dir}");
    vectors
}

fn text<'a>(vector: &'a Value, field: &str) -> &'a str {
    vector[field].as_str().unwrap_or_else(|| panic!("{field} missing"))
}

fn hex(text: &str) -> Vec<u8> {
    HEXLOWER.decode(text.as_bytes()).unwrap()
}

/// The one message of an encrypted document, and a way to put it back.
fn message(document: &str) -> SecuredMessage {
    let doc: SecuredDocument = serde_json::from_str(document).unwrap();
    doc.request.or(doc.response).unwrap()
}

fn request_document(message: SecuredMessage) -> String {
    serde_json::to_string(&SecuredDocument { request: Some(message), response: None }).unwrap()
}

/// `field` (base64) with bit `bit` of its decoded bytes flipped.
fn flip(field: &str, bit: usize) -> String {
    let mut bytes = BASE64.decode(field.as_bytes()).unwrap();
    bytes[bit / 8] ^= 1 << (bit % 8);
    BASE64.encode(&bytes)
}

#[test]
fn the_reference_librarys_key_material_and_ciphertexts_are_reproduced_exactly() {
    for (file, vector) in vectors() {
        let passphrase = text(&vector, "passphrase");
        let material = derive_key_material(passphrase).unwrap();
        let expected = &vector["key_material"];
        assert_eq!(material[..32], hex(text(expected, "hmac_key"))[..], "{file}: HMAC key");
        assert_eq!(material[32..64], hex(text(expected, "cipher_key"))[..], "{file}: AES key");
        assert_eq!(material[64..], hex(text(expected, "iv"))[..], "{file}: IV");

        let key_version = u32::try_from(vector["key_version"].as_u64().unwrap()).unwrap();
        let key = Key::derive(passphrase, text(&vector, "key_identifier"), key_version).unwrap();
        let nonce: [u8; 16] = BASE64.decode(text(&vector, "nonce").as_bytes()).unwrap().try_into().unwrap();
        let plaintext = text(&vector, "plaintext");

        // Ours, with the library's nonce, is the library's, byte for byte.
        let ours = key.encrypt(plaintext.as_bytes(), nonce).unwrap();
        let sealed = message(&ours);
        assert_eq!(sealed.nexo_blob, text(&vector, "nexo_blob"), "{file}: NexoBlob");
        assert_eq!(sealed.security_trailer.hmac, text(&vector, "hmac"), "{file}: Hmac");
        assert_eq!(ours, text(&vector, "document"), "{file}: the whole document");

        // The library's document decrypts here to the plaintext.
        let clear = key.decrypt(text(&vector, "document").as_bytes()).unwrap();
        assert_eq!(String::from_utf8(clear).unwrap(), plaintext, "{file}");
    }
}

#[test]
fn a_document_encrypted_here_decrypts_here_to_the_same_bytes() {
    let key = key();
    let document = key.encrypt(CLEAR.as_bytes(), NONCE).unwrap();
    assert!(!document.contains("RequestedAmount"), "the body is in clear: {document}");
    let secured = message(&document);
    assert_eq!(secured.security_trailer.adyen_crypto_version, 1);
    assert_eq!(secured.security_trailer.key_identifier, "posd-lane-key");
    assert_eq!(secured.security_trailer.key_version, 1);
    assert_eq!(BASE64.decode(secured.security_trailer.nonce.as_bytes()).unwrap(), NONCE);
    // The header travels in clear beside the blob, as it is inside.
    let clear: SaleToPoiRequest = serde_json::from_str(CLEAR).unwrap();
    assert_eq!(secured.message_header, clear.header);

    let decrypted = key.decrypt(document.as_bytes()).unwrap();
    assert_eq!(decrypted, CLEAR.as_bytes());
    // A key derived again from the same passphrase is the same key.
    let again = Key::derive(PASSPHRASE, "posd-lane-key", 1).unwrap();
    assert_eq!(again.decrypt(document.as_bytes()).unwrap(), CLEAR.as_bytes());
    // Another nonce, another ciphertext.
    let other = key.encrypt(CLEAR.as_bytes(), [8; 16]).unwrap();
    assert_ne!(message(&other).nexo_blob, secured.nexo_blob);
    assert_eq!(message(&other).security_trailer.hmac, secured.security_trailer.hmac);
}

#[test]
fn one_flipped_bit_anywhere_in_blob_hmac_or_nonce_is_refused_with_the_one_error() {
    let key = key();
    let original = message(&key.encrypt(CLEAR.as_bytes(), NONCE).unwrap());
    let blob_bits = BASE64.decode(original.nexo_blob.as_bytes()).unwrap().len() * 8;
    let mut tampered = Vec::new();
    // One bit in every byte of the blob (the last block holds the padding).
    for bit in (0..blob_bits).step_by(8).chain([blob_bits - 1, blob_bits - 129]) {
        let mut m = original.clone();
        m.nexo_blob = flip(&m.nexo_blob, bit);
        tampered.push(("blob", bit, m));
    }
    for bit in 0..256 {
        let mut m = original.clone();
        m.security_trailer.hmac = flip(&m.security_trailer.hmac, bit);
        tampered.push(("hmac", bit, m));
    }
    for bit in 0..128 {
        let mut m = original.clone();
        m.security_trailer.nonce = flip(&m.security_trailer.nonce, bit);
        tampered.push(("nonce", bit, m));
    }
    for (what, bit, m) in tampered {
        assert_eq!(key.open(&m), Err(CryptoError::Refused), "{what} bit {bit}");
        assert_eq!(key.decrypt(request_document(m).as_bytes()), Err(CryptoError::Refused), "{what} bit {bit}");
    }
    assert_eq!(key.open(&original).unwrap(), CLEAR.as_bytes());
}

#[test]
fn bad_padding_and_a_bad_hmac_give_the_same_error() {
    let (_, vector) = vectors().into_iter().find(|(file, _)| file.ends_with("status_not_found_aligned.json")).unwrap();
    let key = Key::derive(text(&vector, "passphrase"), text(&vector, "key_identifier"), 7).unwrap();
    let original = message(text(&vector, "document"));
    let blob = BASE64.decode(original.nexo_blob.as_bytes()).unwrap();
    // The plaintext fills whole blocks, so the last block is 16 bytes of 0x10:
    // flipping bit 0 of the byte before it in the ciphertext makes its last
    // byte 0x11, not a PKCS#7 pad.
    let mut bad_padding = original.clone();
    bad_padding.nexo_blob = flip(&original.nexo_blob, (blob.len() - 17) * 8);
    // Flipping a bit of the first block garbles it; the padding stays valid.
    let mut bad_hmac = original.clone();
    bad_hmac.nexo_blob = flip(&original.nexo_blob, 0);
    let padding_error = key.open(&bad_padding).unwrap_err();
    let hmac_error = key.open(&bad_hmac).unwrap_err();
    assert_eq!(padding_error, CryptoError::Refused);
    assert_eq!(hmac_error, padding_error);
    assert_eq!(padding_error.to_string(), hmac_error.to_string());
    assert!(key.open(&original).is_ok());
}

#[test]
fn a_wrong_passphrase_is_refused_with_the_same_error() {
    let document = key().encrypt(CLEAR.as_bytes(), NONCE).unwrap();
    for wrong in ["mysupersecretpassphrasE", "mysupersecretpassphrase ", "x"] {
        let key = Key::derive(wrong, "posd-lane-key", 1).unwrap();
        assert_eq!(key.decrypt(document.as_bytes()), Err(CryptoError::Refused), "{wrong}");
    }
}

#[test]
fn damaged_fields_and_other_keys_are_refused_before_anything_is_decrypted() {
    let key = key();
    let original = message(&key.encrypt(CLEAR.as_bytes(), NONCE).unwrap());
    let with = |change: &dyn Fn(&mut SecuredMessage)| {
        let mut m = original.clone();
        change(&mut m);
        m
    };
    let blob = BASE64.decode(original.nexo_blob.as_bytes()).unwrap();
    let damaged = [
        ("blob not base64", with(&|m: &mut SecuredMessage| m.nexo_blob = "not base64!".into())),
        ("blob empty", with(&|m: &mut SecuredMessage| m.nexo_blob = String::new())),
        ("blob a block short", with(&|m: &mut SecuredMessage| m.nexo_blob = BASE64.encode(&blob[..blob.len() - 16]))),
        ("blob not whole blocks", with(&|m: &mut SecuredMessage| m.nexo_blob = BASE64.encode(&blob[..blob.len() - 1]))),
        ("nonce 15 bytes", with(&|m: &mut SecuredMessage| m.security_trailer.nonce = BASE64.encode(&[7u8; 15]))),
        ("nonce 17 bytes", with(&|m: &mut SecuredMessage| m.security_trailer.nonce = BASE64.encode(&[7u8; 17]))),
        ("hmac 31 bytes", with(&|m: &mut SecuredMessage| m.security_trailer.hmac = BASE64.encode(&[0u8; 31]))),
        ("hmac empty", with(&|m: &mut SecuredMessage| m.security_trailer.hmac = String::new())),
    ];
    for (what, m) in &damaged {
        assert_eq!(key.open(m), Err(CryptoError::Refused), "{what}");
    }
    let other_id = with(&|m: &mut SecuredMessage| m.security_trailer.key_identifier = "another".into());
    assert_eq!(key.open(&other_id), Err(CryptoError::OtherKey { key_identifier: "another".into(), key_version: 1 }));
    let other_version = with(&|m: &mut SecuredMessage| m.security_trailer.key_version = 2);
    assert_eq!(
        key.open(&other_version),
        Err(CryptoError::OtherKey { key_identifier: "posd-lane-key".into(), key_version: 2 })
    );
    let other_crypto = with(&|m: &mut SecuredMessage| m.security_trailer.adyen_crypto_version = 2);
    assert_eq!(key.open(&other_crypto), Err(CryptoError::UnsupportedVersion(2)));

    // Documents that are not encrypted nexo documents say so.
    for bad in [CLEAR, "{}", "[]", "not json", r#"{"SaleToPOIRequest": 1}"#] {
        assert!(matches!(key.decrypt(bad.as_bytes()), Err(CryptoError::Malformed(_))), "{bad}");
    }
    for bad in ["{}", "not json", r#"{"SaleToPOIRequest":{}}"#, r#"{"Other":{"MessageHeader":{}}}"#] {
        assert!(matches!(key.encrypt(bad.as_bytes(), NONCE), Err(CryptoError::Malformed(_))), "{bad}");
    }
}

#[test]
fn a_response_document_is_encrypted_under_its_own_key() {
    let key = key();
    let response = CLEAR.replace("SaleToPOIRequest", "SaleToPOIResponse").replace("\"Request\"", "\"Response\"");
    let document = key.encrypt(response.as_bytes(), NONCE).unwrap();
    assert!(document.starts_with(r#"{"SaleToPOIResponse":{"MessageHeader":{"#), "{document}");
    let doc: SecuredDocument = serde_json::from_str(&document).unwrap();
    assert!(doc.request.is_none());
    assert_eq!(key.decrypt(document.as_bytes()).unwrap(), response.as_bytes());
}

#[test]
fn passphrases_must_be_ascii_and_keys_named() {
    assert_eq!(Key::derive("pässword", "id", 1).unwrap_err(), KeyError::NotAscii);
    assert_eq!(Key::derive("", "id", 1).unwrap_err(), KeyError::EmptyPassphrase);
    assert_eq!(Key::derive("secret", "", 1).unwrap_err(), KeyError::EmptyKeyIdentifier);
    assert_eq!(derive_key_material("€uro").unwrap_err(), KeyError::NotAscii);
    // The error never carries the passphrase.
    assert!(!KeyError::NotAscii.to_string().contains("pässword"));
    let key = Key::derive("ascii only, punctuation too: !\"#$%&'()*+,-./~", "id", 1).unwrap();
    assert_eq!(key.key_identifier(), "id");
    assert_eq!(key.key_version(), 1);
}

#[test]
fn a_keys_debug_shows_its_name_and_no_secret() {
    let key = key();
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains("posd-lane-key"), "{shown}");
    assert!(!shown.contains(PASSPHRASE), "{shown}");
    let material = derive_key_material(PASSPHRASE).unwrap();
    for secret in [&material[..32], &material[32..64], &material[64..]] {
        assert!(!shown.contains(&HEXLOWER.encode(secret)), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &secret[..4])[1..]), "{shown}");
    }
    assert_eq!(format!("{key:?}"), r#"Key { key_identifier: "posd-lane-key", key_version: 1, .. }"#);
}
