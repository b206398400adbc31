//! The simulated gateway's gRPC service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pos_cardcrypt::{BaseKey, Binding};
use pos_proto::gateway::{
    AuthorizeRequest, AuthorizeResponse, CaptureRequest, EntryMode, ForwardBatchRequest, ForwardBatchResponse,
    ForwardResult, GetRefundRequest, GetTransactionRequest, Outcome, RefundRequest, RefundResult, ReverseRequest,
    Transaction, VoidRequest, gateway_server::Gateway,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::control::Fault;
use crate::ledger::{Charge, Ledger};

/// The gateway API. Each call runs in a task of its own, so a request that
/// reached the gateway is processed even if the caller goes away (as a real
/// gateway does); with `hang`, a held request is processed once the fault
/// clears, after the caller gave up: a late, delayed delivery.
#[derive(Clone)]
pub struct GatewayService {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bumped when gateway events are appended.
    events: watch::Receiver<u64>,
    ledger: Arc<Mutex<Ledger>>,
    faults: watch::Receiver<Fault>,
    base_key: BaseKey,
    /// Accumulator that makes `flaky N` fail exactly N of every 100 calls.
    flaky_acc: Mutex<u32>,
    /// True while amounts ending in 98 belong to another merchant account
    /// (`accounts mismatch`, the default); `accounts fixed` clears it.
    account_mismatch: Arc<AtomicBool>,
}

/// The decision a test amount triggers, by its last two digits (Stripe's
/// physical test card rules).
pub fn decide(amount_minor: i64) -> Option<(&'static str, &'static str)> {
    match amount_minor.rem_euclid(100) {
        1 => Some(("call_issuer", "Call the card issuer")),
        5 => Some(("generic_decline", "The card was declined")),
        55 => Some(("incorrect_pin", "Incorrect PIN")),
        60 => Some(("online_or_offline_pin_required", "PIN required")),
        65 => Some(("withdrawal_count_limit_exceeded", "Card usage limit exceeded")),
        75 => Some(("pin_try_exceeded", "PIN tries exceeded")),
        _ => None,
    }
}

/// Test amount whose item the gateway refuses as belonging to another
/// merchant account (cents 98): an item error, not a decline. The control
/// command `accounts fixed` turns this off, as when the account is mended.
pub const ACCOUNT_MISMATCH_CENTS: i64 = 98;

/// Now in RFC 3339, UTC (`2026-12-07T04:27:29.123456789Z`).
fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

fn sha_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn to_proto(c: &Charge) -> Transaction {
    let outcome = match c.status.as_str() {
        "approved" => Outcome::Approved,
        "declined" => Outcome::Declined,
        "voided" => Outcome::Voided,
        _ => Outcome::Reversed,
    };
    Transaction {
        transaction_key: c.key.clone(),
        outcome: outcome as i32,
        decline_code: c.decline_code.clone(),
        decline_message: c.decline_message.clone(),
        auth_code: c.auth_code.clone(),
        gateway_reference: c.gateway_reference.clone(),
        captured: c.captured,
        amount_minor: c.amount_minor,
        currency: c.currency.clone(),
        captured_minor: c.captured_minor,
        refunded_minor: c.refunded_minor,
    }
}

fn item_error_code(s: &Status) -> &'static str {
    match s.code() {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::FailedPrecondition => "account_mismatch",
        _ => "internal",
    }
}

fn db_err(e: rusqlite::Error) -> Status {
    Status::internal(format!("ledger error: {e}"))
}

fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

impl GatewayService {
    pub fn new(
        ledger: Arc<Mutex<Ledger>>,
        faults: watch::Receiver<Fault>,
        base_key: BaseKey,
        events: watch::Receiver<u64>,
        account_mismatch: Arc<AtomicBool>,
    ) -> Self {
        let flaky_acc = Mutex::new(0);
        Self { inner: Arc::new(Inner { events, ledger, faults, base_key, flaky_acc, account_mismatch }) }
    }

    async fn detached<T: Send + 'static>(
        &self,
        work: impl FnOnce(Arc<Inner>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Status>> + Send>>,
    ) -> Result<T, Status> {
        tokio::spawn(work(self.inner.clone()))
            .await
            .map_err(|e| Status::internal(format!("gateway task failed: {e}")))?
    }
}

