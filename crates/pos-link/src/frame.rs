//! Serial framing: `DLE STX <APDU, DLE doubled> DLE ETX CRC-lo CRC-hi`.
//!
//! The CRC is CRC-16/KERMIT over the unstuffed APDU followed by ETX, sent low
//! byte first and never stuffed. ACK (0x06) and NAK (0x15) travel as single
//! bytes between frames.

use crc::{CRC_16_KERMIT, Crc};

pub const DLE: u8 = 0x10;
pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;

/// Largest APDU a ZVT link can carry: 3-byte header, `FF lo hi` and 65535 data bytes.
pub const MAX_APDU_LEN: usize = 5 + u16::MAX as usize;

const KERMIT: Crc<u16> = Crc::<u16>::new(&CRC_16_KERMIT);

/// CRC-16/KERMIT over `apdu` followed by ETX, as carried in a serial frame.
pub fn frame_crc(apdu: &[u8]) -> u16 {
    let mut digest = KERMIT.digest();
    digest.update(apdu);
    digest.update(&[ETX]);
    digest.finalize()
}

/// Encodes one APDU as a serial frame.
pub fn encode_frame(apdu: &[u8]) -> Vec<u8> {
    let dles = apdu.iter().filter(|&&b| b == DLE).count();
    let mut out = Vec::with_capacity(apdu.len() + dles + 6);
    out.extend_from_slice(&[DLE, STX]);
    for &b in apdu {
        out.push(b);
        if b == DLE {
            out.push(DLE);
        }
    }
    out.extend_from_slice(&[DLE, ETX]);
    out.extend_from_slice(&frame_crc(apdu).to_le_bytes());
    out
}

/// Why a received frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("CRC mismatch: frame carried {received:#06x}, computed {computed:#06x}")]
    Crc { received: u16, computed: u16 },
    #[error("frame longer than {max} bytes")]
    TooLong { max: usize },
    #[error("invalid byte {0:#04x} after DLE inside a frame")]
    BadEscape(u8),
    #[error("a new frame started before the previous one ended")]
    Truncated,
    #[error("gap between bytes inside a frame exceeded T1")]
    InterByteTimeout,
}

/// What the decoder recognised in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame with a good CRC; the unstuffed APDU.
    Frame(Vec<u8>),
    /// A frame that must be NAKed.
    Bad(FrameError),
    /// An ACK byte outside a frame.
    Ack,
    /// A NAK byte outside a frame.
    Nak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: only DLE (a frame start), ACK and NAK mean anything.
    Idle,
    /// Saw DLE between frames; STX starts a frame.
    Dle,
    /// Inside a frame's APDU.
    Body,
    /// Saw DLE inside a frame.
    BodyDle,
    /// After DLE ETX: waiting for the CRC low byte.
    CrcLo,
    /// Waiting for the CRC high byte; holds the low byte.
    CrcHi(u8),
    /// Dropping an oversized frame until its end (DLE ETX + CRC) or a new start.
    Skip,
    /// Saw DLE while skipping.
    SkipDle,
    /// Skipping the two CRC bytes of a dropped frame.
    SkipCrc(u8),
}

/// Byte-at-a-time frame decoder that resynchronises after garbage, partial
/// frames and noise, and never buffers more than `max_apdu` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    buf: Vec<u8>,
    max_apdu: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_APDU_LEN)
    }
}

impl FrameDecoder {
    pub fn new(max_apdu: usize) -> Self {
        Self { state: State::Idle, buf: Vec::new(), max_apdu }
    }

