//! APDU framing: `CLASS INSTR LEN data`, where LEN is one byte for 0..=254 or
//! `FF lo hi` (little-endian) for longer data.
//!
//! On TCP the length prefix is the only framing, so [`ApduSplitter`] turns a
//! byte stream into APDUs, whatever the read boundaries.

/// Longest data field an APDU can carry.
pub const MAX_DATA_LEN: usize = u16::MAX as usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    #[error("APDU data of {0} bytes exceeds the 65535-byte maximum")]
    DataTooLong(usize),
    #[error("APDU is shorter than its 3-byte header")]
    TooShort,
    #[error("APDU length field says {declared} data bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("APDU of {len} bytes exceeds the configured maximum of {max}")]
    TooLong { len: usize, max: usize },
}

/// Appends the length prefix for `data_len` bytes of data.
pub fn push_len(out: &mut Vec<u8>, data_len: usize) -> Result<(), ApduError> {
    match data_len {
        0..=254 => out.push(data_len as u8),
        255..=MAX_DATA_LEN => {
            out.push(0xFF);
            out.extend_from_slice(&(data_len as u16).to_le_bytes());
        }
        _ => return Err(ApduError::DataTooLong(data_len)),
    }
    Ok(())
}

/// Builds a complete APDU.
pub fn build(class: u8, instr: u8, data: &[u8]) -> Result<Vec<u8>, ApduError> {
    let mut out = Vec::with_capacity(data.len() + 5);
    out.extend_from_slice(&[class, instr]);
    push_len(&mut out, data.len())?;
    out.extend_from_slice(data);
    Ok(out)
}

/// The header of an APDU and where its data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub class: u8,
    pub instr: u8,
    pub data_len: usize,
    pub header_len: usize,
}

impl Header {
    pub fn total_len(&self) -> usize {
        self.header_len + self.data_len
    }
}

/// Reads the header at the start of `bytes`; `None` when more bytes are needed.
#[inline]
pub fn header(bytes: &[u8]) -> Option<Header> {
    let (&class, &instr, &len) = match bytes {
        [c, i, l, ..] => (c, i, l),
        _ => return None,
    };
    if len != 0xFF {
        return Some(Header { class, instr, data_len: len as usize, header_len: 3 });
    }
    let ext = bytes.get(3..5)?;
    Some(Header { class, instr, data_len: u16::from_le_bytes([ext[0], ext[1]]) as usize, header_len: 5 })
}

/// Splits a complete APDU into its header and data, checking the length field.
#[inline]
pub fn parse(apdu: &[u8]) -> Result<(Header, &[u8]), ApduError> {
    let h = header(apdu).ok_or(ApduError::TooShort)?;
    let data = &apdu[h.header_len..];
    if data.len() != h.data_len {
        return Err(ApduError::LengthMismatch { declared: h.data_len, actual: data.len() });
    }
    Ok((h, data))
}

/// Reassembles APDUs from a TCP byte stream: copes with an APDU split over
/// reads and several APDUs in one read.
#[derive(Debug)]
pub struct ApduSplitter {
    buf: Vec<u8>,
    max_len: usize,
}

impl Default for ApduSplitter {
    fn default() -> Self {
        Self::new(MAX_DATA_LEN + 5)
    }
}

impl ApduSplitter {
    /// `max_len` bounds a whole APDU (header included).
    pub fn new(max_len: usize) -> Self {
        Self { buf: Vec::new(), max_len }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that do not yet form a complete APDU.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete APDU, if one is buffered. An APDU over the maximum is
    /// an error: a TCP stream cannot resynchronise, so the caller must close it.
    pub fn next_apdu(&mut self) -> Result<Option<Vec<u8>>, ApduError> {
        let Some(h) = header(&self.buf) else { return Ok(None) };
        let len = h.total_len();
        if len > self.max_len {
            return Err(ApduError::TooLong { len, max: self.max_len });
        }
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_extended_lengths() {
        assert_eq!(build(0x80, 0x00, &[]).unwrap(), vec![0x80, 0x00, 0x00]);
        assert_eq!(build(0x06, 0xD1, &[0; 254]).unwrap()[..3], [0x06, 0xD1, 0xFE]);
        assert_eq!(build(0x06, 0xD1, &[0; 255]).unwrap()[..5], [0x06, 0xD1, 0xFF, 0xFF, 0x00]);
        assert_eq!(build(0x06, 0xD3, &[0; 0x0461]).unwrap()[..5], [0x06, 0xD3, 0xFF, 0x61, 0x04]);
        assert_eq!(build(0x06, 0xD3, &vec![0; 65536]), Err(ApduError::DataTooLong(65536)));
    }

    #[test]
    fn parse_checks_the_length_field() {
        assert_eq!(parse(&[0x06, 0x0F]), Err(ApduError::TooShort));
        assert_eq!(parse(&[0x06, 0x0F, 0x02, 0x27]), Err(ApduError::LengthMismatch { declared: 2, actual: 1 }));
        let (h, data) = parse(&[0x06, 0x0F, 0x02, 0x27, 0x00]).unwrap();
        assert_eq!((h.class, h.instr, data), (0x06, 0x0F, &[0x27, 0x00][..]));
    }

    #[test]
    fn splitter_refuses_an_apdu_over_the_maximum() {
        let mut s = ApduSplitter::new(16);
        s.push(&[0x06, 0xD3, 0xFF, 0x00, 0x01]);
        assert_eq!(s.next_apdu(), Err(ApduError::TooLong { len: 261, max: 16 }));
    }
}
