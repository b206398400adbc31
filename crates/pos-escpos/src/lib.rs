//! ESC/POS, the command language of receipt printers, without I/O.
//!
//! - [`Receipt`] builds a print job: styled text in code page PC858, two-column
//!   lines for 32/42/48-column paper, EAN-13 and Code 128 barcodes, QR codes,
//!   feed and cut, and the drawer kick.
//! - [`codepage`] maps UTF-8 to PC858 and back; what PC858 lacks prints as a
//!   visible `?`.
//! - [`status`] decodes the real-time status replies (DLE EOT 1-4), automatic
//!   status back (ASB) and the end-of-job reply (GS r 1).
//! - [`decode`] splits any encoder's byte stream into commands, skipping those
//!   it does not render by their documented lengths.

pub mod codepage;
pub mod decode;
pub mod receipt;
pub mod status;

pub use receipt::{Align, BarcodeError, Receipt, Width};
pub use status::{PaperLevel, PrinterState};

/// Command bytes shared by the builder, the decoder and the printer driver.
pub mod cmd {
    pub const ESC: u8 = 0x1b;
    pub const GS: u8 = 0x1d;
    pub const DLE: u8 = 0x10;
    pub const FS: u8 = 0x1c;
    pub const LF: u8 = 0x0a;
    /// XON / XOFF of software flow control; no status byte equals either.
    pub const XON: u8 = 0x11;
    pub const XOFF: u8 = 0x13;

    pub const INIT: [u8; 2] = [ESC, b'@'];
    /// Selects code page PC858 (Western Europe with the euro sign).
    pub const CODE_PAGE_PC858: [u8; 3] = [ESC, b't', 19];

    /// Real-time status request `DLE EOT n` (n = 1 printer, 2 offline cause,
    /// 3 error cause, 4 paper sensor); the printer answers one byte at once.
    pub fn status_request(n: u8) -> [u8; 3] {
        [DLE, 0x04, n]
    }

    /// Clears a recoverable error and restarts printing (`DLE ENQ 2`).
    pub const RECOVER: [u8; 3] = [DLE, 0x05, 0x02];

    /// Enables automatic status back for the events in `mask` (01 drawer,
    /// 02 online/offline, 04 error, 08 paper; 0 disables).
    pub fn asb(mask: u8) -> [u8; 3] {
        [GS, b'a', mask]
    }

    /// `GS r 1`: the printer answers its paper status once everything before
    /// it has been processed; the driver's proof that a job was printed.
    pub const END_OF_JOB: [u8; 3] = [GS, b'r', 1];

    /// Drawer kick on pin 2 (`pin5 = false`) or pin 5, with pulse on and off
    /// times in milliseconds (sent in 2 ms units, at least one unit each).
    pub fn drawer_kick(pin5: bool, on_ms: u16, off_ms: u16) -> [u8; 5] {
        let units = |ms: u16| (ms / 2).clamp(1, 255) as u8;
        [ESC, b'p', u8::from(pin5), units(on_ms), units(off_ms)]
    }

    /// Drawer kick in real time (`DLE DC4 1 m t`): the printer pulses at
    /// once, even offline, out of paper or with a full buffer (serial
    /// printers), where `ESC p` would wait in the buffer. On and off times
    /// are `t` x 100 ms, t from 1 to 8.
    pub fn drawer_pulse_now(pin5: bool, on_ms: u16) -> [u8; 5] {
        [DLE, 0x14, 1, u8::from(pin5), (on_ms / 100).clamp(1, 8) as u8]
    }
}
