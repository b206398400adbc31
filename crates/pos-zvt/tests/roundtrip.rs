//! Property tests: every command encodes and decodes back to itself, no
//! byte string makes the decoder panic, and receipt lines read in place are
//! those of the decoded TLV tree.

use pos_zvt::bmp::{Class, class};
use pos_zvt::message::{Abort, Completion, Intermediate, PrintLine, Raw, ReadCard, Registration, WithPassword};
use pos_zvt::{Bmp, Bmps, Message, tlv};
use proptest::prelude::*;

fn field() -> impl Strategy<Value = Bmp> {
    let tags: Vec<u8> = (0..=255u8).filter(|t| class(*t).is_some()).collect();
    prop::sample::select(tags).prop_flat_map(|tag| {
        let len = match class(tag).unwrap() {
            Class::Fixed(n) => (n..=n).boxed(),
            Class::LlVar => (0..=99usize).boxed(),
            Class::LllVar | Class::Tlv => (0..=400usize).boxed(),
        };
        len.prop_flat_map(move |n| prop::collection::vec(any::<u8>(), n).prop_map(move |data| Bmp::new(tag, data)))
    })
}

fn fields() -> impl Strategy<Value = Bmps> {
    prop::collection::vec(field(), 0..6).prop_map(|f| f.into_iter().collect())
}

fn password() -> impl Strategy<Value = [u8; 3]> {
    any::<[u8; 3]>()
}

fn message() -> impl Strategy<Value = Message> {
    let with_password = || (password(), fields()).prop_map(|(password, fields)| WithPassword { password, fields });
    prop_oneof![
        (password(), any::<u8>(), prop::option::of((0..=9u8, any::<u8>())), prop::collection::vec(any::<bool>(), 0..3))
            .prop_flat_map(|(password, config, currency, which)| {
                // Only the service byte (03) and the TLV container (06) follow.
                let tail: Vec<BoxedStrategy<Bmp>> = which
                    .into_iter()
                    .map(|tlv| {
                        if tlv {
                            prop::collection::vec(any::<u8>(), 0..50).prop_map(|d| Bmp::new(0x06, d)).boxed()
                        } else {
                            any::<u8>().prop_map(|b| Bmp::new(0x03, [b])).boxed()
                        }
                    })
                    .collect();
                tail.prop_map(move |f| {
                    Message::Registration(Registration {
                        password,
                        config,
                        currency: currency.map(|(a, b)| [a, b]),
                        fields: f.into_iter().collect(),
                    })
                })
            }),
        fields().prop_map(Message::Authorization),
        Just(Message::LogOff),
        with_password().prop_map(Message::RepeatReceipt),
        fields().prop_map(Message::PreAuthorization),
        fields().prop_map(Message::PartialReversal),
        fields().prop_map(Message::BookTotal),
        with_password().prop_map(Message::Reversal),
        with_password().prop_map(Message::Refund),
        with_password().prop_map(Message::EndOfDay),
        fields().prop_map(Message::Diagnosis),
        Just(Message::AbortRequest),
        (any::<u8>(), fields()).prop_map(|(timeout, fields)| Message::ReadCard(ReadCard { timeout, fields })),
        with_password().prop_map(Message::StatusEnquiry),
        (any::<u8>(), prop::option::of(any::<u8>()), fields()).prop_map(|(status, timeout, fields)| {
            let fields = if timeout.is_some() { fields } else { Bmps::default() };
            Message::Intermediate(Intermediate { status, timeout, fields })
        }),
        fields().prop_map(Message::StatusInformation),
        (prop::option::of(("[ -~]{0,60}", any::<u8>())), fields())
            .prop_map(|(software, fields)| Message::Completion(Completion { software, fields })),
        (any::<u8>(), fields()).prop_map(|(result_code, fields)| Message::Abort(Abort { result_code, fields })),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(attribute, text)| {
            Message::PrintLine(PrintLine { attribute, text: text.into_iter().map(char::from).collect() })
        }),
        fields().prop_map(Message::PrintTextBlock),
        Just(Message::Ack),
        any::<u8>().prop_map(Message::Nak),
        (prop::sample::select(vec![0x08u8, 0x0F, 0x80]), any::<u8>(), prop::collection::vec(any::<u8>(), 1..300))
            .prop_map(|(class, instr, data)| Message::Vendor(Raw { class, instr, data })),
    ]
}

