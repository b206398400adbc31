//! The simulated native card reader.
//!
//! What the customer does in each payment comes from the reader's [`Desk`]:
//! a queue of [`Customer`]s (a scenario's payments, in order; then the
//! standing customer of the command line) and live actions of a technician
//! (tap the card now, cancel, pick another card, arm a fault).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_cardcrypt::{BaseKey, Binding, CardData};
use pos_link::{LinkError, apdu};
use pos_proto::reader::{
    self, CardResult, CollectCard, CollectFailed, DeviceInfo, EntryMode, FailReason, HostMessage, Progress,
    ReaderMessage, Stage, Verification, Wallet, host_message, reader_message,
};
use prost::Message;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::line::{Described, Line, LineFaults};
use crate::transcript::Dir;

/// The test card the reader presents.
#[derive(Debug, Clone, PartialEq)]
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

/// The named test cards a technician can pick (`card NAME`).
pub const CARD_NAMES: &[&str] = &[
    "visa",
    "visa-contactless",
    "visa-apple-pay",
    "mastercard",
    "mastercard-google-pay",
    "amex",
    "girocard",
    "visa-swipe",
    "visa-fallback",
    "visa-manual",
    "visa-offline-pin",
    "visa-no-cvm",
];

impl CardProfile {
    /// One of [`CARD_NAMES`]; all are public test card numbers.
    pub fn named(name: &str) -> Result<CardProfile, String> {
        let visa = CardProfile::default();
        let card = match name {
            "visa" => visa,
            "visa-contactless" => {
                CardProfile { entry_mode: EntryMode::Contactless, verification: Verification::NoCvm, ..visa }
            }
            "visa-apple-pay" => CardProfile { entry_mode: EntryMode::Contactless, wallet: Wallet::ApplePay, ..visa },
            "mastercard" | "mastercard-google-pay" => CardProfile {
                pan: "5555555555554444".into(),
                brand: "mastercard".into(),
                aid: "A0000000041010".into(),
                application_label: "MASTERCARD".into(),
                entry_mode: if name == "mastercard" { EntryMode::Chip } else { EntryMode::Contactless },
                wallet: if name == "mastercard" { Wallet::None } else { Wallet::GooglePay },
                ..visa
            },
            "amex" => CardProfile {
                pan: "378282246310005".into(),
                brand: "amex".into(),
                aid: "A00000002501".into(),
                application_label: "AMERICAN EXPRESS".into(),
                verification: Verification::Signature,
                ..visa
            },
            "girocard" => CardProfile {
                pan: "6799998900000060018".into(),
                brand: "girocard".into(),
                aid: "A0000003591010028001".into(),
                application_label: "GIROCARD".into(),
                ..visa
            },
            "visa-swipe" => CardProfile { entry_mode: EntryMode::Swipe, verification: Verification::Signature, ..visa },
            "visa-fallback" => CardProfile {
                entry_mode: EntryMode::Swipe,
                fallback: true,
                verification: Verification::Signature,
                ..visa
            },
            "visa-manual" => CardProfile { entry_mode: EntryMode::Manual, verification: Verification::NoCvm, ..visa },
            "visa-offline-pin" => CardProfile { verification: Verification::OfflinePin, ..visa },
            "visa-no-cvm" => CardProfile { verification: Verification::NoCvm, ..visa },
            other => return Err(format!("unknown card {other:?}; one of {}", CARD_NAMES.join(", "))),
        };
        Ok(card)
    }

    fn needs_pin(&self) -> bool {
        matches!(self.verification, Verification::OnlinePin | Verification::OfflinePin) && self.wallet == Wallet::None
    }
}

/// How the customer's PIN entry ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    Entered,
    /// Wrong three times: the card blocks its PIN (an offline PIN check).
    Wrong,
    /// The customer walks away from the PIN pad; the reader gives up.
    Abandoned,
}

