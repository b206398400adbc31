//! The device's side of a line: faults a technician or a scenario arms on it,
//! and the transcript of every APDU that crosses it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use pos_link::{Link, LinkError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transcript::{Dir, Transcript};

/// Line faults armed by a technician or a scenario. The first three fire
/// once; silence lasts until it is lifted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineFaults {
    /// Serial: the next frame from the host gets no ACK.
    pub drop_ack: bool,
    /// Serial: the next frame to the host has a wrong CRC.
    pub bad_crc: bool,
    /// TCP: the next 80 00 waits for the APDU after it and leaves in the same segment.
    pub coalesce: bool,
    /// The device has hung: it neither reads nor writes anything.
    pub silent: bool,
}

impl LineFaults {
    /// Arms a fault by its name (`none` clears them all).
    pub fn arm(&mut self, name: &str) -> Result<(), String> {
        match name {
            "drop-ack" => self.drop_ack = true,
            "bad-crc" => self.bad_crc = true,
            "coalesce" => self.coalesce = true,
            "silent" => self.silent = true,
            "none" => *self = LineFaults::default(),
            other => return Err(format!("unknown fault {other:?}; one of drop-ack, bad-crc, coalesce, silent, none")),
        }
        Ok(())
    }
}

impl std::fmt::Display for LineFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let armed: Vec<&str> = [
            (self.drop_ack, "drop-ack"),
            (self.bad_crc, "bad-crc"),
            (self.coalesce, "coalesce"),
            (self.silent, "silent"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if armed.is_empty() { f.write_str("faults none") } else { write!(f, "faults {}", armed.join(" ")) }
    }
}

/// A PTY whose slave device is reachable at `link_path` (a symlink), as a
/// udev rule names a USB-serial adapter.
pub fn linked_pty(link_path: &std::path::Path) -> anyhow::Result<pos_link::pty::PtyMaster> {
    let pty = pos_link::pty::PtyMaster::open()?;
    match link_path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link_path)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", link_path.display()))?,
        Ok(_) => anyhow::bail!("{} exists and is not a symlink; not replacing it", link_path.display()),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(pty.slave_path(), link_path)
        .map_err(|e| anyhow::anyhow!("cannot create symlink {}: {e}", link_path.display()))?;
    Ok(pty)
}

/// A byte stream whose chunks both ways go to a transcript (lines without
/// frames, such as a printer's).
pub struct TapIo<S> {
    inner: S,
    transcript: Arc<Transcript>,
    describe: Describer,
}

impl<S> TapIo<S> {
    pub fn new(inner: S, transcript: Arc<Transcript>, describe: Describer) -> Self {
        TapIo { inner, transcript, describe }
    }

