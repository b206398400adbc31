//! The metrics page's HTTP server (hyper, HTTP/1.1), bounded so that a
//! misbehaving scraper cannot take the lane PC's descriptors or memory:
//!
//! - at most [`MAX_CONNECTIONS`] connections at a time; one past the cap is
//!   accepted and closed at once (so the kernel's backlog does not fill);
//! - a client must send its request head within [`HEADER_TIMEOUT`], and a
//!   connection lasts [`CONNECTION_TIMEOUT`] at most, answer included;
//! - one request per connection (no keep-alive);
//! - a failed `accept` (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off, from
//!   10 ms doubling to 1 s, instead of spinning.
//!
//! Only `GET /metrics` is answered (200, OpenMetrics text); another path is
//! 404, another method on `/metrics` 405.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::telemetry::Snapshot;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has, from connecting, to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The media type of the page (OpenMetrics 1.0.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The first pause after a failed `accept`; each failure in a row doubles it.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// hyper's read buffer per connection (its minimum); a scrape's request head
/// is a few hundred bytes.
const MAX_BUF: usize = 8192;

/// Serves `GET /metrics` until the process ends, rendering what `snapshot`
/// reads at each request (on the blocking pool: it queries the database).
pub async fn serve<F>(listener: tokio::net::TcpListener, snapshot: F)
where
    F: Fn() -> Snapshot + Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // The peer gave up before we took it: nothing to do.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => continue,
            Err(e) => {
                if backoff == BACKOFF_MIN {
                    tracing::warn!(error = %e, "the metrics listener cannot accept connections (descriptors or memory exhausted?); backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(max_connections = MAX_CONNECTIONS, "the metrics page has as many connections as it allows");
            drop(stream);
            continue;
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let snapshot = snapshot.clone();
                async move { Ok::<_, Infallible>(answer(&request, snapshot).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service);
            // A connection past its time is dropped, which closes it.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

/// The answer to one request.
async fn answer<F>(request: &Request<Incoming>, snapshot: F) -> Response<Full<Bytes>>
where
    F: FnOnce() -> Snapshot + Send + 'static,
{
    if request.uri().path() != "/metrics" {
        return empty(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET {
        let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let Ok(page) = tokio::task::spawn_blocking(move || super::render(snapshot())).await else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
