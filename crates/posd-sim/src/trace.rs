//! A seed's trace: every observable step of the run (what the registers
//! asked and heard, the gateway's faults, crashes, the final ledger),
//! hashed as it is written, and printed too when asked (`--verbose`).

use sha2::{Digest, Sha256};

pub struct Trace {
    hash: Sha256,
    print: bool,
}

impl Trace {
    pub fn new(print: bool) -> Self {
        Self { hash: Sha256::new(), print }
    }

    /// Adds one line, stamped with the simulated time (ms since the day began).
    pub fn note(&mut self, at_ms: u64, line: impl AsRef<str>) {
        let line = format!("{at_ms:>10} {}\n", line.as_ref());
        self.hash.update(line.as_bytes());
        if self.print {
            print!("{line}");
        }
    }

    /// The hash of every line so far.
    pub fn finish(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}
