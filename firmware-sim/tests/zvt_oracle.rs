//! The independent `zvt` crate (=0.1.0) acts as the register: its own
//! Registration and End-of-day sequences run against firmware-sim's terminal
//! over TCP and succeed.

use std::sync::Arc;
use std::time::Duration;

use firmware_sim::line::{FaultyIo, Line};
use firmware_sim::zvt::{self as sim, Scenario, Terminal, ZvtOptions};
use futures::StreamExt;
use pos_link::{Link, TcpLink};
use zvt::sequences::{self, Sequence};
use zvt::{ZvtSerializer, packets};

async fn terminal() -> (Arc<Terminal>, std::net::SocketAddr) {
    let t = Terminal::new(ZvtOptions { step: Duration::from_millis(10), ..ZvtOptions::default() }, Scenario::Approve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = t.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let io = FaultyIo::new(stream, served.faults.clone(), false);
            sim::serve(Line::plain(Link::spawn(io, TcpLink::new())), served.clone()).await;
        }
    });
    (t, addr)
}

/// One bounded step of an oracle sequence.
async fn next<T>(s: &mut (impl futures::Stream<Item = anyhow::Result<T>> + Unpin)) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("the oracle's sequence stalled")
        .map(|r| r.unwrap_or_else(|e| panic!("the oracle refused an answer: {e:?}")))
}

#[tokio::test]
async fn the_oracles_registration_sequence_succeeds() {
    let (_t, addr) = terminal().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = packets::Registration { password: 123456, config_byte: 0xDE, currency: Some(978), tlv: None };
    let mut s = sequences::Registration::into_stream(&request, &mut stream);
    let Some(sequences::RegistrationResponse::CompletionData(c)) = next(&mut s).await else { panic!("no completion") };
    assert_eq!((c.terminal_id, c.currency), (Some(52_523_535), Some(978)));
    assert!(next(&mut s).await.is_none(), "the sequence ends after the completion");
}

#[tokio::test]
async fn the_oracles_end_of_day_sequence_succeeds_with_the_batch_total() {
    let (t, addr) = terminal().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = packets::Registration { password: 123456, config_byte: 0xDE, currency: Some(978), tlv: None };
    let mut s = sequences::Registration::into_stream(&request, &mut stream);
    while next(&mut s).await.is_some() {}
    drop(s);
    // Two sales through our own encoder, acknowledged the way the oracle does.
    for amount in [1250u64, 990] {
        let auth = pos_zvt::Message::authorization(amount, 978).encode().unwrap();
        run_until_completion(&mut stream, &auth).await;
    }
    assert_eq!(t.journal().len(), 2);

    let mut s = sequences::EndOfDay::into_stream(&packets::EndOfDay { password: 123456 }, &mut stream);
    let (mut total, mut lines, mut completed) = (None, 0, false);
    while let Some(r) = next(&mut s).await {
        match r {
            sequences::EndOfDayResponse::StatusInformation(si) => total = si.amount,
            sequences::EndOfDayResponse::PrintLine(_) => lines += 1,
            sequences::EndOfDayResponse::CompletionData(_) => completed = true,
            sequences::EndOfDayResponse::Abort(a) => panic!("end-of-day aborted: {a:?}"),
            _ => {}
        }
    }
    assert_eq!(total, Some(2240));
    assert!(lines > 0, "the slip came as print lines (06 D3 was not permitted)");
    assert!(completed);
}

/// Sends a command and acknowledges every terminal message until 06 0F or 06 1E.
async fn run_until_completion(stream: &mut tokio::net::TcpStream, command: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(command).await.unwrap();
    loop {
        let mut head = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head)).await.unwrap().unwrap();
        let len = if head[2] == 0xFF {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.unwrap();
            usize::from(u16::from_le_bytes(ext))
        } else {
            usize::from(head[2])
        };
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data).await.unwrap();
        if head[..2] == [0x80, 0x00] {
            continue;
        }
        stream.write_all(&packets::Ack {}.zvt_serialize()).await.unwrap();
        if matches!(head[..2], [0x06, 0x0F] | [0x06, 0x1E]) {
            assert_eq!(head[..2], [0x06, 0x0F], "the sale completed");
            return;
        }
    }
}