impl PinOutcome {
    pub fn parse(s: &str) -> Result<PinOutcome, String> {
        match s {
            "ok" | "entered" => Ok(PinOutcome::Entered),
            "wrong" => Ok(PinOutcome::Wrong),
            "abandon" | "abandoned" => Ok(PinOutcome::Abandoned),
            other => Err(format!("unknown PIN outcome {other:?}; one of ok, wrong, abandon")),
        }
    }
}

/// Named moments of a collection at which a fault can be armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The host's CollectCard arrived.
    Collect,
    /// The customer is asked for the PIN.
    Pin,
    /// The card result is about to go to the host.
    Card,
    /// The host's ShowResult arrived (the payment's outcome).
    Result,
}

impl Step {
    pub fn parse(s: &str) -> Result<Step, String> {
        match s {
            "collect" => Ok(Step::Collect),
            "pin" => Ok(Step::Pin),
            "card" => Ok(Step::Card),
            "result" => Ok(Step::Result),
            other => Err(format!("unknown step {other:?}; one of collect, pin, card, result")),
        }
    }
}

/// What goes wrong at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A line fault armed at that moment: `drop-ack`, `bad-crc` or `silent`.
    Line(String),
    /// The reader's plug is pulled (after the card result, when at `card`);
    /// it comes back after the given time.
    Disconnect { back_after: Duration },
    /// The reader restarts: silent for the given time, then idle and ready,
    /// the collection forgotten.
    Reboot { takes: Duration },
}

/// What the customer does in one payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub card: CardProfile,
    /// When the card is presented after the reader asks; `None`: only when a
    /// technician taps it (`tap`).
    pub present_after: Option<Duration>,
    pub pin: PinOutcome,
    pub pin_after: Duration,
    /// The customer presses cancel on the reader this long after it asked.
    pub cancel_after: Option<Duration>,
    /// Reading the presented card fails: the reader answers with a
    /// CollectFailed (card error) carrying this message, as it is (a
    /// misbehaving reader's text, for posd's scrubbing to deal with).
    pub collect_fails: Option<String>,
    pub faults: Vec<(Step, Fault)>,
}

impl Default for Customer {
    fn default() -> Self {
        Customer {
            card: CardProfile::default(),
            present_after: Some(Duration::from_millis(1500)),
            pin: PinOutcome::Entered,
            pin_after: Duration::from_millis(1000),
            cancel_after: None,
            collect_fails: None,
            faults: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReaderOptions {
    pub serial: String,
    pub model: String,
    pub firmware_version: String,
    pub base_key: BaseKey,
    /// False simulates a reader whose keys are missing: no card data is delivered.
    pub keys_loaded: bool,
    /// The customer of every payment a scenario does not describe.
    pub customer: Customer,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            serial: "SIM-READER-0001".into(),
            model: "posd firmware-sim reader".into(),
            firmware_version: env!("CARGO_PKG_VERSION").into(),
            base_key: BaseKey::test_key(),
            keys_loaded: true,
            customer: Customer::default(),
        }
    }
}

/// A technician's live action at the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Present the card now.
    Tap,
    /// Press cancel on the reader.
    Cancel,
    /// Restart: silent this long, then idle and ready, the collection forgotten.
    Reboot(Duration),
}

/// The reader's desk: who the next customers are, what a technician asks
/// for right now, and the line's faults.
pub struct Desk {
    state: Mutex<DeskState>,
    wake: Notify,
    pub faults: Arc<Mutex<LineFaults>>,
}

struct DeskState {
    planned: VecDeque<Customer>,
    standing: Customer,
    /// How long customers take to present the card when not waiting for a tap.
    present_after: Duration,
    actions: VecDeque<Action>,
    payments: u64,
    doing: String,
}

impl Desk {
    pub fn new(standing: Customer) -> Arc<Desk> {
        Arc::new(Desk {
            state: Mutex::new(DeskState {
                planned: VecDeque::new(),
                present_after: standing.present_after.unwrap_or(Duration::from_millis(1500)),
                standing,
                actions: VecDeque::new(),
                payments: 0,
                doing: "idle".into(),
            }),
            wake: Notify::new(),
            faults: Arc::default(),
        })
    }

