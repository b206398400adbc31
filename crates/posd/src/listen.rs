//! The register API's listeners, bounded so that no client, however it
//! behaves, can take the lane PC's descriptors or the API from the others.
//!
//! - At most `max_connections` connections at a time: one past the cap is
//!   accepted and closed at once (so the kernel's backlog does not fill), and
//!   counted; the connections already open, a register's channel among them,
//!   go on.
//! - A connection must send its first bytes (the HTTP/2 preface, or a TLS
//!   ClientHello) within `handshake_timeout`, and a TLS handshake must finish
//!   within it too (tonic's `ServerTlsConfig::timeout`); otherwise it is closed.
//! - A failed `accept` (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off, from 5 ms
//!   doubling to 1 s, instead of spinning or ending the server (tonic's own
//!   incoming stream ends the server on such an error).
//!
//! HTTP/2 keep-alive pings and the per-connection stream cap are set on the
//! server in `daemon`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::Connected;

/// Bytes a client must send within the handshake timeout: the length of
/// HTTP/2's client preface (a TLS ClientHello is longer).
const FIRST_BYTES: usize = 24;

/// The API's limits (`[api]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// What the listeners counted, for the metrics page.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed for sending nothing within the handshake timeout.
    pub timed_out: AtomicU64,
    /// `accept` calls that failed (descriptors or memory exhausted).
    pub accept_errors: AtomicU64,
}

/// The daemon's API counts (one API per process).
pub static COUNTS: Counts = Counts {
    open: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
};

/// A listener the API accepts connections from.
pub trait Listen: Send + 'static {
    type Conn: Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listen for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<Self::Conn> {
        let (conn, _) = tokio::net::TcpListener::accept(self).await?;
        // Without TCP_NODELAY, Nagle's algorithm holds the last frame of an
        // answer until the register's delayed ACK: tens of milliseconds.
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
        }
        Ok(conn)
    }
}

impl Listen for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<Self::Conn> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// The connections of `listener` within `bounds`, each made into an `IO`
/// by `wrap`, for `serve_with_incoming_shutdown`. The accept loop ends when
/// the server drops the stream.
pub fn incoming<L, IO>(
    mut listener: L,
    bounds: Bounds,
    counts: &'static Counts,
    wrap: impl Fn(L::Conn) -> IO + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<IO>>>
where
    L: Listen,
    IO: Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let conn = tokio::select! {
                () = tx.closed() => return,
                conn = listener.accept() => conn,
            };
            let conn = match conn {
                Ok(conn) => conn,
                // The peer gave up before we took it: nothing to do.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {
                    continue;
                }
                Err(e) => {
                    if counts.accept_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                        tracing::error!(error = %e, "the API cannot accept connections (descriptors or memory exhausted?); backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(5);
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                if counts.refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(
                        max_connections = bounds.max_connections,
                        "the API has as many connections as it allows; closing new ones"
                    );
                }
                drop(conn);
                continue;
            };
            let guarded = Guarded::new(wrap(conn), permit, bounds.handshake_timeout, counts);
            if tx.send(Ok(guarded)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection that holds one of the API's slots until it closes, and is
/// closed if its first bytes do not come within the handshake timeout.
pub struct Guarded<IO> {
    io: IO,
    /// Until the first bytes came: when the connection is given up.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
    counts: &'static Counts,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, timeout: Duration, counts: &'static Counts) -> Self {
        counts.open.fetch_add(1, Ordering::Relaxed);
        Self { io, deadline: Some(Box::pin(tokio::time::sleep(timeout))), seen: 0, counts, _slot: slot }
    }
}

impl<IO> Drop for Guarded<IO> {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            if let Poll::Ready(Ok(())) = read {
                this.seen += buf.filled().len() - before;
                if this.seen >= FIRST_BYTES {
                    this.deadline = None;
                    return read;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                this.counts.timed_out.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing within the API's handshake timeout",
                )));
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
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

/// The wrapped connection's own information (peer address, credentials,
/// certificates), so the API sees a guarded connection as a bare one.
impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Raises the soft limit on open descriptors to the hard limit (the unit
/// sets `LimitNOFILE`), so the API's cap, not the default 1,024, bounds them.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-descriptor limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-descriptor limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-descriptor limit"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_is_closed_and_one_that_sends_nothing_times_out() {
        use tokio_stream::StreamExt;
        let (l, addr) = listener().await;
        let counts: &'static Counts = Box::leak(Box::default());
        let bounds = Bounds { max_connections: 2, handshake_timeout: Duration::from_secs(2) };
        let mut conns = incoming(l, bounds, counts, |c| c);
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        a.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut served_a = conns.next().await.unwrap().unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut served_b = conns.next().await.unwrap().unwrap();
        // The third is closed at once: it reads the end of the stream.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(c.read(&mut [0u8; 1]).await.unwrap(), 0, "past the cap");
        assert_eq!(counts.refused.load(Ordering::Relaxed), 1);
        assert_eq!(counts.open.load(Ordering::Relaxed), 2);

        // `a` sent its preface in time and stays; `b` sends nothing.
        let mut got = [0u8; FIRST_BYTES];
        served_a.read_exact(&mut got).await.unwrap();
        let err = served_b.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(counts.timed_out.load(Ordering::Relaxed), 1);
        // Past the deadline, a reads on as a bare connection.
        a.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        served_a.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");

        // A closed connection frees its slot.
        drop(served_b);
        assert_eq!(counts.open.load(Ordering::Relaxed), 1);
        let _d = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(conns.next().await.unwrap().is_ok(), "a slot was free again");
    }
}