impl Inner {
    /// Applies the injected fault before a call is processed.
    async fn before_call(&self) -> Result<(), Status> {
        let mut faults = self.faults.clone();
        loop {
            let fault = *faults.borrow_and_update();
            match fault {
                Fault::Hang => {
                    if faults.changed().await.is_err() {
                        return Err(Status::unavailable("gateway shutting down"));
                    }
                }
                Fault::Down => return Err(Status::unavailable("gateway down (injected)")),
                Fault::ExpiredCredentials => {
                    return Err(Status::unauthenticated("credentials expired (injected)"));
                }
                Fault::Latency(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    return Ok(());
                }
                Fault::Flaky(pct) => {
                    let mut acc = self.flaky_acc.lock().unwrap();
                    *acc += pct as u32;
                    if *acc >= 100 {
                        *acc -= 100;
                        return Err(Status::unavailable("transient gateway error (injected)"));
                    }
                    return Ok(());
                }
                Fault::None | Fault::LoseAnswers | Fault::ConflictOnRepeat | Fault::NoRefundStatus => return Ok(()),
            }
        }
    }

    /// Applies `lose-answers` after a mutating call committed.
    fn after_commit(&self) -> Result<(), Status> {
        if *self.faults.borrow() == Fault::LoseAnswers {
            return Err(Status::unavailable("answer lost after commit (injected)"));
        }
        Ok(())
    }

    fn authorize_committed(&self, r: &AuthorizeRequest) -> Result<Charge, Status> {
        let mut ledger = self.ledger.lock().unwrap();
        self.authorize_in(&mut ledger, r)
    }

