//! A nexo terminal as Adyen terminals are reached locally (the Terminal
//! API): one JSON document per HTTPS POST to `/nexo` on port 8443, answered
//! when the transaction ends, encrypted with the shared key (NexoCrypto v1)
//! or, in local test mode, in clear. posd is the Sale system, this the POI.
//!
//! It authorizes by itself: the scenario decides how a payment ends
//! (approve, decline, customer cancel, busy, slow, wrong PIN, partial
//! approval, an answer lost after booking, an answer after a long delay, a
//! restart in the middle). The [`journal`] remembers every payment request
//! by SaleID and ServiceID, so TransactionStatus, Abort, Reversal and
//! Reconciliation answer from what really happened.
//!
//! # Layout
//! - this file: the [`Terminal`] (options, scenario, state), its answer to
//!   one document ([`Terminal::handle`]), the HTTPS server ([`serve`]) and
//!   the technician's commands ([`control`]).
//! - [`journal`]: payments by SaleID+ServiceID, booked transactions,
//!   reconciliation totals; no I/O.
//! - [`answer`]: the PaymentResponse a decision stands for, with card and receipts.
//! - [`pki`]: the CA and the terminal's certificate.
//!
//! # Choices
//! - A document that does not decrypt and verify (wrong key or passphrase,
//!   a damaged blob, nonce or HMAC, a clear request in encrypted mode, an
//!   encrypted one in clear mode) is answered HTTP 401 with
//!   `{"errors":["Nexo Service: crypto error"],"ServiceID":..}`, as Adyen
//!   terminals answer crypto errors, and the same for every cause.
//! - A header that is not the terminal's is answered by the request's own
//!   response with `Failure`: `NotAllowed` for another POIID, `MessageFormat`
//!   for a missing SaleID, a bad ServiceID or a category that does not fit
//!   the body. A ServiceID a SaleID used before is `NotAllowed`.
//! - One payment at a time: a payment while another runs is `Busy`, not journaled.
//! - AbortRequest is answered HTTP 200 with an empty body (the reference
//!   library reads that as an empty answer); the aborted payment's POST then
//!   ends `Failure` / `Aborted`.
//! - A restart drops the payments in flight (their connections are cut,
//!   their journal entries forgotten: TransactionStatus then says NotFound)
//!   and cuts every request while it lasts; the journal of finished
//!   payments survives it (it lives as long as the process).

pub mod answer;
pub mod journal;
pub mod pki;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use pos_nexo::codes::{ErrorCondition, GlobalStatus, MessageCategory, MessageType, PaymentType, ReconciliationType};
use pos_nexo::crypto::SecuredDocument;
use pos_nexo::diagnosis::{DiagnosisResponse, PoiStatus};
use pos_nexo::payment::{PaymentRequest, PoiData};
use pos_nexo::reconciliation::{ReconciliationRequest, ReconciliationResponse};
use pos_nexo::reversal::{ReversalRequest, ReversalResponse};
use pos_nexo::status::{
    AbortRequest, RepeatedMessageResponse, RepeatedResponseMessageBody, TransactionStatusRequest,
    TransactionStatusResponse,
};
use pos_nexo::{
    Decimal, Key, MessageHeader, MessageReference, RequestBody, Response, ResponseBody, SaleToPoiRequest,
    SaleToPoiResponse, ServiceId,
};
use tokio::sync::oneshot;

use self::answer::{Card, Decision};
use self::journal::{Booked, Entry, Journal, PaymentKey};
use crate::transcript::{Dir, Transcript};

/// The largest request the terminal reads.
pub const MAX_REQUEST: usize = 1 << 20;

/// How the next payments end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Approve,
    /// The issuer refuses: `Failure` / `Refusal`.
    Decline,
    /// The customer presses cancel: `Failure` / `Cancel`.
    CustomerCancel,
    /// The terminal is busy (another Sale system, maintenance): `Failure` /
    /// `Busy` at once, nothing journaled.
    Busy,
    /// Approved after [`NexoOptions::slow`].
    Slow,
    /// The PIN was wrong: `Failure` / `WrongPIN`.
    WrongPin,
    /// Half the amount approved: Result `Partial`, AuthorizedAmount below RequestedAmount.
    Partial,
    /// Approved and journaled, then the connection is cut without an answer.
    LostAnswer,
    /// Approved after [`NexoOptions::long_delay`] (past the Sale system's
    /// patience; TransactionStatus says InProgress until then).
    LongDelay,
    /// The terminal restarts in the middle of the payment.
    Restart,
    /// Approved; the cashier's receipt needs the customer's signature.
    Signature,
}

