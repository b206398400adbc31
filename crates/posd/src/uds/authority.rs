//! Lets any `:authority` through on the API's Unix socket.
//!
//! gRPC clients name a Unix socket's path as each request's authority:
//! grpcio (Python, C++, Ruby) since 1.57 sends it percent-encoded
//! (`run%2Fposd%2Fposd.sock`), grpc-java and others the bare path. The
//! HTTP/2 layer under tonic (h2) checks `:authority` against the URI grammar
//! and resets such a request (`RST_STREAM`, `PROTOCOL_ERROR`) before posd
//! sees it, and has no setting for that. On a Unix socket the authority
//! names nothing, so [`Rewriter`] sits between the socket and h2 and
//! replaces an `:authority` h2 would refuse with `localhost`; every other
//! byte passes as the client sent it.
//!
//! Header blocks are compressed (HPACK, RFC 7541) against a table both
//! sides keep, so the rewriter follows the client's table (which entries
//! name `:authority`, and their sizes) and replaces a value that enters the
//! table only with one of the same length: h2's table then stays the
//! client's, entry for entry and size for size (so an empty `:authority`
//! that enters the table stays as it is, and h2 refuses it). A header block that was
//! rewritten is framed anew (HEADERS, then CONTINUATION frames of at most
//! 16 KiB, the least any HTTP/2 peer accepts); other frames pass unchanged.
//! What the rewriter cannot follow (a malformed frame or header block, a
//! connection that is not HTTP/2) passes unchanged from there on, for h2 to
//! judge.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (the least SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// A header block longer than this passes unread (h2 refuses far shorter
/// ones), so a connection holds at most this much of one.
const MAX_BLOCK: usize = 64 << 10;
/// The dynamic table's size until the client changes it (SETTINGS_HEADER_TABLE_SIZE's default).
const DEFAULT_TABLE_SIZE: usize = 4096;
/// What an entry costs in the dynamic table beyond its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
const REPLACEMENT: &[u8] = b"localhost";

/// The static table's names (RFC 7541, Appendix A), index 1 first.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// Code lengths of HPACK's Huffman code (RFC 7541, Appendix B) for the
/// bytes 0 to 255, then EOS. The code is canonical: the codes of one length
/// follow each other in symbol order, after all shorter codes.
const HUFFMAN_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];
const EOS: u16 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the client's connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Passing everything unchanged.
    Raw,
}

/// A HEADERS or CONTINUATION frame being read.
struct Frame {
    head: [u8; FRAME_HEADER],
    len: usize,
    payload: Vec<u8>,
}

/// A header block being read: a HEADERS frame, then CONTINUATION frames
/// until one has END_HEADERS.
struct Block {
    /// The frames as they came, sent on unchanged when nothing is replaced.
    raw: Vec<u8>,
    /// The stream identifier as sent.
    stream: [u8; 4],
    /// The HEADERS frame's END_STREAM and PRIORITY flags, and its priority fields.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Rewrites what a client sends on one HTTP/2 connection, for h2 to read.
pub struct Rewriter {
    mode: Mode,
    /// How much of the preface has been read.
    preface: usize,
    /// A frame header being read.
    head: Vec<u8>,
    /// Payload bytes still to pass of a frame that passes unchanged.
    pass: usize,
    frame: Option<Frame>,
    block: Option<Block>,
    table: Table,
    /// How many header blocks had their `:authority` replaced.
    pub rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Self {
        Self {
            mode: Mode::Preface,
            preface: 0,
            head: Vec::with_capacity(FRAME_HEADER),
            pass: 0,
            frame: None,
            block: None,
            table: Table::new(),
            rewritten: 0,
        }
    }

    /// Whether everything from here on passes unchanged.
    pub fn passing(&self) -> bool {
        self.mode == Mode::Raw
    }

