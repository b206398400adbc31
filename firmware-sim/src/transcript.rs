//! Evidence for support: a transcript of every frame a simulated device
//! exchanged with posd, one line each, as
//!
//! ```text
//! 2026-11-26T17:20:01.123Z reader  in  <hex> | <meaning>
//! ```
//!
//! with card data redacted before anything is written: tagged card-data
//! fields are blanked by the device's describer; in the bytes, any run of
//! 13 or more ASCII digits holding a Luhn-valid 13-19 digit number keeps
//! only its first six and last four digits (the rest become `*`); in the
//! text, and in the hex of protocols that carry numbers as BCD (ZVT), any
//! such run of digits is masked the same way.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Which way a frame went, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From posd to the device.
    In,
    /// From the device to posd.
    Out,
}

pub struct Transcript {
    device: &'static str,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Transcript {
    /// Appends to `path` (created if missing).
    pub fn create(path: &Path, device: &'static str) -> std::io::Result<Transcript> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::to_writer(Box::new(file), device))
    }

    pub fn to_writer(out: Box<dyn Write + Send>, device: &'static str) -> Transcript {
        Transcript { device, out: Arc::new(Mutex::new(out)) }
    }

    /// The same transcript, written under another device's name.
    pub fn device(&self, device: &'static str) -> Transcript {
        Transcript { device, out: self.out.clone() }
    }

    /// One frame: its bytes (already stripped of card-data fields by the
    /// caller where it knows them) and what they mean. `bcd`: the protocol
    /// writes numbers as BCD, so card numbers can show as digits in the hex.
    pub fn frame(&self, dir: Dir, bytes: &[u8], meaning: &str, bcd: bool) {
        let hex: String = redact_bytes(bytes).iter().map(|b| format!("{b:02X}")).collect();
        let hex = if bcd { redact(&hex) } else { hex };
        // Spaced by byte: easier to read, and no digit run spans two bytes.
        let hex =
            hex.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap_or("??")).collect::<Vec<_>>().join(" ");
        let dir = match dir {
            Dir::In => "in ",
            Dir::Out => "out",
        };
        self.write(&format!("{dir} {hex} | {}", redact(meaning)));
    }

    /// Something that is not a frame: a fault firing, a line ending.
    pub fn note(&self, text: &str) {
        self.write(&format!("--  {}", redact(text)));
    }

    fn write(&self, line: &str) {
        let now = jiff::Timestamp::now();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A transcript that cannot be written must not stop the device.
        let _ = writeln!(out, "{now:.3} {:<7} {line}", self.device);
        let _ = out.flush();
    }
}

/// Masks card numbers: every run of 13 or more ASCII digits that holds a
/// Luhn-valid number of 13 to 19 digits keeps its first six and last four
/// digits; the digits between become `*`.
pub fn redact(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            let next = text[i..].char_indices().nth(1).map(|(n, _)| i + n).unwrap_or(text.len());
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let run = &text[start..i];
        if run.len() >= 13 && holds_card_number(run) {
            out.push_str(&run[..6]);
            out.extend(std::iter::repeat_n('*', run.len() - 10));
            out.push_str(&run[run.len() - 4..]);
        } else {
            out.push_str(run);
        }
    }
    out
}

/// [`redact`] for card numbers written as ASCII digits inside binary data.
pub fn redact_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < out.len() {
        if !out[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && out[i].is_ascii_digit() {
            i += 1;
        }
        let run = std::str::from_utf8(&bytes[start..i]).expect("ASCII digits");
        if run.len() >= 13 && holds_card_number(run) {
            out[start + 6..i - 4].fill(b'*');
        }
    }
    out
}

fn holds_card_number(run: &str) -> bool {
    (13..=19.min(run.len())).any(|len| (0..=run.len() - len).any(|at| pos_mask::luhn_valid(&run[at..at + len])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_masked_wherever_they_hide() {
        assert_eq!(redact("pan 4242424242424242 ok"), "pan 424242******4242 ok");
        // Inside a longer digit run (a BCD field next to other digits in hex).
        let hex = "F1F6424242424242424242230099";
        assert!(!redact(hex).contains("4242424242424242"), "{}", redact(hex));
        // Not a card number: short runs, and long runs with no Luhn-valid stretch stay.
        assert_eq!(redact("amount 000000001000"), "amount 000000001000");
        assert_eq!(redact("receipt 0001 trace 000042"), "receipt 0001 trace 000042");
        assert_eq!(redact("1111111111111"), "1111111111111");
        assert_eq!(redact("Grüße 4000056655665556"), "Grüße 400005******5556");
    }

    #[test]
    fn card_numbers_in_ascii_inside_binary_data_are_masked_too() {
        let mut frame = vec![0x0A, 0x10];
        frame.extend_from_slice(b"4242424242424242");
        frame.push(0x12);
        let out = redact_bytes(&frame);
        assert_eq!(&out[..2], &[0x0A, 0x10]);
        assert_eq!(&out[2..18], b"424242******4242");
        assert_eq!(out[18], 0x12);
        // Digits that are no card number stay, and so does a short run.
        assert_eq!(redact_bytes(b"pay_0000000000001"), b"pay_0000000000001");
    }

    #[test]
    fn lines_carry_time_device_direction_hex_and_meaning() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let t = Transcript::to_writer(Box::new(sink.clone()), "zvt");
        t.frame(Dir::In, &[0x06, 0x01, 0x00], "Authorization", true);
        t.note("fault: dropping a link-level ACK");
        t.device("printer").note("printer unplugged");
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with(" printer --  printer unplugged"), "{}", lines[2]);
        assert!(lines[0].ends_with(" zvt     in  06 01 00 | Authorization"), "{}", lines[0]);
        assert!(lines[0].starts_with("20") && lines[0].as_bytes()[10] == b'T', "{}", lines[0]);
        assert!(lines[1].ends_with("--  fault: dropping a link-level ACK"), "{}", lines[1]);
    }
}
