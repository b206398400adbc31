//! Splits an ESC/POS byte stream, from any encoder, into commands.
//!
//! The decoder is incremental: feed it bytes as they arrive and it returns
//! every command completed so far, keeping a partial one for the next call.
//! Commands it does not interpret are skipped by their documented lengths
//! (fixed, NUL-terminated, or length-prefixed), so what follows them is never
//! misread as text. Large bodies it does not need are skipped as they stream
//! by, so memory stays bounded whatever the input.

use crate::cmd::{DLE, ESC, FS, GS};

/// Bodies larger than this (images, downloaded graphics) are skipped unread.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Printable bytes in the current code page.
    Text(Vec<u8>),
    LineFeed,
    CarriageReturn,
    Tab,
    Init,
    Bold(bool),
    DoubleStrike(bool),
    /// 0 off, 1 thin, 2 thick.
    Underline(u8),
    Reverse(bool),
    /// `ESC !`: font B (bit 0), bold (3), double height (4), double width (5), underline (7).
    PrintMode(u8),
    /// Width and height multipliers, 1 to 8.
    Size {
        width: u8,
        height: u8,
    },
    /// 0 font A (12x24), 1 font B (9x17).
    Font(u8),
    /// 0 left, 1 centre, 2 right.
    Align(u8),
    LeftMargin(u16),
    PrintAreaWidth(u16),
    /// `ESC $`: dots from the start of the line.
    AbsolutePosition(u16),
    /// `ESC \`: dots from the current position (may be negative).
    RelativePosition(i16),
    /// `ESC 3 n` (dots) or `ESC 2` (default, `None`).
    LineSpacing(Option<u8>),
    CodePage(u8),
    FeedLines(u8),
    FeedDots(u8),
    /// `GS k`: 0..6 / 65..79 as the command gives it (2/67 EAN-13, 73 Code 128).
    Barcode {
        kind: u8,
        data: Vec<u8>,
    },
    BarcodeHeight(u8),
    BarcodeWidth(u8),
    /// 0 none, 1 above, 2 below, 3 both.
    BarcodeHri(u8),
    QrModel(u8),
    QrModuleSize(u8),
    QrErrorCorrection(u8),
    QrStore(Vec<u8>),
    QrPrint,
    /// A raster image: `width` dots wide, rows of `(width + 7) / 8` bytes, MSB first.
    Image {
        width: u16,
        height: u16,
        data: Vec<u8>,
    },
    /// Full or partial cut (with or without feeding first).
    Cut {
        partial: bool,
    },
    DrawerKick {
        pin: u8,
        on: u8,
        off: u8,
    },
    /// `DLE EOT n`: answer the status byte at once.
    StatusRequest(u8),
    /// `DLE ENQ n`: recover from an error (n = 1, 2) or clear buffers.
    Recover(u8),
    /// `GS a n`: automatic status back mask.
    AsbEnable(u8),
    /// `GS r n`: answer the status once everything before has been processed.
    TransmitStatus(u8),
    /// A known command that changes nothing on paper here, with its bytes
    /// (the prefix, and for long bodies only the head).
    Skipped(Vec<u8>),
    /// A byte that starts no known command; skipped alone.
    Unknown(u8),
}

#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of an oversized body still to skip.
    skip: usize,
}

/// What one parse attempt found at the start of the buffer.
enum Step {
    /// A command of `len` bytes.
    Done(Op, usize),
    /// A command whose body is too large to keep: skip `total` bytes.
    SkipLong(Op, usize),
    /// More bytes are needed.
    Partial,
}

