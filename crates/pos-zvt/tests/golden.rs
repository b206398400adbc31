//! Every golden frame of the reference (`zvt.md`), built from typed messages
//! and compared byte for byte: serial frames through pos-link's framing, TCP
//! APDUs bare. And the other way: each decodes to the message it should.

use pos_link::frame::{Decoded, FrameDecoder, encode_frame};
use pos_zvt::message::{Completion, DEFAULT_PASSWORD, Message, WithPassword, config};
use pos_zvt::{Bmp, Bmps};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// The APDU inside a serial frame, by pos-link's own decoder (which also
/// checks the CRC).
fn unframe(frame: &[u8]) -> Vec<u8> {
    match FrameDecoder::new(1024).push_all(frame).as_slice() {
        [Decoded::Frame(apdu)] => apdu.clone(),
        other => panic!("{frame:02X?} is not one good frame: {other:?}"),
    }
}

fn check_serial(golden: &str, message: Message) {
    let frame = hex(golden);
    let apdu = message.encode().unwrap();
    assert_eq!(encode_frame(&apdu), frame, "{message:?}");
    assert_eq!(Message::decode(&unframe(&frame)).unwrap(), message);
}

fn check_tcp(golden: &str, message: Message) {
    let apdu = hex(golden);
    assert_eq!(message.encode().unwrap(), apdu, "{message:?}");
    assert_eq!(Message::decode(&apdu).unwrap(), message);
}

fn completion_with_version(version: &str) -> Message {
    Message::Completion(Completion { software: Some((version.into(), 0x00)), fields: Bmps::default() })
}

#[test]
fn serial_completion_with_software_version() {
    check_serial("10 02 06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00 10 03 B1 11", completion_with_version("2.14.15"));
    check_serial(
        "10 02 06 0F 15 F0 F1 F7 30 36 31 30 32 32 61 20 4D 20 49 43 5F 20 53 74 64 00 10 03 E4 51",
        completion_with_version("061022a M IC_ Std"),
    );
}

#[test]
fn serial_status_enquiry_and_ack() {
    check_serial(
        "10 02 05 01 03 12 34 56 10 03 E0 43",
        Message::StatusEnquiry(WithPassword { password: DEFAULT_PASSWORD, fields: Bmps::default() }),
    );
    check_serial("10 02 80 00 00 10 03 F5 1F", Message::Ack);
}

#[test]
fn serial_authorizations_with_stuffing_and_a_crc_byte_of_0x10() {
    check_serial("10 02 06 01 07 04 00 00 00 00 01 90 10 03 76 57", Message::Authorization(amount(190)));
    let stuffed =
        Message::Authorization([Bmp::amount(1000), Bmp::currency(978), Bmp::new(0x06, vec![])].into_iter().collect());
    check_serial("10 02 06 01 0C 04 00 00 00 00 10 10 00 49 09 78 06 00 10 03 76 08", stuffed);
    check_serial("10 02 06 01 07 04 00 00 00 00 00 59 10 03 18 10", Message::Authorization(amount(59)));
}

fn amount(minor: u64) -> Bmps {
    [Bmp::amount(minor)].into_iter().collect()
}

#[test]
fn tcp_frames_from_a_real_terminal() {
    let registration = Message::registration(DEFAULT_PASSWORD, 0xDE, 978, &[]);
    check_tcp("06 00 06 12 34 56 DE 09 78", registration);
    check_tcp(
        "06 50 03 12 34 56",
        Message::EndOfDay(WithPassword { password: DEFAULT_PASSWORD, fields: Bmps::default() }),
    );
    let Message::Intermediate(i) = Message::decode(&hex("04 FF 01 17")).unwrap() else { panic!() };
    assert_eq!((i.status, i.timeout), (0x17, None));
    check_tcp("04 FF 01 17", Message::Intermediate(i));
    let completion = Message::Completion(Completion {
        software: None,
        fields: [Bmp::payment_type(0x10), Bmp::terminal_id(52523535), Bmp::currency(978)].into_iter().collect(),
    });
    check_tcp("06 0F 0A 19 10 29 52 52 35 35 49 09 78", completion);
    let Message::Abort(a) = Message::decode(&hex("06 1E 04 B8 87 FF FF")).unwrap() else { panic!() };
    assert_eq!(a.result_code, 0xB8);
    assert_eq!(a.fields.get(0x87), Some(&[0xFF, 0xFF][..]), "kept as sent");
    assert_eq!(a.fields.receipt_no(), None, "FF FF is not a receipt number");
    check_tcp("06 1E 04 B8 87 FF FF", Message::Abort(a));
}

#[test]
fn registration_permitting_print_text_block() {
    let bits = config::ECR_PRINTS_PAYMENT | config::ECR_PRINTS_ADMIN | config::INTERMEDIATE_STATUS;
    let m = Message::registration(DEFAULT_PASSWORD, bits, 978, &[[0x06, 0xD3]]);
    let bytes = m.encode().unwrap();
    assert_eq!(bytes, hex("06 00 0E 12 34 56 0E 09 78 06 06 26 04 0A 02 06 D3"));
    assert_eq!(Message::decode(&bytes).unwrap(), m);
}
