//! Terminal receipts: Adyen's URL-encoded `key`/`name`/`value` lines decoded
//! into scrubbed receipt lines, and the signature flag carried to the register.

use pos_nexo::codes::DocumentQualifier;
use pos_nexo::payment::PaymentReceipt;
use pos_nexo::receipt::{Receipt, ReceiptLine, form_decode, form_pairs};

fn line(text: &str) -> ReceiptLine {
    ReceiptLine::from_text(text)
}

/// A line's key, name and value.
type Parts<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn parts(line: &ReceiptLine) -> Parts<'_> {
    (line.key.as_deref(), line.name.as_deref(), line.value.as_deref())
}

#[test]
fn adyen_lines_give_name_and_value_in_any_order() {
    let cases: &[(&str, Parts)] = &[
        ("name=Date&value=29%2f04%2f19&key=txdate", (Some("txdate"), Some("Date"), Some("29/04/19"))),
        ("key=txtime&name=Time&value=10%3a19%3a51", (Some("txtime"), Some("Time"), Some("10:19:51"))),
        (
            "name=TOTAL&value=%e2%82%ac%c2%a01.00&key=totalAmount",
            (Some("totalAmount"), Some("TOTAL"), Some("€\u{a0}1.00")),
        ),
        ("name=APPROVED&key=approved", (Some("approved"), Some("APPROVED"), None)),
        ("value=only%20a%20value", (None, None, Some("only a value"))),
        ("key=filler", (Some("filler"), None, None)),
        ("key=header1", (Some("header1"), None, None)),
        ("name=Thank+you&key=thanks", (Some("thanks"), Some("Thank you"), None)),
        ("name=1%2B1%3D2", (None, Some("1+1=2"), None)),
        (
            "name=Pref.%20name&value=MCC%20351%20v1%202&key=preferredName",
            (Some("preferredName"), Some("Pref. name"), Some("MCC 351 v1 2")),
        ),
        ("name=Gr%C3%BC%C3%9Fe", (None, Some("Grüße"), None)),
    ];
    for (text, expected) in cases {
        assert_eq!(parts(&line(text)), *expected, "{text}");
    }
    assert!(line("key=filler").is_blank());
    assert!(!line("name=APPROVED&key=approved").is_blank());
}

#[test]
fn unknown_parts_are_ignored_and_broken_escapes_kept_as_written() {
    assert_eq!(parts(&line("style=bold&name=X&value=Y&extra")), (None, Some("X"), Some("Y")));
    assert_eq!(parts(&line("name=100%&value=%zz%4")), (None, Some("100%"), Some("%zz%4")));
    assert_eq!(parts(&line("name=a&name=b")), (None, Some("a"), None), "the first of a repeated part counts");
    assert_eq!(parts(&line("name=%ff%fe")), (None, Some("\u{fffd}\u{fffd}"), None), "invalid UTF-8 is replaced");
    assert_eq!(form_decode("a+b%20c%2Bd%"), "a b c+d%");
    let pairs: Vec<(String, String)> = form_pairs("a=1&&b&c=x%3dy").collect();
    let expected = [("a", "1"), ("b", ""), ("c", "x=y")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(pairs, expected);
}

#[test]
fn a_plain_line_from_another_terminal_is_kept_whole() {
    assert_eq!(parts(&line("Danke schön – €")), (None, Some("Danke schön – €"), None));
    assert_eq!(parts(&line("50% off & more")), (None, Some("50% off & more"), None));
    assert!(line("").is_blank());
    assert!(line("   ").is_blank());
}

#[test]
fn terminal_text_is_scrubbed_before_it_becomes_a_line() {
    // A whole card number is masked, control characters become spaces.
    let l = line("name=Card&value=4111%201111%201111%201111&key=pan");
    assert_eq!(l.value.as_deref(), Some("411111******1111"));
    let l = line("name=Line%0d%0aFORGED&value=%1b%5b31m");
    assert_eq!(l.name.as_deref(), Some("Line  FORGED"));
    assert_eq!(l.value.as_deref(), Some(" [31m"));
    // The masked form the terminal prints stays as it is.
    let l = line("name=Card&value=%2a%2a%2a%2a%2a%2a%2a%2a%2a%2a%2a%2a3511&key=pan");
    assert_eq!(l.value.as_deref(), Some("************3511"));
    // A plain line is scrubbed too.
    assert_eq!(line("PAN 5413330000000010\u{7}").name.as_deref(), Some("PAN 541333******0010 "));
}

#[test]
fn a_receipt_keeps_its_copy_its_lines_their_style_and_the_signature_flag() {
    let json = r#"{
        "DocumentQualifier": "CashierReceipt",
        "RequiredSignatureFlag": true,
        "OutputContent": {"OutputFormat": "Text", "OutputText": [
            {"CharacterStyle": "Bold", "EndOfLineFlag": true, "Text": "name=MERCHANT%20COPY&key=merchantTitle"},
            {"EndOfLineFlag": true, "Text": "key=filler"},
            {"EndOfLineFlag": true, "Text": "name=Signature&key=signatureLine"}
        ]}
    }"#;
    let receipt: PaymentReceipt = serde_json::from_str(json).unwrap();
    let decoded = Receipt::decode(&receipt);
    assert_eq!(decoded.qualifier, DocumentQualifier::CashierReceipt);
    assert!(decoded.signature_required);
    assert_eq!(decoded.lines.len(), 3);
    assert!(decoded.lines[0].bold);
    assert_eq!(decoded.lines[0].name.as_deref(), Some("MERCHANT COPY"));
    assert!(decoded.lines[1].is_blank() && !decoded.lines[1].bold);
    assert_eq!(decoded.lines[2].key.as_deref(), Some("signatureLine"));

    // Absent, the flag is false; the customer copy is told apart.
    let customer = r#"{"DocumentQualifier": "CustomerReceipt", "OutputContent": {"OutputFormat": "Text"}}"#;
    let receipt: PaymentReceipt = serde_json::from_str(customer).unwrap();
    let decoded = Receipt::decode(&receipt);
    assert_eq!(decoded.qualifier, DocumentQualifier::CustomerReceipt);
    assert!(!decoded.signature_required);
    assert!(decoded.lines.is_empty());
    // Written back, the flag is always there.
    assert!(serde_json::to_string(&receipt).unwrap().contains(r#""RequiredSignatureFlag":false"#));
}