    /// Takes bytes as the client sent them; appends to `out` what h2 reads
    /// instead (bytes of a frame not yet complete are held back).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.mode {
                Mode::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                Mode::Preface => {
                    let n = (PREFACE.len() - self.preface).min(input.len());
                    if input[..n] != PREFACE[self.preface..self.preface + n] {
                        // Not HTTP/2 with prior knowledge: nothing to rewrite.
                        self.mode = Mode::Raw;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    self.preface += n;
                    input = &input[n..];
                    if self.preface == PREFACE.len() {
                        self.mode = Mode::Frames;
                    }
                }
                Mode::Frames => input = self.frames(input, out),
            }
        }
    }

    /// The client closed its side: what was held back goes on as it came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        if let Some(frame) = self.frame.take() {
            out.extend_from_slice(&frame.head);
            out.extend_from_slice(&frame.payload);
        }
        out.append(&mut self.head);
        self.mode = Mode::Raw;
    }

    /// Reads frames from `input`; returns what it did not consume yet.
    fn frames<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        if self.pass > 0 {
            let n = self.pass.min(input.len());
            out.extend_from_slice(&input[..n]);
            self.pass -= n;
            return &input[n..];
        }
        if let Some(frame) = &mut self.frame {
            let n = (frame.len - frame.payload.len()).min(input.len());
            frame.payload.extend_from_slice(&input[..n]);
            if frame.payload.len() == frame.len {
                let frame = self.frame.take().expect("a frame being read");
                self.header_frame(frame, out);
            }
            return &input[n..];
        }
        let n = (FRAME_HEADER - self.head.len()).min(input.len());
        self.head.extend_from_slice(&input[..n]);
        let rest = &input[n..];
        if self.head.len() < FRAME_HEADER {
            return rest;
        }
        let mut head = [0u8; FRAME_HEADER];
        head.copy_from_slice(&self.head);
        self.head.clear();
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let kind = head[3];
        // A header frame past the size every peer accepts is h2's to refuse
        // (FRAME_SIZE_ERROR): not buffered here.
        if (kind == HEADERS || kind == CONTINUATION) && len > MAX_FRAME {
            // Far beyond what h2 accepts: it refuses the frame, as the client sent it.
            self.give_up(&[&head[..]], out);
        } else if kind == HEADERS || kind == CONTINUATION {
            let frame = Frame { head, len, payload: Vec::with_capacity(len.min(MAX_FRAME)) };
            if len == 0 {
                self.header_frame(frame, out);
            } else {
                self.frame = Some(frame);
            }
        } else if self.block.is_some() {
            // Only CONTINUATION may follow a header block's first frame:
            // h2 refuses the connection, as the client sent it.
            self.give_up(&[&head[..]], out);
        } else {
            out.extend_from_slice(&head);
            self.pass = len;
        }
        rest
    }

    /// A whole HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, frame: Frame, out: &mut Vec<u8>) {
        let Frame { head, payload, .. } = frame;
        let (kind, flags) = (head[3], head[4]);
        let mut stream = [0u8; 4];
        stream.copy_from_slice(&head[5..]);
        let continues = matches!(&self.block, Some(b) if b.stream == stream);
        if kind == HEADERS && self.block.is_none() {
            let Some((priority, fragment)) = headers_payload(flags, &payload) else {
                return self.give_up(&[&head[..], &payload[..]], out);
            };
            let fragment = fragment.to_vec();
            let mut raw = Vec::with_capacity(FRAME_HEADER + payload.len());
            raw.extend_from_slice(&head);
            raw.extend_from_slice(&payload);
            self.block = Some(Block { raw, stream, flags: flags & (END_STREAM | PRIORITY), priority, fragment });
        } else if kind == CONTINUATION && continues {
            let block = self.block.as_mut().expect("a header block being read");
            block.raw.extend_from_slice(&head);
            block.raw.extend_from_slice(&payload);
            block.fragment.extend_from_slice(&payload);
            if block.raw.len() > MAX_BLOCK {
                return self.give_up(&[], out);
            }
        } else {
            return self.give_up(&[&head[..], &payload[..]], out);
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("a header block being read");
            self.end_block(block, out);
        }
    }

    /// A whole header block: rewritten, or sent on as it came.
    fn end_block(&mut self, block: Block, out: &mut Vec<u8>) {
        match rewrite(&block.fragment, &mut self.table) {
            Ok(None) => out.extend_from_slice(&block.raw),
            Ok(Some(fragment)) => {
                self.rewritten += 1;
                frame_block(&block, &fragment, out);
            }
            Err(Malformed) => {
                // h2 fails the connection on it (COMPRESSION_ERROR).
                out.extend_from_slice(&block.raw);
                self.mode = Mode::Raw;
            }
        }
    }

    /// Sends on what was held back and `frames`, as they came, and stops rewriting.
    fn give_up(&mut self, frames: &[&[u8]], out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        for f in frames {
            out.extend_from_slice(f);
        }
        self.mode = Mode::Raw;
    }
}

