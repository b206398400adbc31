//! Printer status: the real-time replies to `DLE EOT n`, automatic status
//! back (ASB, 4 bytes) and the paper-sensor reply to `GS r 1`.
//!
//! Reply shapes: a `DLE EOT` reply is `0xx1xx10` (`b & 0x93 == 0x12`; all good
//! is 0x12); ASB's first byte is `0xx1xx00` (`b & 0x93 == 0x10`) and its other
//! three `0xx0xxxx` (`b & 0x90 == 0`), as is the `GS r 1` reply. No status
//! byte equals XON (0x11) or XOFF (0x13).

/// Paper left on the roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaperLevel {
    #[default]
    Ok,
    /// Near the end: a warning; printing goes on.
    NearEnd,
    /// Out: the printer stops.
    Out,
}

/// Which error the printer reports (`DLE EOT 3`, ASB byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrinterError {
    /// Cleared with `DLE ENQ 2` once its cause is removed.
    Recoverable,
    /// The auto-cutter jammed.
    Cutter,
    /// Needs a power cycle or service.
    Unrecoverable,
    /// Clears by itself (e.g. the head cooled down).
    AutoRecoverable,
}

/// What the printer said about itself, combined from whatever replies came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrinterState {
    pub offline: bool,
    pub cover_open: bool,
    pub paper: PaperLevel,
    /// Drawer kick connector pin 3: high means open for most drawers.
    pub drawer_pin3_high: bool,
    pub error: Option<PrinterError>,
    pub feed_button: bool,
}

impl PrinterState {
    /// True when a job can be printed now.
    pub fn ready(&self) -> bool {
        !self.offline && !self.cover_open && self.paper != PaperLevel::Out && self.error.is_none()
    }

