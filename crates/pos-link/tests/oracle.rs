//! The independent `zvt` crate (=0.1.0, dev-dependency only) encodes APDUs;
//! our length prefix handling must agree with it on every one, short and
//! extended.

use pos_link::apdu::{self, ApduSplitter};
use zvt::{ZvtSerializer, packets};

fn oracle_apdus() -> Vec<Vec<u8>> {
    let mut out = vec![
        packets::Registration { password: 123456, config_byte: 0xDE, currency: Some(978), tlv: None }.zvt_serialize(),
        packets::EndOfDay { password: 123456 }.zvt_serialize(),
        packets::Ack {}.zvt_serialize(),
        packets::IntermediateStatusInformation { status: 0x17, timeout: None }.zvt_serialize(),
        packets::CompletionData {
            result_code: None,
            status_byte: Some(0x10),
            terminal_id: Some(52523535),
            currency: Some(978),
        }
        .zvt_serialize(),
    ];
    // Print lines around the one-byte / extended boundary (254 vs 255 data bytes).
    for text_len in [0usize, 1, 200, 252, 253, 254, 255, 300, 1000, 4000] {
        out.push(packets::PrintLine { attribute: 0x00, text: "x".repeat(text_len) }.zvt_serialize());
    }
    for text_len in [240usize, 250, 260, 2000] {
        out.push(
            packets::StatusInformation {
                additional_text: Some("t".repeat(text_len)),
                result_code: Some(0),
                ..Default::default()
            }
            .zvt_serialize(),
        );
    }
    out
}

#[test]
fn our_length_prefix_matches_the_oracle() {
    let apdus = oracle_apdus();
    assert!(apdus.iter().any(|a| a[2] == 0xFF), "the set must include extended lengths");
    assert!(apdus.iter().any(|a| a[2] == 0xFE), "the set must include the largest short length");
    for bytes in &apdus {
        let (h, data) = apdu::parse(bytes).unwrap_or_else(|e| panic!("{bytes:02X?}: {e}"));
        assert_eq!(apdu::build(h.class, h.instr, data).unwrap(), *bytes);
    }
}

#[test]
fn oracle_apdus_split_from_one_tcp_stream() {
    let apdus = oracle_apdus();
    let mut s = ApduSplitter::default();
    s.push(&apdus.concat());
    for expected in &apdus {
        assert_eq!(s.next_apdu().unwrap().as_ref(), Some(expected));
    }
    assert_eq!(s.next_apdu(), Ok(None));
}
