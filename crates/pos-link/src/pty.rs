//! PTY pairs: the master side as an async byte stream, the slave side a
//! device path that behaves like a serial line. Only simulators and tests need
//! them; behind the `pty` feature.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{self, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The master side of a pseudo-terminal, as an async byte stream. The slave
/// side (`slave_path`) behaves like a serial device for whoever opens it.
///
/// The master keeps its own handle on the slave open, so the pair survives
/// the other side closing and reopening the device.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<File>,
    slave_path: PathBuf,
    _slave: OwnedFd,
}

impl PtyMaster {
    /// Creates a PTY pair in raw mode. Must be called inside a tokio runtime.
    pub fn open() -> io::Result<Self> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        let mut t = termios::tcgetattr(pty.slave.as_fd()).map_err(io::Error::from)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t).map_err(io::Error::from)?;
        let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?);
        fcntl(pty.master.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        let master = File::from(pty.master);
        // SAFETY: `master` is an open descriptor owned by the AsyncFd for its whole life.
        let fd = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, slave_path, _slave: pty.slave })
    }

    /// The device path of the slave side (`/dev/pts/N`).
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|f| f.get_ref().read(buf.initialize_unfilled())) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave handle is closed; report end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