    /// The customers of the next payments, in order (a scenario).
    pub fn plan(&self, customers: Vec<Customer>) {
        self.state.lock().unwrap().planned = customers.into();
    }

    /// The card of every later payment (and of planned ones not yet begun).
    pub fn pick_card(&self, card: CardProfile) {
        let mut s = self.state.lock().unwrap();
        s.standing.card = card.clone();
        for c in &mut s.planned {
            c.card = card.clone();
        }
    }

    /// Later payments wait for `tap` (true) or present the card by themselves.
    pub fn set_manual(&self, manual: bool) {
        let mut s = self.state.lock().unwrap();
        s.standing.present_after = if manual { None } else { Some(s.present_after) };
    }

    /// How later PIN entries end.
    pub fn set_pin(&self, pin: PinOutcome) {
        let mut s = self.state.lock().unwrap();
        s.standing.pin = pin;
        for c in &mut s.planned {
            c.pin = pin;
        }
    }

    pub fn act(&self, action: Action) {
        self.state.lock().unwrap().actions.push_back(action);
        self.wake.notify_one();
    }

    pub fn status_line(&self) -> String {
        let s = self.state.lock().unwrap();
        format!(
            "reader {}; card {} {} {:?}{}; {} payments; {} planned; {}",
            s.doing,
            s.standing.card.brand,
            pos_mask::mask_pan(&s.standing.card.pan),
            s.standing.card.entry_mode,
            if s.standing.card.wallet == Wallet::None {
                String::new()
            } else {
                format!(" {:?}", s.standing.card.wallet)
            },
            s.payments,
            s.planned.len(),
            self.faults.lock().unwrap()
        )
    }

    fn next_customer(&self) -> Customer {
        let mut s = self.state.lock().unwrap();
        s.payments += 1;
        s.planned.pop_front().unwrap_or_else(|| s.standing.clone())
    }

    fn take_action(&self) -> Option<Action> {
        self.state.lock().unwrap().actions.pop_front()
    }

    fn doing(&self, what: &str) {
        self.state.lock().unwrap().doing = what.to_string();
    }
}

enum Collecting {
    Idle,
    Presenting(CollectCard),
    EnteringPin(CollectCard),
}

