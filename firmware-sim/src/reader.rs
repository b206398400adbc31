//! The simulated native card reader.

use std::pin::Pin;
use std::time::Duration;

use pos_cardcrypt::{BaseKey, Binding, CardData};
use pos_link::{Link, LinkError, apdu};
use pos_proto::reader::{
    self, CardResult, CollectCard, CollectFailed, DeviceInfo, EntryMode, FailReason, HostMessage, Progress,
    ReaderMessage, Stage, Verification, Wallet, host_message, reader_message,
};
use prost::Message;
use tokio::time::{Instant, Sleep};

/// The test card the reader presents.
#[derive(Debug, Clone)]
pub struct CardProfile {
    pub pan: String,
    pub expiry: String,
    pub brand: String,
    pub entry_mode: EntryMode,
    pub wallet: Wallet,
    pub verification: Verification,
    pub fallback: bool,
    pub aid: String,
    pub application_label: String,
}

impl Default for CardProfile {
    fn default() -> Self {
        Self {
            pan: "4242424242424242".into(),
            expiry: "3012".into(),
            brand: "visa".into(),
            entry_mode: EntryMode::Chip,
            wallet: Wallet::None,
            verification: Verification::OnlinePin,
            fallback: false,
            aid: "A0000000031010".into(),
            application_label: "VISA CREDIT".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReaderOptions {
    pub serial: String,
    pub model: String,
    pub firmware_version: String,
    pub card: CardProfile,
    /// Time the customer takes to present the card; `None`: never (until canceled).
    pub present_delay: Option<Duration>,
    /// Time the customer takes to enter the PIN (online or offline PIN only).
    pub pin_delay: Duration,
    pub base_key: BaseKey,
    /// False simulates a reader whose keys are missing: no card data is delivered.
    pub keys_loaded: bool,
    /// End the link right after a card result was delivered.
    pub unplug_after_card: bool,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            serial: "SIM-READER-0001".into(),
            model: "posd firmware-sim reader".into(),
            firmware_version: env!("CARGO_PKG_VERSION").into(),
            card: CardProfile::default(),
            present_delay: Some(Duration::from_millis(1500)),
            pin_delay: Duration::from_millis(1000),
            base_key: BaseKey::test_key(),
            keys_loaded: true,
            unplug_after_card: false,
        }
    }
}

enum Collecting {
    Idle,
    Presenting(CollectCard),
    EnteringPin(CollectCard),
}

fn encode(msg: reader_message::Body) -> Vec<u8> {
    let data = ReaderMessage { body: Some(msg) }.encode_to_vec();
    apdu::build(reader::APDU_CLASS, reader::INSTR_READER, &data).expect("reader messages are small")
}

/// Decodes a host message APDU; `None` for anything else.
pub fn decode_host(apdu_bytes: &[u8]) -> Option<HostMessage> {
    let (h, data) = apdu::parse(apdu_bytes).ok()?;
    if h.class != reader::APDU_CLASS || h.instr != reader::INSTR_HOST {
        return None;
    }
    HostMessage::decode(data).ok()
}

fn verification_needs_pin(v: Verification) -> bool {
    matches!(v, Verification::OnlinePin | Verification::OfflinePin)
}

/// Serves one link until it ends. Returns the reason it ended.
pub async fn serve(mut link: Link, opts: &ReaderOptions) -> LinkError {
    let mut state = Collecting::Idle;
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    loop {
        let apdu_or_timer = tokio::select! {
            r = link.recv() => Some(r),
            _ = async { timer.as_mut().unwrap().await }, if timer.is_some() => None,
        };
        let out: Vec<reader_message::Body> = match apdu_or_timer {
            Some(Err(e)) => return e,
            Some(Ok(bytes)) => match decode_host(&bytes).and_then(|m| m.body) {
                None => {
                    tracing::warn!(len = bytes.len(), "reader: ignoring an APDU that is not a host message");
                    vec![]
                }
                Some(body) => handle_host(body, &mut state, &mut timer, opts),
            },
            None => {
                timer = None;
                advance(&mut state, &mut timer, opts)
            }
        };
        for body in out {
            let card = matches!(body, reader_message::Body::CardResult(_));
            // A message the host did not take is lost, as on a real reader;
            // the reader keeps serving (the host cancels and asks again).
            if let Err(e) = link.send(encode(body)).await {
                if matches!(e, LinkError::Closed | LinkError::Io(_)) {
                    return e;
                }
                tracing::warn!(error = %e, "reader: message not delivered");
            } else if card && opts.unplug_after_card {
                tracing::warn!("reader: unplugged after the card result (simulated)");
                return LinkError::Closed;
            }
        }
    }
}

fn start_timer(timer: &mut Option<Pin<Box<Sleep>>>, delay: Option<Duration>) {
    *timer = delay.map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d)));
}

