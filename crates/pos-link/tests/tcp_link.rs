//! Bare APDUs over a loopback TCP connection.

use pos_link::{Link, TcpLink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (Link, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (Link::spawn(client.unwrap(), TcpLink::new()), server.unwrap().0)
}

#[tokio::test]
async fn two_apdus_in_one_write_and_one_apdu_over_two_writes() {
    let (mut link, mut peer) = pair().await;
    // ACK and Completion arriving together: a real field bug report.
    peer.write_all(&[0x80, 0x00, 0x00, 0x06, 0x0F, 0x00]).await.unwrap();
    assert_eq!(link.recv().await.unwrap(), vec![0x80, 0x00, 0x00]);
    assert_eq!(link.recv().await.unwrap(), vec![0x06, 0x0F, 0x00]);
    let long: Vec<u8> =
        std::iter::once([0x06, 0xD1, 0xFF, 0x2C, 0x01]).flatten().chain((0..300).map(|i| i as u8)).collect();
    peer.write_all(&long[..4]).await.unwrap();
    peer.flush().await.unwrap();
    peer.write_all(&long[4..]).await.unwrap();
    assert_eq!(link.recv().await.unwrap(), long);
}

#[tokio::test]
async fn sent_apdus_go_out_bare() {
    let (link, mut peer) = pair().await;
    link.send(vec![0x06, 0x50, 0x03, 0x12, 0x34, 0x56]).await.unwrap();
    let mut got = [0u8; 6];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(got, [0x06, 0x50, 0x03, 0x12, 0x34, 0x56]);
}

#[tokio::test]
async fn peer_closing_the_connection_ends_the_link() {
    let (mut link, peer) = pair().await;
    drop(peer);
    assert!(link.recv().await.is_err());
}