impl Scenario {
    pub const NAMES: &'static str =
        "approve, decline, cancel, busy, slow, wrong-pin, partial, lost-answer, long-delay, restart, signature";

    pub fn parse(words: &[&str]) -> Result<Scenario, String> {
        Ok(match words {
            ["approve"] => Scenario::Approve,
            ["decline"] => Scenario::Decline,
            ["cancel"] => Scenario::CustomerCancel,
            ["busy"] => Scenario::Busy,
            ["slow"] => Scenario::Slow,
            ["wrong-pin"] => Scenario::WrongPin,
            ["partial"] => Scenario::Partial,
            ["lost-answer"] => Scenario::LostAnswer,
            ["long-delay"] => Scenario::LongDelay,
            ["restart"] => Scenario::Restart,
            ["signature"] => Scenario::Signature,
            other => return Err(format!("unknown scenario {other:?}; one of: {}", Scenario::NAMES)),
        })
    }
}

#[derive(Debug, Clone)]
pub struct NexoOptions {
    /// The terminal's POIID (`<model>-<serial>`).
    pub poi_id: String,
    /// The shared key; `None`: requests and answers in clear.
    pub key: Option<Key>,
    /// How long the customer takes for a payment.
    pub step: Duration,
    pub slow: Duration,
    pub long_delay: Duration,
    /// How long a restart keeps the terminal away.
    pub restart_takes: Duration,
    pub card: Card,
    /// Every finished payment appended as a JSON line (SaleID, ServiceID, answer).
    pub journal_file: Option<PathBuf>,
    /// Where the terminal's time stamps come from; `None`: the system's clock.
    pub clock: Option<Clock>,
}

/// A clock the terminal reads its time stamps from (the simulator's).
#[derive(Clone)]
pub struct Clock(pub Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Default for NexoOptions {
    fn default() -> Self {
        Self {
            poi_id: "V400m-324688179".into(),
            key: None,
            step: Duration::from_millis(300),
            slow: Duration::from_secs(5),
            long_delay: Duration::from_secs(180),
            restart_takes: Duration::from_secs(3),
            card: answer::card("visa").expect("a known card"),
            journal_file: None,
            clock: None,
        }
    }
}

/// Why a running payment was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// AbortRequest from the Sale system.
    Abort,
    /// The terminal restarted.
    Restart,
}

/// A payment the customer is at: what its end needs.
#[derive(Debug, Clone)]
struct Started {
    header: MessageHeader,
    request: PaymentRequest,
    outcome: Scenario,
    requested: i64,
    card: Card,
}

#[derive(Debug)]
struct State {
    scenario: Scenario,
    /// The next payments' outcomes, in order; then `scenario`.
    planned: VecDeque<Scenario>,
    card: Card,
    journal: Journal,
    /// The payments running now (one at most), each with the way to stop
    /// it (taken once an abort has stopped it) and what it needs to end
    /// without its Sale system.
    running: HashMap<PaymentKey, (Option<oneshot::Sender<Interrupt>>, Box<Started>)>,
    /// While the terminal restarts.
    restarting_until: Option<tokio::time::Instant>,
}

impl State {
    /// Drops the payments in flight and keeps the terminal away for `takes`.
    fn restart(&mut self, takes: Duration) {
        self.restarting_until = Some(tokio::time::Instant::now() + takes);
        for (key, (stop, _)) in self.running.drain() {
            self.journal.forget(&key);
            if let Some(stop) = stop {
                let _ = stop.send(Interrupt::Restart);
            }
        }
    }
}

/// What goes back on the HTTP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A JSON body with this status.
    Json(u16, String),
    /// HTTP 200 without a body (the answer to an AbortRequest).
    Empty,
    /// The connection is cut without an answer.
    Cut,
}

pub struct Terminal {
    pub opts: NexoOptions,
    state: Mutex<State>,
    transcript: Option<Arc<Transcript>>,
}

