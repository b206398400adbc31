//! Sans-IO session for bare APDUs on TCP: no framing bytes, no CRC, no ACK.
//! A sent APDU counts as delivered once handed to the driver, which writes
//! in order; the application layer's own replies (`80 00`, `84 xx`) are the
//! real confirmation.

use std::collections::VecDeque;
use std::time::Instant;

use crate::apdu::{self, ApduSplitter};
use crate::core::{LinkCore, LinkError, LinkEvent, MessageId};

#[derive(Debug, Default)]
pub struct TcpLink {
    splitter: ApduSplitter,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<LinkEvent>,
    fatal: Option<LinkError>,
}

impl TcpLink {
    pub fn new() -> Self {
        Self::default()
    }
}

impl LinkCore for TcpLink {
    fn send(&mut self, id: MessageId, apdu: Vec<u8>, _now: Instant) -> Result<(), LinkError> {
        apdu::parse(&apdu)?;
        self.transmit.push_back(apdu);
        self.events.push_back(LinkEvent::Delivered(id));
        Ok(())
    }

    fn handle_input(&mut self, bytes: &[u8], _now: Instant) {
        if self.fatal.is_some() {
            return;
        }
        self.splitter.push(bytes);
        loop {
            match self.splitter.next_apdu() {
                Ok(Some(apdu)) => self.events.push_back(LinkEvent::Received(apdu)),
                Ok(None) => break,
                Err(e) => {
                    self.fatal = Some(e.into());
                    break;
                }
            }
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn fatal_error(&self) -> Option<LinkError> {
        self.fatal.clone()
    }
}