    /// Why a job cannot be printed, in words for the register; `None` when ready.
    pub fn fault(&self) -> Option<&'static str> {
        if self.cover_open {
            Some("the printer's cover is open")
        } else if self.paper == PaperLevel::Out {
            Some("the printer is out of paper")
        } else if let Some(e) = self.error {
            Some(match e {
                PrinterError::Cutter => "the printer's cutter is jammed",
                PrinterError::Unrecoverable => "the printer has an unrecoverable error; power-cycle it",
                PrinterError::Recoverable | PrinterError::AutoRecoverable => "the printer reports an error",
            })
        } else if self.offline {
            Some("the printer is offline")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status byte {0:#04x} does not have the fixed bits of a DLE EOT reply")]
    NotRealTime(u8),
    #[error("ASB bytes {0:02x?} do not have the fixed bits of automatic status back")]
    NotAsb([u8; 4]),
    #[error("DLE EOT takes n = 1 to 4, not {0}")]
    BadRequest(u8),
}

const fn bit(b: u8, n: u8) -> bool {
    b & (1 << n) != 0
}

/// Applies the reply `b` to `DLE EOT n` to `state`.
pub fn apply_real_time(state: &mut PrinterState, n: u8, b: u8) -> Result<(), StatusError> {
    if b & 0x93 != 0x12 {
        return Err(StatusError::NotRealTime(b));
    }
    match n {
        1 => {
            state.drawer_pin3_high = bit(b, 2);
            state.offline = bit(b, 3);
        }
        2 => {
            state.cover_open = bit(b, 2);
            if bit(b, 5) {
                state.paper = PaperLevel::Out;
            }
            if bit(b, 6) {
                state.error.get_or_insert(PrinterError::Recoverable);
            } else {
                state.error = None;
            }
            state.feed_button = bit(b, 3);
        }
        3 => {
            state.error = if bit(b, 5) {
                Some(PrinterError::Unrecoverable)
            } else if bit(b, 3) {
                Some(PrinterError::Cutter)
            } else if bit(b, 2) {
                Some(PrinterError::Recoverable)
            } else if bit(b, 6) {
                Some(PrinterError::AutoRecoverable)
            } else {
                None
            };
        }
        4 => {
            state.paper = if b & 0x60 == 0x60 {
                PaperLevel::Out
            } else if b & 0x0c == 0x0c {
                PaperLevel::NearEnd
            } else {
                PaperLevel::Ok
            };
        }
        n => return Err(StatusError::BadRequest(n)),
    }
    Ok(())
}

/// Decodes the 4 bytes of automatic status back.
pub fn decode_asb(b: [u8; 4]) -> Result<PrinterState, StatusError> {
    if b[0] & 0x93 != 0x10 || b[1..].iter().any(|x| x & 0x90 != 0) {
        return Err(StatusError::NotAsb(b));
    }
    Ok(PrinterState {
        drawer_pin3_high: bit(b[0], 2),
        // Set means offline (one public decoder has this inverted).
        offline: bit(b[0], 3),
        cover_open: bit(b[0], 5),
        feed_button: bit(b[0], 6),
        error: if bit(b[1], 5) {
            Some(PrinterError::Unrecoverable)
        } else if bit(b[1], 3) {
            Some(PrinterError::Cutter)
        } else if bit(b[1], 2) {
            Some(PrinterError::Recoverable)
        } else if bit(b[1], 6) {
            Some(PrinterError::AutoRecoverable)
        } else {
            None
        },
        paper: paper_of(b[2]),
    })
}

/// The paper level in ASB byte 3 or the `GS r 1` reply: 0x03 near-end, 0x0C out.
pub fn paper_of(b: u8) -> PaperLevel {
    if b & 0x0c != 0 {
        PaperLevel::Out
    } else if b & 0x03 != 0 {
        PaperLevel::NearEnd
    } else {
        PaperLevel::Ok
    }
}

/// One message from the printer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A reply to `DLE EOT n` (the caller knows which n it asked).
    RealTime(u8),
    /// Automatic status back.
    Asb(PrinterState),
    /// The reply to `GS r 1`: the job before it has been processed.
    EndOfJob(PaperLevel),
}

/// Splits the bytes a printer sends into replies. Flow control bytes and
/// bytes that fit no pattern are skipped (counted in `skipped`).
#[derive(Debug, Default)]
pub struct ReplyParser {
    asb: Vec<u8>,
    pub skipped: u64,
}

impl ReplyParser {
    pub fn push(&mut self, b: u8) -> Option<Reply> {
        if !self.asb.is_empty() {
            if b & 0x90 == 0 {
                self.asb.push(b);
                if self.asb.len() == 4 {
                    let bytes = [self.asb[0], self.asb[1], self.asb[2], self.asb[3]];
                    self.asb.clear();
                    return decode_asb(bytes).ok().map(Reply::Asb);
                }
                return None;
            }
            // A broken ASB: drop it and read this byte afresh.
            self.skipped += self.asb.len() as u64;
            self.asb.clear();
        }
        match b {
            crate::cmd::XON | crate::cmd::XOFF => None,
            _ if b & 0x93 == 0x12 => Some(Reply::RealTime(b)),
            _ if b & 0x93 == 0x10 => {
                self.asb.push(b);
                None
            }
            _ if b & 0x90 == 0 => Some(Reply::EndOfJob(paper_of(b))),
            _ => {
                self.skipped += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(n: u8, b: u8) -> PrinterState {
        let mut s = PrinterState::default();
        apply_real_time(&mut s, n, b).unwrap();
        s
    }

    #[test]
    fn all_good_is_0x12_for_every_request() {
        for n in 1..=4 {
            assert_eq!(rt(n, 0x12), PrinterState::default(), "n = {n}");
            assert!(rt(n, 0x12).ready());
        }
    }

    #[test]
    fn each_bit_of_each_real_time_reply() {
        assert!(rt(1, 0x12 | 0x04).drawer_pin3_high);
        assert!(rt(1, 0x12 | 0x08).offline);
        assert!(!rt(1, 0x12 | 0x20).offline, "bit 5 (waiting for recovery) alone is not offline");
        assert!(rt(2, 0x12 | 0x04).cover_open);
        assert!(rt(2, 0x12 | 0x08).feed_button);
        assert_eq!(rt(2, 0x12 | 0x20).paper, PaperLevel::Out);
        assert_eq!(rt(3, 0x12 | 0x04).error, Some(PrinterError::Recoverable));
        assert_eq!(rt(3, 0x12 | 0x08).error, Some(PrinterError::Cutter));
        assert_eq!(rt(3, 0x12 | 0x20).error, Some(PrinterError::Unrecoverable));
        assert_eq!(rt(3, 0x12 | 0x40).error, Some(PrinterError::AutoRecoverable));
        assert_eq!(rt(4, 0x12 | 0x0c).paper, PaperLevel::NearEnd);
        assert_eq!(rt(4, 0x12 | 0x60).paper, PaperLevel::Out);
        assert_eq!(rt(4, 0x12 | 0x6c).paper, PaperLevel::Out);
        let mut s = PrinterState::default();
        assert_eq!(apply_real_time(&mut s, 1, 0x11), Err(StatusError::NotRealTime(0x11)));
        assert_eq!(apply_real_time(&mut s, 5, 0x12), Err(StatusError::BadRequest(5)));
    }

    #[test]
    fn asb_offline_polarity_is_set_means_offline() {
        let online = decode_asb([0x10, 0, 0, 0]).unwrap();
        assert!(!online.offline && online.ready());
        let offline = decode_asb([0x18, 0, 0, 0]).unwrap();
        assert!(offline.offline && !offline.ready());
    }

    #[test]
    fn each_bit_of_asb() {
        assert!(decode_asb([0x14, 0, 0, 0]).unwrap().drawer_pin3_high);
        assert!(decode_asb([0x30, 0, 0, 0]).unwrap().cover_open);
        assert!(decode_asb([0x50, 0, 0, 0]).unwrap().feed_button);
        assert_eq!(decode_asb([0x10, 0x08, 0, 0]).unwrap().error, Some(PrinterError::Cutter));
        assert_eq!(decode_asb([0x10, 0x20, 0, 0]).unwrap().error, Some(PrinterError::Unrecoverable));
        assert_eq!(decode_asb([0x10, 0x40, 0, 0]).unwrap().error, Some(PrinterError::AutoRecoverable));
        assert_eq!(decode_asb([0x10, 0, 0x03, 0]).unwrap().paper, PaperLevel::NearEnd);
        assert_eq!(decode_asb([0x10, 0, 0x0c, 0]).unwrap().paper, PaperLevel::Out);
        assert!(decode_asb([0x12, 0, 0, 0]).is_err());
        assert!(decode_asb([0x10, 0x80, 0, 0]).is_err());
    }

    #[test]
    fn the_parser_splits_asb_real_time_and_end_of_job_and_skips_flow_control() {
        let mut p = ReplyParser::default();
        let stream = [0x13, 0x10, 0x00, 0x03, 0x00, 0x11, 0x16, 0x00, 0x0c];
        let got: Vec<Reply> = stream.iter().filter_map(|&b| p.push(b)).collect();
        let near_end = PrinterState { paper: PaperLevel::NearEnd, ..Default::default() };
        assert_eq!(
            got,
            vec![
                Reply::Asb(near_end),
                Reply::RealTime(0x16),
                Reply::EndOfJob(PaperLevel::Ok),
                Reply::EndOfJob(PaperLevel::Out)
            ]
        );
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn faults_are_named_for_the_register() {
        let s = PrinterState { paper: PaperLevel::Out, ..Default::default() };
        assert_eq!(s.fault(), Some("the printer is out of paper"));
        let s = PrinterState { paper: PaperLevel::NearEnd, ..Default::default() };
        assert!(s.ready() && s.fault().is_none(), "near-end is a warning");
    }
}