fn u16le(lo: u8, hi: u8) -> u16 {
    u16::from(lo) | (u16::from(hi) << 8)
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the commands they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Op> {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
        let mut ops = Vec::new();
        let mut at = 0;
        while at < self.buf.len() {
            match parse(&self.buf[at..]) {
                Step::Done(op, len) => {
                    ops.push(op);
                    at += len;
                }
                Step::SkipLong(op, total) => {
                    ops.push(op);
                    let here = total.min(self.buf.len() - at);
                    at += here;
                    self.skip = total - here;
                }
                Step::Partial => break,
            }
        }
        self.buf.drain(..at);
        merge_text(ops)
    }

    /// Bytes held for an incomplete command.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.skip
    }

    /// Bytes kept in memory (a body being skipped is counted by
    /// [`pending`](Self::pending) but not kept).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

fn merge_text(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        match (out.last_mut(), op) {
            (Some(Op::Text(a)), Op::Text(b)) => a.extend_from_slice(&b),
            (_, op) => out.push(op),
        }
    }
    out
}

/// A command of fixed length `len`, or Partial.
fn fixed(b: &[u8], len: usize, f: impl FnOnce(&[u8]) -> Op) -> Step {
    if b.len() < len { Step::Partial } else { Step::Done(f(&b[..len]), len) }
}

/// A command with `head` bytes, then a body of `body` bytes.
fn with_body(b: &[u8], head: usize, body: usize, keep: bool, f: impl FnOnce(&[u8], &[u8]) -> Op) -> Step {
    let total = head + body;
    if !keep || body > MAX_BODY {
        return Step::SkipLong(Op::Skipped(b[..head].to_vec()), total);
    }
    if b.len() < total { Step::Partial } else { Step::Done(f(&b[..head], &b[head..total]), total) }
}

fn parse(b: &[u8]) -> Step {
    let c = b[0];
    match c {
        ESC => parse_esc(b),
        GS => parse_gs(b),
        DLE => parse_dle(b),
        FS => parse_fs(b),
        b'\n' => Step::Done(Op::LineFeed, 1),
        b'\r' => Step::Done(Op::CarriageReturn, 1),
        b'\t' => Step::Done(Op::Tab, 1),
        // FF prints the page in page mode; in standard mode it is a line end.
        0x0c => Step::Done(Op::LineFeed, 1),
        0x00..=0x1f | 0x7f => Step::Done(Op::Unknown(c), 1),
        _ => {
            let n = b.iter().take_while(|&&x| x >= 0x20 && x != 0x7f).count();
            Step::Done(Op::Text(b[..n].to_vec()), n)
        }
    }
}