impl Terminal {
    pub fn new(opts: NexoOptions, scenario: Scenario, transcript: Option<Arc<Transcript>>) -> Arc<Terminal> {
        let state = State {
            scenario,
            planned: VecDeque::new(),
            card: opts.card.clone(),
            journal: Journal::default(),
            running: HashMap::new(),
            restarting_until: None,
        };
        Arc::new(Terminal { opts, state: Mutex::new(state), transcript })
    }

    pub fn scenario(&self) -> Scenario {
        self.state.lock().unwrap().scenario
    }

    /// The next payments' outcomes (a scenario file).
    pub fn plan(&self, plans: Vec<Scenario>) {
        self.state.lock().unwrap().planned = plans.into();
    }

    /// How many payments run now.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running.len()
    }

    /// What the journal knows of payment `service_id` of `sale_id`.
    pub fn journal_entry(&self, sale_id: &str, service_id: &str) -> Option<Entry> {
        self.state.lock().unwrap().journal.status(&(sale_id.to_owned(), service_id.to_owned()))
    }

    pub fn status_line(&self) -> String {
        let s = self.state.lock().unwrap();
        let (requests, movements) = s.journal.counts();
        let restarting = s.restarting_until.is_some_and(|until| until > tokio::time::Instant::now());
        format!(
            "scenario {:?}; {} planned; card {}; {} running; {} payment requests journaled; {} movements since \
             the last reconciliation{}",
            s.scenario,
            s.planned.len(),
            s.card.brand,
            s.running.len(),
            requests,
            movements,
            if restarting { "; restarting" } else { "" }
        )
    }

    /// A technician command: `scenario NAME`, `next NAME` (the next payment
    /// only), `card NAME`, `restart [MS]`, `status`.
    pub fn command(&self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(()),
            ["scenario", rest @ ..] => {
                self.state.lock().unwrap().scenario = Scenario::parse(rest)?;
                Ok(())
            }
            ["next", rest @ ..] => {
                self.state.lock().unwrap().planned.push_back(Scenario::parse(rest)?);
                Ok(())
            }
            ["card", name] => {
                self.state.lock().unwrap().card = answer::card(name)?;
                Ok(())
            }
            ["restart", rest @ ..] => {
                let takes = match rest {
                    [] => self.opts.restart_takes,
                    [ms] => Duration::from_millis(ms.parse().map_err(|_| format!("restart takes MS, not {ms:?}"))?),
                    _ => return Err("restart [MS]".into()),
                };
                self.note(&format!("technician: restart for {takes:?}"));
                self.state.lock().unwrap().restart(takes);
                Ok(())
            }
            _ => Err(format!(
                "unknown command {line:?}; try: scenario NAME, next NAME, card {}, restart [MS], status",
                answer::CARDS
            )),
        }
    }

    /// Answers one POSTed document.
    pub async fn handle(&self, body: &[u8]) -> Reply {
        let restarting = self.state.lock().unwrap().restarting_until.is_some_and(|u| u > tokio::time::Instant::now());
        if restarting {
            self.note("restarting: connection cut");
            return Reply::Cut;
        }
        let clear = match &self.opts.key {
            Some(key) => match key.decrypt(body) {
                Ok(clear) => clear,
                Err(e) => return self.crypto_error(body, &e.to_string()),
            },
            None if serde_json::from_slice::<SecuredDocument>(body).is_ok() => {
                return self.crypto_error(body, "an encrypted request, and this terminal has no key");
            }
            None => body.to_vec(),
        };
        let request: SaleToPoiRequest = match serde_json::from_slice(&clear) {
            Ok(r) => r,
            Err(e) => {
                self.note(&format!("refused: not a nexo request ({e})"));
                let errors = serde_json::json!({"errors": [format!("Nexo Service: invalid message: {e}")]});
                return Reply::Json(400, errors.to_string());
            }
        };
        let encrypted = if self.opts.key.is_some() { "encrypted" } else { "clear" };
        self.frame(Dir::In, &format!("{} ({encrypted}, {} bytes)", describe(&request), body.len()), &clear);
        let header = &request.header;
        if let Err(condition) = check_header(header, &request.body, &self.opts.poi_id) {
            self.note(&format!("header refused: {condition}"));
            return match refusal(&request.body, condition) {
                Some(body) => self.respond(header, body),
                None => Reply::Empty,
            };
        }
        match &request.body {
            RequestBody::Payment(req) => self.payment(header, req).await,
            RequestBody::TransactionStatus(req) => self.transaction_status(header, req),
            RequestBody::Abort(req) => self.abort(header, req),
            RequestBody::Reversal(req) => self.reversal(header, req),
            RequestBody::Diagnosis(_) => self.diagnosis(header),
            RequestBody::Reconciliation(req) => self.reconciliation(header, req),
            RequestBody::Other(name) => {
                self.note(&format!("refused: {name} is not supported"));
                let errors = serde_json::json!({"errors": [format!("Nexo Service: {name} is not supported")]});
                Reply::Json(400, errors.to_string())
            }
        }
    }

    /// A payment: card, PIN, acquirer, as the scenario says; journaled from
    /// its start.
    async fn payment(&self, header: &MessageHeader, req: &PaymentRequest) -> Reply {
        let key: PaymentKey =
            (header.sale_id.clone().unwrap_or_default(), header.service_id.clone().unwrap_or_default());
        let amounts = &req.payment_transaction.amounts_req;
        let requested = match amounts.requested_amount.map(|a| a.to_minor(&amounts.currency)) {
            Some(Ok(minor)) if minor > 0 => minor,
            _ => {
                self.note("refused: no amount the currency can carry");
                return self.respond(header, answer::payment_refused(req, ErrorCondition::MessageFormat).into());
            }
        };
        let started = {
            let mut guard = self.state.lock().unwrap();
            let s = &mut *guard;
            if s.journal.knows(&key) {
                Err(ErrorCondition::NotAllowed)
            } else if !s.running.is_empty() {
                Err(ErrorCondition::Busy)
            } else {
                let outcome = s.planned.pop_front().unwrap_or(s.scenario);
                if outcome == Scenario::Busy {
                    Err(ErrorCondition::Busy)
                } else {
                    let (stop, stopped) = oneshot::channel();
                    let started = Started {
                        header: header.clone(),
                        request: req.clone(),
                        outcome,
                        requested,
                        card: s.card.clone(),
                    };
                    s.running.insert(key.clone(), (Some(stop), Box::new(started.clone())));
                    s.journal.start(key.clone());
                    Ok((started, stopped))
                }
            }
        };
        let (started, stopped) = match started {
            Ok(started) => started,
            Err(condition) => return self.respond(header, answer::payment_refused(req, condition).into()),
        };
        let outcome = started.outcome;
        let takes = match outcome {
            Scenario::Slow => self.opts.slow,
            Scenario::LongDelay => self.opts.long_delay,
            _ => self.opts.step,
        };
        let interrupted = tokio::select! {
            biased; // branches in a fixed order: a simulated run replays exactly
            () = tokio::time::sleep(takes) => None,
            got = stopped => Some(got.unwrap_or(Interrupt::Restart)),
        };
        if interrupted == Some(Interrupt::Restart) {
            return Reply::Cut;
        }
        let aborted = interrupted == Some(Interrupt::Abort);
        if outcome == Scenario::Restart && !aborted {
            self.note("scenario: the terminal restarts in the middle of the payment");
            let mut s = self.state.lock().unwrap();
            s.running.remove(&key);
            s.journal.forget(&key);
            s.restart(self.opts.restart_takes);
            return Reply::Cut;
        }
        let decision = if aborted {
            self.note(&format!("payment {} aborted by the Sale system", key.1));
            Decision::failed(ErrorCondition::Aborted, false, None)
        } else {
            decide(outcome, requested)
        };
        let at = self.now();
        let response = {
            let mut s = self.state.lock().unwrap();
            s.running.remove(&key);
            self.conclude(&mut s, &key, &started, &decision, &at)
        };
        self.append_to_journal_file(&key, &response);
        if outcome == Scenario::LostAnswer && !aborted {
            let clear = serde_json::to_vec(&SaleToPoiResponse { header: header.response(), body: response.into() })
                .unwrap_or_default();
            self.frame(Dir::Out, "PaymentResponse journaled; the scenario cuts the connection instead", &clear);
            return Reply::Cut;
        }
        self.respond(header, response.into())
    }

    /// Ends payment `key` as `decision` says, stamped `at`: journaled, and
    /// booked when authorized. The answer it gets.
    fn conclude(
        &self,
        s: &mut State,
        key: &PaymentKey,
        started: &Started,
        decision: &Decision,
        at: &str,
    ) -> pos_nexo::payment::PaymentResponse {
        let req = &started.request;
        let poi = s.journal.next_transaction(at);
        let response = answer::payment_response(req, decision, &started.card, poi.clone(), &self.opts.poi_id);
        let booked = decision.authorized.map(|amount| Booked {
            poi_transaction_id: poi.transaction_id.clone(),
            sale_transaction_id: req.sale_data.sale_transaction_id.transaction_id.clone(),
            refund: req.payment_type() == PaymentType::Refund,
            brand: started.card.brand.to_owned(),
            currency: req.payment_transaction.amounts_req.currency.clone(),
            amount,
        });
        s.journal.finish(key.clone(), started.header.response(), response.clone(), booked);
        response
    }

    /// The Sale system went away together with the tasks answering it (the
    /// simulator drops posd and every task of its life at once, at `at`):
    /// the payment running, if any, ends now as its customer ends it (or
    /// Aborted, when an abort stopped it), and is journaled, as a terminal
    /// that runs on by itself does; one meant to restart the terminal is
    /// forgotten. A restart under way is over: its deadline was on the
    /// ended life's clock.
    pub fn sale_system_gone(&self, at: jiff::Timestamp) {
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        s.restarting_until = None;
        let running: Vec<_> = s.running.drain().collect();
        for (key, (stop, started)) in running {
            let decision = match (stop, started.outcome) {
                (None, _) => Decision::failed(ErrorCondition::Aborted, false, None),
                (Some(_), Scenario::Restart) => {
                    s.journal.forget(&key);
                    continue;
                }
                (Some(_), outcome) => decide(outcome, started.requested),
            };
            let response = self.conclude(s, &key, &started, &decision, &time_stamp(at));
            self.append_to_journal_file(&key, &response);
        }
    }

    /// Every booked transaction, in order, with the amount reversed.
    pub fn booked(&self) -> Vec<(Booked, Option<i64>)> {
        self.state.lock().unwrap().journal.booked().to_vec()
    }

    /// Now, as the terminal stamps it.
    fn now(&self) -> String {
        time_stamp(self.opts.clock.as_ref().map_or_else(jiff::Timestamp::now, |c| (c.0)()))
    }

    /// TransactionStatus: what became of a payment request (the last one of
    /// the SaleID when no reference is given).
    fn transaction_status(&self, header: &MessageHeader, req: &TransactionStatusRequest) -> Reply {
        let reference = req.message_reference.as_ref();
        let sale_id = reference.and_then(|r| r.sale_id.clone()).or_else(|| header.sale_id.clone()).unwrap_or_default();
        let (service_id, entry) = {
            let s = self.state.lock().unwrap();
            let service_id = reference.and_then(|r| r.service_id.clone()).or_else(|| s.journal.last_of(&sale_id));
            let entry = service_id.as_ref().and_then(|id| s.journal.status(&(sale_id.clone(), id.clone())));
            (service_id, entry)
        };
        let message_reference = service_id.map(|id| MessageReference {
            message_category: Some(MessageCategory::Payment),
            service_id: Some(id),
            sale_id: Some(sale_id),
            ..MessageReference::default()
        });
        let response = match entry {
            None => TransactionStatusResponse {
                response: Response::failure(ErrorCondition::NotFound),
                message_reference,
                repeated_message_response: None,
            },
            Some(Entry::InProgress) => TransactionStatusResponse {
                response: Response::failure(ErrorCondition::InProgress),
                message_reference,
                repeated_message_response: None,
            },
            Some(Entry::Done { header: original, response }) => {
                let mut payment = *response;
                if req.receipt_reprint_flag != Some(true) {
                    payment.payment_receipt.clear();
                } else if !req.document_qualifier.is_empty() {
                    payment.payment_receipt.retain(|r| req.document_qualifier.contains(&r.document_qualifier));
                }
                TransactionStatusResponse {
                    response: Response::success(),
                    message_reference,
                    repeated_message_response: Some(RepeatedMessageResponse {
                        message_header: original,
                        repeated_response_message_body: RepeatedResponseMessageBody {
                            payment_response: Some(payment),
                            reversal_response: None,
                        },
                    }),
                }
            }
        };
        self.respond(header, response.into())
    }

    /// Abort: stops the running payment it names; answered with an empty body.
    fn abort(&self, header: &MessageHeader, req: &AbortRequest) -> Reply {
        let r = &req.message_reference;
        let sale_id = r.sale_id.clone().or_else(|| header.sale_id.clone()).unwrap_or_default();
        let key = (sale_id, r.service_id.clone().unwrap_or_default());
        // The payment stays running until its task ends it Aborted.
        let stop = self.state.lock().unwrap().running.get_mut(&key).and_then(|(stop, _)| stop.take());
        match stop {
            Some(stop) => {
                let _ = stop.send(Interrupt::Abort);
                self.note(&format!("abort ({}): payment {} stops", req.abort_reason, key.1));
            }
            None => self.note(&format!("abort ({}): no payment {} runs", req.abort_reason, key.1)),
        }
        self.note("answered with an empty body");
        Reply::Empty
    }

    /// Reversal of a booked transaction, in full or in part, once.
    fn reversal(&self, header: &MessageHeader, req: &ReversalRequest) -> Reply {
        let original = &req.original_poi_transaction;
        let at = self.now();
        let reversed = self.state.lock().unwrap().journal.reverse(
            &original.poi_transaction_id.transaction_id,
            req.reversed_amount,
            &at,
        );
        let response = match reversed {
            Ok(r) => ReversalResponse {
                response: Response::success(),
                poi_data: Some(PoiData { poi_transaction_id: r.poi_transaction, poi_reconciliation_id: None }),
                original_poi_transaction: Some(original.clone()),
                reversed_amount: Decimal::from_minor(r.amount, &r.currency).ok(),
                payment_receipt: Vec::new(),
            },
            Err(condition) => ReversalResponse {
                response: Response::failure(condition),
                poi_data: None,
                original_poi_transaction: Some(original.clone()),
                reversed_amount: None,
                payment_receipt: Vec::new(),
            },
        };
        self.respond(header, response.into())
    }

    /// Diagnosis: OK, or Busy while a payment runs.
    fn diagnosis(&self, header: &MessageHeader) -> Reply {
        let busy = !self.state.lock().unwrap().running.is_empty();
        let response = DiagnosisResponse {
            response: Response::success(),
            poi_status: Some(PoiStatus {
                global_status: if busy { GlobalStatus::Busy } else { GlobalStatus::Ok },
                communication_ok_flag: Some(true),
                printer_status: None,
                card_reader_ok_flag: Some(true),
            }),
            host_status: Vec::new(),
            logged_sale_id: header.sale_id.iter().cloned().collect(),
        };
        self.respond(header, response.into())
    }

    /// Reconciliation: the totals since the last SaleReconciliation, which
    /// closes the period.
    fn reconciliation(&self, header: &MessageHeader, req: &ReconciliationRequest) -> Reply {
        let close = req.reconciliation_type == ReconciliationType::SaleReconciliation;
        let (id, totals) = self.state.lock().unwrap().journal.reconcile(close);
        let response = ReconciliationResponse {
            response: Response::success(),
            reconciliation_type: Some(req.reconciliation_type.clone()),
            poi_reconciliation_id: Some(id),
            transaction_totals: totals,
        };
        self.respond(header, response.into())
    }

    /// The answer to the request under `request`'s header, transcribed,
    /// encrypted with a fresh nonce when the terminal has a key.
    fn respond(&self, request: &MessageHeader, body: ResponseBody) -> Reply {
        let document = SaleToPoiResponse { header: request.response(), body };
        let clear = serde_json::to_vec(&document).expect("a response serializes");
        let Some(key) = &self.opts.key else {
            self.frame(Dir::Out, &format!("{} (clear)", describe_response(&document)), &clear);
            return Reply::Json(200, String::from_utf8(clear).expect("serde_json writes UTF-8"));
        };
        let mut nonce = [0u8; pos_nexo::crypto::NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source works");
        let sealed = key.encrypt(&clear, nonce).expect("the terminal's own response encrypts");
        self.frame(Dir::Out, &format!("{} (encrypted, {} bytes)", describe_response(&document), sealed.len()), &clear);
        Reply::Json(200, sealed)
    }

    /// The one answer to every document that does not decrypt and verify.
    fn crypto_error(&self, body: &[u8], why: &str) -> Reply {
        self.note(&format!("refused ({} bytes): {why}", body.len()));
        let service_id = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|doc| {
            doc.pointer("/SaleToPOIRequest/MessageHeader/ServiceID").and_then(|id| id.as_str().map(str::to_owned))
        });
        let mut errors = serde_json::json!({"errors": ["Nexo Service: crypto error"]});
        if let Some(id) = service_id {
            errors["ServiceID"] = serde_json::Value::String(id);
        }
        Reply::Json(401, errors.to_string())
    }

    fn append_to_journal_file(&self, key: &PaymentKey, response: &pos_nexo::payment::PaymentResponse) {
        let Some(path) = &self.opts.journal_file else { return };
        let line = serde_json::json!({"SaleID": key.0, "ServiceID": key.1, "PaymentResponse": response});
        let written =
            std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "nexo: cannot append to the journal file");
        }
    }

    /// One document in the transcript: what it is, and its clear JSON
    /// (card numbers are masked by the transcript).
    fn frame(&self, dir: Dir, meaning: &str, clear: &[u8]) {
        tracing::info!(?dir, "nexo: {meaning}");
        if let Some(t) = &self.transcript {
            t.frame(dir, &[], &format!("{meaning}: {}", String::from_utf8_lossy(clear)), false);
        }
    }

    fn note(&self, text: &str) {
        tracing::info!("nexo: {text}");
        if let Some(t) = &self.transcript {
            t.note(text);
        }
    }
}

