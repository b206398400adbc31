//! Arbitrary bytes as a ZVT APDU: decoding never panics, and whatever
//! decodes encodes back to the same bytes; the field list, the TLV
//! container and the accessors never panic either; receipt lines read in
//! place are those of the decoded TLV tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_zvt::{Bmps, Message, tlv};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let bytes = m.encode().expect("a decoded message encodes");
        // Byte for byte, except a length sent in the long form where the
        // short one fits (FF 01 00): accepted, re-encoded short.
        let long_form_of_short = data.len() > 2 && data[2] == 0xFF && data.len() - 5 < 0xFF;
        if !long_form_of_short {
            assert_eq!(bytes, data);
        }
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }
    let f = Bmps::decode(data);
    let _ = (f.amount(), f.masked_pan(), f.card_name(), f.auth_code(), f.date_time(), f.additional_text());
    if let Some(Ok(items)) = f.tlv() {
        let _ = tlv::text_lines(&items);
    }
    assert_eq!(tlv::text_lines_of(data), tlv::decode(data).map(|items| tlv::text_lines(&items)));
    if let Ok(items) = tlv::decode(data) {
        assert_eq!(tlv::decode(&tlv::encode(&items).expect("decoded TLV encodes")).unwrap(), items);
    }
});
