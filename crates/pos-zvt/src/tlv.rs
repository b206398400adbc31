//! The TLV container of BMP `06`: BER-TLV with one- to three-byte tags and
//! definite lengths (`xx`, `81 xx`, `82 hi lo`, big-endian — unlike the APDU
//! length, which is little-endian).

use thiserror::Error;

use crate::text::latin1;

/// Nesting deeper than this is refused (no terminal nests more than a few levels).
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// The tag's bytes as a number: `0x26`, `0x1F07`.
    pub tag: u32,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Primitive(Vec<u8>),
    Constructed(Vec<Tlv>),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlvError {
    #[error("TLV truncated at byte {0}")]
    Truncated(usize),
    #[error("TLV tag at byte {0} is longer than three bytes")]
    LongTag(usize),
    #[error("TLV length at byte {0} is not 0-127, 81 xx or 82 xx xx")]
    BadLength(usize),
    #[error("TLV nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("TLV value of {0} bytes is too long (at most 65535)")]
    TooLong(usize),
}

impl Tlv {
    pub fn primitive(tag: u32, value: impl Into<Vec<u8>>) -> Tlv {
        Tlv { tag, value: Value::Primitive(value.into()) }
    }

    pub fn constructed(tag: u32, items: Vec<Tlv>) -> Tlv {
        Tlv { tag, value: Value::Constructed(items) }
    }

    /// Whether the tag's first byte marks a constructed value (bit 6).
    pub fn is_constructed_tag(tag: u32) -> bool {
        first_byte(tag) & 0x20 != 0
    }

    /// The first element with `tag`, searched depth-first.
    pub fn find(items: &[Tlv], tag: u32) -> Option<&Tlv> {
        items.iter().find_map(|t| {
            if t.tag == tag {
                return Some(t);
            }
            match &t.value {
                Value::Constructed(inner) => Tlv::find(inner, tag),
                Value::Primitive(_) => None,
            }
        })
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::Primitive(b) => Some(b),
            Value::Constructed(_) => None,
        }
    }
}

fn first_byte(tag: u32) -> u8 {
    let b = tag.to_be_bytes();
    b.into_iter().find(|&x| x != 0).unwrap_or(0)
}

fn tag_bytes(tag: u32) -> Vec<u8> {
    let b = tag.to_be_bytes();
    let skip = b.iter().take(3).take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

/// Decodes a whole container body (what follows BMP `06` and its length).
pub fn decode(data: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    decode_at(data, 0, 0)
}

fn decode_at(data: &[u8], base: usize, depth: usize) -> Result<Vec<Tlv>, TlvError> {
    if depth > MAX_DEPTH {
        return Err(TlvError::TooDeep);
    }
    let mut items = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let e = element(data, i, base)?;
        let body = &data[e.start..e.end];
        let value = if e.constructed {
            Value::Constructed(decode_at(body, base + e.start, depth + 1)?)
        } else {
            Value::Primitive(body.to_vec())
        };
        items.push(Tlv { tag: e.tag, value });
        i = e.end;
    }
    Ok(items)
}

/// Where one element lies: its tag, whether its value is constructed, and
/// its value's range in the data it was read from.
struct Element {
    tag: u32,
    constructed: bool,
    start: usize,
    end: usize,
}

/// Reads the element starting at `data[i]`; `base` is where `data` starts in
/// the container, for the offsets in errors.
fn element(data: &[u8], mut i: usize, base: usize) -> Result<Element, TlvError> {
    let start = i;
    let first = data[i];
    let mut tag = u32::from(first);
    i += 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *data.get(i).ok_or(TlvError::Truncated(base + i))?;
            if i - start >= 3 {
                return Err(TlvError::LongTag(base + start));
            }
            tag = tag << 8 | u32::from(b);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let (len, used) = read_len(&data[i..]).map_err(|e| match e {
        LenError::Truncated => TlvError::Truncated(base + i),
        LenError::Bad => TlvError::BadLength(base + i),
    })?;
    i += used;
    if data.get(i..i + len).is_none() {
        return Err(TlvError::Truncated(base + data.len()));
    }
    Ok(Element { tag, constructed: first & 0x20 != 0, start: i, end: i + len })
}

