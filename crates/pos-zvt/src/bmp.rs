//! BMP fields: a one-byte tag followed by data whose length the tag fixes
//! (fixed, LLVAR, LLLVAR, or the BER-length TLV container `06`).
//!
//! Fields keep their bytes exactly as received, in order, so a message
//! decodes and encodes back byte for byte; typed accessors interpret them.
//! A field whose tag is not in the table cannot be measured: decoding stops
//! there and keeps the rest as [`Unparsed`], reported, never dropped.

use crate::text::trim_latin1;
use crate::{bcd, tlv};

pub use crate::text::latin1;

/// How a BMP's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Fixed(usize),
    /// Two-digit `Fx Fy` length prefix.
    LlVar,
    /// Three-digit `Fx Fy Fz` length prefix.
    LllVar,
    /// BMP 06: BER length.
    Tlv,
}

/// The length class of every BMP of the ZVT command set (PA00P015 ch. 11).
pub fn class(tag: u8) -> Option<Class> {
    use Class::*;
    Some(match tag {
        0x01 | 0x02 | 0x03 | 0x05 | 0x19 | 0x27 | 0x8A | 0x8C | 0xA0 | 0xD0 | 0xD2 | 0xD3 | 0xE0 | 0xE9 | 0xEA
        | 0xF0 | 0xF9 | 0xFA | 0xFB | 0xFC | 0xFD => Fixed(1),
        0x0D | 0x0E | 0x17 | 0x3A | 0x49 | 0x87 => Fixed(2),
        0x0B | 0x0C | 0x37 | 0x3D | 0x88 | 0xAA => Fixed(3),
        0x29 => Fixed(4),
        0xBA => Fixed(5),
        0x04 => Fixed(6),
        0x3B | 0xEB => Fixed(8),
        0x2A => Fixed(15),
        0x22 | 0x23 | 0x2D | 0x8B | 0xA7 | 0xD1 | 0xE1..=0xE8 | 0xF1..=0xF8 => LlVar,
        0x24 | 0x2E | 0x3C | 0x60 | 0x92 | 0x9A | 0xAF => LllVar,
        0x06 => Tlv,
        _ => return None,
    })
}

/// Tags whose data is card data a register must never keep (tracks, chip data).
pub fn is_sensitive(tag: u8) -> bool {
    matches!(tag, 0x23 | 0x24 | 0x2D | 0x2E | 0x3A)
}

/// One field: its tag and its data without the length prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct Bmp {
    pub tag: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Bmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if is_sensitive(self.tag) {
            write!(f, "Bmp({:02X}: {} bytes withheld)", self.tag, self.data.len())
        } else {
            write!(f, "Bmp({:02X}: {:02X?})", self.tag, self.data)
        }
    }
}

impl Bmp {
    pub fn new(tag: u8, data: impl Into<Vec<u8>>) -> Bmp {
        Bmp { tag, data: data.into() }
    }

    fn bcd(tag: u8, value: u64, bytes: usize) -> Bmp {
        Bmp::new(tag, bcd::encode(value, bytes).unwrap_or_else(|| vec![0x99; bytes]))
    }

