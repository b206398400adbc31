//! The serial session's timers and retries, driven with synthetic instants:
//! no sleeps, no real clock.

use std::time::{Duration, Instant};

use pos_link::core::RetryCause;
use pos_link::frame::{ACK, DLE, NAK, STX, encode_frame};
use pos_link::{LinkCore, LinkError, LinkEvent, SerialLink, SerialTiming};

const APDU: &[u8] = &[0x06, 0x01, 0x07, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x90];

fn drain_tx(l: &mut SerialLink) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

fn drain_ev(l: &mut SerialLink) -> Vec<LinkEvent> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

fn link() -> (SerialLink, Instant) {
    (SerialLink::new(SerialTiming::default()), Instant::now())
}

#[test]
fn good_frame_is_acked_before_it_is_handed_up() {
    let (mut l, t0) = link();
    l.handle_input(&encode_frame(APDU), t0);
    assert_eq!(drain_tx(&mut l), vec![vec![ACK]]);
    assert_eq!(drain_ev(&mut l), vec![LinkEvent::Received(APDU.to_vec())]);
}

#[test]
fn corrupt_frame_is_naked_and_not_handed_up() {
    let (mut l, t0) = link();
    let mut f = encode_frame(APDU);
    f[5] ^= 0x01;
    l.handle_input(&f, t0);
    assert_eq!(drain_tx(&mut l), vec![vec![NAK]]);
    assert!(matches!(drain_ev(&mut l)[..], [LinkEvent::Rejected(_)]));
}

#[test]
fn ack_completes_a_send() {
    let (mut l, t0) = link();
    l.send(7, APDU.to_vec(), t0).unwrap();
    assert_eq!(drain_tx(&mut l), vec![encode_frame(APDU)]);
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    l.handle_input(&[ACK], t0 + Duration::from_millis(30));
    assert_eq!(drain_ev(&mut l), vec![LinkEvent::Delivered(7)]);
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn nak_triggers_retransmit_at_most_twice() {
    let (mut l, t0) = link();
    l.send(1, APDU.to_vec(), t0).unwrap();
    drain_tx(&mut l);
    for _ in 0..2 {
        l.handle_input(&[NAK], t0);
        assert_eq!(drain_tx(&mut l), vec![encode_frame(APDU)]);
        assert_eq!(drain_ev(&mut l), vec![LinkEvent::Repeated { id: 1, cause: RetryCause::Nak }]);
    }
    l.handle_input(&[NAK], t0);
    assert!(drain_tx(&mut l).is_empty(), "no fourth attempt");
    assert_eq!(
        drain_ev(&mut l),
        vec![LinkEvent::Failed { id: 1, error: LinkError::Transmission { attempts: 3, last_cause: RetryCause::Nak } }]
    );
}

#[test]
fn silent_peer_gives_a_transmission_error_after_three_t2_periods() {
    let (mut l, t0) = link();
    l.send(1, APDU.to_vec(), t0).unwrap();
    drain_tx(&mut l);
    let t2 = Duration::from_secs(5);
    // Just before T2 nothing happens.
    l.handle_timeout(t0 + t2 - Duration::from_millis(1));
    assert!(drain_tx(&mut l).is_empty());
    let mut now = t0;
    for _ in 0..2 {
        now += t2;
        assert_eq!(l.poll_timeout(), Some(now));
        l.handle_timeout(now);
        assert_eq!(drain_tx(&mut l), vec![encode_frame(APDU)]);
    }
    now += t2;
    l.handle_timeout(now);
    assert!(drain_tx(&mut l).is_empty());
    assert_eq!(
        drain_ev(&mut l).last(),
        Some(&LinkEvent::Failed {
            id: 1,
            error: LinkError::Transmission { attempts: 3, last_cause: RetryCause::AckTimeout }
        })
    );
}

#[test]
fn configured_t2_is_honoured() {
    let mut l = SerialLink::new(SerialTiming { ack_timeout: Duration::from_millis(750), ..SerialTiming::default() });
    let t0 = Instant::now();
    l.send(1, APDU.to_vec(), t0).unwrap();
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_millis(750)));
}