enum LenError {
    Truncated,
    Bad,
}

fn read_len(b: &[u8]) -> Result<(usize, usize), LenError> {
    match *b.first().ok_or(LenError::Truncated)? {
        n @ 0..=0x7F => Ok((usize::from(n), 1)),
        0x81 => Ok((usize::from(*b.get(1).ok_or(LenError::Truncated)?), 2)),
        0x82 => {
            let hi = *b.get(1).ok_or(LenError::Truncated)?;
            let lo = *b.get(2).ok_or(LenError::Truncated)?;
            Ok((usize::from(u16::from_be_bytes([hi, lo])), 3))
        }
        _ => Err(LenError::Bad),
    }
}

/// Appends a BER definite length in its shortest form.
pub fn push_len(out: &mut Vec<u8>, len: usize) -> Result<(), TlvError> {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend([0x81, len as u8]),
        0x100..=0xFFFF => out.extend([0x82, (len >> 8) as u8, len as u8]),
        _ => return Err(TlvError::TooLong(len)),
    }
    Ok(())
}

/// Encodes elements (a container body, without BMP `06` and its length).
pub fn encode(items: &[Tlv]) -> Result<Vec<u8>, TlvError> {
    let mut out = Vec::new();
    for t in items {
        out.extend(tag_bytes(t.tag));
        let body = match &t.value {
            Value::Primitive(b) => b.clone(),
            Value::Constructed(inner) => encode(inner)?,
        };
        push_len(&mut out, body.len())?;
        out.extend(body);
    }
    Ok(out)
}

/// Tag 26 (permitted ZVT commands): the ECR lists the commands it accepts,
/// each as tag 0A holding the command's CLASS and INSTR (e.g. `06 D3` for
/// Print Text Block).
pub fn permitted_commands(commands: &[[u8; 2]]) -> Tlv {
    Tlv::constructed(0x26, commands.iter().map(|c| Tlv::primitive(0x0A, c.to_vec())).collect())
}

/// The text lines of a receipt in a container: every tag 07 under a print
/// text list (tag 24 or 25), in order, as Latin-1/CP437-ish bytes mapped to
/// text (bytes above 0x7F become U+00xx).
pub fn text_lines(items: &[Tlv]) -> Vec<String> {
    let mut lines = Vec::new();
    collect_lines(items, false, &mut lines);
    lines
}

fn collect_lines(items: &[Tlv], in_text: bool, out: &mut Vec<String>) {
    for t in items {
        match &t.value {
            Value::Primitive(b) if in_text && t.tag == 0x07 => out.push(latin1(b)),
            Value::Constructed(inner) => collect_lines(inner, in_text || t.tag == 0x24 || t.tag == 0x25, out),
            Value::Primitive(_) => {}
        }
    }
}

/// [`text_lines`] of a container body read in place: the same lines as
/// `decode` then `text_lines`, and the same error for a malformed container,
/// but without building the tree (no copy of any value but the lines).
/// This is how a receipt's Print Text Block is read.
pub fn text_lines_of(data: &[u8]) -> Result<Vec<String>, TlvError> {
    // A receipt line takes some 20 to 40 bytes with its tag and length: room
    // for most receipts' lines at once instead of growing 4, 8, 16, ...
    let mut lines = Vec::with_capacity(data.len() / 32);
    lines_at(data, 0, 0, false, &mut lines)?;
    Ok(lines)
}