impl Collecting {
    fn payment_id(&self) -> Option<&str> {
        match self {
            Collecting::Presenting(r) | Collecting::EnteringPin(r) => Some(&r.payment_id),
            Collecting::Idle => None,
        }
    }
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

fn decode_reader(apdu_bytes: &[u8]) -> Option<reader_message::Body> {
    let (h, data) = apdu::parse(apdu_bytes).ok()?;
    if h.class != reader::APDU_CLASS || h.instr != reader::INSTR_READER {
        return None;
    }
    ReaderMessage::decode(data).ok()?.body
}

/// A frame's meaning for the transcript. Card data never appears: the
/// reader sends only the masked number and the encrypted blob (whose size
/// is shown, not its bytes' meaning).
pub fn describe(dir: Dir, apdu_bytes: &[u8]) -> Described {
    let short = |id: &str| id.to_string();
    let meaning = match dir {
        Dir::In => match decode_host(apdu_bytes).and_then(|m| m.body) {
            Some(host_message::Body::CollectCard(c)) => format!(
                "CollectCard payment {} amount {} {} cashback {} terminal {}",
                short(&c.payment_id),
                c.amount_minor,
                c.currency,
                c.cashback_minor,
                c.terminal_id
            ),
            Some(host_message::Body::ShowResult(r)) => format!(
                "ShowResult payment {} {} {:?}",
                short(&r.payment_id),
                if r.approved { "approved" } else { "not approved" },
                r.display_text
            ),
            Some(host_message::Body::Cancel(c)) if c.payment_id.is_empty() => "Cancel (any collection)".into(),
            Some(host_message::Body::Cancel(c)) => format!("Cancel payment {}", short(&c.payment_id)),
            Some(host_message::Body::GetDeviceInfo(_)) => "GetDeviceInfo".into(),
            None => "not a host message".into(),
        },
        Dir::Out => match decode_reader(apdu_bytes) {
            Some(reader_message::Body::Progress(p)) => format!(
                "Progress payment {} {:?} {:?}",
                short(&p.payment_id),
                Stage::try_from(p.stage).unwrap_or(Stage::Unspecified),
                p.display_text
            ),
            Some(reader_message::Body::CardResult(c)) => format!(
                "CardResult payment {} {} {} {:?} wallet {:?} cvm {:?}{} ({} bytes of encrypted card data)",
                short(&c.payment_id),
                c.brand,
                c.masked_pan,
                EntryMode::try_from(c.entry_mode).unwrap_or(EntryMode::Unspecified),
                Wallet::try_from(c.wallet).unwrap_or(Wallet::None),
                Verification::try_from(c.verification).unwrap_or(Verification::Unspecified),
                if c.fallback { " fallback" } else { "" },
                c.encrypted_card.len()
            ),
            Some(reader_message::Body::CollectFailed(f)) => format!(
                "CollectFailed payment {} {:?} {:?}",
                short(&f.payment_id),
                FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified),
                f.message
            ),
            Some(reader_message::Body::DeviceInfo(d)) => {
                format!(
                    "DeviceInfo serial {} model {:?} firmware {} healthy {}",
                    d.serial, d.model, d.firmware_version, d.healthy
                )
            }
            None => "not a reader message".into(),
        },
    };
    meaning.into()
}

fn progress(payment_id: &str, stage: Stage, text: &str) -> reader_message::Body {
    reader_message::Body::Progress(Progress {
        payment_id: payment_id.into(),
        stage: stage as i32,
        display_text: text.into(),
    })
}

fn failed(payment_id: &str, reason: FailReason, message: &str) -> reader_message::Body {
    reader_message::Body::CollectFailed(CollectFailed {
        payment_id: payment_id.into(),
        reason: reason as i32,
        message: message.into(),
    })
}

type Timer = Option<Pin<Box<Sleep>>>;

fn timer_in(d: Option<Duration>) -> Timer {
    d.map(|d| Box::pin(tokio::time::sleep_until(Instant::now() + d)))
}

async fn fire(timer: &mut Timer) {
    match timer.as_mut() {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// The reader's life on one line.
struct Reader<'a> {
    opts: &'a ReaderOptions,
    desk: &'a Desk,
    state: Collecting,
    /// The latest payment's customer, kept after its collection ended (the
    /// `card` and `result` steps come at or after the end).
    customer: Customer,
    /// The customer's next move (card presented, PIN done).
    step: Timer,
    /// The customer presses cancel.
    cancel: Timer,
    /// A reboot ends.
    reboot: Timer,
    /// Unplug once the pending messages are out.
    unplug: Option<Duration>,
    /// What happened that the transcript should say (faults fired).
    notes: Vec<String>,
}

/// What serving a line ended with.
#[derive(Debug)]
pub enum Ended {
    /// The line failed or the host went away.
    Line(LinkError),
    /// A fault pulled the plug; the device is back after this long.
    Unplugged { back_after: Duration },
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Line(e) => write!(f, "{e}"),
            Ended::Unplugged { back_after } => write!(f, "unplugged by a fault (back after {back_after:?})"),
        }
    }
}