fn parse_esc(b: &[u8]) -> Step {
    let Some(&c) = b.get(1) else { return Step::Partial };
    let skip = |len| fixed(b, len, |x| Op::Skipped(x.to_vec()));
    match c {
        b'@' => Step::Done(Op::Init, 2),
        b'E' => fixed(b, 3, |x| Op::Bold(x[2] & 1 == 1)),
        b'G' => fixed(b, 3, |x| Op::DoubleStrike(x[2] & 1 == 1)),
        b'-' => fixed(b, 3, |x| {
            Op::Underline(match x[2] {
                0 | b'0' => 0,
                1 | b'1' => 1,
                _ => 2,
            })
        }),
        b'!' => fixed(b, 3, |x| Op::PrintMode(x[2])),
        b'a' => fixed(b, 3, |x| {
            Op::Align(match x[2] {
                0 | b'0' => 0,
                1 | b'1' => 1,
                _ => 2,
            })
        }),
        b'M' => fixed(b, 3, |x| {
            Op::Font(match x[2] {
                0 | b'0' => 0,
                _ => 1,
            })
        }),
        b't' => fixed(b, 3, |x| Op::CodePage(x[2])),
        b'd' => fixed(b, 3, |x| Op::FeedLines(x[2])),
        b'J' => fixed(b, 3, |x| Op::FeedDots(x[2])),
        b'2' => Step::Done(Op::LineSpacing(None), 2),
        b'3' => fixed(b, 3, |x| Op::LineSpacing(Some(x[2]))),
        b'$' => fixed(b, 4, |x| Op::AbsolutePosition(u16le(x[2], x[3]))),
        b'\\' => fixed(b, 4, |x| Op::RelativePosition(u16le(x[2], x[3]) as i16)),
        b'p' => fixed(b, 5, |x| Op::DrawerKick { pin: x[2] & 1, on: x[3], off: x[4] }),
        b'i' => Step::Done(Op::Cut { partial: false }, 2),
        b'm' => Step::Done(Op::Cut { partial: true }, 2),
        // One parameter byte: right spacing, charset, rotation, upside-down,
        // unidirectional, colour, peripheral, reverse feed, page direction,
        // cancel user character, user character set, double-strike (old).
        b' ' | b'R' | b'V' | b'{' | b'U' | b'r' | b'=' | b'e' | b'K' | b'T' | b'?' | b'%' | b'u' | b'<' => skip(3),
        b'L' | b'S' | b'F' | b'8' => skip(2),
        // Panel buttons, paper sensors: ESC c 3/4/5 n.
        b'c' => skip(4),
        // Page-mode print area: 8 parameter bytes.
        b'W' => skip(10),
        // Beeper on some models: ESC B n t.
        b'B' => skip(4),
        // Horizontal tab positions: up to 32 bytes ending with NUL.
        b'D' => match b[2..].iter().position(|&x| x == 0) {
            Some(p) => skip(2 + p + 1),
            None if b.len() > 2 + 33 => Step::Done(Op::Skipped(b[..2].to_vec()), 2),
            None => Step::Partial,
        },
        // Bit image: ESC * m nL nH d1..dk; k = n (8-dot modes) or 3n (24-dot).
        b'*' => {
            if b.len() < 5 {
                return Step::Partial;
            }
            let (m, n) = (b[2], usize::from(u16le(b[3], b[4])));
            let k = if m >= 32 { 3 * n } else { n };
            with_body(b, 5, k, true, |h, d| column_image(h[2], n, d))
        }
        // User-defined characters: ESC & y c1 c2 [x d1..d(y*x)] for c1..=c2.
        b'&' => {
            if b.len() < 5 {
                return Step::Partial;
            }
            let (y, c1, c2) = (usize::from(b[2]), b[3], b[4]);
            let mut at = 5;
            for _ in c1..=c2.max(c1) {
                let Some(&x) = b.get(at) else { return Step::Partial };
                at += 1 + y * usize::from(x);
            }
            if b.len() < at { Step::Partial } else { Step::Done(Op::Skipped(b[..5].to_vec()), at) }
        }
        // ESC ( fn pL pH data: length-prefixed.
        b'(' => {
            if b.len() < 5 {
                return Step::Partial;
            }
            with_body(b, 5, usize::from(u16le(b[3], b[4])), false, |_, _| unreachable!())
        }
        _ => Step::Done(Op::Unknown(ESC), 1),
    }
}

