//! Arbitrary text as posd's configuration: parsing and validation never
//! panic; they accept it or say why not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = posd::config::Config::parse(text);
    }
});