fn progress(payment_id: &str, stage: Stage, text: &str) -> reader_message::Body {
    reader_message::Body::Progress(Progress {
        payment_id: payment_id.into(),
        stage: stage as i32,
        display_text: text.into(),
    })
}

fn handle_host(
    body: host_message::Body,
    state: &mut Collecting,
    timer: &mut Option<Pin<Box<Sleep>>>,
    opts: &ReaderOptions,
) -> Vec<reader_message::Body> {
    match body {
        host_message::Body::GetDeviceInfo(_) => vec![reader_message::Body::DeviceInfo(DeviceInfo {
            serial: opts.serial.clone(),
            model: opts.model.clone(),
            firmware_version: opts.firmware_version.clone(),
            healthy: true,
            health_detail: "ready".into(),
        })],
        host_message::Body::CollectCard(req) => {
            let current = match state {
                Collecting::Presenting(r) | Collecting::EnteringPin(r) => Some(r.payment_id.as_str()),
                Collecting::Idle => None,
            };
            if current == Some(req.payment_id.as_str()) {
                // A repeat (the host's frame was sent twice): already collecting.
                return vec![];
            }
            if current.is_some() {
                return vec![reader_message::Body::CollectFailed(CollectFailed {
                    payment_id: req.payment_id,
                    reason: FailReason::DeviceError as i32,
                    message: "reader is busy with another payment".into(),
                })];
            }
            tracing::info!(payment = %req.payment_id, amount = req.amount_minor, "reader: present card");
            let out = vec![progress(&req.payment_id, Stage::PresentCard, "Present card")];
            *state = Collecting::Presenting(req);
            start_timer(timer, opts.present_delay);
            if opts.present_delay.is_none() {
                // Wait for a cancel: keep a timer that never fires.
                *timer = None;
            }
            out
        }
        host_message::Body::Cancel(c) => {
            let current = match state {
                Collecting::Presenting(r) | Collecting::EnteringPin(r) => Some(r.payment_id.clone()),
                Collecting::Idle => None,
            };
            // An empty payment id cancels whatever is being collected.
            if current.is_some() && (c.payment_id.is_empty() || current.as_deref() == Some(c.payment_id.as_str())) {
                *state = Collecting::Idle;
                *timer = None;
                vec![reader_message::Body::CollectFailed(CollectFailed {
                    payment_id: current.unwrap_or_default(),
                    reason: FailReason::Canceled as i32,
                    message: "canceled".into(),
                })]
            } else {
                vec![]
            }
        }
        host_message::Body::ShowResult(r) => {
            tracing::info!(payment = %r.payment_id, approved = r.approved, text = %r.display_text, "reader: result shown");
            vec![]
        }
    }
}

/// The customer did the next thing (presented the card, entered the PIN).
fn advance(
    state: &mut Collecting,
    timer: &mut Option<Pin<Box<Sleep>>>,
    opts: &ReaderOptions,
) -> Vec<reader_message::Body> {
    match std::mem::replace(state, Collecting::Idle) {
        Collecting::Idle => vec![],
        Collecting::Presenting(req) => {
            let mut out = vec![progress(&req.payment_id, Stage::Reading, "Reading card")];
            if verification_needs_pin(opts.card.verification) && opts.card.wallet == Wallet::None {
                out.push(progress(&req.payment_id, Stage::PinEntry, "Enter PIN"));
                *state = Collecting::EnteringPin(req);
                start_timer(timer, Some(opts.pin_delay));
            } else {
                out.push(card_result(&req, opts));
            }
            out
        }
        Collecting::EnteringPin(req) => vec![card_result(&req, opts)],
    }
}

fn card_result(req: &CollectCard, opts: &ReaderOptions) -> reader_message::Body {
    let card = &opts.card;
    let data = CardData {
        pan: card.pan.clone(),
        expiry: card.expiry.clone(),
        track2_equivalent: format!("{}D{}201", card.pan, card.expiry),
    };
    let binding = Binding {
        amount_minor: req.amount_minor,
        currency: &req.currency,
        terminal_id: &req.terminal_id,
        transaction_key: &req.transaction_key,
    };
    let verification = if card.wallet != Wallet::None { Verification::ConsumerDevice } else { card.verification };
    reader_message::Body::CardResult(CardResult {
        payment_id: req.payment_id.clone(),
        masked_pan: pos_cardcrypt::mask_pan(&card.pan),
        brand: card.brand.clone(),
        entry_mode: card.entry_mode as i32,
        wallet: card.wallet as i32,
        aid: card.aid.clone(),
        application_label: card.application_label.clone(),
        encrypted_card: if opts.keys_loaded {
            pos_cardcrypt::encrypt(&opts.base_key, &opts.serial, &data, &binding)
        } else {
            Vec::new()
        },
        fallback: card.fallback,
        cashback_minor: req.cashback_minor,
        verification: verification as i32,
        card_fingerprint: pos_cardcrypt::fingerprint(&opts.base_key, &card.pan),
    })
}