    /// BMP 04, minor units (at most 999 999 999 999).
    pub fn amount(minor: u64) -> Bmp {
        Bmp::bcd(0x04, minor, 6)
    }
    /// BMP 49, the ISO 4217 numeric code.
    pub fn currency(numeric: u16) -> Bmp {
        Bmp::bcd(0x49, u64::from(numeric), 2)
    }
    pub fn payment_type(b: u8) -> Bmp {
        Bmp::new(0x19, [b])
    }
    pub fn result_code(rc: u8) -> Bmp {
        Bmp::new(0x27, [rc])
    }
    pub fn timeout(seconds: u8) -> Bmp {
        Bmp::new(0x01, [seconds])
    }
    pub fn trace(n: u32) -> Bmp {
        Bmp::bcd(0x0B, u64::from(n), 3)
    }
    pub fn receipt_no(n: u16) -> Bmp {
        Bmp::bcd(0x87, u64::from(n), 2)
    }
    pub fn turnover(n: u32) -> Bmp {
        Bmp::bcd(0x88, u64::from(n), 3)
    }
    pub fn terminal_id(n: u32) -> Bmp {
        Bmp::bcd(0x29, u64::from(n), 4)
    }
    pub fn card_type(t: u8) -> Bmp {
        Bmp::new(0x8A, [t])
    }
    pub fn card_name(name: &str) -> Bmp {
        Bmp::new(0x8B, name.as_bytes().iter().copied().take(99).chain([0]).collect::<Vec<u8>>())
    }
    /// BMP 3B: the authorisation attribute (AID), 8 bytes zero-padded.
    pub fn auth_code(code: &str) -> Bmp {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(code.bytes()) {
            *d = s;
        }
        Bmp::new(0x3B, b)
    }
    /// BMP 0C time `HHMMSS` and 0D date `MMDD`.
    pub fn time(h: u8, m: u8, s: u8) -> Bmp {
        Bmp::bcd(0x0C, u64::from(h) * 10_000 + u64::from(m) * 100 + u64::from(s), 3)
    }
    pub fn date(month: u8, day: u8) -> Bmp {
        Bmp::bcd(0x0D, u64::from(month) * 100 + u64::from(day), 2)
    }
    /// BMP 22 from a masked PAN: digits, with `*` (or any non-digit) for a
    /// masked digit (sent as nibble E); an odd count is padded with F.
    pub fn masked_pan(pan: &str) -> Bmp {
        let nibbles: Vec<u8> = pan.chars().take(99 * 2).map(|c| c.to_digit(10).map_or(0x0E, |d| d as u8)).collect();
        let data = nibbles.chunks(2).map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0x0F)).collect::<Vec<u8>>();
        Bmp::new(0x22, data)
    }
    pub fn tlv(items: &[tlv::Tlv]) -> Result<Bmp, tlv::TlvError> {
        Ok(Bmp::new(0x06, tlv::encode(items)?))
    }
}

/// What could not be measured: from `offset` (within the BMP area) to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    pub offset: usize,
    pub reason: String,
    pub bytes: Vec<u8>,
}

/// A run of BMP fields, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bmps {
    pub fields: Vec<Bmp>,
    /// Set when a field could not be measured (unknown tag, truncated).
    pub unparsed: Option<Unparsed>,
}

impl FromIterator<Bmp> for Bmps {
    fn from_iter<I: IntoIterator<Item = Bmp>>(iter: I) -> Self {
        Bmps { fields: iter.into_iter().collect(), unparsed: None }
    }
}

/// A field too long for its length class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BMP {tag:02X}: {len} bytes do not fit its length class {class:?}")]
pub struct FieldTooLong {
    pub tag: u8,
    pub len: usize,
    pub class: Class,
}

