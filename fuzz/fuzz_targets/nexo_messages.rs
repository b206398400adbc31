//! Arbitrary bytes as a nexo document from the terminal's side or the Sale
//! system's (the JSON decoder posd and firmware-sim use): decoding never
//! panics, and whatever decodes encodes and decodes again to the same
//! message; receipt lines and decimal amounts in the text never panic
//! either, and an amount that converts to minor units converts back to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pos_nexo::receipt::ReceiptLine;
use pos_nexo::{Decimal, SaleToPoiRequest, SaleToPoiResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<SaleToPoiRequest>(data) {
        let bytes = serde_json::to_vec(&request).expect("a decoded request encodes");
        let again: SaleToPoiRequest = serde_json::from_slice(&bytes).expect("an encoded request decodes");
        assert_eq!(again, request);
    }
    if let Ok(response) = serde_json::from_slice::<SaleToPoiResponse>(data) {
        let bytes = serde_json::to_vec(&response).expect("a decoded response encodes");
        let again: SaleToPoiResponse = serde_json::from_slice(&bytes).expect("an encoded response decodes");
        assert_eq!(again, response);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = ReceiptLine::from_text(text);
    if let Ok(amount) = Decimal::parse(text) {
        for currency in ["EUR", "JPY", "KWD"] {
            if let Ok(minor) = amount.to_minor(currency) {
                let back = Decimal::from_minor(minor, currency).expect("minor units from a decimal convert back");
                assert_eq!(back.to_minor(currency), Ok(minor));
            }
        }
    }
});