/// How a payment ends in `outcome` (the outcomes that end it at all).
fn decide(outcome: Scenario, requested: i64) -> Decision {
    match outcome {
        Scenario::Decline => Decision::failed(ErrorCondition::Refusal, true, Some("Refused")),
        Scenario::CustomerCancel => Decision::failed(ErrorCondition::Cancel, false, None),
        Scenario::WrongPin => Decision::failed(ErrorCondition::WrongPin, true, Some("Invalid Pin")),
        Scenario::Partial => Decision::partial(requested),
        Scenario::Signature => Decision { signature: true, ..Decision::approved(requested) },
        Scenario::Approve
        | Scenario::Slow
        | Scenario::LostAnswer
        | Scenario::LongDelay
        | Scenario::Busy
        | Scenario::Restart => Decision::approved(requested),
    }
}

/// The request's header is this terminal's and fits its body.
pub fn check_header(header: &MessageHeader, body: &RequestBody, poi_id: &str) -> Result<(), ErrorCondition> {
    if header.message_type != MessageType::Request || header.sale_id.as_deref().is_none_or(str::is_empty) {
        return Err(ErrorCondition::MessageFormat);
    }
    if header.service_id.as_deref().is_none_or(|id| ServiceId::parse(id).is_err()) {
        return Err(ErrorCondition::MessageFormat);
    }
    if header.poi_id != poi_id {
        return Err(ErrorCondition::NotAllowed);
    }
    let category = match body {
        RequestBody::Payment(_) => MessageCategory::Payment,
        RequestBody::TransactionStatus(_) => MessageCategory::TransactionStatus,
        RequestBody::Abort(_) => MessageCategory::Abort,
        RequestBody::Reversal(_) => MessageCategory::Reversal,
        RequestBody::Diagnosis(_) => MessageCategory::Diagnosis,
        RequestBody::Reconciliation(_) => MessageCategory::Reconciliation,
        RequestBody::Other(_) => return Ok(()),
    };
    if header.message_category != category {
        return Err(ErrorCondition::MessageFormat);
    }
    Ok(())
}