    /// Decides one authorization against the ledger (in the caller's transaction, if any).
    fn authorize_in(&self, ledger: &mut Ledger, r: &AuthorizeRequest) -> Result<Charge, Status> {
        if r.transaction_key.is_empty() || r.transaction_key.len() > 255 {
            return Err(Status::invalid_argument("transaction_key must be 1-255 characters"));
        }
        if r.amount_minor <= 0 {
            return Err(Status::invalid_argument("amount_minor must be positive"));
        }
        if !valid_currency(&r.currency) {
            return Err(Status::invalid_argument("currency must be an ISO 4217 code such as EUR"));
        }
        if r.encrypted_card.is_empty() {
            return Err(Status::invalid_argument("encrypted_card is required"));
        }
        let amount = r.amount_minor.to_be_bytes();
        let capture = [r.capture as u8];
        let digest = sha_hex(&[r.terminal_id.as_bytes(), &amount, r.currency.as_bytes(), &r.encrypted_card, &capture]);
        let blob_digest = sha_hex(&[&r.encrypted_card]);
        if r.amount_minor.rem_euclid(100) == ACCOUNT_MISMATCH_CENTS && self.account_mismatch.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition(format!(
                "account mismatch: terminal {} does not belong to this merchant account",
                r.terminal_id
            )));
        }
        if let Some(existing) = ledger.get(&r.transaction_key).map_err(db_err)? {
            if *self.faults.borrow() == Fault::ConflictOnRepeat {
                return Err(Status::already_exists(format!(
                    "transaction key {} already exists (injected conflict)",
                    r.transaction_key
                )));
            }
            if existing.status == "reversed" || existing.request_digest == digest {
                return Ok(existing);
            }
            let field = if existing.amount_minor != r.amount_minor {
                "amount_minor"
            } else if existing.currency != r.currency {
                "currency"
            } else if existing.terminal_id != r.terminal_id {
                "terminal_id"
            } else if existing.captured != r.capture {
                "capture"
            } else {
                "encrypted_card"
            };
            return Err(Status::already_exists(format!(
                "transaction key {} was already used with a different {field}",
                r.transaction_key
            )));
        }
        let binding = Binding {
            amount_minor: r.amount_minor,
            currency: &r.currency,
            terminal_id: &r.terminal_id,
            transaction_key: &r.transaction_key,
        };
        let decision = match ledger.blob_owner(&blob_digest).map_err(db_err)? {
            Some(owner) if owner != r.transaction_key => {
                Err(("card_data_replayed", "This card data was already used for another payment"))
            }
            _ => match pos_cardcrypt::decrypt(&self.base_key, &r.encrypted_card, &binding) {
                Err(_) => Err(("invalid_card_data", "The card data does not belong to this payment")),
                Ok(card) => decide(r.amount_minor).map_or(Ok(pos_mask::mask_pan(&card.pan)), Err),
            },
        };
        let entry_mode = EntryMode::try_from(r.entry_mode).unwrap_or(EntryMode::Unspecified).as_str_name();
        let base = Charge {
            key: r.transaction_key.clone(),
            terminal_id: r.terminal_id.clone(),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            status: String::new(),
            captured: false,
            decline_code: String::new(),
            decline_message: String::new(),
            auth_code: String::new(),
            gateway_reference: format!("gw_{}", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes())),
            masked_pan: r.masked_pan.clone(),
            brand: r.brand.clone(),
            entry_mode: entry_mode.trim_start_matches("ENTRY_MODE_").to_lowercase(),
            tombstone: false,
            request_digest: digest,
            created_at: now_rfc3339(),
            captured_minor: 0,
            refunded_minor: 0,
        };
        let charge = match decision {
            Ok(masked) => Charge {
                status: "approved".into(),
                captured: r.capture,
                captured_minor: if r.capture { r.amount_minor } else { 0 },
                auth_code: sha_hex(&[r.transaction_key.as_bytes()])[..6].to_uppercase(),
                masked_pan: masked,
                ..base
            },
            Err((code, message)) => {
                Charge { status: "declined".into(), decline_code: code.into(), decline_message: message.into(), ..base }
            }
        };
        ledger.insert(&charge, Some(&blob_digest)).map_err(db_err)?;
        Ok(charge)
    }

    fn capture_committed(&self, r: &CaptureRequest) -> Result<Charge, Status> {
        let mut ledger = self.ledger.lock().unwrap();
        let c = ledger
            .get(&r.transaction_key)
            .map_err(db_err)?
            .ok_or_else(|| Status::not_found(format!("no transaction under key {}", r.transaction_key)))?;
        if c.status != "approved" {
            return Err(Status::failed_precondition(format!("the charge is {}, not approved", c.status)));
        }
        if c.captured {
            return if c.captured_minor == r.amount_minor {
                Ok(c)
            } else {
                Err(Status::failed_precondition(format!("already captured with {}", c.captured_minor)))
            };
        }
        if r.amount_minor <= 0 || r.amount_minor > c.amount_minor {
            return Err(Status::invalid_argument(format!(
                "amount_minor must be 1 to the authorized {}",
                c.amount_minor
            )));
        }
        ledger.set_captured(&c.key, r.amount_minor).map_err(db_err)?;
        Ok(Charge { captured: true, captured_minor: r.amount_minor, ..c })
    }

    fn void_committed(&self, r: &VoidRequest) -> Result<Charge, Status> {
        let mut ledger = self.ledger.lock().unwrap();
        let c = ledger
            .get(&r.transaction_key)
            .map_err(db_err)?
            .ok_or_else(|| Status::not_found(format!("no transaction under key {}", r.transaction_key)))?;
        match (c.status.as_str(), c.captured) {
            ("voided", _) => Ok(c),
            ("approved", false) => {
                ledger.set_status(&c.key, "voided").map_err(db_err)?;
                Ok(Charge { status: "voided".into(), ..c })
            }
            ("approved", true) => Err(Status::failed_precondition("the charge is captured; refund it instead")),
            (s, _) => Err(Status::failed_precondition(format!("the charge is {s}"))),
        }
    }

    fn refund_committed(&self, r: &RefundRequest) -> Result<RefundResult, Status> {
        if r.refund_key.is_empty() {
            return Err(Status::invalid_argument("refund_key is required"));
        }
        let mut ledger = self.ledger.lock().unwrap();
        let result = |succeeded, code: &str, message: &str, refunded_minor| RefundResult {
            refund_key: r.refund_key.clone(),
            succeeded,
            decline_code: code.into(),
            decline_message: message.into(),
            refunded_minor,
        };
        if let Some(s) = ledger.refund(&r.refund_key).map_err(db_err)? {
            if s.key != r.transaction_key || s.amount_minor != r.amount_minor {
                return Err(Status::already_exists(format!(
                    "refund key {} was already used for another refund",
                    r.refund_key
                )));
            }
            return Ok(result(s.succeeded, &s.decline_code, &s.decline_message, s.refunded_after));
        }
        let c = ledger
            .get(&r.transaction_key)
            .map_err(db_err)?
            .ok_or_else(|| Status::not_found(format!("no transaction under key {}", r.transaction_key)))?;
        let (ok, code, message) = if c.status != "approved" || !c.captured {
            (false, "not_captured", format!("the charge is {} and not captured", c.status))
        } else if r.currency != c.currency {
            (false, "currency_mismatch", format!("the charge is in {}", c.currency))
        } else if r.amount_minor <= 0 || c.refunded_minor + r.amount_minor > c.captured_minor {
            (
                false,
                "refund_exceeds_capture",
                format!(
                    "{} refunded of {} captured; {} more is too much",
                    c.refunded_minor, c.captured_minor, r.amount_minor
                ),
            )
        } else {
            (true, "", String::new())
        };
        let after = if ok { c.refunded_minor + r.amount_minor } else { c.refunded_minor };
        ledger.record_refund(&r.refund_key, &c.key, r.amount_minor, ok, code, &message, after).map_err(db_err)?;
        Ok(result(ok, code, &message, after))
    }

    /// Stores what a payment terminal decided by itself, without deciding
    /// again: a sale becomes a captured charge (entry mode "terminal"), a
    /// reversal voids it, a refund adds to its refunded total.
    fn record_terminal_committed(
        &self,
        r: &pos_proto::gateway::TerminalRecord,
    ) -> Result<pos_proto::gateway::TerminalRecordAck, Status> {
        use pos_proto::gateway::{TerminalRecordAck, TerminalRecordKind as K};
        if r.record_key.is_empty() || r.transaction_key.is_empty() {
            return Err(Status::invalid_argument("record_key and transaction_key are required"));
        }
        if r.amount_minor <= 0 {
            return Err(Status::invalid_argument("amount_minor must be positive"));
        }
        let kind = K::try_from(r.kind).unwrap_or(K::Unspecified);
        let digest = format!(
            "{}|{}|{}|{}|{}|{}",
            r.transaction_key,
            r.terminal_id,
            kind.as_str_name(),
            r.amount_minor,
            r.currency,
            r.terminal_receipt_no
        );
        let mut ledger = self.ledger.lock().unwrap();
        if let Some(stored) = ledger.terminal_record(&r.record_key).map_err(db_err)? {
            if stored != digest {
                return Err(Status::already_exists(format!(
                    "record key {} was already used for another record",
                    r.record_key
                )));
            }
            return Ok(TerminalRecordAck { duplicate: true });
        }
        let existing = ledger.get(&r.transaction_key).map_err(db_err)?;
        match (kind, &existing) {
            (K::Sale, None) => {}
            (K::Sale, Some(_)) => {
                return Err(Status::already_exists(format!("key {} is already a charge", r.transaction_key)));
            }
            (K::Reversal | K::Refund, Some(c)) if c.entry_mode == "terminal" => {}
            (K::Reversal | K::Refund, _) => {
                return Err(Status::not_found(format!("no terminal sale under key {}", r.transaction_key)));
            }
            (K::Unspecified, _) => return Err(Status::invalid_argument("kind is required")),
        }
        ledger
            .batch(|l| -> rusqlite::Result<()> {
                match (kind, existing) {
                    (K::Sale, _) => l.insert(
                        &Charge {
                            key: r.transaction_key.clone(),
                            terminal_id: r.terminal_id.clone(),
                            amount_minor: r.amount_minor,
                            currency: r.currency.clone(),
                            status: "approved".into(),
                            captured: true,
                            captured_minor: r.amount_minor,
                            refunded_minor: 0,
                            decline_code: String::new(),
                            decline_message: String::new(),
                            auth_code: r.auth_code.clone(),
                            gateway_reference: format!("terminal receipt {}", r.terminal_receipt_no),
                            masked_pan: r.masked_pan.clone(),
                            brand: r.brand.clone(),
                            entry_mode: "terminal".into(),
                            tombstone: false,
                            request_digest: digest.clone(),
                            created_at: now_rfc3339(),
                        },
                        None,
                    )?,
                    (K::Reversal, _) => l.set_status(&r.transaction_key, "voided")?,
                    (_, Some(c)) => l.record_refund(
                        &r.record_key,
                        &c.key,
                        r.amount_minor,
                        true,
                        "",
                        "",
                        c.refunded_minor + r.amount_minor,
                    )?,
                    (_, None) => unreachable!("checked above"),
                }
                l.insert_terminal_record(&r.record_key, &digest)
            })
            .map_err(db_err)?
            .map_err(db_err)?;
        Ok(TerminalRecordAck { duplicate: false })
    }

    fn reverse_committed(&self, r: &ReverseRequest) -> Result<Charge, Status> {
        if r.transaction_key.is_empty() {
            return Err(Status::invalid_argument("transaction_key is required"));
        }
        let mut ledger = self.ledger.lock().unwrap();
        match ledger.get(&r.transaction_key).map_err(db_err)? {
            Some(c) if c.status == "approved" => {
                ledger.mark_reversed(&c.key).map_err(db_err)?;
                Ok(Charge { status: "reversed".into(), ..c })
            }
            // Declined or already reversed: nothing to undo; acknowledge.
            Some(c) => Ok(c),
            None => {
                let tombstone = Charge {
                    key: r.transaction_key.clone(),
                    terminal_id: r.terminal_id.clone(),
                    amount_minor: r.amount_minor,
                    currency: r.currency.clone(),
                    status: "reversed".into(),
                    captured: false,
                    decline_code: String::new(),
                    decline_message: format!("reversed before authorization ({})", r.reason),
                    auth_code: String::new(),
                    gateway_reference: String::new(),
                    masked_pan: String::new(),
                    brand: String::new(),
                    entry_mode: String::new(),
                    tombstone: true,
                    request_digest: String::new(),
                    created_at: now_rfc3339(),
                    captured_minor: 0,
                    refunded_minor: 0,
                };
                ledger.insert(&tombstone, None).map_err(db_err)?;
                Ok(tombstone)
            }
        }
    }
}

type GatewayEventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pos_proto::gateway::GatewayEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    type StreamEventsStream = GatewayEventStream;

    async fn stream_events(
        &self,
        request: Request<pos_proto::gateway::GatewayEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        self.inner.before_call().await?;
        let mut after = i64::try_from(request.get_ref().after_sequence)
            .map_err(|_| Status::invalid_argument("after_sequence out of range"))?;
        let inner = self.inner.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut changed = inner.events.clone();
            loop {
                changed.borrow_and_update();
                let found = inner.ledger.lock().unwrap().events_after(after);
                let rows = match found {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(db_err(e))).await;
                        return;
                    }
                };
                let caught_up = rows.len() < 500;
                for r in rows {
                    after = r.sequence;
                    let e = pos_proto::gateway::GatewayEvent {
                        sequence: r.sequence as u64,
                        event_id: r.event_id,
                        kind: r.kind,
                        transaction_key: r.key,
                        amount_minor: r.amount_minor,
                        currency: r.currency,
                        message: r.message,
                    };
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    tokio::select! {
                        biased; // branches in a fixed order: a simulated run replays exactly
                        r = changed.changed() => if r.is_err() { return },
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn authorize(&self, request: Request<AuthorizeRequest>) -> Result<Response<AuthorizeResponse>, Status> {
        let req = request.into_inner();
        let charge = self
            .detached(|g| {
                Box::pin(async move {
                    g.before_call().await?;
                    let charge = g.authorize_committed(&req)?;
                    tracing::info!(key = %charge.key, status = %charge.status, amount = charge.amount_minor, "authorize");
                    g.after_commit()?;
                    Ok(charge)
                })
            })
            .await?;
        Ok(Response::new(AuthorizeResponse { transaction: Some(to_proto(&charge)) }))
    }

    async fn forward_batch(
        &self,
        request: Request<ForwardBatchRequest>,
    ) -> Result<Response<ForwardBatchResponse>, Status> {
        let items = request.into_inner().items;
        if items.len() > 1000 {
            return Err(Status::invalid_argument("at most 1000 items per batch"));
        }
        let results = self
            .detached(|g| {
                Box::pin(async move {
                    g.before_call().await?;
                    let results = {
                        let mut ledger = g.ledger.lock().unwrap();
                        ledger
                            .batch(|l| {
                                items
                                    .iter()
                                    .map(|r| match g.authorize_in(l, r) {
                                        Ok(c) => ForwardResult {
                                            transaction_key: c.key.clone(),
                                            transaction: Some(to_proto(&c)),
                                            ..Default::default()
                                        },
                                        Err(s) => ForwardResult {
                                            transaction_key: r.transaction_key.clone(),
                                            transaction: None,
                                            error_code: item_error_code(&s).into(),
                                            error_message: s.message().into(),
                                        },
                                    })
                                    .collect::<Vec<_>>()
                            })
                            .map_err(db_err)?
                    };
                    tracing::info!(items = results.len(), "forward batch");
                    g.after_commit()?;
                    Ok(results)
                })
            })
            .await?;
        Ok(Response::new(ForwardBatchResponse { results }))
    }

    async fn close_batch(
        &self,
        request: Request<pos_proto::gateway::CloseBatchRequest>,
    ) -> Result<Response<pos_proto::gateway::BatchResult>, Status> {
        let req = request.into_inner();
        let terminal = req.terminal_id;
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let new_id = format!("batch_{}", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes()));
                let (batch_id, totals) =
                    g.ledger.lock().unwrap().close_batch(&terminal, &new_id, &req.batch_key).map_err(db_err)?;
                tracing::info!(%terminal, %batch_id, "batch closed");
                g.after_commit()?;
                Ok(Response::new(pos_proto::gateway::BatchResult {
                    batch_id,
                    totals: totals
                        .into_iter()
                        .map(|(currency, count, captured_minor, refunded_minor)| pos_proto::gateway::BatchTotal {
                            currency,
                            count,
                            captured_minor,
                            refunded_minor,
                        })
                        .collect(),
                }))
            })
        })
        .await
    }

    async fn capture(&self, request: Request<CaptureRequest>) -> Result<Response<Transaction>, Status> {
        let req = request.into_inner();
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let c = g.capture_committed(&req)?;
                g.after_commit()?;
                Ok(Response::new(to_proto(&c)))
            })
        })
        .await
    }

    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<Transaction>, Status> {
        let req = request.into_inner();
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let c = g.void_committed(&req)?;
                g.after_commit()?;
                Ok(Response::new(to_proto(&c)))
            })
        })
        .await
    }

    async fn record_terminal_transaction(
        &self,
        request: Request<pos_proto::gateway::TerminalRecord>,
    ) -> Result<Response<pos_proto::gateway::TerminalRecordAck>, Status> {
        let req = request.into_inner();
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let ack = g.record_terminal_committed(&req)?;
                tracing::info!(record = %req.record_key, key = %req.transaction_key, kind = req.kind, duplicate = ack.duplicate, "terminal record");
                g.after_commit()?;
                Ok(Response::new(ack))
            })
        })
        .await
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<RefundResult>, Status> {
        let req = request.into_inner();
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let r = g.refund_committed(&req)?;
                tracing::info!(refund = %req.refund_key, key = %req.transaction_key, succeeded = r.succeeded, "refund");
                g.after_commit()?;
                Ok(Response::new(r))
            })
        })
        .await
    }

    async fn get_refund(&self, request: Request<GetRefundRequest>) -> Result<Response<RefundResult>, Status> {
        let key = request.into_inner().refund_key;
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                if *g.faults.borrow() == Fault::NoRefundStatus {
                    return Err(Status::unimplemented("GetRefund is not supported by this gateway (injected)"));
                }
                match g.ledger.lock().unwrap().refund(&key).map_err(db_err)? {
                    Some(s) => Ok(Response::new(RefundResult {
                        refund_key: key,
                        succeeded: s.succeeded,
                        decline_code: s.decline_code,
                        decline_message: s.decline_message,
                        refunded_minor: s.refunded_after,
                    })),
                    None => Err(Status::not_found(format!("no refund under key {key}"))),
                }
            })
        })
        .await
    }

    async fn get_transaction(&self, request: Request<GetTransactionRequest>) -> Result<Response<Transaction>, Status> {
        let key = request.into_inner().transaction_key;
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                match g.ledger.lock().unwrap().get(&key).map_err(db_err)? {
                    Some(c) => Ok(Response::new(to_proto(&c))),
                    None => Err(Status::not_found(format!("no transaction under key {key}"))),
                }
            })
        })
        .await
    }

    async fn reverse(&self, request: Request<ReverseRequest>) -> Result<Response<Transaction>, Status> {
        let req = request.into_inner();
        self.detached(|g| {
            Box::pin(async move {
                g.before_call().await?;
                let charge = g.reverse_committed(&req)?;
                tracing::info!(key = %charge.key, status = %charge.status, reason = %req.reason, "reverse");
                g.after_commit()?;
                Ok(Response::new(to_proto(&charge)))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn test_amount_rules() {
        assert_eq!(decide(1200), None);
        assert_eq!(decide(1234), None);
        assert_eq!(decide(1201).unwrap().0, "call_issuer");
        assert_eq!(decide(1205).unwrap().0, "generic_decline");
        assert_eq!(decide(1255).unwrap().0, "incorrect_pin");
        assert_eq!(decide(1260).unwrap().0, "online_or_offline_pin_required");
        assert_eq!(decide(1265).unwrap().0, "withdrawal_count_limit_exceeded");
        assert_eq!(decide(1275).unwrap().0, "pin_try_exceeded");
    }
}