    /// True while a frame has started but not ended (T1 applies).
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle | State::Dle | State::Skip | State::SkipDle | State::SkipCrc(_))
    }

    /// Drops a partial frame (after an inter-byte timeout). Whatever is left
    /// of it is skipped up to its end or the next frame start, so its payload
    /// bytes are never taken for ACK or NAK.
    pub fn abort_frame(&mut self) {
        self.state = State::Skip;
        self.buf = Vec::new();
    }

    /// Feeds one byte; returns what it completed, if anything.
    pub fn push(&mut self, byte: u8) -> Option<Decoded> {
        let (next, out) = match (self.state, byte) {
            (State::Idle, DLE) => (State::Dle, None),
            (State::Idle, ACK) => (State::Idle, Some(Decoded::Ack)),
            (State::Idle, NAK) => (State::Idle, Some(Decoded::Nak)),
            (State::Idle, _) => (State::Idle, None),
            (State::Dle, STX) => {
                self.buf.clear();
                (State::Body, None)
            }
            (State::Dle, DLE) => (State::Dle, None),
            (State::Dle, _) => (State::Idle, None),
            (State::Body, DLE) => (State::BodyDle, None),
            (State::Body, b) | (State::BodyDle, b @ DLE) => self.body_byte(b),
            (State::BodyDle, ETX) => (State::CrcLo, None),
            (State::BodyDle, STX) => {
                self.buf.clear();
                (State::Body, Some(Decoded::Bad(FrameError::Truncated)))
            }
            (State::BodyDle, b) => {
                self.buf.clear();
                (State::Skip, Some(Decoded::Bad(FrameError::BadEscape(b))))
            }
            (State::CrcLo, b) => (State::CrcHi(b), None),
            (State::CrcHi(lo), hi) => {
                let received = u16::from_le_bytes([lo, hi]);
                let computed = frame_crc(&self.buf);
                let apdu = std::mem::take(&mut self.buf);
                let out = if received == computed {
                    Decoded::Frame(apdu)
                } else {
                    Decoded::Bad(FrameError::Crc { received, computed })
                };
                (State::Idle, Some(out))
            }
            (State::Skip, DLE) => (State::SkipDle, None),
            (State::Skip, _) | (State::SkipDle, DLE) => (State::Skip, None),
            (State::SkipDle, ETX) => (State::SkipCrc(2), None),
            (State::SkipDle, STX) => {
                self.buf.clear();
                (State::Body, None)
            }
            (State::SkipDle, _) => (State::Idle, None),
            (State::SkipCrc(1), _) => (State::Idle, None),
            (State::SkipCrc(n), _) => (State::SkipCrc(n - 1), None),
        };
        self.state = next;
        out
    }

    fn body_byte(&mut self, b: u8) -> (State, Option<Decoded>) {
        if self.buf.len() >= self.max_apdu {
            self.buf = Vec::new();
            return (State::Skip, Some(Decoded::Bad(FrameError::TooLong { max: self.max_apdu })));
        }
        self.buf.push(b);
        (State::Body, None)
    }

    /// Feeds a slice; convenience for tests and tools.
    pub fn push_all(&mut self, bytes: &[u8]) -> Vec<Decoded> {
        bytes.iter().filter_map(|&b| self.push(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kermit_check_value() {
        assert_eq!(KERMIT.checksum(b"123456789"), 0x2189);
    }

    #[test]
    fn oversized_frame_is_rejected_and_the_next_frame_decodes() {
        let mut d = FrameDecoder::new(8);
        let mut stream = encode_frame(&[0x06; 32]);
        stream.extend(encode_frame(&[0x80, 0x00, 0x00]));
        let out = d.push_all(&stream);
        assert_eq!(out, vec![Decoded::Bad(FrameError::TooLong { max: 8 }), Decoded::Frame(vec![0x80, 0x00, 0x00])]);
    }

    #[test]
    fn bytes_inside_a_frame_are_never_taken_as_ack() {
        let mut d = FrameDecoder::default();
        assert_eq!(d.push_all(&encode_frame(&[ACK, NAK, ACK])), vec![Decoded::Frame(vec![ACK, NAK, ACK])]);
    }

    #[test]
    fn restart_inside_a_frame_reports_truncation_and_keeps_the_new_frame() {
        let mut d = FrameDecoder::default();
        let mut stream = vec![DLE, STX, 0x01, 0x02];
        stream.extend(encode_frame(&[0x05, 0x01, 0x00]));
        assert_eq!(
            d.push_all(&stream),
            vec![Decoded::Bad(FrameError::Truncated), Decoded::Frame(vec![0x05, 0x01, 0x00])]
        );
    }

    #[test]
    fn payload_of_a_dropped_frame_is_not_taken_for_ack_or_nak() {
        let mut d = FrameDecoder::default();
        // A bad escape, then the rest of that frame holds ACK and NAK bytes.
        let mut stream = vec![DLE, STX, 0x01, DLE, 0x42, ACK, NAK, 0x00, DLE, ETX, 0x12, 0x34];
        stream.extend(encode_frame(&[0x80, 0x00, 0x00]));
        assert_eq!(
            d.push_all(&stream),
            vec![Decoded::Bad(FrameError::BadEscape(0x42)), Decoded::Frame(vec![0x80, 0x00, 0x00])]
        );
    }

    #[test]
    fn invalid_escape_drops_the_frame() {
        let mut d = FrameDecoder::default();
        let mut stream = vec![DLE, STX, 0x01, DLE, 0x42, 0x02];
        stream.extend(encode_frame(&[0x80, 0x00, 0x00]));
        assert_eq!(
            d.push_all(&stream),
            vec![Decoded::Bad(FrameError::BadEscape(0x42)), Decoded::Frame(vec![0x80, 0x00, 0x00])]
        );
    }
}