/// A HEADERS frame's priority fields and header block fragment (without
/// padding); `None` when the frame is too short for its flags.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority: Option<[u8; 5]> = None;
    if flags & PRIORITY != 0 {
        if p.len() < 5 {
            return None;
        }
        let (fields, rest) = p.split_at(5);
        priority = Some(fields.try_into().ok()?);
        p = rest;
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// Frames a rewritten header block: a HEADERS frame with the first one's
/// flags and priority, then CONTINUATION frames.
fn frame_block(block: &Block, fragment: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = match &block.priority {
        Some(p) => p,
        None => &[],
    };
    let (chunk, mut rest) = fragment.split_at(fragment.len().min(MAX_FRAME - priority.len()));
    let flags = if rest.is_empty() { block.flags | END_HEADERS } else { block.flags };
    push_frame_header(out, priority.len() + chunk.len(), HEADERS, flags, block.stream);
    out.extend_from_slice(priority);
    out.extend_from_slice(chunk);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        push_frame_header(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
    }
}

fn push_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream);
}

/// A header block h2 would refuse as the client sent it, whatever posd does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// A header field's name, as far as the rewriter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Name {
    authority: bool,
    len: usize,
}

/// The client's dynamic table (RFC 7541 §2.3.2, §4): the entries' names and
/// sizes, newest first.
struct Table {
    entries: VecDeque<(Name, usize)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Self {
        Self { entries: VecDeque::new(), size: 0, max: DEFAULT_TABLE_SIZE }
    }

    /// The name at `index` of the static table, then the dynamic one.
    fn name(&self, index: usize) -> Result<Name, Malformed> {
        match index {
            0 => Err(Malformed),
            1..=61 => Ok(Name { authority: index == 1, len: STATIC_NAMES[index - 1].len() }),
            _ => self.entries.get(index - 62).map(|e| e.0).ok_or(Malformed),
        }
    }

    /// Adds an entry, evicting the oldest until it fits; one larger than
    /// the table empties it and is not added.
    fn insert(&mut self, name: Name, size: usize) {
        while self.size + size > self.max {
            match self.entries.pop_back() {
                Some((_, s)) => self.size -= s,
                None => break,
            }
        }
        if size <= self.max {
            self.entries.push_front((name, size));
            self.size += size;
        }
    }

    /// A dynamic table size update.
    fn resize(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            match self.entries.pop_back() {
                Some((_, s)) => self.size -= s,
                None => break,
            }
        }
    }
}

/// Rewrites one header block: `None` when nothing in it is replaced.
/// Follows the client's dynamic table either way.
fn rewrite(block: &[u8], table: &mut Table) -> Result<Option<Vec<u8>>, Malformed> {
    let mut out = Vec::with_capacity(block.len() + REPLACEMENT.len() + 2);
    let mut changed = false;
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let first = block[pos];
        if first & 0x80 != 0 {
            // An indexed field (§6.1).
            let index = integer(block, &mut pos, 7)?;
            table.name(index)?;
            if index == 1 {
                // The static `:authority` with an empty value: a literal
                // `localhost` without indexing instead (the table is untouched either way).
                push_integer(&mut out, 0x00, 4, 1);
                push_string(&mut out, REPLACEMENT);
                changed = true;
            } else {
                out.extend_from_slice(&block[start..pos]);
            }
        } else if first & 0xe0 == 0x20 {
            // A dynamic table size update (§6.3).
            let size = integer(block, &mut pos, 5)?;
            table.resize(size);
            out.extend_from_slice(&block[start..pos]);
        } else {
            // A literal field (§6.2): with incremental indexing (01), without
            // indexing (0000) or never indexed (0001).
            let indexing = first & 0xc0 == 0x40;
            let index = integer(block, &mut pos, if indexing { 6 } else { 4 })?;
            let name = match index {
                0 => {
                    let name = string(block, &mut pos)?;
                    Name { authority: &name[..] == b":authority", len: name.len() }
                }
                index => table.name(index)?,
            };
            let value_at = pos;
            let value = string(block, &mut pos)?;
            if indexing {
                table.insert(name, name.len + value.len() + ENTRY_OVERHEAD);
            }
            let replacement = match (name.authority && !acceptable(&value), indexing) {
                (false, _) => None,
                (true, false) => Some(REPLACEMENT.to_vec()),
                // Of the same length, so h2's table entry is as large as the
                // client's; an empty value cannot be (h2 refuses it).
                (true, true) => Some(same_length(value.len())).filter(|r| !r.is_empty()),
            };
            match replacement {
                Some(r) => {
                    out.extend_from_slice(&block[start..value_at]);
                    push_string(&mut out, &r);
                    changed = true;
                }
                None => out.extend_from_slice(&block[start..pos]),
            }
        }
    }
    Ok(changed.then_some(out))
}