fn parse_gs(b: &[u8]) -> Step {
    let Some(&c) = b.get(1) else { return Step::Partial };
    let skip = |len| fixed(b, len, |x| Op::Skipped(x.to_vec()));
    match c {
        b'!' => fixed(b, 3, |x| Op::Size { width: (x[2] >> 4 & 7) + 1, height: (x[2] & 7) + 1 }),
        b'B' => fixed(b, 3, |x| Op::Reverse(x[2] & 1 == 1)),
        b'h' => fixed(b, 3, |x| Op::BarcodeHeight(x[2])),
        b'w' => fixed(b, 3, |x| Op::BarcodeWidth(x[2])),
        b'H' => fixed(b, 3, |x| Op::BarcodeHri(x[2] & 3)),
        b'a' => fixed(b, 3, |x| Op::AsbEnable(x[2])),
        b'r' => fixed(b, 3, |x| Op::TransmitStatus(x[2])),
        b'L' => fixed(b, 4, |x| Op::LeftMargin(u16le(x[2], x[3]))),
        b'W' => fixed(b, 4, |x| Op::PrintAreaWidth(u16le(x[2], x[3]))),
        // HRI font, smoothing, printer ID, print downloaded image, kanji,
        // counter and other one-byte settings.
        b'f' | b'b' | b'I' | b'/' | b'T' | b'E' | b'j' => skip(3),
        b'P' | b'$' | b'\\' | b'^' => skip(4),
        b':' | b'\x0c' => skip(2),
        b'V' => {
            let Some(&m) = b.get(2) else { return Step::Partial };
            let partial = matches!(m, 1 | 49 | 66 | 98 | 104);
            let len = if matches!(m, 65 | 66 | 97 | 98 | 103 | 104) { 4 } else { 3 };
            fixed(b, len, |_| Op::Cut { partial })
        }
        b'k' => {
            let Some(&m) = b.get(2) else { return Step::Partial };
            if m <= 6 {
                // Format 1: data ends with NUL.
                match b[3..].iter().position(|&x| x == 0) {
                    Some(p) => Step::Done(Op::Barcode { kind: m, data: b[3..3 + p].to_vec() }, 3 + p + 1),
                    None if b.len() > 3 + 255 => Step::Done(Op::Skipped(b[..3].to_vec()), 3),
                    None => Step::Partial,
                }
            } else {
                let Some(&n) = b.get(3) else { return Step::Partial };
                with_body(b, 4, usize::from(n), true, |_, d| Op::Barcode { kind: m, data: d.to_vec() })
            }
        }
        // GS ( fn pL pH data: length-prefixed; GS ( k carries the 2D codes.
        b'(' => {
            if b.len() < 5 {
                return Step::Partial;
            }
            let (f, len) = (b[2], usize::from(u16le(b[3], b[4])));
            with_body(b, 5, len, f == b'k', |_, d| two_d(d))
        }
        // GS 8 L p1..p4 data: graphics with a 4-byte length.
        b'8' => {
            if b.len() < 7 {
                return Step::Partial;
            }
            let len = u32::from_le_bytes([b[3], b[4], b[5], b[6]]) as usize;
            with_body(b, 7, len, false, |_, _| unreachable!())
        }
        // GS v 0 m xL xH yL yH: raster image, xL+xH*256 bytes per row.
        b'v' => {
            if b.len() < 8 {
                return Step::Partial;
            }
            let (bytes_per_row, rows) = (u16le(b[4], b[5]), u16le(b[6], b[7]));
            let len = usize::from(bytes_per_row) * usize::from(rows);
            // Wider than any paper (and than u16 dots) for a bogus row length: clipped when rendered.
            let width = bytes_per_row.saturating_mul(8);
            with_body(b, 8, len, true, |_, d| Op::Image { width, height: rows, data: d.to_vec() })
        }
        // GS * x y: downloaded bit image of x*y*8 bytes.
        b'*' => {
            if b.len() < 4 {
                return Step::Partial;
            }
            with_body(b, 4, usize::from(b[2]) * usize::from(b[3]) * 8, false, |_, _| unreachable!())
        }
        _ => Step::Done(Op::Unknown(GS), 1),
    }
}

fn parse_dle(b: &[u8]) -> Step {
    let Some(&c) = b.get(1) else { return Step::Partial };
    match c {
        0x04 => fixed(b, 3, |x| Op::StatusRequest(x[2])),
        0x05 => fixed(b, 3, |x| Op::Recover(x[2])),
        // DLE DC4 fn ...: real-time pulse (fn 1: m t), power-off, buffer clear.
        0x14 => {
            let Some(&f) = b.get(2) else { return Step::Partial };
            let len = match f {
                1 => 5,
                8 => 10,
                _ => 5,
            };
            fixed(b, len, |x| {
                if f == 1 { Op::DrawerKick { pin: x[3] & 1, on: x[4], off: x[4] } } else { Op::Skipped(x.to_vec()) }
            })
        }
        _ => Step::Done(Op::Unknown(DLE), 1),
    }
}

