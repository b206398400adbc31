//! The technician's control port shared by the simulated devices: one
//! command per line over TCP, each answered with one line (`ok <state>` or
//! `error <why>`).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};

/// Serves `listener` until it fails; `answer` turns a command into the reply line.
pub async fn serve<T, F>(listener: tokio::net::TcpListener, device: Arc<T>, answer: F)
where
    T: Send + Sync + 'static,
    F: Fn(&T, &str) -> Result<String, String> + Copy + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let device = device.clone();
        tokio::spawn(answer_lines(stream, move |line| answer(&device, line)));
    }
}

/// Answers one connection's commands, a reply line each (`ok <state>` or
/// `error <why>`), until it closes.
pub async fn answer_lines<S, F>(stream: S, answer: F)
where
    S: AsyncRead + AsyncWrite,
    F: Fn(&str) -> Result<String, String>,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match answer(&line) {
            Ok(state) => format!("ok {state}\n"),
            Err(e) => format!("error {e}\n"),
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