/// `decode_at`'s walk, in the same order with the same checks, keeping only the lines.
fn lines_at(data: &[u8], base: usize, depth: usize, in_text: bool, out: &mut Vec<String>) -> Result<(), TlvError> {
    if depth > MAX_DEPTH {
        return Err(TlvError::TooDeep);
    }
    let mut i = 0;
    while i < data.len() {
        let e = element(data, i, base)?;
        let body = &data[e.start..e.end];
        if e.constructed {
            lines_at(body, base + e.start, depth + 1, in_text || e.tag == 0x24 || e.tag == 0x25, out)?;
        } else if in_text && e.tag == 0x07 {
            out.push(latin1(body));
        }
        i = e.end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_ber_big_endian() {
        let long = Tlv::primitive(0x07, vec![b'x'; 0x045D]);
        let bytes = encode(std::slice::from_ref(&long)).unwrap();
        assert_eq!(&bytes[..4], &[0x07, 0x82, 0x04, 0x5D]);
        assert_eq!(decode(&bytes).unwrap(), vec![long]);
        let mid = encode(&[Tlv::primitive(0x07, vec![0; 0x80])]).unwrap();
        assert_eq!(&mid[..3], &[0x07, 0x81, 0x80]);
    }

    #[test]
    fn permitted_print_text_block() {
        let bytes = encode(&[permitted_commands(&[[0x06, 0xD3]])]).unwrap();
        assert_eq!(bytes, [0x26, 0x04, 0x0A, 0x02, 0x06, 0xD3]);
    }

    #[test]
    fn two_byte_tags_and_nesting() {
        let bytes = [0x1F, 0x07, 0x01, 0x02, 0x25, 0x05, 0x07, 0x03, b'a', b'b', b'c'];
        let items = decode(&bytes).unwrap();
        assert_eq!(items[0], Tlv::primitive(0x1F07, [2]));
        assert_eq!(text_lines(&items), vec!["abc".to_string()]);
        assert_eq!(text_lines_of(&bytes).unwrap(), vec!["abc".to_string()]);
        assert_eq!(encode(&items).unwrap(), bytes);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[0x07, 0x05, 1, 2]), Err(TlvError::Truncated(4)));
        assert_eq!(decode(&[0x07, 0x83, 0, 0, 1]), Err(TlvError::BadLength(1)));
        assert_eq!(decode(&[0x1F, 0x81, 0x81, 0x81, 0x01]), Err(TlvError::LongTag(0)));
        let mut deep = Tlv::primitive(0x07, *b"x");
        for _ in 0..=MAX_DEPTH {
            deep = Tlv::constructed(0x25, vec![deep]);
        }
        assert_eq!(decode(&encode(&[deep.clone()]).unwrap()), Err(TlvError::TooDeep));
        assert_eq!(text_lines_of(&encode(&[deep]).unwrap()), Err(TlvError::TooDeep));
    }

    /// Reading lines in place gives what decoding the tree and collecting
    /// its lines gives, for good containers and for each kind of bad one.
    #[test]
    fn lines_read_in_place_are_the_lines_of_the_tree() {
        let receipt = encode(&[
            Tlv::primitive(0x1F07, [2]),
            Tlv::primitive(0x07, *b"outside a text list"),
            Tlv::constructed(
                0x25,
                vec![
                    Tlv::primitive(0x07, *b"Kundenbeleg"),
                    Tlv::primitive(0x07, *b""),
                    Tlv::primitive(0x09, [0xFF]),
                    Tlv::constructed(0x30, vec![Tlv::primitive(0x07, *b"G\x81ltig \xE1")]),
                    Tlv::primitive(0x07, vec![b'x'; 300]),
                ],
            ),
            Tlv::constructed(0x24, vec![Tlv::primitive(0x07, *b"second list")]),
        ])
        .unwrap();
        let via_tree = |b: &[u8]| decode(b).map(|items| text_lines(&items));
        assert_eq!(text_lines_of(&receipt), via_tree(&receipt));
        assert_eq!(text_lines_of(&receipt).unwrap().len(), 5);
        for cut in 0..receipt.len() {
            assert_eq!(text_lines_of(&receipt[..cut]), via_tree(&receipt[..cut]), "cut at {cut}");
        }
        for bad in [&[0x25, 0x83, 0, 0, 1][..], &[0x1F, 0x81, 0x81, 0x81, 0x01], &[0x25, 0x03, 0x07, 0x05, b'a']] {
            assert!(text_lines_of(bad).is_err());
            assert_eq!(text_lines_of(bad), via_tree(bad), "{bad:02X?}");
        }
    }
}
