//! Properties of the serial decoder and the TCP splitter.

use pos_link::apdu::ApduSplitter;
use pos_link::frame::{DLE, Decoded, FrameDecoder, encode_frame};
use proptest::prelude::*;

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (0usize..300).prop_map(|n| vec![DLE; n]),
        proptest::collection::vec(prop_oneof![Just(0x10u8), Just(0x02), Just(0x03), Just(0x06), Just(0x15)], 0..100),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_returns_the_payload(p in payload()) {
        let out = FrameDecoder::default().push_all(&encode_frame(&p));
        prop_assert_eq!(out, vec![Decoded::Frame(p)]);
    }

    #[test]
    fn byte_soup_never_panics_and_never_buffers_past_the_limit(soup in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut d = FrameDecoder::new(64);
        for event in d.push_all(&soup) {
            if let Decoded::Frame(f) = event {
                prop_assert!(f.len() <= 64);
            }
        }
        let mut s = ApduSplitter::new(300);
        s.push(&soup);
        while let Ok(Some(a)) = s.next_apdu() {
            prop_assert!(a.len() <= 300);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(frames in proptest::collection::vec(payload(), 1..5), garbage in proptest::collection::vec(any::<u8>().prop_filter("not DLE", |b| *b != DLE), 0..8)) {
        let mut stream = garbage.clone();
        for f in &frames {
            stream.extend(encode_frame(f));
            stream.extend(&garbage);
        }
        let whole = FrameDecoder::default().push_all(&stream);
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::default();
            let mut got = d.push_all(&stream[..cut]);
            got.extend(d.push_all(&stream[cut..]));
            prop_assert_eq!(&got, &whole);
        }
        let good: Vec<Vec<u8>> = whole.into_iter().filter_map(|e| match e { Decoded::Frame(f) => Some(f), _ => None }).collect();
        prop_assert_eq!(good, frames);
    }
}