fn parse_fs(b: &[u8]) -> Step {
    let Some(&c) = b.get(1) else { return Step::Partial };
    let skip = |len| fixed(b, len, |x| Op::Skipped(x.to_vec()));
    match c {
        // Kanji mode on / off.
        b'&' | b'.' => skip(2),
        b'!' | b'-' | b'C' | b'W' => skip(3),
        // FS S n1 n2; FS p n m (print NV image).
        b'S' | b'p' => skip(4),
        b'(' => {
            if b.len() < 5 {
                return Step::Partial;
            }
            with_body(b, 5, usize::from(u16le(b[3], b[4])), false, |_, _| unreachable!())
        }
        _ => Step::Done(Op::Unknown(FS), 1),
    }
}

/// `GS ( k` bodies: cn fn [parameters].
fn two_d(d: &[u8]) -> Op {
    match d {
        // cn 49 = QR code.
        [49, 65, n, ..] => Op::QrModel(*n),
        [49, 67, n, ..] => Op::QrModuleSize(*n),
        [49, 69, n, ..] => Op::QrErrorCorrection(*n),
        [49, 80, 48, data @ ..] => Op::QrStore(data.to_vec()),
        [49, 81, 48, ..] => Op::QrPrint,
        _ => Op::Skipped([&[GS, b'(', b'k'][..], &d[..d.len().min(2)]].concat()),
    }
}