/// The request's own response refusing it with `condition` (`None` for an
/// Abort, which has none).
fn refusal(body: &RequestBody, condition: ErrorCondition) -> Option<ResponseBody> {
    let failure = Response::failure(condition.clone());
    Some(match body {
        RequestBody::Payment(req) => answer::payment_refused(req, condition).into(),
        RequestBody::TransactionStatus(_) => {
            TransactionStatusResponse { response: failure, message_reference: None, repeated_message_response: None }
                .into()
        }
        RequestBody::Reversal(req) => ReversalResponse {
            response: failure,
            poi_data: None,
            original_poi_transaction: Some(req.original_poi_transaction.clone()),
            reversed_amount: None,
            payment_receipt: Vec::new(),
        }
        .into(),
        RequestBody::Diagnosis(_) => DiagnosisResponse {
            response: failure,
            poi_status: None,
            host_status: Vec::new(),
            logged_sale_id: Vec::new(),
        }
        .into(),
        RequestBody::Reconciliation(req) => ReconciliationResponse {
            response: failure,
            reconciliation_type: Some(req.reconciliation_type.clone()),
            poi_reconciliation_id: None,
            transaction_totals: Vec::new(),
        }
        .into(),
        RequestBody::Abort(_) | RequestBody::Other(_) => return None,
    })
}

