//! Feeds arbitrary bytes to the serial frame decoder, the serial session and
//! the TCP APDU splitter. None may panic, and nothing decoded may exceed the
//! configured maximum.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pos_link::apdu::ApduSplitter;
use pos_link::frame::{Decoded, FrameDecoder};
use pos_link::{LinkCore, SerialLink, SerialTiming};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(512);
    for event in decoder.push_all(data) {
        if let Decoded::Frame(f) = event {
            assert!(f.len() <= 512);
        }
    }

    // The session sees the bytes in chunks, with time passing between them.
    let t0 = Instant::now();
    let mut link = SerialLink::with_max_apdu(SerialTiming::default(), 512);
    for (i, chunk) in data.chunks(7).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 60);
        link.handle_timeout(now);
        link.handle_input(chunk, now);
        while link.poll_transmit().is_some() {}
        while link.poll_event().is_some() {}
    }

    let mut splitter = ApduSplitter::new(1024);
    for chunk in data.chunks(5) {
        splitter.push(chunk);
        while let Ok(Some(apdu)) = splitter.next_apdu() {
            assert!(apdu.len() <= 1024);
        }
    }
});
