//! posd's log in a seed, read as a store's journal would keep it (INFO and
//! above, as posd logs by default) and scanned for card numbers line by
//! line, without keeping it. Installed on the seed's thread, where its
//! runtime runs every task of posd; not while `SIMULATE_LOG` prints the log.

use std::cell::RefCell;

use tracing::subscriber::DefaultGuard;

thread_local! {
    /// Log lines (card numbers masked) on this thread that held a card number.
    static FOUND: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Scans every log line it is given.
struct Scan;

impl std::io::Write for Scan {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if crate::check::PANS.iter().any(|pan| line.contains(pan)) {
            let masked = crate::check::PANS.iter().fold(line.trim_end().to_string(), |l, pan| l.replace(pan, "<PAN>"));
            FOUND.with(|f| f.borrow_mut().push(masked));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Scans posd's log on this thread until the guard is dropped.
pub fn install() -> Option<DefaultGuard> {
    if std::env::var_os("SIMULATE_LOG").is_some() {
        return None;
    }
    FOUND.with(|f| f.borrow_mut().clear());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .without_time()
        .with_ansi(false)
        .with_writer(|| Scan)
        .finish();
    Some(tracing::subscriber::set_default(subscriber))
}

/// The log lines that held a card number since [`install`].
pub fn found() -> Vec<String> {
    FOUND.with(|f| std::mem::take(&mut *f.borrow_mut()))
}
