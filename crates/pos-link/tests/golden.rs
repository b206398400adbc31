//! Golden frames from `shared/reference/zvt.md` (the first five captured from
//! real terminals, the rest constructed; CRCs recomputed by hand) and the Feig
//! TCP captures in `tests/data/zvt-captures/`.

use pos_link::apdu::{self, ApduSplitter};
use pos_link::frame::{Decoded, FrameDecoder, encode_frame};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

const SERIAL_GOLDEN: &[&str] = &[
    "10 02 06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00 10 03 B1 11",
    "10 02 05 01 03 12 34 56 10 03 E0 43",
    "10 02 80 00 00 10 03 F5 1F",
    "10 02 06 0F 15 F0 F1 F7 30 36 31 30 32 32 61 20 4D 20 49 43 5F 20 53 74 64 00 10 03 E4 51",
    "10 02 06 01 07 04 00 00 00 00 01 90 10 03 76 57",
    "10 02 06 01 0C 04 00 00 00 00 10 10 00 49 09 78 06 00 10 03 76 08",
    "10 02 06 01 07 04 00 00 00 00 00 59 10 03 18 10",
];

const TCP_GOLDEN: &[&str] = &[
    "06 00 06 12 34 56 DE 09 78",
    "06 50 03 12 34 56",
    "04 FF 01 17",
    "06 0F 0A 19 10 29 52 52 35 35 49 09 78",
    "06 1E 04 B8 87 FF FF",
];

/// Removes framing and DLE stuffing by hand, independent of the decoder.
fn unstuff(frame: &[u8]) -> Vec<u8> {
    let body = &frame[2..frame.len() - 4];
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        i += if body[i] == 0x10 { 2 } else { 1 };
    }
    out
}

#[test]
fn serial_golden_frames_decode_and_encode_byte_exactly() {
    for g in SERIAL_GOLDEN {
        let wire = hex(g);
        let apdu = unstuff(&wire);
        assert_eq!(encode_frame(&apdu), wire, "encoding {g}");
        let mut d = FrameDecoder::default();
        assert_eq!(d.push_all(&wire), vec![Decoded::Frame(apdu.clone())], "decoding {g}");
        apdu::parse(&apdu).unwrap_or_else(|e| panic!("{g}: {e}"));
    }
}

#[test]
fn serial_golden_frames_decode_back_to_back_in_one_stream() {
    let stream: Vec<u8> = SERIAL_GOLDEN.iter().flat_map(|g| hex(g)).collect();
    let frames = FrameDecoder::default().push_all(&stream);
    let expected: Vec<Decoded> = SERIAL_GOLDEN.iter().map(|g| Decoded::Frame(unstuff(&hex(g)))).collect();
    assert_eq!(frames, expected);
}

#[test]
fn dle_inside_the_amount_is_stuffed_and_a_crc_byte_of_0x10_is_not() {
    let stuffed = hex(SERIAL_GOLDEN[5]);
    assert_eq!(unstuff(&stuffed), hex("06 01 0C 04 00 00 00 00 10 00 49 09 78 06 00"));
    let crc_dle = hex(SERIAL_GOLDEN[6]);
    assert_eq!(&crc_dle[crc_dle.len() - 2..], &[0x18, 0x10]);
}

#[test]
fn tcp_golden_apdus_split_and_rebuild_byte_exactly() {
    let stream: Vec<u8> = TCP_GOLDEN.iter().flat_map(|g| hex(g)).collect();
    let mut s = ApduSplitter::default();
    s.push(&stream);
    for g in TCP_GOLDEN {
        let apdu = s.next_apdu().unwrap().expect("a complete APDU");
        assert_eq!(apdu, hex(g));
        let (h, data) = apdu::parse(&apdu).unwrap();
        assert_eq!(apdu::build(h.class, h.instr, data).unwrap(), apdu);
    }
    assert_eq!(s.next_apdu(), Ok(None));
    assert_eq!(s.pending(), 0);
}

fn captures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/zvt-captures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("capture directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn every_feig_capture_is_one_whole_apdu_including_extended_lengths() {
    let caps = captures();
    assert_eq!(caps.len(), 25);
    for (name, bytes) in &caps {
        let (h, data) = apdu::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(apdu::build(h.class, h.instr, data).unwrap(), *bytes, "{name}");
    }
    let (_, textblock) = caps.iter().find(|(n, _)| n.starts_with("08-")).unwrap();
    assert_eq!(apdu::header(textblock).unwrap().data_len, 0x0461);
}

#[test]
fn feig_captures_split_the_same_at_every_read_size() {
    let caps = captures();
    let stream: Vec<u8> = caps.iter().flat_map(|(_, b)| b.clone()).collect();
    for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
        let mut s = ApduSplitter::default();
        let mut got = Vec::new();
        for part in stream.chunks(chunk) {
            s.push(part);
            while let Some(a) = s.next_apdu().unwrap() {
                got.push(a);
            }
        }
        let expected: Vec<Vec<u8>> = caps.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(got, expected, "read size {chunk}");
    }
}
