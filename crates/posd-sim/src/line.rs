//! The device's end of the in-memory lines posd's lanes dial
//! (`ReaderLine::InProcess`): each dial hands one end of a pipe to the
//! device, which serves its connections one at a time, as a device on a
//! serial line or a single TCP port does. An unplugged device refuses dials.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use posd::line::InProcessLine;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// The connections posd opens to a device, in order.
pub struct Incoming {
    conns: mpsc::UnboundedReceiver<DuplexStream>,
    unplugged: Arc<AtomicBool>,
}

impl Incoming {
    /// The next connection posd opened; `None` once posd's end is gone.
    pub async fn next(&mut self) -> Option<DuplexStream> {
        self.conns.recv().await
    }

    /// The device is unplugged for `d`: posd's dials are refused meanwhile.
    pub async fn unplug_for(&self, d: Duration) {
        self.unplugged.store(true, Ordering::SeqCst);
        tokio::time::sleep(d).await;
        self.unplugged.store(false, Ordering::SeqCst);
    }
}

/// A line named `name` for posd's lane, and the device's end of it.
pub fn pair(name: String) -> (InProcessLine, Incoming) {
    let (tx, conns) = mpsc::unbounded_channel::<DuplexStream>();
    let unplugged = Arc::new(AtomicBool::new(false));
    let plug = unplugged.clone();
    let dial = Arc::new(move || -> std::io::Result<DuplexStream> {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        if plug.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        tx.send(theirs).map_err(|_| refused())?;
        Ok(ours)
    });
    (InProcessLine { name, dial }, Incoming { conns, unplugged })
}
