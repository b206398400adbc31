//! A receipt as ESC/POS bytes, built line by line.

use crate::cmd::{ESC, GS, LF};

/// Characters per line of font A: 58 mm paper has 32, 80 mm 42 or 48.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Cols32,
    Cols42,
    Cols48,
}

impl Width {
    pub fn columns(self) -> usize {
        match self {
            Width::Cols32 => 32,
            Width::Cols42 => 42,
            Width::Cols48 => 48,
        }
    }

    pub fn from_columns(n: usize) -> Option<Width> {
        match n {
            32 => Some(Width::Cols32),
            42 => Some(Width::Cols42),
            48 => Some(Width::Cols48),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Center,
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarcodeError {
    #[error("EAN-13 takes 12 digits (the check digit is added) or 13 with a correct check digit, not {0:?}")]
    Ean13(String),
    #[error("Code 128 takes 1 to 252 printable ASCII characters, not {0:?}")]
    Code128(String),
    #[error("a QR code holds 1 to 7,089 bytes here, not {0}")]
    QrLength(usize),
}

/// A print job under construction. Every method appends commands; `bytes`
/// returns the job. It starts with `ESC @` and code page PC858.
#[derive(Debug, Clone)]
pub struct Receipt {
    out: Vec<u8>,
    width: Width,
    /// Current character width multiplier (1 or 2), for layout.
    wide: bool,
    /// Characters that had no PC858 byte and printed as `?`.
    missing: usize,
}

impl Receipt {
    pub fn new(width: Width) -> Receipt {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(&crate::cmd::INIT);
        out.extend_from_slice(&crate::cmd::CODE_PAGE_PC858);
        Receipt { out, width, wide: false, missing: 0 }
    }

    pub fn width(&self) -> Width {
        self.width
    }

    /// Columns a line has in the current character size.
    pub fn columns(&self) -> usize {
        if self.wide { self.width.columns() / 2 } else { self.width.columns() }
    }

    /// Characters so far that PC858 could not print (they show as `?`).
    pub fn unmappable(&self) -> usize {
        self.missing
    }

    pub fn bold(&mut self, on: bool) -> &mut Self {
        self.raw(&[ESC, b'E', u8::from(on)])
    }

    /// Character size: width and height multipliers 1 to 8 (`GS ! n`).
    pub fn size(&mut self, width: u8, height: u8) -> &mut Self {
        let (w, h) = (width.clamp(1, 8) - 1, height.clamp(1, 8) - 1);
        self.wide = w > 0;
        self.raw(&[GS, b'!', (w << 4) | h])
    }

    pub fn align(&mut self, a: Align) -> &mut Self {
        let n = match a {
            Align::Left => 0,
            Align::Center => 1,
            Align::Right => 2,
        };
        self.raw(&[ESC, b'a', n])
    }

    /// Text as it is, in PC858 (no line feed added).
    pub fn text(&mut self, text: &str) -> &mut Self {
        let (bytes, missing) = crate::codepage::encode(text);
        self.missing += missing;
        self.raw(&bytes)
    }

    /// One line of text; longer lines wrap on the printer.
    pub fn line(&mut self, text: &str) -> &mut Self {
        self.text(text).raw(&[LF])
    }

    /// Two columns: `left` flush left, `right` flush right on one line. When
    /// both do not fit, `left` takes its own line(s) and `right` the next.
    pub fn columns2(&mut self, left: &str, right: &str) -> &mut Self {
        let cols = self.columns();
        let (l, r) = (left.chars().count(), right.chars().count());
        if l + 1 + r <= cols {
            let gap = cols - l - r;
            let line = format!("{left}{}{right}", " ".repeat(gap));
            self.line(&line)
        } else {
            self.line(left);
            let pad = cols.saturating_sub(r);
            let line = format!("{}{right}", " ".repeat(pad));
            self.line(&line)
        }
    }

    /// A line of `c` across the paper.
    pub fn rule(&mut self, c: char) -> &mut Self {
        let line: String = std::iter::repeat_n(c, self.columns()).collect();
        self.line(&line)
    }

    /// Feeds `n` lines (`ESC d n`).
    pub fn feed(&mut self, n: u8) -> &mut Self {
        self.raw(&[ESC, b'd', n])
    }

    /// Feeds to the cutter and cuts, leaving a hinge (`GS V 66 n`).
    pub fn cut(&mut self) -> &mut Self {
        self.raw(&[GS, b'V', 66, 3])
    }

    /// Kicks the cash drawer on pin 2 with 100 ms pulses.
    pub fn open_drawer(&mut self) -> &mut Self {
        self.raw(&crate::cmd::drawer_kick(false, 100, 100))
    }

    /// EAN-13 below the current line, digits printed underneath.
    pub fn ean13(&mut self, digits: &str) -> Result<&mut Self, BarcodeError> {
        let err = || BarcodeError::Ean13(digits.to_string());
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let full = match digits.len() {
            12 => format!("{digits}{}", ean13_check_digit(digits)),
            13 if ean13_check_digit(&digits[..12]) == digits.as_bytes()[12] - b'0' => digits.to_string(),
            _ => return Err(err()),
        };
        self.barcode_style();
        self.raw(&[GS, b'k', 2]).raw(full.as_bytes()).raw(&[0]);
        Ok(self)
    }

    /// Code 128 (code set B), text printed underneath.
    pub fn code128(&mut self, text: &str) -> Result<&mut Self, BarcodeError> {
        if text.is_empty() || text.len() > 252 || !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(BarcodeError::Code128(text.to_string()));
        }
        self.barcode_style();
        self.raw(&[GS, b'k', 73, (text.len() + 2) as u8, b'{', b'B']).raw(text.as_bytes());
        Ok(self)
    }

    fn barcode_style(&mut self) {
        // Height 80 dots, module width 2, human-readable digits below.
        self.raw(&[GS, b'h', 80, GS, b'w', 2, GS, b'H', 2]);
    }

    /// QR code, Model 2, error correction M, 6-dot modules.
    pub fn qr(&mut self, data: &str) -> Result<&mut Self, BarcodeError> {
        let n = data.len();
        if n == 0 || n > 7089 {
            return Err(BarcodeError::QrLength(n));
        }
        let store = n + 3;
        self.raw(&[GS, b'(', b'k', 4, 0, 49, 65, 50, 0]) // model 2
            .raw(&[GS, b'(', b'k', 3, 0, 49, 67, 6]) // module size
            .raw(&[GS, b'(', b'k', 3, 0, 49, 69, 49]) // error correction M
            .raw(&[GS, b'(', b'k', (store & 0xff) as u8, (store >> 8) as u8, 49, 80, 48])
            .raw(data.as_bytes())
            .raw(&[GS, b'(', b'k', 3, 0, 49, 81, 48]); // print
        Ok(self)
    }

    /// Appends bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

/// The EAN-13 check digit of the first 12 digits.
pub fn ean13_check_digit(first12: &str) -> u8 {
    let sum: u32 =
        first12.bytes().take(12).enumerate().map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 }).sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(f: impl FnOnce(&mut Receipt)) -> Vec<u8> {
        let mut r = Receipt::new(Width::Cols42);
        f(&mut r);
        r.bytes()[5..].to_vec()
    }

    #[test]
    fn a_receipt_starts_with_init_and_pc858() {
        assert_eq!(Receipt::new(Width::Cols32).bytes(), b"\x1b@\x1bt\x13");
    }

    #[test]
    fn every_style_command_is_byte_exact() {
        assert_eq!(
            job(|r| {
                r.bold(true).bold(false);
            }),
            b"\x1bE\x01\x1bE\x00"
        );
        assert_eq!(
            job(|r| {
                r.size(2, 2).size(1, 1).size(2, 1);
            }),
            b"\x1d!\x11\x1d!\x00\x1d!\x10"
        );
        assert_eq!(
            job(|r| {
                r.align(Align::Left).align(Align::Center).align(Align::Right);
            }),
            b"\x1ba\x00\x1ba\x01\x1ba\x02"
        );
        assert_eq!(
            job(|r| {
                r.line("Total 12,34 €");
            }),
            b"Total 12,34 \xd5\n"
        );
        assert_eq!(
            job(|r| {
                r.feed(3).cut();
            }),
            b"\x1bd\x03\x1dVB\x03"
        );
        assert_eq!(
            job(|r| {
                r.open_drawer();
            }),
            b"\x1bp\x00\x32\x32"
        );
    }

    #[test]
    fn the_drawer_kick_always_carries_its_pulse_times() {
        assert_eq!(crate::cmd::drawer_kick(true, 0, 1000), [0x1b, b'p', 1, 1, 255]);
        assert_eq!(crate::cmd::drawer_kick(false, 100, 200), [0x1b, b'p', 0, 50, 100]);
        assert_eq!(crate::cmd::drawer_pulse_now(false, 200), [0x10, 0x14, 1, 0, 2]);
        assert_eq!(crate::cmd::drawer_pulse_now(true, 5000), [0x10, 0x14, 1, 1, 8]);
        assert_eq!(crate::cmd::drawer_pulse_now(false, 0), [0x10, 0x14, 1, 0, 1]);
        assert_eq!(crate::cmd::status_request(4), [0x10, 0x04, 0x04], "no stray byte after n");
    }

    #[test]
    fn two_columns_fill_the_line_for_each_paper_width() {
        for (w, n) in [(Width::Cols32, 32), (Width::Cols42, 42), (Width::Cols48, 48)] {
            let mut r = Receipt::new(w);
            r.columns2("Total", "12.34 EUR");
            let line = &r.bytes()[5..];
            assert_eq!(line.len(), n + 1, "{w:?}");
            assert!(line.starts_with(b"Total ") && line.ends_with(b" 12.34 EUR\n"));
        }
        // Double width halves the columns.
        let mut r = Receipt::new(Width::Cols42);
        r.size(2, 2).columns2("A", "B");
        assert_eq!(&r.bytes()[8..], format!("A{}B\n", " ".repeat(19)).as_bytes());
        // Too long for one line: the amount goes right-aligned on the next.
        let mut r = Receipt::new(Width::Cols32);
        r.columns2("A very long article name that wraps", "1.00");
        assert_eq!(
            &r.bytes()[5..],
            format!("A very long article name that wraps\n{}1.00\n", " ".repeat(28)).as_bytes()
        );
    }

    #[test]
    fn barcodes_are_byte_exact_and_validated() {
        assert_eq!(
            job(|r| {
                r.ean13("400638133393").unwrap();
            }),
            b"\x1dh\x50\x1dw\x02\x1dH\x02\x1dk\x024006381333931\x00"
        );
        assert!(
            job(|r| {
                r.ean13("4006381333931").unwrap();
            })
            .ends_with(b"4006381333931\x00")
        );
        let mut r = Receipt::new(Width::Cols42);
        assert!(r.ean13("4006381333932").is_err(), "wrong check digit");
        assert!(r.ean13("40063813339").is_err());
        assert!(r.ean13("40063813339a").is_err());
        assert_eq!(
            job(|r| {
                r.code128("POSD-123").unwrap();
            }),
            b"\x1dh\x50\x1dw\x02\x1dH\x02\x1dk\x49\x0a{BPOSD-123"
        );
        assert!(r.code128("").is_err());
        assert!(r.code128("naïve").is_err());
    }

    #[test]
    fn a_qr_code_is_model_2_with_its_length_in_two_bytes() {
        let bytes = job(|r| {
            r.qr("https://example.com/r/pay_123").unwrap();
        });
        let mut want = Vec::new();
        want.extend_from_slice(b"\x1d(k\x04\x00\x31\x41\x32\x00");
        want.extend_from_slice(b"\x1d(k\x03\x00\x31\x43\x06");
        want.extend_from_slice(b"\x1d(k\x03\x00\x31\x45\x31");
        want.extend_from_slice(b"\x1d(k\x20\x00\x31\x50\x30https://example.com/r/pay_123");
        want.extend_from_slice(b"\x1d(k\x03\x00\x31\x51\x30");
        assert_eq!(bytes, want);
        let long = "x".repeat(300);
        let bytes = job(|r| {
            r.qr(&long).unwrap();
        });
        assert!(bytes.windows(5).any(|w| w == b"\x1d(k\x2f\x01"), "300 + 3 = 0x012f");
        assert!(Receipt::new(Width::Cols42).qr("").is_err());
    }

    #[test]
    fn ean13_check_digits() {
        assert_eq!(ean13_check_digit("400638133393"), 1);
        assert_eq!(ean13_check_digit("590123412345"), 7);
        assert_eq!(ean13_check_digit("000000000000"), 0);
    }
}