/// Bytes that often form TLV elements: tags 07, 24, 25, 30 and 1F xx,
/// short lengths and the 81/82 forms, and text.
fn tlv_like() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = vec![0x00u8, 0x01, 0x02, 0x03, 0x07, 0x09, 0x1F, 0x24, 0x25, 0x30, 0x81, 0x82, 0xE1, b'a'];
    prop::collection::vec(prop::sample::select(alphabet), 0..200)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_command_roundtrips(m in message()) {
        // A few combinations are refused on purpose (fields that would read
        // as a software version); those must say so rather than encode.
        match m.encode() {
            Ok(bytes) => prop_assert_eq!(Message::decode(&bytes).unwrap(), m),
            Err(e) => prop_assert!(
                matches!(&m, Message::Completion(c) if c.software.is_none())
                    || matches!(&m, Message::Registration(r) if matches!(r.currency, Some([0x03 | 0x06, _]))),
                "{e}"
            ),
        }
    }

    #[test]
    fn decoding_never_panics_and_what_decodes_encodes_back(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::decode(&bytes) {
            let again = m.encode().unwrap();
            if bytes[2] != 0xFF || bytes.len() - 5 >= 0xFF {
                prop_assert_eq!(&again, &bytes);
            }
            prop_assert_eq!(Message::decode(&again).unwrap(), m);
        }
    }

    #[test]
    fn text_lines_read_in_place_are_the_lines_of_the_tree(bytes in tlv_like()) {
        prop_assert_eq!(tlv::text_lines_of(&bytes), tlv::decode(&bytes).map(|items| tlv::text_lines(&items)));
    }

    #[test]
    fn decoding_a_valid_header_never_panics(class in any::<u8>(), instr in any::<u8>(), data in prop::collection::vec(any::<u8>(), 0..300)) {
        let apdu = pos_link::apdu::build(class, instr, &data).unwrap();
        let m = Message::decode(&apdu);
        if let Ok(m) = m {
            prop_assert_eq!(m.encode().unwrap(), apdu);
        }
    }
}

/// Found by fuzzing (fuzz/artifacts/zvt_codec): a length sent in the long
/// form although it fits the short one. It is accepted, and re-encoded in
/// the short form, which is what the spec prescribes.
#[test]
fn a_long_form_length_for_a_short_apdu_is_accepted_and_sent_short() {
    let m = Message::decode(&[0xFC, 0xFF, 0xFF, 0x01, 0x00, 0x01]).unwrap();
    assert_eq!(m, Message::Vendor(Raw { class: 0xFC, instr: 0xFF, data: vec![0x01] }));
    assert_eq!(m.encode().unwrap(), [0xFC, 0xFF, 0x01, 0x01]);
}

/// Found by fuzzing (fuzz/artifacts/zvt_codec): a Registration whose TLV
/// length came in a longer form than needed (`06 82 00 00`). The field is
/// kept as unparsed bytes, so the message still encodes back as it came.
#[test]
fn a_tlv_length_in_a_longer_form_is_kept_as_sent() {
    let bytes = [0x06, 0x00, 0x0E, 0x00, 0xF4, 0xD0, 0x58, 0x06, 0x00, 0x06, 0x82, 0x00, 0x00, 0x00, 0x00, 0x49, 0x21];
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.encode().unwrap(), bytes);
    let Message::Registration(r) = &m else { panic!("{m:?}") };
    assert!(r.fields.unparsed.as_ref().is_some_and(|u| u.reason.contains("shortest form")), "{r:?}");
}