/// Whether h2 takes `value` as a request's `:authority`.
fn acceptable(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// `localhost` cut, or filled with `-`, to `len` bytes: a valid authority.
fn same_length(len: usize) -> Vec<u8> {
    let mut v = REPLACEMENT.to_vec();
    v.resize(len, b'-');
    v
}

/// An integer with a `prefix`-bit prefix (§5.1).
fn integer(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, Malformed> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*block.get(*pos).ok_or(Malformed)?) & max;
    *pos += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        if shift > 21 {
            // Larger than anything a header block can mean.
            return Err(Malformed);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn push_integer(out: &mut Vec<u8>, bits: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(bits | value as u8);
        return;
    }
    out.push(bits | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal (§5.2), decoded.
fn string(block: &[u8], pos: &mut usize) -> Result<Vec<u8>, Malformed> {
    let huffman = *block.get(*pos).ok_or(Malformed)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let end = (*pos).checked_add(len).filter(|&end| end <= block.len()).ok_or(Malformed)?;
    let bytes = &block[*pos..end];
    *pos = end;
    if huffman { huffman_decode(bytes) } else { Ok(bytes.to_vec()) }
}

/// A string literal without Huffman coding.
fn push_string(out: &mut Vec<u8>, value: &[u8]) {
    push_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// The Huffman code for decoding, by code length: the first code of each
/// length, how many there are, and where their symbols start in `symbols`.
struct Huffman {
    first: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    symbols: [u16; 257],
}

fn huffman() -> &'static Huffman {
    static CODE: OnceLock<Huffman> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut count = [0u32; 31];
        for &bits in &HUFFMAN_BITS {
            count[usize::from(bits)] += 1;
        }
        let (mut first, mut start) = ([0u32; 31], [0usize; 31]);
        let (mut code, mut at) = (0u32, 0usize);
        for ((f, s), &n) in first.iter_mut().zip(start.iter_mut()).zip(&count).skip(1) {
            *f = code;
            *s = at;
            code = (code + n) << 1;
            at += n as usize;
        }
        let mut symbols = [0u16; 257];
        let mut next = start;
        for (symbol, &bits) in (0u16..).zip(&HUFFMAN_BITS) {
            let bits = usize::from(bits);
            symbols[next[bits]] = symbol;
            next[bits] += 1;
        }
        Huffman { first, count, start, symbols }
    })
}

/// Decodes a Huffman-coded string; EOS in it, or padding that is not
/// 0 to 7 one-bits, is malformed (§5.2).
fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, Malformed> {
    let h = huffman();
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return Err(Malformed);
            }
            let offset = code.wrapping_sub(h.first[len]);
            if code >= h.first[len] && offset < h.count[len] {
                let symbol = h.symbols[h.start[len] + offset as usize];
                if symbol == EOS {
                    return Err(Malformed);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            }
        }
    }
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(Malformed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        push_frame_header(&mut f, payload.len(), kind, flags, stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A literal field: `first` holds the representation and name index.
    fn literal(first: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![first];
        push_string(&mut b, value);
        b
    }

    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let h = huffman();
        let mut codes = [(0u32, 0u32); 257];
        for len in 1..31 {
            for i in 0..h.count[len] {
                codes[usize::from(h.symbols[h.start[len] + i as usize])] = (h.first[len] + i, len as u32);
            }
        }
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            let (code, len) = codes[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    /// A Huffman-coded string literal.
    fn huffman_string(value: &[u8]) -> Vec<u8> {
        let coded = huffman_encode(value);
        let mut b = Vec::new();
        push_integer(&mut b, 0x80, 7, coded.len());
        b.extend_from_slice(&coded);
        b
    }

    /// What h2 reads, fed all at once and byte by byte (the same either way).
    fn through(input: &[u8]) -> Vec<u8> {
        let mut whole = Vec::new();
        let mut r = Rewriter::new();
        r.feed(input, &mut whole);
        r.finish(&mut whole);
        let mut bytewise = Vec::new();
        let mut r = Rewriter::new();
        for b in input {
            r.feed(std::slice::from_ref(b), &mut bytewise);
        }
        r.finish(&mut bytewise);
        assert_eq!(whole, bytewise, "fed at once and byte by byte");
        whole
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend(frame(0x4, 0, 0, &[]));
        for f in frames {
            c.extend_from_slice(f);
        }
        c
    }

    /// What grpcio 1.85 sends for `unix:/run/posd/posd.sock`.
    const GRPCIO_AUTHORITY: &[u8] = b"run%2Fposd%2Fposd.sock";

    fn request_block(authority: &[u8]) -> Vec<u8> {
        let mut block = vec![0x83, 0x86];
        block.extend(literal(0x44, b"/pos.terminal.v1.PaymentTerminal/GetSyncStatus"));
        block.extend(literal(0x41, authority));
        block.extend(literal(0x40 | 31, b"application/grpc"));
        block
    }

    #[test]
    fn the_huffman_code_decodes_the_rfc_example_and_every_byte() {
        // RFC 7541 C.4.1.
        let coded = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(huffman_decode(&coded), Ok(b"www.example.com".to_vec()));
        assert_eq!(huffman_encode(b"www.example.com"), coded);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)), Ok(all));
        // Padding: up to 7 one-bits; 8 of them, or zeros, are malformed.
        assert_eq!(huffman_decode(&[0x1f]), Ok(b"a".to_vec()));
        assert_eq!(huffman_decode(&[0xff]), Err(Malformed));
        assert_eq!(huffman_decode(&[0x18]), Err(Malformed));
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost_of_the_same_length_and_the_table_stays_in_step() {
        let first = frame(HEADERS, END_HEADERS, 1, &request_block(GRPCIO_AUTHORITY));
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        // The next request names the entries the first one added: content-type (62),
        // `:authority` (63), `:path` (64).
        let second = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xc0, 0xbf, 0xbe]);
        let out = through(&connection(&[first, data.clone(), second.clone()]));

        let replaced = b"localhost-------------";
        assert_eq!(replaced.len(), GRPCIO_AUTHORITY.len());
        let expected = connection(&[frame(HEADERS, END_HEADERS, 1, &request_block(replaced)), data, second]);
        assert_eq!(out, expected);
        assert!(acceptable(replaced) && !acceptable(GRPCIO_AUTHORITY));
    }

    #[test]
    fn a_valid_authority_and_other_connections_pass_unchanged() {
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &request_block(b"localhost:50051")),
            frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]),
        ]);
        assert_eq!(through(&input), input);
        let http1 = b"GET / HTTP/1.1\r\nHost: /run/posd/posd.sock\r\n\r\n".to_vec();
        assert_eq!(through(&http1), http1);
        // A connection that ends in the middle of a frame: what came is passed on.
        let cut = &input[..input.len() - 3];
        assert_eq!(through(cut), cut);
    }

    #[test]
    fn a_huffman_coded_path_is_replaced_by_a_plain_literal_and_the_frame_resized() {
        let mut block = vec![0x83, 0x86, 0x84, 0x41];
        block.extend(huffman_string(b"/tmp/posd.sock"));
        let out = through(&connection(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]));
        let mut expected = vec![0x83, 0x86, 0x84];
        expected.extend(literal(0x41, b"localhost-----"));
        assert_eq!(out, connection(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &expected)]));
    }

    #[test]
    fn an_authority_outside_the_table_becomes_localhost() {
        // Without indexing (name from the static table), never indexed (a
        // literal name), and the static table's empty `:authority`.
        let mut block = literal(0x01, b"/run/posd/posd.sock");
        block.push(0x10);
        block.extend(huffman_string(b":authority"));
        push_string(&mut block, b"a b");
        block.push(0x81);
        let out = through(&connection(&[frame(HEADERS, END_HEADERS, 1, &block)]));
        let mut expected = literal(0x01, b"localhost");
        expected.push(0x10);
        expected.extend(huffman_string(b":authority"));
        push_string(&mut expected, b"localhost");
        expected.extend(literal(0x01, b"localhost"));
        assert_eq!(out, connection(&[frame(HEADERS, END_HEADERS, 1, &expected)]));
    }

    #[test]
    fn padding_goes_priority_stays_and_a_long_block_is_split_in_continuations() {
        let mut block = request_block(GRPCIO_AUTHORITY);
        block.push(0x00);
        push_string(&mut block, b"x-big");
        push_string(&mut block, &[b'v'; 20_000]);
        // As sent: padded, with priority, in a HEADERS frame and two CONTINUATIONs.
        let mut payload = vec![3];
        payload.extend_from_slice(&[0x80, 0, 0, 7, 15]);
        payload.extend_from_slice(&block[..10_000]);
        payload.extend_from_slice(&[0, 0, 0]);
        let frames = [
            frame(HEADERS, PADDED | PRIORITY, 5, &payload),
            frame(CONTINUATION, 0, 5, &block[10_000..15_000]),
            frame(CONTINUATION, END_HEADERS, 5, &block[15_000..]),
        ];
        let out = through(&connection(&frames));

        let mut want = request_block(b"localhost-------------");
        want.push(0x00);
        push_string(&mut want, b"x-big");
        push_string(&mut want, &[b'v'; 20_000]);
        let mut first = vec![0x80, 0, 0, 7, 15];
        first.extend_from_slice(&want[..MAX_FRAME - 5]);
        let expected = connection(&[
            frame(HEADERS, PRIORITY, 5, &first),
            frame(CONTINUATION, END_HEADERS, 5, &want[MAX_FRAME - 5..]),
        ]);
        assert_eq!(out, expected);
    }

    #[test]
    fn the_table_follows_evictions_and_size_updates() {
        let mut t = Table::new();
        let auth = Name { authority: true, len: 10 };
        let other = Name { authority: false, len: 5 };
        t.insert(auth, 2000);
        t.insert(other, 2000);
        assert_eq!(t.name(62), Ok(other));
        assert_eq!(t.name(63), Ok(auth));
        t.insert(other, 1000);
        assert_eq!(t.name(64), Err(Malformed), "the oldest was evicted");
        t.resize(1500);
        assert_eq!(t.name(62), Ok(other));
        assert_eq!(t.name(63), Err(Malformed));
        t.insert(auth, 2000);
        assert_eq!(t.name(62), Err(Malformed), "larger than the table: emptied, not added");
        assert_eq!(t.name(1), Ok(Name { authority: true, len: 10 }));
        assert_eq!(t.name(61), Ok(Name { authority: false, len: 16 }));
    }

    #[test]
    fn a_header_frame_too_large_to_hold_passes_unchanged() {
        let mut input = connection(&[]);
        push_frame_header(&mut input, MAX_BLOCK + 1, HEADERS, END_HEADERS, 1u32.to_be_bytes());
        input.extend_from_slice(&request_block(GRPCIO_AUTHORITY));
        assert_eq!(through(&input), input);
    }

    #[test]
    fn a_malformed_block_passes_unchanged_and_rewriting_stops() {
        // Indexed field 70: not in the table.
        let bad = frame(HEADERS, END_HEADERS, 1, &[0xc6]);
        let later = frame(HEADERS, END_HEADERS, 3, &request_block(GRPCIO_AUTHORITY));
        let input = connection(&[bad, later]);
        assert_eq!(through(&input), input);
    }
}
