//! `posctl`: the command-line client of posd.
//!
//! Exit codes, a fixed contract for scripts:
//!
//! - 0: success (for `pay`: approved, online or offline);
//! - 1: not approved, or the operation failed: the payment was declined,
//!   canceled or failed, the refund FAILED (or posctl could not write its
//!   output);
//! - 2: invalid arguments;
//! - 3: posd could not be reached: no connection, or the connection broke (a
//!   transport error, never an answer of posd's);
//! - 4: posd refused the request: bad input, a state rule, permission
//!   (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, NOT_FOUND,
//!   PERMISSION_DENIED, UNAUTHENTICATED, OUT_OF_RANGE, ...);
//! - 5: the outcome is unknown or still pending: call again with the same key
//!   (posd's reason OUTCOME_UNKNOWN, DEADLINE_EXCEEDED, or a payment or refund
//!   that is still pending or unknown; also `pay` when the connection broke
//!   after the payment started);
//! - 6: posd cannot do it for now: try again later (SHUTTING_DOWN,
//!   DATABASE_*, TERMINAL_BUSY or PAYMENT_BUSY, GATEWAY_UNREACHABLE, any
//!   other UNAVAILABLE, RESOURCE_EXHAUSTED).
//!
//! posd's errors carry a `google.rpc.ErrorInfo` reason code; it leads the
//! message on stderr (`posctl: OUTCOME_UNKNOWN: ...`). With `--json`, stdout
//! gets `{"error": {"code": "<gRPC code, e.g. UNAVAILABLE, or unreachable>",
//! "reason": "<posd's reason code or empty>", "message": "..."}}` as well, on
//! one line. A reader that stops early (`posctl payments | head`) ends the
//! output quietly; the exit code stays the command's own.

mod money;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pos_proto::terminal::payment_terminal_client::PaymentTerminalClient;
use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};
use tonic::transport::Channel;

const EXIT_NOT_APPROVED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;
const EXIT_REFUSED: u8 = 4;
const EXIT_PENDING: u8 = 5;
const EXIT_RETRY: u8 = 6;

/// The domain of the `google.rpc.ErrorInfo` posd sends (posd's `api::ERROR_DOMAIN`).
const POSD_ERROR_DOMAIN: &str = "posd.pos.terminal.v1";

/// `println!` for standard output, which a script may close early: see [`output`].
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::output::write(format!($($arg)*).as_bytes(), true)
    };
}

/// Standard output for scripts that may stop reading early, as in
/// `posctl payments | head`: once the pipe is closed the rest of the output
/// is dropped, and the command ends with its usual exit code instead of a
/// panic.
mod output {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    static CLOSED: AtomicBool = AtomicBool::new(false);
    static FAILED: AtomicBool = AtomicBool::new(false);

    /// Writes `bytes` (and a newline) unless standard output is gone.
    pub fn write(bytes: &[u8], newline: bool) {
        if CLOSED.load(Ordering::Relaxed) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let written = out
            .write_all(bytes)
            .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
            .and_then(|()| out.flush());
        if let Err(e) = written {
            CLOSED.store(true, Ordering::Relaxed);
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                FAILED.store(true, Ordering::Relaxed);
                super::say(&format!("posctl: cannot write the output: {e}"));
            }
        }
    }

    /// Standard output is gone: its reader stopped, or writing it failed.
    pub fn closed() -> bool {
        CLOSED.load(Ordering::Relaxed)
    }

    /// Writing standard output failed for another reason than a reader
    /// that stopped (a full disk, say): the output is incomplete.
    pub fn failed() -> bool {
        FAILED.load(Ordering::Relaxed)
    }
}

