//! ZVT, the register-to-terminal protocol of most payment terminals in
//! German-speaking countries, without I/O.
//!
//! The link layer (serial framing with DLE stuffing, CRC and ACK/NAK, or bare
//! APDUs on TCP) is `pos-link`'s; this crate is the application layer:
//! - [`message`]: every command and answer as a typed [`Message`], decoded
//!   from and encoded to an APDU byte for byte;
//! - [`bmp`]: the tagged fields, kept as sent and read through typed accessors
//!   (masked PANs with `E` nibbles, BCD amounts, LLVAR/LLLVAR text);
//! - [`tlv`]: the BER-TLV container of BMP 06, and the receipt lines read
//!   from it in place;
//! - [`text`]: 8-bit ZVT text as strings;
//! - [`codes`]: clear texts for result and intermediate status codes;
//! - [`ecr`]: the register's side of one command as a state machine
//!   ([`ecr::Exchange`]: T3/T4, `80 00` to a result only once the caller
//!   stored it, `84 66` otherwise), the answers to unasked messages, the
//!   registration, and [`ecr::judge`] for a payment in doubt.
//!
//! Nothing is lost in decoding: a field this crate cannot measure (an unknown
//! tag) ends the field list and the rest is kept as [`bmp::Unparsed`], so a
//! message always encodes back to the bytes it came from.
//!
//! Nothing here does I/O or reads a clock: posd's `zvt` module drives
//! [`ecr::Exchange`] over a `pos_link` link with tokio.

pub mod bcd;
pub mod bmp;
pub mod codes;
pub mod ecr;
pub mod message;
pub mod text;
pub mod tlv;

pub use bmp::{Bmp, Bmps};
pub use message::{DecodeError, EncodeError, Message};