/// Serves one line until it ends.
pub async fn serve(mut line: Line, opts: &ReaderOptions, desk: &Desk) -> Ended {
    let mut r = Reader {
        opts,
        desk,
        state: Collecting::Idle,
        customer: opts.customer.clone(),
        step: None,
        cancel: None,
        reboot: None,
        unplug: None,
        notes: Vec::new(),
    };
    desk.doing("idle");
    loop {
        let out = tokio::select! {
            biased; // branches in a fixed order: a simulated run replays exactly
            got = line.recv() => match got {
                Err(e) => return Ended::Line(e),
                Ok(bytes) => match decode_host(&bytes).and_then(|m| m.body) {
                    None => {
                        tracing::warn!(len = bytes.len(), "reader: ignoring an APDU that is not a host message");
                        vec![]
                    }
                    Some(body) => r.host(body),
                },
            },
            () = fire(&mut r.step) => {
                r.step = None;
                r.advance()
            }
            () = fire(&mut r.cancel) => {
                r.cancel = None;
                r.customer_cancels()
            }
            () = fire(&mut r.reboot) => {
                r.reboot = None;
                desk.faults.lock().unwrap().silent = false;
                tracing::warn!("reader: back from the reboot");
                desk.doing("idle");
                vec![]
            }
            () = desk.wake.notified() => {
                let mut out = Vec::new();
                while let Some(a) = desk.take_action() {
                    out.extend(match a {
                        Action::Tap => r.tap(),
                        Action::Cancel => r.customer_cancels(),
                        Action::Reboot(takes) => {
                            r.reboot(takes);
                            vec![]
                        }
                    });
                }
                out
            }
        };
        for body in out {
            let withhold = matches!(body, reader_message::Body::CardResult(_)) && r.arm(Step::Card);
            for note in r.notes.drain(..) {
                line.note(&note);
            }
            if withhold {
                continue;
            }
            // A message the host did not take is lost, as on a real reader;
            // the reader keeps serving (the host cancels and asks again).
            if let Err(e) = line.send(encode(body)).await {
                if matches!(e, LinkError::Closed | LinkError::Io(_)) {
                    return Ended::Line(e);
                }
                tracing::warn!(error = %e, "reader: message not delivered");
            }
        }
        for note in r.notes.drain(..) {
            line.note(&note);
        }
        if let Some(back_after) = r.unplug.take() {
            tracing::warn!("reader: unplugged (simulated)");
            return Ended::Unplugged { back_after };
        }
    }
}