/// `PaymentRequest 0000000042 of POSD-lane-1`.
fn describe(request: &SaleToPoiRequest) -> String {
    let name = match &request.body {
        RequestBody::Payment(_) => "PaymentRequest",
        RequestBody::TransactionStatus(_) => "TransactionStatusRequest",
        RequestBody::Abort(_) => "AbortRequest",
        RequestBody::Reversal(_) => "ReversalRequest",
        RequestBody::Diagnosis(_) => "DiagnosisRequest",
        RequestBody::Reconciliation(_) => "ReconciliationRequest",
        RequestBody::Other(name) => name.as_str(),
    };
    let h = &request.header;
    format!("{name} {} of {}", h.service_id.as_deref().unwrap_or("-"), h.sale_id.as_deref().unwrap_or("-"))
}

/// `PaymentResponse Success`, `TransactionStatusResponse Failure NotFound`.
fn describe_response(response: &SaleToPoiResponse) -> String {
    let name = match &response.body {
        ResponseBody::Payment(_) => "PaymentResponse",
        ResponseBody::TransactionStatus(_) => "TransactionStatusResponse",
        ResponseBody::Reversal(_) => "ReversalResponse",
        ResponseBody::Diagnosis(_) => "DiagnosisResponse",
        ResponseBody::Reconciliation(_) => "ReconciliationResponse",
        ResponseBody::Other(name) => name.as_str(),
    };
    match response.body.response() {
        Some(r) => match &r.error_condition {
            Some(c) => format!("{name} {} {c}", r.result),
            None => format!("{name} {}", r.result),
        },
        None => name.to_owned(),
    }
}

