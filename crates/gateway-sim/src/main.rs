//! `gateway-sim`: the simulated central gateway.
//!
//! ```text
//! gateway-sim --listen ADDR --control ADDR --db PATH
//! gateway-sim ctl --addr CONTROL_ADDR fault <none|down|hang|flaky PCT|lose-answers|latency MS>
//! gateway-sim ledger --db PATH --json
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pos_cardcrypt::BaseKey;

#[derive(Parser)]
#[command(name = "gateway-sim", version, about = "Simulated central payment gateway (gRPC) with a SQLite ledger")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the gateway API (port 0: pick a free port; the actual address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address of the control API (fault injection).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: String,
    /// Ledger database file (created if missing).
    #[arg(long, default_value = "gateway-sim.db")]
    db: PathBuf,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// File with the card-encryption base key (32 bytes or 64 hex digits);
    /// default: the built-in test key the simulated readers use.
    #[arg(long)]
    base_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Sends a control command to a running gateway-sim.
    Ctl {
        /// The running simulator's control address.
        #[arg(long)]
        addr: String,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Prints the ledger.
    Ledger {
        #[arg(long)]
        db: PathBuf,
        /// A JSON array, one object per charge.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Sets the injected fault: none, down, hang, flaky PCT, lose-answers, latency MS,
    /// expired-credentials, conflict-on-repeat.
    Fault {
        #[arg(num_args = 1..=2, required = true)]
        fault: Vec<String>,
    },
    /// Prints the current fault.
    Status,
    /// Emits a gateway event (webhook): refund_settled, dispute_opened or settlement_closed.
    Emit {
        kind: String,
        /// The charge's transaction key (not for settlement_closed).
        key: Option<String>,
    },
    /// Delivers every event again (with the same event ids), as webhook retries do.
    Redeliver,
    /// The account rule for amounts ending in 98: `mismatch` (the default)
    /// refuses their items as another merchant account's; `fixed` accepts them,
    /// as after the chain mends the account.
    Accounts {
        #[arg(value_parser = ["mismatch", "fixed"])]
        rule: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "gateway_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Ctl { addr, action }) => {
            let line = match action {
                CtlAction::Fault { fault } => format!("fault {}", fault.join(" ")),
                CtlAction::Status => "status".to_string(),
                CtlAction::Emit { kind, key } => {
                    format!("emit {kind} {}", key.unwrap_or_default()).trim_end().to_string()
                }
                CtlAction::Redeliver => "redeliver".to_string(),
                CtlAction::Accounts { rule } => format!("accounts {rule}"),
            };
            println!("{}", gateway_sim::control::send_command(&addr, &line).await?);
            Ok(())
        }
        Some(Command::Ledger { db, json }) => {
            let ledger = gateway_sim::ledger::Ledger::open_read_only(&db)
                .map_err(|e| anyhow::anyhow!("cannot open ledger {}: {e}", db.display()))?;
            let charges = ledger.all()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&charges)?);
            } else {
                for c in charges {
                    println!("{}  {:>10} {}  {:<9} {}", c.key, c.amount_minor, c.currency, c.status, c.decline_code);
                }
            }
            Ok(())
        }
        None => {
            let base_key = match &cli.base_key_file {
                Some(p) => BaseKey::from_file_contents(&std::fs::read(p)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                None => BaseKey::test_key(),
            };
            let running = gateway_sim::start(gateway_sim::Options {
                listen: cli.listen,
                control: cli.control,
                db: cli.db,
                base_key,
                tls: match (&cli.tls_cert, &cli.tls_key) {
                    (Some(c), Some(k)) => Some((
                        std::fs::read(c).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?,
                        std::fs::read(k).map_err(|e| anyhow::anyhow!("{}: {e}", k.display()))?,
                    )),
                    _ => None,
                },
                client_ca: cli
                    .tls_client_ca
                    .as_ref()
                    .map(|p| std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())))
                    .transpose()?,
            })
            .await?;
            println!("gateway-sim listening on {}", running.listen_addr);
            println!("gateway-sim control on {}", running.control_addr);
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
    }
}