impl Reader<'_> {
    fn host(&mut self, body: host_message::Body) -> Vec<reader_message::Body> {
        let opts = self.opts;
        match body {
            host_message::Body::GetDeviceInfo(_) => vec![reader_message::Body::DeviceInfo(DeviceInfo {
                serial: opts.serial.clone(),
                model: opts.model.clone(),
                firmware_version: opts.firmware_version.clone(),
                healthy: true,
                health_detail: "ready".into(),
            })],
            host_message::Body::CollectCard(req) => {
                let current = self.state.payment_id();
                if current == Some(req.payment_id.as_str()) {
                    // A repeat (the host's frame was sent twice): already collecting.
                    return vec![];
                }
                if current.is_some() {
                    return vec![failed(
                        &req.payment_id,
                        FailReason::DeviceError,
                        "reader is busy with another payment",
                    )];
                }
                let customer = self.desk.next_customer();
                tracing::info!(payment = %req.payment_id, amount = req.amount_minor, "reader: present card");
                let out = vec![progress(&req.payment_id, Stage::PresentCard, "Present card")];
                self.step = timer_in(customer.present_after);
                self.cancel = timer_in(customer.cancel_after);
                self.desk.doing(if customer.present_after.is_some() {
                    "waiting for the card"
                } else {
                    "waiting for a tap"
                });
                self.state = Collecting::Presenting(req);
                self.customer = customer;
                if self.arm(Step::Collect) {
                    return vec![];
                }
                out
            }
            host_message::Body::Cancel(c) => {
                let current = self.state.payment_id().map(str::to_string);
                // An empty payment id cancels whatever is being collected.
                match current {
                    Some(id) if c.payment_id.is_empty() || c.payment_id == id => {
                        self.idle();
                        vec![failed(&id, FailReason::Canceled, "canceled")]
                    }
                    _ => vec![],
                }
            }
            host_message::Body::ShowResult(r) => {
                tracing::info!(payment = %r.payment_id, approved = r.approved, text = %r.display_text, "reader: result shown");
                self.arm(Step::Result);
                vec![]
            }
        }
    }

    fn idle(&mut self) {
        self.state = Collecting::Idle;
        self.step = None;
        self.cancel = None;
        self.desk.doing("idle");
    }

    /// The customer did the next thing (presented the card, entered the PIN).
    fn advance(&mut self) -> Vec<reader_message::Body> {
        match std::mem::replace(&mut self.state, Collecting::Idle) {
            Collecting::Idle => vec![],
            Collecting::Presenting(req) => {
                let mut out = vec![progress(&req.payment_id, Stage::Reading, "Reading card")];
                if let Some(message) = self.customer.collect_fails.clone() {
                    out.push(failed(&req.payment_id, FailReason::CardError, &message));
                    self.idle();
                } else if self.customer.card.needs_pin() {
                    out.push(progress(&req.payment_id, Stage::PinEntry, "Enter PIN"));
                    self.step = timer_in(Some(self.customer.pin_after));
                    self.desk.doing("waiting for the PIN");
                    self.state = Collecting::EnteringPin(req);
                    if self.arm(Step::Pin) {
                        return vec![];
                    }
                } else {
                    out.push(card_result(&req, &self.customer.card, self.opts));
                    self.idle();
                }
                out
            }
            Collecting::EnteringPin(req) => {
                let out = match self.customer.pin {
                    PinOutcome::Entered => card_result(&req, &self.customer.card, self.opts),
                    PinOutcome::Wrong => failed(&req.payment_id, FailReason::CardError, "PIN tries exceeded"),
                    PinOutcome::Abandoned => failed(&req.payment_id, FailReason::Timeout, "no PIN entered"),
                };
                self.idle();
                vec![out]
            }
        }
    }

    fn tap(&mut self) -> Vec<reader_message::Body> {
        match self.state {
            Collecting::Presenting(..) => {
                self.step = None;
                self.advance()
            }
            _ => {
                tracing::info!("reader: tap ignored, no payment is waiting for a card");
                vec![]
            }
        }
    }

    fn customer_cancels(&mut self) -> Vec<reader_message::Body> {
        match self.state.payment_id().map(str::to_string) {
            Some(id) => {
                tracing::info!(payment = %id, "reader: the customer pressed cancel");
                self.idle();
                vec![failed(&id, FailReason::Canceled, "canceled by the customer at the reader")]
            }
            None => vec![],
        }
    }

    fn reboot(&mut self, takes: Duration) {
        tracing::warn!(?takes, "reader: rebooting");
        self.desk.faults.lock().unwrap().silent = true;
        self.reboot = timer_in(Some(takes));
        self.idle();
        self.desk.doing("rebooting");
    }

    /// Arms the customer's faults for `step`. True when the message of that
    /// moment must not go out: the reader went silent, reboots, or is
    /// unplugged before it (at the `card` step the plug is pulled after it).
    fn arm(&mut self, step: Step) -> bool {
        let faults: Vec<Fault> =
            self.customer.faults.iter().filter(|(s, _)| *s == step).map(|(_, f)| f.clone()).collect();
        let mut withhold = false;
        for f in faults {
            tracing::warn!(?step, fault = ?f, "reader: scenario fault");
            self.notes.push(format!("scenario fault at {step:?}: {f:?}"));
            match f {
                Fault::Line(name) => {
                    let _ = self.desk.faults.lock().unwrap().arm(&name);
                    withhold |= name == "silent";
                }
                Fault::Disconnect { back_after } => {
                    self.unplug = Some(back_after);
                    withhold |= step != Step::Card;
                }
                Fault::Reboot { takes } => {
                    self.reboot(takes);
                    withhold = true;
                }
            }
        }
        withhold
    }
}

fn card_result(req: &CollectCard, card: &CardProfile, opts: &ReaderOptions) -> reader_message::Body {
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
        masked_pan: pos_mask::mask_pan(&card.pan),
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