/// `at`, as nexo time stamps are written (UTC, milliseconds).
fn time_stamp(at: jiff::Timestamp) -> String {
    format!("{at:.3}")
}

/// Serves HTTPS on `listener` until it fails: POST `/nexo` or `/nexo/`,
/// one document each.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    t: Arc<Terminal>,
) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, t) = (acceptor.clone(), t.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "nexo: TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = serve_connection(tls, t).await {
                tracing::debug!(%peer, error = %e, "nexo: connection ended");
            }
        });
    }
}

/// Serves one connection (HTTP/1 on `io`, after TLS or, in the simulator,
/// on an in-memory pipe) until the Sale system closes it.
pub async fn serve_connection<IO>(io: IO, t: Arc<Terminal>) -> hyper::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| answer_http(t.clone(), req));
    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).await
}

/// One HTTP request. The document is handled in a task of its own, so a
/// Sale system that goes away does not stop the payment: it runs to its
/// end and is journaled, as at a real terminal. An `Err` cuts the
/// connection without an answer.
async fn answer_http(t: Arc<Terminal>, req: Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, &'static str> {
    if !matches!(req.uri().path(), "/nexo" | "/nexo/") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    if *req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large")),
    };
    let work = tokio::spawn(async move { t.handle(&body).await });
    match work.await {
        Ok(Reply::Json(status, text)) => {
            let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            Ok(response)
        }
        Ok(Reply::Empty) => Ok(hyper::Response::new(Full::new(Bytes::new()))),
        Ok(Reply::Cut) | Err(_) => Err("the terminal cut the connection"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Technician commands, one per line (see [`Terminal::command`]).
pub async fn control(listener: tokio::net::TcpListener, t: Arc<Terminal>) {
    crate::control::serve(listener, t, |t, line| t.command(line).map(|()| t.status_line())).await;
}

#[cfg(test)]
mod tests;
