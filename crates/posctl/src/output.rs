//! Standard output for scripts that may stop reading early, as in
//! `posctl payments | head`: once the pipe is closed the rest of the output
//! is dropped, and the command ends with its usual exit code instead of a
//! panic. Also `say`, for standard error, and the `outln!` macro.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// `println!` for standard output, which a script may close early: see `write`.
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::output::write(format!($($arg)*).as_bytes(), true)
    };
}

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `bytes` (and a newline) unless standard output is gone.
pub fn write(bytes: &[u8], newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(bytes)
        .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            FAILED.store(true, Ordering::Relaxed);
            say(&format!("posctl: cannot write the output: {e}"));
        }
    }
}

/// Standard output is gone: its reader stopped, or writing it failed.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Writing standard output failed for another reason than a reader
/// that stopped (a full disk, say): the output is incomplete.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// A line on standard error; if that fails too, there is nowhere left to say it.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
