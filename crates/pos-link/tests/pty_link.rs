//! Serial links over real PTY pairs: the daemon's side opens the slave device
//! with the same code that opens a USB-serial adapter. No assertion depends
//! on how fast the machine is: timeouts only bound how long a failure takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pos_link::core::RetryCause;
use pos_link::frame::{ACK, encode_frame};
use pos_link::pty::PtyMaster;
use pos_link::transport::{SerialSettings, open_serial};
use pos_link::{Link, LinkError, SerialLink, SerialTiming, apdu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUTH: &[u8] = &[0x06, 0x01, 0x07, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x90];

fn serial_link(pty: &PtyMaster, timing: SerialTiming) -> Link {
    let port = open_serial(&SerialSettings::new(pty.slave_path())).expect("open PTY slave as a serial device");
    Link::spawn(port, SerialLink::new(timing))
}

/// Two serial links joined by a wire (a proxy between two PTY masters) that
/// can corrupt bytes going from A to B.
struct Wire {
    a: Link,
    b: Link,
}

fn wire(corrupt: impl FnMut(u64, u8) -> u8 + Send + 'static) -> Wire {
    let pa = PtyMaster::open().unwrap();
    let pb = PtyMaster::open().unwrap();
    let a = serial_link(&pa, SerialTiming::default());
    let b = serial_link(&pb, SerialTiming::default());
    let (mut a_rd, mut a_wr) = tokio::io::split(pa);
    let (mut b_rd, mut b_wr) = tokio::io::split(pb);
    tokio::spawn(async move {
        let mut corrupt = corrupt;
        let mut pos = 0u64;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = a_rd.read(&mut buf).await {
            let out: Vec<u8> = buf[..n]
                .iter()
                .map(|&b| {
                    pos += 1;
                    corrupt(pos - 1, b)
                })
                .collect();
            if b_wr.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = b_rd.read(&mut buf).await {
            if a_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    Wire { a, b }
}

#[tokio::test]
async fn flipped_bit_is_naked_and_the_repeat_gets_through_once() {
    let mut w = wire(|pos, b| if pos == 5 { b ^ 0x04 } else { b });
    w.a.send(AUTH.to_vec()).await.expect("delivered after one repeat");
    assert_eq!(w.b.recv().await.unwrap(), AUTH);
    w.a.send(vec![0x80, 0x00, 0x00]).await.unwrap();
    assert_eq!(w.b.recv().await.unwrap(), vec![0x80, 0x00, 0x00], "the corrupted frame must not arrive twice");
}

#[tokio::test]
async fn three_bad_transmissions_surface_a_transmission_error() {
    let corrupting = Arc::new(AtomicBool::new(true));
    let flag = corrupting.clone();
    let frame_len = encode_frame(AUTH).len() as u64;
    let mut w =
        wire(move |pos, b| if flag.load(Ordering::SeqCst) && pos % frame_len == frame_len - 1 { b ^ 0xFF } else { b });
    let err = w.a.send(AUTH.to_vec()).await.unwrap_err();
    assert_eq!(err, LinkError::Transmission { attempts: 3, last_cause: RetryCause::Nak });
    corrupting.store(false, Ordering::SeqCst);
    w.a.send(vec![0x80, 0x00, 0x00]).await.unwrap();
    assert_eq!(w.b.recv().await.unwrap(), vec![0x80, 0x00, 0x00], "nothing of the failed frame reached B");
}

#[tokio::test]
async fn garbage_before_between_and_after_frames_is_ignored() {
    let mut pty = PtyMaster::open().unwrap();
    let mut link = serial_link(&pty, SerialTiming::default());
    let garbage = [0x00, 0xFF, 0x02, 0x03, 0x15, 0x06, 0x10, 0x41, 0x10];
    let second = vec![0x06, 0x0F, 0x00];
    let mut stream = garbage.to_vec();
    stream.extend(encode_frame(AUTH));
    stream.extend(garbage);
    stream.extend(encode_frame(&second));
    stream.extend(garbage);
    pty.write_all(&stream).await.unwrap();
    assert_eq!(link.recv().await.unwrap(), AUTH);
    assert_eq!(link.recv().await.unwrap(), second);
    let mut acks = [0u8; 2];
    pty.read_exact(&mut acks).await.unwrap();
    assert_eq!(acks, [ACK, ACK]);
}

#[tokio::test]
async fn silent_peer_gives_an_ack_timeout_error() {
    let pty = PtyMaster::open().unwrap();
    let timing = SerialTiming { ack_timeout: Duration::from_millis(100), ..SerialTiming::default() };
    let link = serial_link(&pty, timing);
    let err = link.send(AUTH.to_vec()).await.unwrap_err();
    assert_eq!(err, LinkError::Transmission { attempts: 3, last_cause: RetryCause::AckTimeout });
}

#[tokio::test]
async fn unplugged_device_ends_the_link_with_an_error() {
    let pty = PtyMaster::open().unwrap();
    let mut link = serial_link(&pty, SerialTiming::default());
    drop(pty); // the far end hangs up, as when a USB-serial adapter is pulled
    assert!(link.recv().await.is_err());
    assert!(link.send(AUTH.to_vec()).await.is_err());
}

fn pattern(side: u8, i: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..1019).map(|j| if j % 7 == 0 { 0x10 } else { (i * 31 + j + side as usize) as u8 }).collect();
    apdu::build(0x06, 0xD1, &data).unwrap()
}

#[tokio::test]
async fn sixty_four_kib_of_frames_both_ways_at_once_arrive_intact() {
    let pty = PtyMaster::open().unwrap();
    let mut a = serial_link(&pty, SerialTiming::default());
    let mut b = Link::spawn(pty, SerialLink::new(SerialTiming::default()));
    const N: usize = 64;
    assert_eq!(pattern(0, 0).len() * N, 64 * 1024);
    let a_tx = a.sender.clone();
    let b_tx = b.sender.clone();
    let send_a = tokio::spawn(async move {
        for i in 0..N {
            a_tx.send(pattern(1, i)).await.unwrap();
        }
    });
    let send_b = tokio::spawn(async move {
        for i in 0..N {
            b_tx.send(pattern(2, i)).await.unwrap();
        }
    });
    let recv_b = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(b.recv().await.unwrap(), pattern(1, i), "frame {i} A->B");
        }
    });
    for i in 0..N {
        assert_eq!(a.recv().await.unwrap(), pattern(2, i), "frame {i} B->A");
    }
    send_a.await.unwrap();
    send_b.await.unwrap();
    recv_b.await.unwrap();
}