/// A line on standard error; if that fails too, there is nowhere left to say it.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[derive(Parser)]
#[command(
    name = "posctl",
    version,
    about = "Command-line client of posd",
    after_help = "Exit codes: 0 success (pay: approved, online or offline); 1 not approved or failed (declined, \
canceled, failed; a refund that FAILED); 2 invalid arguments; 3 posd unreachable (no connection, or it broke); \
4 refused by posd (bad input, a state rule, permission); 5 outcome unknown or still pending: call again with the \
same --key; 6 posd cannot do it for now (stopping, database, lane busy, gateway unreachable): try again later.\n\
Errors go to stderr led by posd's reason code; with --json also to stdout as \
{\"error\": {\"code\": \"<gRPC code or unreachable>\", \"reason\": \"<reason code or empty>\", \"message\": \"...\"}}."
)]
struct Cli {
    /// posd's address: HOST:PORT, https://HOST:PORT (TLS) or unix:PATH (e.g. unix:/run/posd/posd.sock).
    #[arg(long, env = "POSD_ADDR", default_value = "127.0.0.1:50051", global = true)]
    addr: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CopyArg {
    Customer,
    Merchant,
}

/// The register's credentials for posd's TLS API (an https:// address).
#[derive(clap::Args)]
struct TlsArgs {
    /// CA certificate that signed posd's server certificate (PEM).
    #[arg(long, env = "POSCTL_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), signed by the CA posd trusts for registers.
    #[arg(long, env = "POSCTL_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "POSCTL_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// TLS settings for `addr`: none for plain addresses (where `--tls-*`
    /// makes no sense), the system roots plus the given files for https.
    fn config(&self, addr: &str) -> Result<Option<tonic::transport::ClientTlsConfig>, Failure> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if !addr.starts_with("https://") {
            if self.tls_ca.is_some() || self.tls_cert.is_some() {
                return Err(Failure::usage(format!("--tls-* options need an https:// --addr, not {addr:?}")));
            }
            return Ok(None);
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Takes a card payment and shows its progress live.
    Pay {
        /// Amount in major units, e.g. 12.34.
        amount: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Idempotency key (default: a new random key). Repeat it to re-attach to the same payment.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "lane-1")]
        terminal: String,
        /// The register's order reference.
        #[arg(long, default_value = "")]
        order: String,
        /// Leave the payment authorized for a later capture.
        #[arg(long)]
        manual_capture: bool,
    },
    /// Shows one payment with its history.
    Payment { id: String },
    /// Lists payments, newest first.
    Payments {
        #[arg(long)]
        terminal: Option<String>,
        /// Only this status (repeatable), e.g. captured, declined.
        #[arg(long = "status")]
        statuses: Vec<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Cancels a payment that is still collecting a card.
    Cancel { id: String },
    /// Captures an authorized payment (manual capture); without AMOUNT, all of it.
    Capture { id: String, amount: Option<String> },
    /// Voids an authorized payment before capture; on a ZVT lane, reverses
    /// a captured payment at the payment terminal (before its end-of-day).
    Void {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Puts a quarantined payment back in the offline queue once its cause is
    /// fixed at the gateway; it is forwarded again under the same key.
    Requeue { id: String },
    /// Records what the payment terminal's journal shows for a payment posd
    /// left UNKNOWN, or for a refund (ID ref_...) it left PENDING: booked
    /// under a receipt number, or not booked. A refund through a gateway that
    /// cannot be asked is settled with --booked or --not-booked from the
    /// gateway's records.
    #[command(group(clap::ArgGroup::new("found").required(true).args(["receipt", "booked", "not_booked"])))]
    Resolve {
        /// A payment id (pay_...) or a refund id (ref_...).
        id: String,
        /// The journal shows it booked under this receipt number.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9999))]
        receipt: Option<u32>,
        /// A refund through the gateway: its records show it booked.
        #[arg(long)]
        booked: bool,
        /// The journal (or the gateway's records) does not show it: nothing was charged or refunded.
        #[arg(long)]
        not_booked: bool,
        /// A note for the audit log.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Refunds a captured payment; without AMOUNT, everything not yet refunded.
    Refund {
        id: String,
        amount: Option<String>,
        /// Idempotency key of the refund (default: a new random key).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Shows a lane's devices and connectivity.
    Status {
        #[arg(long, default_value = "lane-1")]
        terminal: String,
    },
    /// Shows the offline queue; with --now, forwards it now.
    Sync {
        /// Forward queued payments now instead of waiting for the next attempt.
        #[arg(long)]
        now: bool,
    },
    /// Prints a business day's totals per terminal, brand and entry mode.
    Report {
        /// The business day, YYYY-MM-DD (default: the current one).
        #[arg(long)]
        day: Option<String>,
        #[arg(long)]
        terminal: Option<String>,
        /// Print CSV (for spreadsheets) instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// End of day: closes the lane's batch with the gateway (or the ZVT
    /// payment terminal), prints the totals and the lane's slip.
    EndOfDay {
        #[arg(long, default_value = "lane-1")]
        terminal: String,
    },
    /// Prints (or reprints) a payment's receipt and waits for the printer.
    Receipt {
        payment_id: String,
        #[arg(long, value_enum, default_value_t = CopyArg::Customer)]
        copy: CopyArg,
    },
    /// Opens the lane's cash drawer.
    Drawer {
        #[arg(long, default_value = "lane-1")]
        terminal: String,
    },
    /// Prints a shell completion script: `posctl completions bash > /etc/bash_completion.d/posctl`.
    Completions { shell: clap_complete::Shell },
    /// Prints register events after a cursor, then follows new ones.
    Events {
        /// Print events with a cursor greater than this (0: all retained).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after the events already stored instead of following.
        #[arg(long)]
        no_follow: bool,
    },
}

/// Why a command did not succeed: its exit code and what scripts see.
struct Failure {
    exit: u8,
    /// The gRPC code's name (`FAILED_PRECONDITION`), or `unreachable`.
    code: &'static str,
    /// posd's reason code (from its `google.rpc.ErrorInfo`), or empty.
    reason: String,
    message: String,
    /// An answer of posd's: its code leads the message when it has no reason.
    from_posd: bool,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit: EXIT_USAGE,
            code: "INVALID_ARGUMENT",
            reason: String::new(),
            message: message.into(),
            from_posd: false,
        }
    }

    fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            exit: EXIT_UNREACHABLE,
            code: "unreachable",
            reason: String::new(),
            message: message.into(),
            from_posd: false,
        }
    }

    /// Names the idempotency key to repeat the call with, when repeating
    /// it is the way on (unreachable, outcome unknown, try again later).
    fn with_key(mut self, key: &str) -> Failure {
        if matches!(self.exit, EXIT_UNREACHABLE | EXIT_PENDING | EXIT_RETRY) {
            self.message = format!("{} (idempotency key {key}: repeat with --key {key})", self.message);
        }
        self
    }

    /// The message on stderr, led by posd's reason code (or its gRPC code);
    /// with `--json`, the error object on stdout as well.
    fn report(&self, json: bool) {
        let lead = if !self.reason.is_empty() {
            format!("{}: ", self.reason)
        } else if self.from_posd {
            format!("{}: ", self.code)
        } else {
            String::new()
        };
        say(&format!("posctl: {lead}{}", self.message));
        if json {
            outln!("{}", json!({"error": {"code": self.code, "reason": self.reason, "message": self.message}}));
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        // A status with a source was made here, from a failed or broken
        // connection (posd refused the TLS handshake, or went away mid-call):
        // posd never answered. Statuses posd sends arrive without one.
        if let Some(source) = std::error::Error::source(&s) {
            return Failure::unreachable(format!("the connection to posd failed: {}", causes(source)));
        }
        let reason = posd_reason(&s);
        Failure {
            exit: exit_code(s.code(), &reason),
            code: code_name(s.code()),
            reason,
            message: s.message().to_string(),
            from_posd: true,
        }
    }
}

/// The reason code of posd's `google.rpc.ErrorInfo` in a status, or empty.
fn posd_reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info().filter(|i| i.domain == POSD_ERROR_DOMAIN).map(|i| i.reason).unwrap_or_default()
}

/// The exit code for an error posd answered: by its reason code first, then
/// by the gRPC code.
fn exit_code(code: tonic::Code, reason: &str) -> u8 {
    use tonic::Code as C;
    match reason {
        "OUTCOME_UNKNOWN" => return EXIT_PENDING,
        "SHUTTING_DOWN" | "GATEWAY_UNREACHABLE" | "TERMINAL_BUSY" | "PAYMENT_BUSY" | "TERMINAL_UNAVAILABLE" => {
            return EXIT_RETRY;
        }
        r if r.starts_with("DATABASE_") => return EXIT_RETRY,
        _ => {}
    }
    match code {
        C::DeadlineExceeded => EXIT_PENDING,
        C::Unavailable | C::ResourceExhausted | C::Aborted => EXIT_RETRY,
        _ => EXIT_REFUSED,
    }
}

/// A gRPC code's canonical name, as in the gRPC documentation and posd's.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error with its causes, "outer: inner: innermost", repeats left out.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let code = match run(cli).await {
        Ok(code) => code,
        Err(failure) => {
            failure.report(json);
            failure.exit
        }
    };
    // Output lost to a full disk, say, is a failure; a reader that stopped
    // early (`| head`) is not.
    if code == 0 && output::failed() {
        return ExitCode::from(EXIT_NOT_APPROVED);
    }
    ExitCode::from(code)
}

