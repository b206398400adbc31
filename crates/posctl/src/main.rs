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

#[macro_use]
mod output;

mod cmd;
mod failure;
mod money;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::failure::{EXIT_NOT_APPROVED, Failure};

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
    /// Voids an authorized payment before capture; on a ZVT or nexo lane,
    /// reverses a captured payment at the payment terminal (ZVT: before its
    /// end-of-day; nexo: a ReversalRequest).
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
    /// End of day: closes the lane's batch with the gateway (or the ZVT or
    /// nexo payment terminal), prints the totals and the lane's slip.
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

/// Runs the command: its module in `cmd` does the work and returns the exit code.
async fn run(cli: Cli) -> Result<u8, Failure> {
    let json = cli.json;
    if let Command::Completions { shell } = cli.command {
        return Ok(cmd::completions::run(shell));
    }
    // Validate arguments before touching the network.
    let pay = match &cli.command {
        Command::Pay { amount, currency, key, terminal, order, manual_capture } => {
            Some(cmd::pay::request(amount, currency, key.as_deref(), terminal, order, *manual_capture)?)
        }
        _ => None,
    };
    let mut client = cmd::connect::connect(&cli.addr, &cli.tls).await?;
    let client = &mut client;
    if let Some(req) = pay {
        return cmd::pay::run(client, req, json).await;
    }
    match cli.command {
        Command::Pay { .. } | Command::Completions { .. } => unreachable!("handled above"),
        Command::Payment { id } => cmd::payment::run(client, id, json).await,
        Command::Payments { terminal, statuses, limit, page_token } => {
            cmd::payments::run(client, terminal, statuses, limit, page_token, json).await
        }
        Command::Cancel { id } => cmd::cancel::run(client, id, json).await,
        Command::Capture { id, amount } => cmd::capture::run(client, id, amount, json).await,
        Command::Void { id, reason } => cmd::void::run(client, id, reason, json).await,
        Command::Requeue { id } => cmd::requeue::run(client, id, json).await,
        Command::Resolve { id, receipt, booked, not_booked: _, note } => {
            cmd::resolve::run(client, id, receipt, booked, note, json).await
        }
        Command::Refund { id, amount, key, reason } => cmd::refund::run(client, id, amount, key, reason, json).await,
        Command::Status { terminal } => cmd::status::run(client, terminal, json).await,
        Command::Sync { now } => cmd::sync::run(client, now, json).await,
        Command::Report { day, terminal, csv } => cmd::report::run(client, day, terminal, csv, json).await,
        Command::EndOfDay { terminal } => cmd::end_of_day::run(client, terminal, json).await,
        Command::Receipt { payment_id, copy } => cmd::receipt::run(client, payment_id, copy, json).await,
        Command::Drawer { terminal } => cmd::drawer::run(client, terminal, json).await,
        Command::Events { from, no_follow } => cmd::events::run(client, from, no_follow, json).await,
    }
}