impl Bmps {
    pub fn decode(data: &[u8]) -> Bmps {
        // A field takes at least two bytes, most three or more: room for the
        // usual dozen at once instead of growing 4, 8, 16 (none when empty).
        let mut fields = Vec::with_capacity((data.len() / 3).min(16));
        let mut i = 0;
        while i < data.len() {
            match measure(&data[i..]) {
                Ok((start, end)) => {
                    fields.push(Bmp { tag: data[i], data: data[i + start..i + end].to_vec() });
                    i += end;
                }
                Err(reason) => {
                    return Bmps { fields, unparsed: Some(Unparsed { offset: i, reason, bytes: data[i..].to_vec() }) };
                }
            }
        }
        Bmps { fields, unparsed: None }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FieldTooLong> {
        for f in &self.fields {
            let class = class(f.tag).unwrap_or(Class::Fixed(f.data.len()));
            let too_long = || FieldTooLong { tag: f.tag, len: f.data.len(), class };
            out.push(f.tag);
            match class {
                Class::Fixed(n) if n == f.data.len() => {}
                Class::Fixed(_) => return Err(too_long()),
                Class::LlVar => out.extend(bcd::var_prefix(f.data.len(), 2).ok_or_else(too_long)?),
                Class::LllVar => out.extend(bcd::var_prefix(f.data.len(), 3).ok_or_else(too_long)?),
                Class::Tlv => tlv::push_len(out, f.data.len()).map_err(|_| too_long())?,
            }
            out.extend_from_slice(&f.data);
        }
        if let Some(u) = &self.unparsed {
            out.extend_from_slice(&u.bytes);
        }
        Ok(())
    }

    pub fn get(&self, tag: u8) -> Option<&[u8]> {
        self.fields.iter().find(|f| f.tag == tag).map(|f| f.data.as_slice())
    }

    fn byte(&self, tag: u8) -> Option<u8> {
        self.get(tag).and_then(|d| d.first().copied())
    }

    fn number(&self, tag: u8) -> Option<u64> {
        self.get(tag).and_then(bcd::decode)
    }

    pub fn result_code(&self) -> Option<u8> {
        self.byte(0x27)
    }
    pub fn amount(&self) -> Option<u64> {
        self.number(0x04)
    }
    pub fn currency(&self) -> Option<u16> {
        self.number(0x49).and_then(|n| u16::try_from(n).ok())
    }
    pub fn payment_type(&self) -> Option<u8> {
        self.byte(0x19)
    }
    pub fn trace(&self) -> Option<u32> {
        self.number(0x0B).map(|n| n as u32)
    }
    pub fn receipt_no(&self) -> Option<u16> {
        self.number(0x87).map(|n| n as u16)
    }
    pub fn turnover(&self) -> Option<u32> {
        self.number(0x88).map(|n| n as u32)
    }
    pub fn terminal_id(&self) -> Option<u32> {
        self.number(0x29).map(|n| n as u32)
    }
    pub fn card_type(&self) -> Option<u8> {
        self.byte(0x8A)
    }
    /// BMP 8B, without its terminating zero.
    pub fn card_name(&self) -> Option<String> {
        self.get(0x8B).map(|d| latin1(d.split(|&b| b == 0).next().unwrap_or_default()))
    }
    /// BMP 3B: authorisation attribute, trailing zeros removed.
    pub fn auth_code(&self) -> Option<String> {
        self.get(0x3B).map(|d| latin1(trim_latin1(d.split(|&b| b == 0).next().unwrap_or_default())))
    }
    /// BMP 0C and 0D as (month, day, hour, minute, second), when both are valid.
    pub fn date_time(&self) -> Option<(u8, u8, u8, u8, u8)> {
        let t = self.number(0x0C)?;
        let d = self.number(0x0D)?;
        Some(((d / 100) as u8, (d % 100) as u8, (t / 10_000) as u8, (t / 100 % 100) as u8, (t % 100) as u8))
    }
    /// BMP 22 as digits with `*` for masked ones (E nibbles); F padding dropped.
    pub fn masked_pan(&self) -> Option<String> {
        let d = self.get(0x22)?;
        let mut s = String::with_capacity(d.len() * 2);
        for n in d.iter().flat_map(|b| [b >> 4, b & 0x0F]) {
            match n {
                0..=9 => s.push(char::from(b'0' + n)),
                0x0E => s.push('*'),
                0x0F => {}
                _ => return None,
            }
        }
        Some(s)
    }
    /// BMP 3C (additional text), as text.
    pub fn additional_text(&self) -> Option<String> {
        self.get(0x3C).map(latin1)
    }
    /// BMP 06 decoded; `None` without one.
    pub fn tlv(&self) -> Option<Result<Vec<tlv::Tlv>, tlv::TlvError>> {
        self.get(0x06).map(tlv::decode)
    }
    /// The receipt's text lines in BMP 06, read in place (see [`tlv::text_lines_of`]):
    /// what `tlv()` then [`tlv::text_lines`] give, without building the tree.
    /// `None` without BMP 06.
    pub fn text_lines(&self) -> Option<Result<Vec<String>, tlv::TlvError>> {
        self.get(0x06).map(tlv::text_lines_of)
    }
}

/// The data range `(start, end)` of the field at the start of `d`.
fn measure(d: &[u8]) -> Result<(usize, usize), String> {
    let tag = d[0];
    let class = class(tag).ok_or_else(|| format!("unknown BMP {tag:02X}"))?;
    let truncated = || format!("BMP {tag:02X} is truncated ({} bytes left)", d.len() - 1);
    let (start, len) = match class {
        Class::Fixed(n) => (1, n),
        Class::LlVar => {
            (3, bcd::read_var_prefix(&d[1..], 2).ok_or_else(|| format!("BMP {tag:02X}: bad LLVAR length"))?)
        }
        Class::LllVar => {
            (4, bcd::read_var_prefix(&d[1..], 3).ok_or_else(|| format!("BMP {tag:02X}: bad LLLVAR length"))?)
        }
        // Only the shortest length form is measured: a field keeps its data
        // without the length, so a longer form could not be sent back as it
        // came. Such a field is kept with the rest as unparsed, byte for byte.
        Class::Tlv => match d.get(1) {
            None => return Err(truncated()),
            Some(&n) if n < 0x80 => (2, usize::from(n)),
            Some(0x81) => match *d.get(2).ok_or_else(truncated)? {
                n @ 0x80.. => (3, usize::from(n)),
                _ => return Err("BMP 06: TLV length not in its shortest form".into()),
            },
            Some(0x82) => {
                let hi = *d.get(2).ok_or_else(truncated)?;
                let lo = *d.get(3).ok_or_else(truncated)?;
                match usize::from(u16::from_be_bytes([hi, lo])) {
                    n @ 0x100.. => (4, n),
                    _ => return Err("BMP 06: TLV length not in its shortest form".into()),
                }
            }
            Some(_) => return Err(format!("BMP 06: bad TLV length byte {:02X}", d[1])),
        },
    };
    if d.len() < start + len {
        return Err(truncated());
    }
    Ok((start, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_pan_roundtrips_with_e_nibbles_and_f_padding() {
        let b = Bmp::masked_pan("559883******8074");
        assert_eq!(b.data, [0x55, 0x98, 0x83, 0xEE, 0xEE, 0xEE, 0x80, 0x74]);
        let odd = Bmp::masked_pan("6725904411001000014");
        assert_eq!(odd.data.last(), Some(&0x4F));
        let f: Bmps = [b, Bmp::amount(190)].into_iter().collect();
        assert_eq!(f.masked_pan().as_deref(), Some("559883******8074"));
        assert_eq!(f.amount(), Some(190));
    }

    #[test]
    fn an_unknown_bmp_keeps_the_rest_and_says_where() {
        let data = [0x27, 0x00, 0x31, 0x37, 0x46, 0x04, 0, 0, 0, 0, 0x01, 0x90];
        let f = Bmps::decode(&data);
        assert_eq!(f.result_code(), Some(0));
        let u = f.unparsed.as_ref().unwrap();
        assert_eq!((u.offset, u.reason.as_str()), (2, "unknown BMP 31"));
        let mut out = Vec::new();
        f.encode_into(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn truncated_fields_are_reported() {
        let f = Bmps::decode(&[0x04, 0x00, 0x01]);
        assert!(f.fields.is_empty());
        assert!(f.unparsed.unwrap().reason.contains("truncated"));
        let f = Bmps::decode(&[0x8B, 0xF1, 0xF0, b'a']);
        assert!(f.unparsed.is_some());
    }

    #[test]
    fn track_data_is_withheld_from_debug_output() {
        let b = Bmp::new(0x23, b"4242424242424242=2512".to_vec());
        assert!(!format!("{b:?}").contains("42"));
    }
}
