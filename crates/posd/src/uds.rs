//! The API's Unix socket: claiming its path at start, and the connections
//! served on it, on which any `:authority` is accepted (the `authority`
//! submodule says why and how).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

mod authority;

/// Makes `path` free for this posd's socket, or refuses: a socket another
/// posd answers on is never removed (its registers would lose it while it
/// runs on); one nobody answers on was left by a posd that ended, and goes.
pub fn claim(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot look at {}: {e}", path.display()),
    };
    if !kind.is_socket() {
        anyhow::bail!("{} exists and is not a socket; posd leaves it alone (listen on another path)", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "another posd is serving {}; refusing to start (stop that posd first, or give this one another \
             listen path)",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing the socket a stopped posd left");
            std::fs::remove_file(path)
                .map_err(|e| anyhow::anyhow!("cannot remove the stale socket {}: {e}", path.display()))
        }
        Err(e) => anyhow::bail!("cannot tell whether another posd is serving {}: {e}", path.display()),
    }
}

/// One client's connection on the API socket. h2 reads the client's bytes
/// through `authority::Rewriter`; writes go straight to the socket.
pub struct Connection {
    io: UnixStream,
    rewriter: authority::Rewriter,
    /// Rewritten bytes not yet read, from `at` on.
    ready: Vec<u8>,
    at: usize,
    /// The client closed its side.
    closed: bool,
}

impl Connection {
    pub fn new(io: UnixStream) -> Self {
        Self { io, rewriter: authority::Rewriter::new(), ready: Vec::new(), at: 0, closed: false }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.rewriter.rewritten > 0 {
            tracing::debug!(
                requests = self.rewriter.rewritten,
                "API connection closed; its :authority (a socket path) was read as localhost"
            );
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.ready.len() {
                let n = (this.ready.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.ready[this.at..this.at + n]);
                this.at += n;
                if this.at == this.ready.len() {
                    this.ready.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.passing() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.closed = true;
                this.rewriter.finish(&mut this.ready);
            } else {
                this.rewriter.feed(read.filled(), &mut this.ready);
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The peer's credentials, as for a bare [`UnixStream`]: the API's audit
/// log and `refunds_allowed_from` read them.
impl Connected for Connection {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> UdsConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_live_socket_is_refused_a_stale_one_removed_and_other_files_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.sock");
        claim(&path).expect("nothing there");

        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = claim(&path).unwrap_err().to_string();
        assert!(err.contains("another posd is serving"), "{err}");
        assert!(path.exists(), "a live socket stays");

        drop(live);
        assert!(path.exists(), "a closed listener leaves its socket file");
        claim(&path).expect("a stale socket");
        assert!(!path.exists(), "the stale socket is removed");

        let file = dir.path().join("posd.db");
        std::fs::write(&file, b"data").unwrap();
        let err = claim(&file).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[tokio::test]
    async fn a_connection_reads_the_rewritten_bytes_and_writes_through() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(server);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n", "not HTTP/2: passed as it came");
        conn.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
        assert!(conn.connect_info().peer_cred.is_some());
    }
}
