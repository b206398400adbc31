//! Arbitrary bytes as messages of the native reader protocol (both
//! directions): decoding never panics, and what decodes re-encodes to
//! something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_proto::reader::{HostMessage, ReaderMessage};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ReaderMessage::decode(data) {
        assert_eq!(ReaderMessage::decode(m.encode_to_vec().as_slice()).unwrap(), m);
    }
    if let Ok(m) = HostMessage::decode(data) {
        assert_eq!(HostMessage::decode(m.encode_to_vec().as_slice()).unwrap(), m);
    }
    // Inside an APDU, as posd's lane reads them.
    if let Ok((_, body)) = pos_link::apdu::parse(data) {
        let _ = ReaderMessage::decode(body);
    }
});
