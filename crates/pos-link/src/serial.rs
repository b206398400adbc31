//! Sans-IO serial session: frames APDUs, ACKs/NAKs what it receives, and
//! repeats what it sends until ACKed (at most twice after the first send).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::apdu;
use crate::core::{LinkCore, LinkError, LinkEvent, MessageId, RetryCause};
use crate::frame::{self, ACK, Decoded, FrameDecoder, FrameError, NAK};

/// Serial link timers and retry budget (ZVT defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialTiming {
    /// T1: longest gap between two bytes of one frame.
    pub inter_byte: Duration,
    /// T2: how long to wait for ACK/NAK after sending a frame.
    pub ack_timeout: Duration,
    /// Repeats after a NAK or a T2 timeout before reporting a transmission error.
    pub max_repeats: u8,
}

impl Default for SerialTiming {
    fn default() -> Self {
        Self { inter_byte: Duration::from_millis(200), ack_timeout: Duration::from_secs(5), max_repeats: 2 }
    }
}

#[derive(Debug)]
struct InFlight {
    id: MessageId,
    frame: Vec<u8>,
    repeats: u8,
    ack_deadline: Instant,
    /// The latest copy was handed to the driver; only then can an ACK or NAK be for it.
    handed_out: bool,
}

/// One end of a framed serial link. Sends one frame at a time; queued APDUs
/// wait for the previous one's ACK (or its failure).
#[derive(Debug)]
pub struct SerialLink {
    timing: SerialTiming,
    decoder: FrameDecoder,
    last_rx: Option<Instant>,
    queue: VecDeque<(MessageId, Vec<u8>)>,
    in_flight: Option<InFlight>,
    /// Bytes to write; the flag marks a copy of the in-flight frame.
    transmit: VecDeque<(Vec<u8>, bool)>,
    events: VecDeque<LinkEvent>,
}

impl SerialLink {
    pub fn new(timing: SerialTiming) -> Self {
        Self::with_max_apdu(timing, frame::MAX_APDU_LEN)
    }

    pub fn with_max_apdu(timing: SerialTiming, max_apdu: usize) -> Self {
        Self {
            timing,
            decoder: FrameDecoder::new(max_apdu),
            last_rx: None,
            queue: VecDeque::new(),
            in_flight: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn start_next(&mut self, now: Instant) {
        if self.in_flight.is_some() {
            return;
        }
        if let Some((id, apdu)) = self.queue.pop_front() {
            let frame = frame::encode_frame(&apdu);
            self.transmit.push_back((frame.clone(), true));
            self.in_flight = Some(InFlight {
                id,
                frame,
                repeats: 0,
                ack_deadline: now + self.timing.ack_timeout,
                handed_out: false,
            });
        }
    }

    fn repeat_or_fail(&mut self, cause: RetryCause, now: Instant) {
        let Some(f) = self.in_flight.as_mut() else { return };
        if f.repeats < self.timing.max_repeats {
            f.repeats += 1;
            f.ack_deadline = now + self.timing.ack_timeout;
            f.handed_out = false;
            self.transmit.push_back((f.frame.clone(), true));
            self.events.push_back(LinkEvent::Repeated { id: f.id, cause });
        } else {
            let attempts = f.repeats + 1;
            let id = f.id;
            self.in_flight = None;
            self.events
                .push_back(LinkEvent::Failed { id, error: LinkError::Transmission { attempts, last_cause: cause } });
            self.start_next(now);
        }
    }

    fn reject(&mut self, error: FrameError) {
        self.transmit.push_back((vec![NAK], false));
        self.events.push_back(LinkEvent::Rejected(error));
    }

    fn peer_has_seen_in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.handed_out)
    }

    fn t1_expired(&self, now: Instant) -> bool {
        self.decoder.in_frame()
            && self.last_rx.is_some_and(|t| now.saturating_duration_since(t) >= self.timing.inter_byte)
    }
}

impl LinkCore for SerialLink {
    fn send(&mut self, id: MessageId, apdu: Vec<u8>, now: Instant) -> Result<(), LinkError> {
        apdu::parse(&apdu)?;
        self.queue.push_back((id, apdu));
        self.start_next(now);
        Ok(())
    }

    fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        if self.t1_expired(now) {
            self.decoder.abort_frame();
            self.reject(FrameError::InterByteTimeout);
        }
        self.last_rx = Some(now);
        for &b in bytes {
            match self.decoder.push(b) {
                None => {}
                Some(Decoded::Frame(apdu)) => {
                    self.transmit.push_back((vec![ACK], false));
                    self.events.push_back(LinkEvent::Received(apdu));
                }
                Some(Decoded::Bad(e)) => self.reject(e),
                // An ACK or NAK counts only for a frame the peer can have seen:
                // a late ACK of a repeated frame must not confirm the next one.
                Some(Decoded::Ack) if self.peer_has_seen_in_flight() => {
                    let f = self.in_flight.take().expect("checked by the guard");
                    self.events.push_back(LinkEvent::Delivered(f.id));
                    self.start_next(now);
                }
                Some(Decoded::Nak) if self.peer_has_seen_in_flight() => self.repeat_or_fail(RetryCause::Nak, now),
                Some(Decoded::Ack | Decoded::Nak) => {}
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.t1_expired(now) {
            self.decoder.abort_frame();
            self.reject(FrameError::InterByteTimeout);
        }
        if self.in_flight.as_ref().is_some_and(|f| now >= f.ack_deadline) {
            self.repeat_or_fail(RetryCause::AckTimeout, now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let (bytes, is_frame) = self.transmit.pop_front()?;
        if is_frame && let Some(f) = self.in_flight.as_mut() {
            f.handed_out = true;
        }
        Some(bytes)
    }

    fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let t1 = self.last_rx.filter(|_| self.decoder.in_frame()).map(|t| t + self.timing.inter_byte);
        let t2 = self.in_flight.as_ref().map(|f| f.ack_deadline);
        match (t1, t2) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
