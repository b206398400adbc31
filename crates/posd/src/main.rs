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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "posd=info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { path }) = &cli.command {
        let findings = posd::config::check(path);
        for f in &findings {
            eprintln!("{}", f.render(path));
        }
        let errors = findings.iter().filter(|f| f.error).count();
        println!("{}: {errors} errors, {} warnings", path.display(), findings.len() - errors);
        return if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let options = posd::daemon::Options {
        demo: cli.demo,
        config: cli.config,
        state_dir: cli.state_dir,
        listen: cli.listen,
        gateway: cli.gateway,
        gateway_timeout_ms: cli.gateway_timeout_ms,
        reader: cli.reader,
        printer: cli.printer,
        demo_reader_delay_ms: cli.demo_reader_delay_ms,
    };
    match posd::daemon::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posd: {e:#}");
            ExitCode::from(2)
        }
    }
}