/// `ESC *` column data (8 or 24 dots per column) as a raster image.
fn column_image(m: u8, columns: usize, d: &[u8]) -> Op {
    let rows_of = if m >= 32 { 24 } else { 8 };
    let bytes_per_col = rows_of / 8;
    let width = columns;
    let stride = width.div_ceil(8);
    let mut data = vec![0u8; stride * rows_of];
    for x in 0..width {
        for byte in 0..bytes_per_col {
            let v = d[x * bytes_per_col + byte];
            for bit in 0..8 {
                if v & (0x80 >> bit) != 0 {
                    let y = byte * 8 + bit;
                    data[y * stride + x / 8] |= 0x80 >> (x % 8);
                }
            }
        }
    }
    Op::Image { width: (stride * 8) as u16, height: rows_of as u16, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<Op> {
        Decoder::new().push(bytes)
    }

    #[test]
    fn text_styles_and_layout() {
        let ops = all(b"\x1b@\x1bt\x13\x1ba\x01\x1bE\x01\x1d!\x11Hi \xd5\n\x1b$\x20\x01X\x1b\\\xf4\xffY\x1b3\x32\x1b2");
        assert_eq!(
            ops,
            vec![
                Op::Init,
                Op::CodePage(19),
                Op::Align(1),
                Op::Bold(true),
                Op::Size { width: 2, height: 2 },
                Op::Text(b"Hi \xd5".to_vec()),
                Op::LineFeed,
                Op::AbsolutePosition(288),
                Op::Text(b"X".to_vec()),
                Op::RelativePosition(-12),
                Op::Text(b"Y".to_vec()),
                Op::LineSpacing(Some(50)),
                Op::LineSpacing(None),
            ]
        );
    }

    #[test]
    fn barcodes_qr_and_cut() {
        let mut r = crate::Receipt::new(crate::Width::Cols42);
        r.ean13("400638133393").unwrap().code128("POSD-1").unwrap().qr("hello").unwrap().cut();
        let ops = all(r.bytes());
        assert!(ops.contains(&Op::Barcode { kind: 2, data: b"4006381333931".to_vec() }));
        assert!(ops.contains(&Op::Barcode { kind: 73, data: b"{BPOSD-1".to_vec() }));
        assert!(ops.contains(&Op::QrStore(b"hello".to_vec())));
        assert!(ops.contains(&Op::QrPrint));
        assert_eq!(ops.last(), Some(&Op::Cut { partial: true }));
        assert!(!ops.iter().any(|o| matches!(o, Op::Unknown(_) | Op::Text(_))), "{ops:?}");
    }

    #[test]
    fn skipped_commands_never_leak_their_parameters_as_text() {
        // ESC ( A (beeper, length-prefixed), GS ( L graphics, GS 8 L, FS ( e,
        // ESC D tabs, ESC & user characters, GS * downloaded image.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"\x1b(A\x04\x00\x30\x41\x42\x43");
        bytes.extend_from_slice(b"\x1d(L\x06\x00\x30\x45ABCD");
        bytes.extend_from_slice(b"\x1d8L\x03\x00\x00\x00XYZ");
        bytes.extend_from_slice(b"\x1c(e\x02\x00\x33\x08");
        bytes.extend_from_slice(b"\x1bD\x08\x10\x18\x00");
        bytes.extend_from_slice(b"\x1b&\x03\x41\x42\x01ABC\x01DEF");
        bytes.extend_from_slice(b"\x1d*\x01\x01ABCDEFGH");
        bytes.extend_from_slice(b"ok\n");
        let ops = all(&bytes);
        let text: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::Text(_))).collect();
        assert_eq!(text, vec![&Op::Text(b"ok".to_vec())], "{ops:?}");
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same() {
        let mut r = crate::Receipt::new(crate::Width::Cols48);
        r.bold(true).line("Total 12.34").qr("https://example.com").unwrap().feed(2).cut();
        r.raw(b"\x1dv0\x00\x02\x00\x02\x00\xff\x00\x00\xff");
        let whole = all(r.bytes());
        for cut in 1..r.bytes().len() {
            let mut d = Decoder::new();
            let mut ops = d.push(&r.bytes()[..cut]);
            ops.extend(d.push(&r.bytes()[cut..]));
            assert_eq!(merge_text(ops), whole, "split at {cut}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn raster_and_column_images() {
        let ops = all(b"\x1dv0\x00\x01\x00\x02\x00\x80\x01");
        assert_eq!(ops, vec![Op::Image { width: 8, height: 2, data: vec![0x80, 0x01] }]);
        // ESC * 0 (8-dot), two columns: the first has its top dot set.
        let ops = all(b"\x1b*\x00\x02\x00\x80\x01");
        let Op::Image { width, height, data } = &ops[0] else { panic!("{ops:?}") };
        assert_eq!((*width, *height), (8, 8));
        assert_eq!(data[0], 0x80, "row 0: column 0");
        assert_eq!(data[7], 0x40, "row 7: column 1");
    }

    #[test]
    fn an_oversized_body_is_skipped_as_it_streams_by() {
        let mut d = Decoder::new();
        let len = MAX_BODY + 10;
        let mut head = b"\x1d8L".to_vec();
        head.extend_from_slice(&(len as u32).to_le_bytes());
        let ops = d.push(&head);
        assert!(matches!(ops[..], [Op::Skipped(_)]));
        for _ in 0..(len / 4096) {
            assert!(d.push(&[b'A'; 4096]).is_empty());
        }
        let rest = len % 4096;
        let mut tail = vec![b'A'; rest];
        tail.extend_from_slice(b"after\n");
        assert_eq!(d.push(&tail), vec![Op::Text(b"after".to_vec()), Op::LineFeed]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic_and_with_bounded_memory(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut d = Decoder::new();
            for chunk in bytes.chunks(7) {
                d.push(chunk);
            }
            proptest::prop_assert!(d.buf.len() <= 2048);
        }
    }

    /// Found by fuzzing (fuzz/artifacts/escpos): a raster image whose row
    /// length times 8 dots overflows; it decodes, clipped, without a panic.
    #[test]
    fn a_raster_image_wider_than_any_paper_does_not_overflow() {
        let mut d = Decoder::new();
        let mut bytes = vec![0x1D, b'v', b'0', 0, 0xFF, 0xFF, 1, 0];
        bytes.extend(vec![0u8; 0xFFFF]);
        let ops = d.push(&bytes);
        assert!(ops.iter().any(|op| matches!(op, Op::Image { width: u16::MAX, height: 1, .. })), "{:?}", ops.len());
    }
}
