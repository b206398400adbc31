//! Simulated lane devices: the far end of every serial or TCP line posd drives.
//!
//! # Layout
//! - [`reader`]: a host-authorized card reader speaking `pos.reader.v1` over
//!   the link layer; presents a configurable test card after configurable
//!   human delays and encrypts the card data like a real P2PE reader.

pub mod reader;
