//! The 25 APDUs captured from a real Feig terminal (tests/data/zvt-captures)
//! decode without error into their typed form and encode back to the same
//! bytes; vendor-specific ones are kept as such.

use pos_zvt::Message;
use pos_zvt::tlv;

fn captures() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/zvt-captures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

fn capture(name: &str) -> Message {
    let (_, bytes) = captures().into_iter().find(|(n, _)| n.starts_with(name)).unwrap();
    Message::decode(&bytes).unwrap()
}

#[test]
fn all_25_decode_and_encode_back_byte_for_byte() {
    let all = captures();
    assert_eq!(all.len(), 25);
    for (name, bytes) in &all {
        let m = Message::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&m.encode().unwrap(), bytes, "{name}: {m:?}");
        let vendor = matches!(m, Message::Vendor(_));
        let expected_vendor =
            ["12-0fa1", "19-0814", "20-040c", "21-8000", "22-0813"].iter().any(|v| name.starts_with(v));
        assert_eq!(vendor, expected_vendor, "{name} decoded as {}", m.name());
    }
}

#[test]
fn standard_captures_are_fully_measured() {
    // Every field of the standard captures is in the BMP table, except the
    // one vendor text that a Feig terminal sends as Completion data.
    for (name, bytes) in captures() {
        let m = Message::decode(&bytes).unwrap();
        let unparsed = match &m {
            Message::StatusInformation(f) | Message::PrintTextBlock(f) | Message::Authorization(f) => {
                f.unparsed.clone()
            }
            Message::PreAuthorization(f) | Message::PartialReversal(f) | Message::BookTotal(f) => f.unparsed.clone(),
            Message::Completion(c) => c.fields.unparsed.clone(),
            Message::ReadCard(r) => r.fields.unparsed.clone(),
            Message::Registration(r) => r.fields.unparsed.clone(),
            Message::EndOfDay(w) => w.fields.unparsed.clone(),
            Message::Abort(a) => a.fields.unparsed.clone(),
            _ => None,
        };
        if name.starts_with("13-060f") {
            let u = unparsed.expect("a vendor text, not BMP fields");
            assert_eq!((u.offset, u.reason.as_str()), (0, "unknown BMP 31"));
        } else {
            assert_eq!(unparsed, None, "{name}");
        }
    }
}

#[test]
fn a_payment_result_reads_as_expected() {
    let Message::StatusInformation(f) = capture("05-040f") else { panic!() };
    assert_eq!(f.result_code(), Some(0));
    assert_eq!(f.amount(), Some(2500));
    assert_eq!(f.currency(), Some(978));
    assert_eq!(f.masked_pan().as_deref(), Some("559883******8074"));
    assert_eq!(f.card_name().as_deref(), Some("MasterCard"));
    assert_eq!(f.receipt_no(), Some(231));
    assert_eq!(f.trace(), Some(975));
    assert_eq!(f.terminal_id(), Some(52523535));
    assert_eq!(f.auth_code().as_deref(), Some("750071"));
    assert_eq!(f.payment_type(), Some(0x60));
}

#[test]
fn a_receipt_text_block_has_its_lines() {
    let Message::PrintTextBlock(f) = capture("08-06d3") else { panic!() };
    let items = f.tlv().unwrap().unwrap();
    assert_eq!(tlv::Tlv::find(&items, 0x1F07).and_then(|t| t.bytes()), Some(&[0x02][..]));
    let lines = tlv::text_lines(&items);
    assert!(lines.iter().any(|l| l.contains("Customer Receipt")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("52523535")), "{lines:?}");
    assert!(lines.len() > 20);
}

/// The long (4093-byte) text block reads as the 118 lines recorded in
/// `tests/data/print-text-block-24.txt` (each between `|`, bytes above 0x7F
/// as U+0080..U+00FF), both through the TLV tree and read in place.
#[test]
fn a_long_text_block_reads_as_its_golden_lines() {
    let golden: Vec<&str> = include_str!("data/print-text-block-24.txt")
        .lines()
        .map(|l| l.strip_prefix('|').and_then(|l| l.strip_suffix('|')).expect("a golden line is between |"))
        .collect();
    assert_eq!(golden.len(), 118);
    assert!(golden.contains(&"M\u{81}nchen                                 "));
    let Message::PrintTextBlock(f) = capture("24-06d3") else { panic!() };
    let via_tree = tlv::text_lines(&f.tlv().unwrap().unwrap());
    assert_eq!(via_tree, golden);
    assert_eq!(f.text_lines().unwrap().unwrap(), golden);
    let Message::PrintTextBlock(short) = capture("08-06d3") else { panic!() };
    assert_eq!(short.text_lines().unwrap().unwrap(), tlv::text_lines(&short.tlv().unwrap().unwrap()));
}

#[test]
fn completion_after_registration_has_the_software_version() {
    let Message::Completion(c) = capture("10-060f") else { panic!() };
    let (version, status) = c.software.unwrap();
    assert!(version.starts_with("GER-APP-v2.0.9"), "{version}");
    assert_eq!(status, 0);
    assert!(c.fields.tlv().unwrap().is_ok());
}
