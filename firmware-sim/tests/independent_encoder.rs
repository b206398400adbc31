//! The printer simulator's decoder against ESC/POS from an independent
//! encoder (python-escpos 3.1; see tests/data/escpos/README.md).

use firmware_sim::paper::Paper;
use pos_escpos::decode::{Decoder, Op};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/escpos").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes in small pieces (as bytes arrive from a line) and renders.
fn print(bytes: &[u8]) -> (Vec<Op>, String) {
    let mut decoder = Decoder::new();
    let mut ops = Vec::new();
    for chunk in bytes.chunks(5) {
        ops.extend(decoder.push(chunk));
    }
    assert_eq!(decoder.pending(), 0, "every command complete");
    let mut paper = Paper::new(48);
    for op in &ops {
        paper.apply(op);
    }
    (ops, paper.text())
}

#[test]
fn the_receipt_decodes_to_its_text_barcodes_and_qr() {
    let (ops, text) = print(&fixture("pyescpos-receipt.bin"));
    println!("{text}");
    assert!(!ops.iter().any(|o| matches!(o, Op::Unknown(_))), "{ops:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{}A C M E   S T O R E", " ".repeat(14)), "double width, centred");
    assert_eq!(lines[1], format!("{}Main Street 1", " ".repeat(17)));
    assert_eq!(lines[2], format!("Coffee{}2.50", " ".repeat(23)));
    assert_eq!(lines[3], format!("Total EUR{}12.34", " ".repeat(19)));
    assert_eq!(lines[4], "Müller straße 5 €");
    assert!(lines.iter().any(|l| l.trim() == "[EAN-13 4006381333931]"), "{text}");
    assert!(lines.iter().any(|l| l.trim() == "4006381333931"), "HRI below: {text}");
    assert!(lines.iter().any(|l| l.trim() == "[Code 128 POSD-123]"), "{text}");
    assert!(lines.iter().any(|l| l.trim() == "[QR https://example.com/r/pay_123]"), "{text}");
    assert_eq!(ops.last(), Some(&Op::Cut { partial: false }));
}

#[test]
fn raster_and_column_images_decode_to_the_same_picture() {
    let (ops, text) = print(&fixture("pyescpos-image.bin"));
    let images: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::Image { .. })).collect();
    assert_eq!(images.len(), 2, "{ops:?}");
    let Op::Image { width, height, data } = images[0] else { unreachable!() };
    assert_eq!((*width, *height), (32, 16));
    assert_eq!(&data[..4], &[0xff; 4]);
    assert_eq!(&data[4..8], &[0x80, 0, 0, 0x01]);
    let Op::Image { width, height, data } = images[1] else { unreachable!() };
    assert_eq!((*width, *height), (32, 24), "24-dot band");
    assert_eq!(&data[..4], &[0xff; 4], "row 0 from column data");
    assert_eq!(&data[4 * 15..4 * 16], &[0xff; 4], "row 15: the bottom border");
    assert_eq!(&data[4 * 16..4 * 17], &[0; 4], "row 16: below the image");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["IMAGE", "[image 32x16]", "[image 32x24]", "AFTER"]);
}

#[test]
fn layout_commands_position_text_and_the_drawer_kick_is_seen() {
    let (ops, text) = print(&fixture("pyescpos-layout.bin"));
    assert!(ops.contains(&Op::DrawerKick { pin: 0, on: 50, off: 50 }));
    assert!(ops.contains(&Op::Underline(1)) && ops.contains(&Op::Font(1)) && ops.contains(&Op::LineSpacing(Some(50))));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{}right", " ".repeat(43)));
    assert_eq!(lines[1], "under");
    assert_eq!(lines[2], "font b");
    assert_eq!(lines[3], "spaced");
    assert_eq!(lines[4], format!("{}MID", " ".repeat(24)), "ESC $ 288 dots = column 24");
    assert_eq!(ops.last(), Some(&Op::Cut { partial: true }));
}
