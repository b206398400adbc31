//! Arbitrary bytes from a printer (status replies) and to a printer (any
//! encoder's job): the reply parser and the command decoder never panic, and
//! the decoder's memory stays bounded however the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_escpos::decode::Decoder;
use pos_escpos::status::ReplyParser;

fuzz_target!(|data: &[u8]| {
    let mut replies = ReplyParser::default();
    for &b in data {
        let _ = replies.push(b);
    }
    let mut state = pos_escpos::status::PrinterState::default();
    for n in 1..=4 {
        for &b in data.iter().take(8) {
            let _ = pos_escpos::status::apply_real_time(&mut state, n, b);
            let _ = pos_escpos::status::paper_of(b);
        }
    }
    if data.len() >= 4 {
        let _ = pos_escpos::status::decode_asb([data[0], data[1], data[2], data[3]]);
    }
    let mut decoder = Decoder::new();
    for chunk in data.chunks(3) {
        let _ = decoder.push(chunk);
        // A body being skipped is only counted, never kept.
        let bound = pos_escpos::decode::MAX_BODY + 16;
        assert!(decoder.buffered() <= bound, "the decoder keeps {} bytes", decoder.buffered());
    }
});