/// Connects to posd at HOST:PORT, http(s)://HOST:PORT, or unix:PATH.
async fn connect(addr: &str, tls: &TlsArgs) -> Result<PaymentTerminalClient<Channel>, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::unreachable(format!("cannot reach posd at {addr}: {e} (is it running? see --addr / POSD_ADDR)"))
    };
    let unreachable = |e: &tonic::transport::Error| unreachable(&causes(e));
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = path.to_string();
        // The URI is required by the API but unused: the connector dials the socket.
        let endpoint = tonic::transport::Endpoint::from_static("http://posd.local");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|e| unreachable(&e))?;
        return Ok(PaymentTerminalClient::new(channel));
    }
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let mut endpoint = Channel::from_shared(url).map_err(|e| Failure::usage(format!("--addr {addr:?}: {e}")))?;
    if let Some(config) = tls.config(addr)? {
        endpoint = endpoint.tls_config(config).map_err(|e| Failure::usage(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    Ok(PaymentTerminalClient::new(channel))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut script: Vec<u8> = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "posctl", &mut script);
        output::write(&script, false);
        return Ok(0);
    }
    // Validate arguments before touching the network.
    let pay_amount = match &cli.command {
        Command::Pay { amount, currency, .. } => Some(money::parse_amount(amount, currency).map_err(Failure::usage)?),
        _ => None,
    };
    let mut client = connect(&cli.addr, &cli.tls).await?;
    match cli.command {
        Command::Pay { currency, key, terminal, order, manual_capture, .. } => {
            let key = key.unwrap_or_else(|| format!("posctl-{}", random_suffix()));
            let req = pb::TakePaymentRequest {
                idempotency_key: key.clone(),
                order_reference: order,
                amount: Some(pb::Money { amount_minor: pay_amount.unwrap_or_default(), currency }),
                terminal_id: terminal,
                capture_mode: if manual_capture { pb::CaptureMode::Manual } else { pb::CaptureMode::Automatic } as i32,
            };
            pay(&mut client, req, cli.json).await.map_err(|f| f.with_key(&key))
        }
        Command::Payment { id } => {
            let p = client.get_payment(pb::GetPaymentRequest { payment_id: id }).await?.into_inner();
            if cli.json {
                outln!("{:#}", payment_json(&p));
            } else {
                outln!("{}", summary(&p));
                for line in detail_lines(&p) {
                    outln!("{line}");
                }
                for h in &p.history {
                    // The entry that created the payment has no status before it.
                    let from = if h.from == 0 { "new".to_string() } else { status_name(h.from) };
                    outln!("  {}  {from} -> {}  {}", rfc3339(h.at.as_ref()), status_name(h.to), h.cause);
                }
            }
            Ok(0)
        }
        Command::Payments { terminal, statuses, limit, page_token } => {
            let mut st = Vec::new();
            for s in &statuses {
                let name = format!("PAYMENT_STATUS_{}", s.to_uppercase());
                let v = pb::PaymentStatus::from_str_name(&name)
                    .ok_or_else(|| Failure::usage(format!("--status {s:?}: unknown status")))?;
                st.push(v as i32);
            }
            let resp = client
                .list_payments(pb::ListPaymentsRequest {
                    terminal_id: terminal.unwrap_or_default(),
                    statuses: st,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if cli.json {
                let list: Vec<Value> = resp.payments.iter().map(payment_json).collect();
                outln!("{:#}", json!({ "payments": list, "next_page_token": resp.next_page_token }));
            } else {
                for p in &resp.payments {
                    let key = if p.gateway_key.is_empty() {
                        String::new()
                    } else {
                        format!("  gateway key {}", p.gateway_key)
                    };
                    outln!("{}{key}", summary(p));
                }
                if !resp.next_page_token.is_empty() {
                    outln!("more: --page-token {}", resp.next_page_token);
                }
            }
            Ok(0)
        }
        Command::Capture { id, amount } => {
            let amount_minor = minor_for(&mut client, &id, amount.as_deref()).await?;
            let p =
                client.capture_payment(pb::CapturePaymentRequest { payment_id: id, amount_minor }).await?.into_inner();
            print_payment(&p, cli.json);
            Ok(0)
        }
        Command::Void { id, reason } => {
            let p = client.void_payment(pb::VoidPaymentRequest { payment_id: id, reason }).await?.into_inner();
            print_payment(&p, cli.json);
            Ok(0)
        }
        Command::Resolve { id, receipt, booked, not_booked: _, note } => {
            let finding =
                if receipt.is_some() || booked { pb::JournalFinding::Booked } else { pb::JournalFinding::NotBooked };
            if id.starts_with("ref_") {
                let request = pb::ResolveRefundRequest {
                    refund_id: id,
                    finding: finding as i32,
                    receipt_no: receipt.unwrap_or(0),
                    note,
                };
                print_refund(&client.resolve_refund(request).await?.into_inner(), cli.json);
                return Ok(0);
            }
            let request = pb::ResolvePaymentRequest {
                payment_id: id,
                finding: finding as i32,
                receipt_no: receipt.unwrap_or(0),
                note,
            };
            let p = client.resolve_payment(request).await?.into_inner();
            print_payment(&p, cli.json);
            Ok(0)
        }
        Command::Requeue { id } => {
            let p = client.requeue_payment(pb::RequeuePaymentRequest { payment_id: id }).await?.into_inner();
            print_payment(&p, cli.json);
            Ok(0)
        }
        Command::Refund { id, amount, key, reason } => {
            let amount_minor = minor_for(&mut client, &id, amount.as_deref()).await?;
            let key = key.unwrap_or_else(|| format!("posctl-refund-{}", random_suffix()));
            let req = pb::RefundPaymentRequest { idempotency_key: key.clone(), payment_id: id, amount_minor, reason };
            let r = match client.refund_payment(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => return Err(Failure::from(status).with_key(&key)),
            };
            print_refund(&r, cli.json);
            Ok(match pb::RefundStatus::try_from(r.status) {
                Ok(pb::RefundStatus::Succeeded) => 0,
                Ok(pb::RefundStatus::Failed) => EXIT_NOT_APPROVED,
                _ => {
                    say(&format!(
                        "posctl: OUTCOME_UNKNOWN: refund {} is {}: its outcome is not known yet; call again with \
                         --key {key} to learn it",
                        r.refund_id,
                        refund_status(&r)
                    ));
                    EXIT_PENDING
                }
            })
        }
        Command::Cancel { id } => {
            let p = client.cancel_payment(pb::CancelPaymentRequest { payment_id: id }).await?.into_inner();
            print_payment(&p, cli.json);
            Ok(0)
        }
        Command::Sync { now } => {
            let s = if now {
                client.sync_now(pb::SyncNowRequest {}).await?.into_inner()
            } else {
                client.get_sync_status(pb::GetSyncStatusRequest {}).await?.into_inner()
            };
            if cli.json {
                let totals: serde_json::Map<String, Value> =
                    s.stored_totals.iter().map(|m| (m.currency.clone(), json!(m.amount_minor))).collect();
                outln!(
                    "{:#}",
                    json!({
                        "online": s.online,
                        "queue_depth": s.queue_depth,
                        "quarantined": s.quarantined,
                        "oldest_age_s": s.oldest_age_s,
                        "stored_totals": totals,
                        "last_error": s.last_error,
                        "paused": s.paused,
                        "last_online_at": rfc3339(s.last_online_at.as_ref()),
                    })
                );
            } else {
                outln!("gateway:     {}", if s.online { "online" } else { "OFFLINE" });
                outln!("queued:      {} payments ({} quarantined)", s.queue_depth, s.quarantined);
                for m in &s.stored_totals {
                    outln!("  stored:    {}", money::format_amount(m.amount_minor, &m.currency));
                }
                outln!("oldest:      {} s", s.oldest_age_s);
                if s.paused {
                    outln!("forwarding:  PAUSED");
                }
                if !s.last_error.is_empty() {
                    outln!("last error:  {}", s.last_error);
                }
                if now {
                    outln!("forwarding started");
                }
            }
            Ok(0)
        }
        Command::Events { from, no_follow } => {
            let mut stream = client.stream_events(pb::StreamEventsRequest { from_cursor: from }).await?.into_inner();
            loop {
                let next = if no_follow {
                    // Stored events arrive at once; a quiet moment means the backlog is done.
                    match tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await {
                        Ok(m) => m?,
                        Err(_) => None,
                    }
                } else {
                    stream.message().await?
                };
                let Some(e) = next else { break };
                if cli.json {
                    outln!(
                        "{}",
                        json!({
                            "cursor": e.cursor,
                            "at": rfc3339(e.at.as_ref()),
                            "kind": e.kind,
                            "terminal_id": e.terminal_id,
                            "payment_id": e.payment_id,
                            "message": e.message,
                        })
                    );
                } else {
                    outln!(
                        "{:>6}  {}  {:<20} {} {}  {}",
                        e.cursor,
                        rfc3339(e.at.as_ref()),
                        e.kind,
                        e.terminal_id,
                        e.payment_id,
                        e.message
                    );
                }
                if output::closed() {
                    break;
                }
            }
            Ok(0)
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
        Command::Receipt { payment_id, copy } => {
            let copy = match copy {
                CopyArg::Customer => pb::ReceiptCopy::Customer,
                CopyArg::Merchant => pb::ReceiptCopy::Merchant,
            };
            let r = client
                .print_receipt(pb::PrintReceiptRequest { payment_id: payment_id.clone(), copy: copy as i32 })
                .await?
                .into_inner();
            if cli.json {
                outln!("{:#}", json!({"payment_id": payment_id, "terminal_id": r.terminal_id, "reprint": r.reprint}));
            } else {
                let what = if r.reprint { "reprinted" } else { "printed" };
                outln!("receipt of {payment_id} {what} on {}", r.terminal_id);
            }
            Ok(0)
        }
        Command::Drawer { terminal } => {
            client.open_drawer(pb::OpenDrawerRequest { terminal_id: terminal.clone() }).await?;
            if cli.json {
                outln!("{:#}", json!({"terminal_id": terminal, "drawer": "opened"}));
            } else {
                outln!("drawer of {terminal} opened");
            }
            Ok(0)
        }
        Command::EndOfDay { terminal } => {
            let b = client.close_batch(pb::CloseBatchRequest { terminal_id: terminal }).await?.into_inner();
            if cli.json {
                let totals: Vec<Value> = b
                    .totals
                    .iter()
                    .map(|t| json!({"currency": t.currency, "count": t.count, "captured_minor": t.captured_minor, "refunded_minor": t.refunded_minor}))
                    .collect();
                outln!(
                    "{:#}",
                    json!({"batch_id": b.batch_id, "terminal_id": b.terminal_id, "closed_at": rfc3339(b.closed_at.as_ref()), "totals": totals, "offline_unsent": b.offline_unsent})
                );
            } else {
                outln!("batch {} closed for {} at {}", b.batch_id, b.terminal_id, rfc3339(b.closed_at.as_ref()));
                for t in &b.totals {
                    outln!(
                        "  {} payments  {}  refunded {}",
                        t.count,
                        money::format_amount(t.captured_minor, &t.currency),
                        money::format_amount(t.refunded_minor, &t.currency)
                    );
                }
                if b.offline_unsent > 0 {
                    outln!("  {} offline payments not yet forwarded (they settle in a later batch)", b.offline_unsent);
                }
            }
            Ok(0)
        }
        Command::Report { day, terminal, csv } => {
            let r = client
                .get_report(pb::GetReportRequest {
                    business_day: day.unwrap_or_default(),
                    terminal_id: terminal.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if csv {
                output::write(r.csv.as_bytes(), false);
            } else if cli.json {
                let rows: Vec<Value> = r
                    .rows
                    .iter()
                    .map(|x| {
                        json!({
                            "terminal_id": x.terminal_id, "currency": x.currency, "brand": x.brand,
                            "entry_mode": enum_name(pb::EntryMode::try_from(x.entry_mode).map(|e| e.as_str_name()), "ENTRY_MODE_"),
                            "approvals": x.approvals, "approved_minor": x.approved_minor, "declines": x.declines,
                            "refunds": x.refunds, "refunded_minor": x.refunded_minor, "voids": x.voids,
                            "offline_pending": x.offline_pending, "offline_pending_minor": x.offline_pending_minor,
                            "offline_forwarded": x.offline_forwarded, "offline_declined": x.offline_declined,
                            "offline_declined_minor": x.offline_declined_minor,
                        })
                    })
                    .collect();
                outln!(
                    "{:#}",
                    json!({
                        "business_day": r.business_day, "time_zone": r.time_zone, "cutover": r.cutover,
                        "starts_at": rfc3339(r.starts_at.as_ref()), "ends_at": rfc3339(r.ends_at.as_ref()), "rows": rows,
                    })
                );
            } else {
                outln!("business day {} ({} from {})", r.business_day, r.time_zone, r.cutover);
                for x in &r.rows {
                    outln!(
                        "  {} {} {:<10} approvals {} ({})  declines {}  refunds {} ({})  voids {}  offline pending {} forwarded {} declined {}",
                        x.terminal_id,
                        x.currency,
                        x.brand,
                        x.approvals,
                        money::format_amount(x.approved_minor, &x.currency),
                        x.declines,
                        x.refunds,
                        money::format_amount(x.refunded_minor, &x.currency),
                        x.voids,
                        x.offline_pending,
                        x.offline_forwarded,
                        x.offline_declined
                    );
                }
            }
            Ok(0)
        }
        Command::Status { terminal } => {
            let s =
                client.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: terminal }).await?.into_inner();
            if cli.json {
                outln!(
                    "{:#}",
                    json!({
                        "terminal_id": s.terminal_id,
                        "reader_connected": s.reader_connected,
                        "reader_serial": s.reader_serial,
                        "reader_firmware": s.reader_firmware,
                        "printer_connected": s.printer_connected,
                        "gateway_online": s.gateway_online,
                        "busy_with_payment_id": s.busy_with_payment_id,
                        "demo": s.demo,
                        "currency": s.currency,
                    })
                );
            } else {
                let demo = if s.demo { "  [DEMO]" } else { "" };
                outln!("{} ({}){demo}", s.terminal_id, s.currency);
                let reader = if s.reader_connected {
                    format!("connected ({} firmware {})", s.reader_serial, s.reader_firmware)
                } else {
                    "not connected".into()
                };
                outln!("  card reader: {reader}");
                outln!("  printer:     {}", if s.printer_connected { "connected" } else { "not connected" });
                outln!("  gateway:     {}", if s.gateway_online { "online" } else { "offline" });
                if !s.busy_with_payment_id.is_empty() {
                    outln!("  busy with:   {}", s.busy_with_payment_id);
                }
            }
            Ok(0)
        }
    }
}

/// Takes a payment and shows its progress; the exit code is its outcome:
/// 0 approved, 1 not approved, 5 not settled yet.
async fn pay(
    client: &mut PaymentTerminalClient<Channel>,
    req: pb::TakePaymentRequest,
    json: bool,
) -> Result<u8, Failure> {
    let mut stream = client.take_payment(req).await?.into_inner();
    let mut last: Option<pb::PaymentEvent> = None;
    let mut stages = Vec::new();
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(status) => {
                let mut failure = Failure::from(status);
                // The payment started and runs on in posd without this
                // connection: its outcome is unknown here, not unreachable.
                if let (Some(seen), EXIT_UNREACHABLE) = (&last, failure.exit) {
                    failure.exit = EXIT_PENDING;
                    failure.reason = "OUTCOME_UNKNOWN".into();
                    failure.message = format!(
                        "{}; payment {} goes on in posd without this connection (`posctl payment {}` shows it)",
                        failure.message, seen.payment_id, seen.payment_id
                    );
                }
                return Err(failure);
            }
        };
        let stage = enum_name(pb::PaymentStage::try_from(ev.stage).map(|s| s.as_str_name()), "PAYMENT_STAGE_");
        if !json && stages.last() != Some(&stage) {
            outln!("… {}", ev.message);
        }
        stages.push(stage);
        last = Some(ev);
    }
    let Some(ev) = last else {
        return Err(Failure {
            exit: EXIT_PENDING,
            code: "UNKNOWN",
            reason: "OUTCOME_UNKNOWN".into(),
            message: "posd ended the payment stream without an event".into(),
            from_posd: false,
        });
    };
    let p = ev.payment.unwrap_or_default();
    if json {
        let mut v = payment_json(&p);
        v["stages"] = json!(stages);
        outln!("{v:#}");
    } else {
        outln!("{}", summary(&p));
    }
    if p.approved {
        return Ok(0);
    }
    use pb::PaymentStatus as S;
    match S::try_from(p.status) {
        Ok(S::Created | S::Collecting | S::CardRead | S::Authorizing | S::Confirming | S::Unknown | S::Unspecified)
        | Err(_) => {
            say(&format!(
                "posctl: OUTCOME_UNKNOWN: payment {} is {}: its outcome is not known yet; `posctl payment {}` \
                 shows it, and paying again with --key {} re-attaches to it",
                p.payment_id,
                status_name(p.status),
                p.payment_id,
                p.idempotency_key
            ));
            Ok(EXIT_PENDING)
        }
        Ok(_) => Ok(EXIT_NOT_APPROVED),
    }
}

/// An amount typed for an existing payment, in its currency's minor units
/// (0 when none is given: "all of it").
async fn minor_for(
    client: &mut PaymentTerminalClient<Channel>,
    id: &str,
    amount: Option<&str>,
) -> Result<i64, Failure> {
    let Some(text) = amount else { return Ok(0) };
    let p = client.get_payment(pb::GetPaymentRequest { payment_id: id.into() }).await?.into_inner();
    let currency = p.amount.map(|m| m.currency).unwrap_or_default();
    money::parse_amount(text, &currency).map_err(Failure::usage)
}

fn print_payment(p: &pb::Payment, json: bool) {
    if json {
        outln!("{:#}", payment_json(p));
    } else {
        outln!("{}", summary(p));
    }
}

fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

fn enum_name(name: Result<&str, prost::UnknownEnumValue>, prefix: &str) -> String {
    name.map(|n| n.trim_start_matches(prefix).to_lowercase()).unwrap_or_else(|_| "unknown".into())
}

fn status_name(v: i32) -> String {
    enum_name(pb::PaymentStatus::try_from(v).map(|s| s.as_str_name()), "PAYMENT_STATUS_")
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .map(|d| d + time::Duration::nanoseconds(t.nanos as i64))
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn refund_status(r: &pb::Refund) -> String {
    enum_name(pb::RefundStatus::try_from(r.status).map(|s| s.as_str_name()), "REFUND_STATUS_")
}

/// A refund on one line: id, amount, status and why it failed.
fn refund_line(r: &pb::Refund) -> String {
    let amount = r.amount.as_ref().map(|m| money::format_amount(m.amount_minor, &m.currency)).unwrap_or_default();
    let why = r.failure.as_ref().map(|f| format!(": {} {}", f.code, f.message)).unwrap_or_default();
    format!("{}  {amount}  {}{why}", r.refund_id, refund_status(r).to_uppercase())
}

fn print_refund(r: &pb::Refund, json: bool) {
    if json {
        outln!("{:#}", refund_json(r));
    } else {
        outln!("{}", refund_line(r));
    }
}

fn refund_json(r: &pb::Refund) -> Value {
    json!({
        "refund_id": r.refund_id,
        "idempotency_key": r.idempotency_key,
        "payment_id": r.payment_id,
        "amount_minor": r.amount.as_ref().map(|m| m.amount_minor),
        "currency": r.amount.as_ref().map(|m| m.currency.clone()),
        "status": refund_status(r),
        "failure": r.failure.as_ref().map(|f| json!({"code": f.code, "message": f.message})),
        "reason": r.reason,
        "created_at": rfc3339(r.created_at.as_ref()),
        "updated_at": rfc3339(r.updated_at.as_ref()),
    })
}

/// What `posctl payment ID` shows under the summary: the gateway's key and
/// reference, the refunds, and what a payment terminal reported.
fn detail_lines(p: &pb::Payment) -> Vec<String> {
    let mut lines = Vec::new();
    if !p.gateway_key.is_empty() || !p.gateway_reference.is_empty() {
        let mut line = format!("  gateway key {}", p.gateway_key);
        if !p.gateway_reference.is_empty() {
            line += &format!("  reference {}", p.gateway_reference);
        }
        lines.push(line);
    }
    for r in &p.refunds {
        lines.push(format!("  refund {}", refund_line(r)));
    }
    if let Some(t) = &p.terminal {
        let mut line = format!("  payment terminal {}", t.terminal_tid);
        if t.receipt_no != 0 {
            line += &format!("  receipt {}", t.receipt_no);
        }
        if t.trace != 0 {
            line += &format!("  trace {}", t.trace);
        }
        if t.offline {
            line += "  approved offline by the terminal";
        }
        lines.push(line);
    }
    lines
}

fn summary(p: &pb::Payment) -> String {
    let amount = p.amount.as_ref().map(|m| money::format_amount(m.amount_minor, &m.currency)).unwrap_or_default();
    let demo = if p.demo { "  [DEMO]" } else { "" };
    let card = p.card.as_ref().map(|c| format!("  {} {}", c.brand, c.masked_pan)).unwrap_or_default();
    let outcome = if p.approved && p.offline && p.auth_code.is_empty() {
        "APPROVED OFFLINE (queued for the gateway)".to_string()
    } else if p.approved && p.offline {
        format!("APPROVED OFFLINE, forwarded, auth {}", p.auth_code)
    } else if p.approved {
        format!("APPROVED (online) auth {}", p.auth_code)
    } else if let Some(d) = &p.decline {
        format!("DECLINED {}: {}", d.code, d.message)
    } else if let Some(f) = &p.failure {
        format!("{} {}: {}", status_name(p.status).to_uppercase(), f.code, f.message)
    } else {
        status_name(p.status).to_uppercase()
    };
    let refunded = match &p.amount {
        Some(m) if p.refunded_minor > 0 => {
            format!("  refunded {}", money::format_amount(p.refunded_minor, &m.currency))
        }
        _ => String::new(),
    };
    format!("{}  {amount}  {outcome}{refunded}{card}{demo}", p.payment_id)
}

fn payment_json(p: &pb::Payment) -> Value {
    let card = p.card.as_ref().map(|c| {
        json!({
            "masked_pan": c.masked_pan,
            "brand": c.brand,
            "entry_mode": enum_name(pb::EntryMode::try_from(c.entry_mode).map(|e| e.as_str_name()), "ENTRY_MODE_"),
            "wallet": enum_name(pb::Wallet::try_from(c.wallet).map(|e| e.as_str_name()), "WALLET_"),
            "aid": c.aid,
            "application_label": c.application_label,
            "verification": enum_name(pb::CardholderVerification::try_from(c.verification).map(|e| e.as_str_name()), "CARDHOLDER_VERIFICATION_"),
        })
    });
    json!({
        "payment_id": p.payment_id,
        "idempotency_key": p.idempotency_key,
        "order_reference": p.order_reference,
        "terminal_id": p.terminal_id,
        "amount_minor": p.amount.as_ref().map(|m| m.amount_minor),
        "currency": p.amount.as_ref().map(|m| m.currency.clone()),
        "status": status_name(p.status),
        "approved": p.approved,
        "offline": p.offline,
        "captured_minor": p.captured_minor,
        "refunded_minor": p.refunded_minor,
        "capture_mode": enum_name(pb::CaptureMode::try_from(p.capture_mode).map(|e| e.as_str_name()), "CAPTURE_MODE_"),
        "card": card,
        "decline": p.decline.as_ref().map(|d| json!({"code": d.code, "message": d.message})),
        "failure": p.failure.as_ref().map(|f| json!({"code": f.code, "message": f.message})),
        "auth_code": p.auth_code,
        "gateway_key": p.gateway_key,
        "gateway_reference": p.gateway_reference,
        "demo": p.demo,
        "created_at": rfc3339(p.created_at.as_ref()),
        "updated_at": rfc3339(p.updated_at.as_ref()),
        "history": p.history.iter().map(|h| json!({
            "at": rfc3339(h.at.as_ref()),
            "from": (h.from != 0).then(|| status_name(h.from)),
            "to": status_name(h.to),
            "cause": h.cause,
        })).collect::<Vec<_>>(),
        "refunds": p.refunds.iter().map(refund_json).collect::<Vec<_>>(),
        "terminal": p.terminal.as_ref().map(|t| json!({
            "terminal_tid": t.terminal_tid,
            "receipt_no": (t.receipt_no != 0).then_some(t.receipt_no),
            "trace": (t.trace != 0).then_some(t.trace),
            "offline": t.offline,
            "receipt_lines": t.receipt_lines,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as posd sends it: with an `ErrorInfo` in its details.
    fn from_posd(code: tonic::Code, reason: &str, domain: &str) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_error_info(reason, domain, std::collections::HashMap::new());
        tonic::Status::with_error_details(code, "what posd says", details)
    }

    #[test]
    fn posds_reason_decides_the_exit_code_before_the_grpc_code() {
        use tonic::Code as C;
        for (code, reason, exit) in [
            (C::Unavailable, "OUTCOME_UNKNOWN", EXIT_PENDING),
            (C::DeadlineExceeded, "OUTCOME_UNKNOWN", EXIT_PENDING),
            (C::DeadlineExceeded, "PRINTER_TIMEOUT", EXIT_PENDING),
            (C::Unavailable, "SHUTTING_DOWN", EXIT_RETRY),
            (C::Unavailable, "DATABASE_UNAVAILABLE", EXIT_RETRY),
            (C::ResourceExhausted, "DATABASE_FULL", EXIT_RETRY),
            (C::Internal, "DATABASE_ERROR", EXIT_RETRY),
            (C::Unavailable, "GATEWAY_UNREACHABLE", EXIT_RETRY),
            (C::FailedPrecondition, "TERMINAL_BUSY", EXIT_RETRY),
            (C::Unavailable, "PAYMENT_BUSY", EXIT_RETRY),
            (C::Unavailable, "PRINTER_NOT_CONNECTED", EXIT_RETRY),
            (C::InvalidArgument, "INVALID_FIELD", EXIT_REFUSED),
            (C::FailedPrecondition, "REFUND_EXCEEDS_CAPTURE", EXIT_REFUSED),
            (C::FailedPrecondition, "WRONG_STATE", EXIT_REFUSED),
            (C::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", EXIT_REFUSED),
            (C::NotFound, "NOT_FOUND", EXIT_REFUSED),
            (C::PermissionDenied, "REFUND_NOT_ALLOWED", EXIT_REFUSED),
        ] {
            let f = Failure::from(from_posd(code, reason, POSD_ERROR_DOMAIN));
            assert_eq!((f.exit, f.reason.as_str(), f.code), (exit, reason, code_name(code)), "{code:?} {reason}");
            assert!(f.from_posd && f.message == "what posd says");
        }
    }

    #[test]
    fn a_status_without_posds_reason_goes_by_its_grpc_code() {
        use tonic::Code as C;
        for (code, exit) in [
            (C::Unavailable, EXIT_RETRY),
            (C::ResourceExhausted, EXIT_RETRY),
            (C::DeadlineExceeded, EXIT_PENDING),
            (C::InvalidArgument, EXIT_REFUSED),
            (C::Unauthenticated, EXIT_REFUSED),
            (C::OutOfRange, EXIT_REFUSED),
            (C::Internal, EXIT_REFUSED),
        ] {
            let f = Failure::from(tonic::Status::new(code, "no details"));
            assert_eq!((f.exit, f.reason.as_str()), (exit, ""), "{code:?}");
        }
        // A reason in another domain is not posd's.
        let f = Failure::from(from_posd(tonic::Code::FailedPrecondition, "OUTCOME_UNKNOWN", "example.com"));
        assert_eq!((f.exit, f.reason.as_str()), (EXIT_REFUSED, ""));
    }

    #[test]
    fn a_status_made_from_a_broken_connection_is_unreachable() {
        let mut s = tonic::Status::unavailable("transport error");
        s.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let f = Failure::from(s);
        assert_eq!((f.exit, f.code, f.from_posd), (EXIT_UNREACHABLE, "unreachable", false));
    }

    #[test]
    fn the_key_to_repeat_with_is_named_only_when_repeating_helps() {
        let pending = Failure::from(from_posd(tonic::Code::Unavailable, "OUTCOME_UNKNOWN", POSD_ERROR_DOMAIN));
        assert!(pending.with_key("k1").message.ends_with("(idempotency key k1: repeat with --key k1)"));
        let refused = Failure::from(from_posd(tonic::Code::NotFound, "NOT_FOUND", POSD_ERROR_DOMAIN));
        assert_eq!(refused.with_key("k1").message, "what posd says");
    }
}
