//! `posd`: the lane payment daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "posd", version, about = "Lane payment daemon: card readers, gateway, register gRPC API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run with a built-in simulated card reader and gateway (never implicit).
    #[arg(long)]
    demo: bool,
    /// Configuration file (TOML), e.g. /etc/posd/posd.toml.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory for the database and lock (demo default: ./posd-demo-state).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// API address: HOST:PORT (port 0: any free port, printed at start) or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Metrics address: loopback HOST:PORT for `GET /metrics` (port 0: any free port, printed at start).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// Central gateway URL, e.g. http://127.0.0.1:7000.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// How long to wait for the gateway's answer once a request is sent.
    #[arg(long, value_name = "MS")]
    gateway_timeout_ms: Option<u64>,
    /// Card reader of the single lane: a serial device path, or tcp:HOST:PORT.
    #[arg(long, value_name = "DEVICE")]
    reader: Option<String>,
    /// Receipt printer of the single lane.
    #[arg(long, value_name = "DEVICE")]
    printer: Option<String>,
    /// Demo only: milliseconds the simulated customer takes to present the card and to enter the PIN.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    demo_reader_delay_ms: u64,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Validates a configuration file: each error and warning with file, line and the fix.
    /// Exit 0 when posd would start with it (warnings allowed), 1 otherwise.
    CheckConfig {
        #[arg(default_value = "/etc/posd/posd.toml")]
        path: PathBuf,
    },
    /// Copies the live database to PATH (SQLite online backup; safe while posd runs).
    Backup { path: PathBuf },
    /// Prints the payments of business days FROM..=TO (YYYY-MM-DD) as CSV.
    Export {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Exits 3 (and says how many) while offline payments wait to be forwarded;
    /// the package's removal script runs it so a queue is never thrown away.
    CheckQueue,
}

/// Logging: to journald (structured fields) when systemd runs posd, in human
/// form on a terminal. The level comes from RUST_LOG, else the config's
/// `[log] level`, else info.
fn init_logging(config: Option<&std::path::Path>) {
    use tracing_subscriber::prelude::*;
    let level = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| config.and_then(posd::config::log_level))
        .unwrap_or_else(|| "info".into());
    let directives = if level.contains('=') { level } else { format!("posd={level},pos_link={level}") };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| "posd=info".into());
    let journald = std::env::var_os("JOURNAL_STREAM").is_some().then(tracing_journald::layer).and_then(Result::ok);
    match journald {
        Some(layer) => tracing_subscriber::registry().with(filter).with(layer).init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.config.as_deref());
    if let Some(Command::CheckConfig { path }) = &cli.command {
        let findings = posd::config::check(path);
        for f in &findings {
            eprintln!("{}", f.render(path));
        }
        let errors = findings.iter().filter(|f| f.error).count();
        println!("{}: {errors} errors, {} warnings", path.display(), findings.len() - errors);
        return if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    if let Some(cmd) = &cli.command {
        let located = posd::admin::locate(cli.config.as_deref(), cli.state_dir.as_deref());
        let result = located.and_then(|(dir, report)| match cmd {
            Command::Backup { path } => posd::admin::backup(&dir, path).map(|m| (m, 0)),
            Command::Export { from, to } => posd::admin::export(&dir, &report, from, to).map(|csv| (csv, 0)),
            Command::CheckQueue => posd::admin::unsent(&dir).map(|n| match n {
                0 => ("no offline payments are waiting".to_string(), 0),
                n => (format!("{n} offline payments are not yet forwarded; keep posd running until they are"), 3),
            }),
            Command::CheckConfig { .. } => unreachable!("handled above"),
        });
        return match result {
            Ok((text, code)) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("posd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let options = posd::daemon::Options {
        demo: cli.demo,
        config: cli.config,
        state_dir: cli.state_dir,
        listen: cli.listen,
        metrics: cli.metrics,
        gateway: cli.gateway,
        gateway_timeout_ms: cli.gateway_timeout_ms,
        reader: cli.reader,
        printer: cli.printer,
        demo_reader_delay_ms: cli.demo_reader_delay_ms,
    };
    match posd::daemon::run(options).await {
        Ok(posd::daemon::Stopped::OnRequest) => ExitCode::SUCCESS,
        Ok(posd::daemon::Stopped::ToRecover) => ExitCode::from(posd::daemon::Stopped::RESTART_CODE),
        Err(e) => {
            eprintln!("posd: {e:#}");
            ExitCode::from(2)
        }
    }
}