#[test]
fn queued_apdus_wait_for_the_previous_ack_and_go_out_in_order() {
    let (mut l, t0) = link();
    let second = vec![0x80, 0x00, 0x00];
    l.send(1, APDU.to_vec(), t0).unwrap();
    l.send(2, second.clone(), t0).unwrap();
    assert_eq!(drain_tx(&mut l), vec![encode_frame(APDU)]);
    l.handle_input(&[ACK], t0);
    assert_eq!(drain_tx(&mut l), vec![encode_frame(&second)]);
    l.handle_input(&[ACK], t0);
    assert_eq!(drain_ev(&mut l), vec![LinkEvent::Delivered(1), LinkEvent::Delivered(2)]);
}

#[test]
fn a_failed_apdu_does_not_block_the_next_one() {
    let (mut l, t0) = link();
    l.send(1, APDU.to_vec(), t0).unwrap();
    l.send(2, vec![0x80, 0x00, 0x00], t0).unwrap();
    let mut sent = drain_tx(&mut l);
    for _ in 0..3 {
        l.handle_input(&[NAK], t0);
        sent = drain_tx(&mut l);
    }
    assert_eq!(sent, vec![encode_frame(&[0x80, 0x00, 0x00])]);
}

#[test]
fn inter_byte_gap_over_t1_drops_the_partial_frame_with_a_nak() {
    let (mut l, t0) = link();
    let f = encode_frame(APDU);
    l.handle_input(&f[..4], t0);
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    l.handle_timeout(t0 + Duration::from_millis(200));
    assert_eq!(drain_tx(&mut l), vec![vec![NAK]]);
    // The rest of the old frame is noise; the repeated frame decodes.
    l.handle_input(&f[4..], t0 + Duration::from_millis(300));
    l.handle_input(&f, t0 + Duration::from_millis(310));
    assert_eq!(drain_ev(&mut l).last(), Some(&LinkEvent::Received(APDU.to_vec())));
}

#[test]
fn late_continuation_after_t1_is_detected_without_a_timer_callback() {
    let (mut l, t0) = link();
    let f = encode_frame(APDU);
    l.handle_input(&f[..4], t0);
    l.handle_input(&f[4..], t0 + Duration::from_millis(250));
    assert_eq!(drain_tx(&mut l), vec![vec![NAK]]);
    assert!(!drain_ev(&mut l).iter().any(|e| matches!(e, LinkEvent::Received(_))));
}

#[test]
fn slow_but_timely_bytes_still_make_a_frame() {
    let (mut l, t0) = link();
    let mut now = t0;
    for b in encode_frame(APDU) {
        now += Duration::from_millis(150);
        l.handle_timeout(now);
        l.handle_input(&[b], now);
    }
    assert_eq!(drain_tx(&mut l), vec![vec![ACK]]);
}

#[test]
fn stray_ack_and_garbage_between_frames_are_ignored() {
    let (mut l, t0) = link();
    l.handle_input(&[ACK, 0x42, DLE, 0x99, STX, 0xFF], t0);
    assert!(drain_tx(&mut l).is_empty());
    assert!(drain_ev(&mut l).is_empty());
}

#[test]
fn malformed_apdu_is_refused_at_send() {
    let (mut l, t0) = link();
    assert!(matches!(l.send(1, vec![0x06, 0x01, 0x05, 0x00], t0), Err(LinkError::Apdu(_))));
    assert!(drain_tx(&mut l).is_empty());
}

#[test]
fn a_late_ack_of_a_repeated_frame_does_not_confirm_the_next_one() {
    let (mut l, t0) = link();
    let second = vec![0x80, 0x00, 0x00];
    l.send(1, APDU.to_vec(), t0).unwrap();
    l.send(2, second.clone(), t0).unwrap();
    drain_tx(&mut l);
    let t2 = t0 + Duration::from_secs(5);
    l.handle_timeout(t2);
    assert_eq!(drain_tx(&mut l), vec![encode_frame(APDU)], "first frame repeated after T2");
    // The peer ACKs both copies; the ACKs arrive together.
    l.handle_input(&[ACK, ACK], t2 + Duration::from_millis(10));
    let events = drain_ev(&mut l);
    assert!(events.contains(&LinkEvent::Delivered(1)));
    assert!(!events.contains(&LinkEvent::Delivered(2)), "the second frame was not even sent: {events:?}");
    assert_eq!(drain_tx(&mut l), vec![encode_frame(&second)]);
    l.handle_input(&[ACK], t2 + Duration::from_millis(20));
    assert_eq!(drain_ev(&mut l), vec![LinkEvent::Delivered(2)]);
}