    fn record(&self, dir: Dir, bytes: &[u8]) {
        if !bytes.is_empty() {
            let d = (self.describe)(dir, bytes);
            self.transcript.frame(dir, d.blanked.as_deref().unwrap_or(bytes), &d.meaning, d.bcd);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TapIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.record(Dir::In, &buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TapIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.record(Dir::Out, &buf[..n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a device tells the transcript about one of its frames.
pub struct Described {
    pub meaning: String,
    /// The frame as the transcript shows it, when card-data fields had to be
    /// blanked; else the frame itself is shown.
    pub blanked: Option<Vec<u8>>,
    /// The protocol writes numbers as BCD (see [`Transcript::frame`]).
    pub bcd: bool,
}

impl From<String> for Described {
    fn from(meaning: String) -> Self {
        Described { meaning, blanked: None, bcd: false }
    }
}

/// Tells what a frame going `Dir` means.
pub type Describer = fn(Dir, &[u8]) -> Described;

/// A running link with its transcript: every APDU in and out is written down
/// with its meaning, as the device's [`Describer`] tells it.
pub struct Line {
    link: Link,
    transcript: Option<(Arc<Transcript>, Describer)>,
    /// Serial framing through the faults: `drop-ack` takes effect.
    faulty_serial: bool,
}

impl Line {
    /// A device's line over `io`: its faults applied (and noted in the
    /// transcript when they fire), serial framing or bare TCP APDUs, and
    /// every frame written down as `describe` tells it.
    pub fn open<S>(
        io: S,
        faults: Arc<Mutex<LineFaults>>,
        serial: bool,
        transcript: Option<Arc<Transcript>>,
        describe: Describer,
    ) -> Line
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = FaultyIo::new(io, faults, serial).with_transcript(transcript.clone());
        let link = if serial {
            Link::spawn(io, pos_link::SerialLink::new(pos_link::SerialTiming::default()))
        } else {
            Link::spawn(io, pos_link::TcpLink::new())
        };
        Line { link, transcript: transcript.map(|t| (t, describe)), faulty_serial: serial }
    }

    /// A line nobody writes down, without faults.
    pub fn plain(link: Link) -> Line {
        Line { link, transcript: None, faulty_serial: false }
    }

    /// Whether an armed `drop-ack` keeps this line's next ACK from the host.
    pub fn can_drop_acks(&self) -> bool {
        self.faulty_serial
    }

    fn record(&self, dir: Dir, apdu: &[u8]) {
        if let Some((t, describe)) = &self.transcript {
            let d = describe(dir, apdu);
            t.frame(dir, d.blanked.as_deref().unwrap_or(apdu), &d.meaning, d.bcd);
        }
    }

    /// Writes something that is not a frame (a fault a scenario fired).
    pub fn note(&self, text: &str) {
        if let Some((t, _)) = &self.transcript {
            t.note(text);
        }
    }

    /// Sends one APDU and waits until the host took it.
    pub async fn send(&self, apdu: Vec<u8>) -> Result<(), LinkError> {
        self.record(Dir::Out, &apdu);
        let sent = self.link.send(apdu).await;
        if let (Err(e), Some((t, _))) = (&sent, &self.transcript) {
            t.note(&format!("not delivered: {e}"));
        }
        sent
    }

    /// The next APDU from the host.
    pub async fn recv(&mut self) -> Result<Vec<u8>, LinkError> {
        let got = self.link.recv().await;
        match (&got, &self.transcript) {
            (Ok(apdu), _) => self.record(Dir::In, apdu),
            (Err(e), Some((t, _))) => t.note(&format!("line ended: {e}")),
            (Err(_), None) => {}
        }
        got
    }
}

/// The device's side of the line, with the armed faults applied to what it
/// writes: a dropped link-level ACK, a corrupted frame CRC (serial), an
/// `80 00` held back to share a segment with the next APDU (TCP), or
/// silence (everything read or written is lost).
pub struct FaultyIo<S> {
    inner: S,
    faults: Arc<Mutex<LineFaults>>,
    serial: bool,
    transcript: Option<Arc<Transcript>>,
    /// Serial frame tracking: inside a frame, after a DLE, CRC bytes left.
    in_frame: bool,
    after_dle: bool,
    crc_left: u8,
    /// TCP: a held-back 80 00.
    held: Vec<u8>,
    /// Bytes of the current write still to pass on (after manipulation).
    pending: Vec<u8>,
    /// How many input bytes `pending` stands for.
    pending_input: usize,
}

impl<S> FaultyIo<S> {
    pub fn new(inner: S, faults: Arc<Mutex<LineFaults>>, serial: bool) -> Self {
        FaultyIo {
            inner,
            faults,
            serial,
            transcript: None,
            in_frame: false,
            after_dle: false,
            crc_left: 0,
            held: Vec::new(),
            pending: Vec::new(),
            pending_input: 0,
        }
    }

    /// Notes each fault as it fires in `transcript`.
    pub fn with_transcript(mut self, transcript: Option<Arc<Transcript>>) -> Self {
        self.transcript = transcript;
        self
    }

    fn fired(&self, what: &str) {
        tracing::warn!("{what}");
        if let Some(t) = &self.transcript {
            t.note(&format!("fault: {what}"));
        }
    }

    fn transform(&mut self, buf: &[u8]) -> Vec<u8> {
        let faults = self.faults.clone();
        let mut f = faults.lock().unwrap();
        if f.silent {
            return Vec::new();
        }
        if !self.serial {
            if f.coalesce && self.held.is_empty() && buf.starts_with(&[0x80, 0x00, 0x00]) {
                f.coalesce = false;
                self.fired("holding 80 00 back to send it with the next APDU");
                if buf.len() == 3 {
                    self.held = buf.to_vec();
                    return Vec::new();
                }
                // The next APDU is already in this write: one segment as it is.
                return buf.to_vec();
            }
            let mut out = std::mem::take(&mut self.held);
            out.extend_from_slice(buf);
            return out;
        }
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            if self.crc_left > 0 {
                self.crc_left -= 1;
                if self.crc_left == 0 {
                    self.in_frame = false;
                    if f.bad_crc {
                        f.bad_crc = false;
                        self.fired("sending a frame with a corrupted CRC");
                        out.push(b ^ 0xFF);
                        continue;
                    }
                }
                out.push(b);
                continue;
            }
            if !self.in_frame {
                if b == 0x06 && !self.after_dle && f.drop_ack {
                    f.drop_ack = false;
                    self.fired("dropping a link-level ACK");
                    continue;
                }
                if self.after_dle && b == 0x02 {
                    self.in_frame = true;
                }
                self.after_dle = b == 0x10 && !self.after_dle;
                out.push(b);
                continue;
            }
            if self.after_dle {
                self.after_dle = false;
                if b == 0x03 {
                    self.crc_left = 2;
                }
            } else if b == 0x10 {
                self.after_dle = true;
            }
            out.push(b);
        }
        out
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultyIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            let got = buf.filled().len() - before;
            // A hung device loses what it hears; keep reading so the line
            // is drained, and stop only on an end, an error or no data.
            if matches!(polled, Poll::Ready(Ok(()))) && got > 0 && self.faults.lock().unwrap().silent {
                buf.set_filled(before);
                continue;
            }
            return polled;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultyIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            this.pending = this.transform(buf);
            this.pending_input = buf.len();
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(n)) => {
                    this.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut this.pending_input)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_once_on_the_right_bytes() {
        let faults = Arc::new(Mutex::new(LineFaults { drop_ack: true, bad_crc: true, ..LineFaults::default() }));
        let mut io = FaultyIo::new((), faults.clone(), true);
        let frame = pos_link::frame::encode_frame(&[0x80, 0x00, 0x00]);
        // An ACK, then a frame: the ACK is dropped, the frame's last CRC byte flipped.
        let out = io.transform(&[&[0x06][..], &frame].concat());
        assert_eq!(out.len(), frame.len());
        assert_eq!(&out[..frame.len() - 1], &frame[..frame.len() - 1]);
        assert_ne!(out.last(), frame.last());
        // Fired once: the next ACK and frame pass untouched.
        assert_eq!(io.transform(&[&[0x06][..], &frame].concat()), [&[0x06][..], &frame].concat());
        let f = *faults.lock().unwrap();
        assert!(!f.drop_ack && !f.bad_crc);
    }

    #[test]
    fn a_silent_device_writes_nothing_until_the_silence_is_lifted() {
        let faults = Arc::new(Mutex::new(LineFaults::default()));
        faults.lock().unwrap().arm("silent").unwrap();
        let mut io = FaultyIo::new((), faults.clone(), true);
        assert!(io.transform(&[0x06, 0x10, 0x02]).is_empty());
        faults.lock().unwrap().arm("none").unwrap();
        assert_eq!(io.transform(&[0x06]), [0x06]);
        assert!(faults.lock().unwrap().arm("sideways").unwrap_err().contains("one of"));
    }
}
