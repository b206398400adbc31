//! `firmware-sim`: simulated lane devices for tests, demos and technicians.
//!
//! ```text
//! firmware-sim reader --pty-link PATH [card options]   # a PTY; PATH links to its device
//! firmware-sim reader --tcp ADDR [card options]        # a TCP listener (bare APDUs)
//! firmware-sim printer --pty-link PATH | --tcp ADDR --out DIR [--control ADDR]
//! firmware-sim zvt --pty-link PATH | --tcp ADDR [--control ADDR] [--scenario NAME]
//! firmware-sim nexo --listen HOST:PORT --poi-id ID [--key-id ID --key-version N --passphrase-file PATH]
//!                   --ca-out PATH [--control ADDR] [--scenario NAME|FILE]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use firmware_sim::line::{Line, linked_pty};
use firmware_sim::reader::{self, CardProfile, Customer, Desk, Fault, ReaderOptions, Step};
use firmware_sim::transcript::Transcript;
use pos_cardcrypt::BaseKey;
use pos_proto::reader::{EntryMode, Verification, Wallet};

#[derive(Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulated lane devices (card reader) at the other end of a PTY or TCP line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A host-authorized card reader speaking pos.reader.v1 over the link layer.
    Reader(ReaderArgs),
    /// An ESC/POS receipt printer; each job is saved as text and PNG in --out.
    Printer(PrinterArgs),
    /// A ZVT payment terminal that authorizes by itself (serial framing on a PTY, bare APDUs on TCP).
    Zvt(ZvtArgs),
    /// A nexo payment terminal as Adyen terminals are reached locally (Terminal API over HTTPS).
    Nexo(NexoArgs),
    /// A whole lane: a card device and a receipt printer, a scenario, a control
    /// socket and console, and a transcript of every frame. Prints posd's config for it.
    Lane(LaneArgs),
    /// Sends one command to a running lane (`firmware-sim lane`) and prints its answer.
    Ctl(CtlArgs),
}

#[derive(Args)]
struct LaneArgs {
    /// The card device: the native card reader, a ZVT payment terminal, or a nexo (Adyen Terminal
    /// API) payment terminal on HTTPS (a free loopback port, encrypted; its CA and passphrase in DIR).
    #[arg(long, value_enum, default_value_t = ReaderKind::Native)]
    reader: ReaderKind,
    /// The receipt printer's line.
    #[arg(long, value_enum, default_value_t = PrinterWire::Pty)]
    printer: PrinterWire,
    /// The card device listens on a TCP port (any free one) instead of a PTY (a nexo terminal always does).
    #[arg(long)]
    tcp: bool,
    /// Where the device links, transcript.log, receipts/ and control.sock go.
    #[arg(long, default_value = "lane-sim")]
    dir: PathBuf,
    /// The control socket (default: DIR/control.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A scenario file to play (see firmware-sim/scenarios/).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Take commands on standard input (the default when it is a terminal).
    #[arg(long)]
    console: bool,
    /// The card of every payment no scenario describes.
    #[arg(long, default_value = "visa")]
    card: String,
    /// Milliseconds until the customer presents the card.
    #[arg(long, default_value_t = 1500)]
    present_after_ms: u64,
    /// Milliseconds the customer takes for the PIN.
    #[arg(long, default_value_t = 1000)]
    pin_after_ms: u64,
    /// Cards are presented only when a technician taps them (`tap`).
    #[arg(long)]
    manual: bool,
    /// ZVT and nexo: milliseconds between the customer's steps (card, PIN, host); nexo: a payment's time.
    #[arg(long, default_value_t = 300)]
    step_ms: u64,
    /// nexo: the terminal's POIID (its certificate names `<POIID>.test.terminal.adyen.com`).
    #[arg(long, default_value = "V400m-324688179")]
    poi_id: String,
    /// The lane's id in the printed posd config.
    #[arg(long, default_value = "lane-1")]
    lane_id: String,
    #[arg(long, default_value = "EUR")]
    currency: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReaderKind {
    Native,
    Zvt,
    Nexo,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrinterWire {
    Pty,
    Tcp,
    None,
}

#[derive(Args)]
struct CtlArgs {
    /// The lane's control socket (DIR/control.sock).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The command, e.g. `tap`, `card visa-apple-pay`, `paper out`, `unplug reader`, `help`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct ZvtArgs {
    /// Create a PTY and a symlink at PATH to its device (a serial terminal).
    #[arg(long, value_name = "PATH", required_unless_present = "tcp", conflicts_with = "tcp")]
    pty_link: Option<PathBuf>,
    /// Listen on ADDR like a terminal's ECR port (20007; port 0: any free port).
    #[arg(long, value_name = "ADDR", required_unless_present = "pty_link")]
    tcp: Option<String>,
    /// How transactions end: approve, decline [HEX], cancel, offline, busy,
    /// slow, disconnect, init-required (changeable at run time on --control).
    #[arg(long, default_value = "approve", num_args = 1..=2, value_delimiter = ' ')]
    scenario: Vec<String>,
    /// Take technician commands on ADDR, one per line: scenario NAME [ARG],
    /// fault drop-ack|bad-crc|coalesce|none, status.
    #[arg(long, value_name = "ADDR")]
    control: Option<String>,
    /// Receipts to the register: block (06 D3 when permitted), lines (06 D1), none.
    #[arg(long, value_enum, default_value_t = ReceiptsArg::Block)]
    receipts: ReceiptsArg,
    /// Milliseconds between the customer's steps (card, PIN, host).
    #[arg(long, default_value_t = 300)]
    step_ms: u64,
    /// Intermediate statuses sent by the slow scenario, one per step.
    #[arg(long, default_value_t = 10)]
    slow_steps: u32,
    /// Milliseconds to wait for the register's 80 00 (T3).
    #[arg(long, default_value_t = 5000)]
    t3_ms: u64,
    /// Keep a result the register never confirmed instead of reversing it.
    #[arg(long)]
    keep_unconfirmed: bool,
    /// Refuse Repeat Receipt (84 83), as some terminals do.
    #[arg(long)]
    no_repeat_receipt: bool,
    /// The terminal's password (6 digits).
    #[arg(long, default_value_t = 123456)]
    password: u32,
    #[arg(long, default_value_t = 52_523_535)]
    terminal_id: u32,
    /// Append every frame, both ways, to FILE (card data redacted).
    #[arg(long, value_name = "FILE")]
    transcript: Option<PathBuf>,
}

#[derive(Args)]
struct NexoArgs {
    /// Serve HTTPS on HOST:PORT (Adyen's library always uses port 8443; any 127.x.y.z works).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// The terminal's POIID, `<model>-<serial>` (its certificate names `<POIID>.test.terminal.adyen.com`).
    #[arg(long, value_name = "ID")]
    poi_id: String,
    /// The shared key's identifier (with --passphrase-file).
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 1)]
    key_version: u32,
    /// The shared key's passphrase (ASCII; a trailing newline is ignored). Without it the
    /// terminal takes and answers requests in clear (local test mode).
    #[arg(long, value_name = "PATH", requires = "key_id")]
    passphrase_file: Option<PathBuf>,
    /// Where the CA that signed the terminal's certificate is written (PEM), for the Sale system.
    #[arg(long, value_name = "PATH")]
    ca_out: PathBuf,
    /// How payments end: approve, decline, cancel, busy, slow, wrong-pin, partial, lost-answer,
    /// long-delay, restart, signature (changeable at run time on --control); or a scenario file
    /// (`device = "nexo"`) whose payments are played in order.
    #[arg(long, default_value = "approve", value_name = "NAME|FILE")]
    scenario: String,
    /// Take technician commands on ADDR, one per line: scenario NAME, next NAME, card NAME,
    /// restart [MS], status.
    #[arg(long, value_name = "ADDR")]
    control: Option<String>,
    /// Milliseconds the customer takes for a payment.
    #[arg(long, default_value_t = 300)]
    step_ms: u64,
    /// Milliseconds a payment takes in the slow scenario.
    #[arg(long, default_value_t = 5000)]
    slow_ms: u64,
    /// Milliseconds a payment takes in the long-delay scenario.
    #[arg(long, default_value_t = 180_000)]
    long_delay_ms: u64,
    /// Milliseconds a restart keeps the terminal away.
    #[arg(long, default_value_t = 3000)]
    restart_ms: u64,
    /// The card the customer presents: visa, mc, maestro.
    #[arg(long, default_value = "visa")]
    card: String,
    /// Append every finished payment to FILE as a JSON line.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Append every request and answer, decrypted, to FILE (card numbers masked).
    #[arg(long, value_name = "FILE")]
    transcript: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReceiptsArg {
    Block,
    Lines,
    None,
}

#[derive(Args)]
struct PrinterArgs {
    /// Create a PTY and a symlink at PATH to its device (a serial printer).
    #[arg(long, value_name = "PATH", required_unless_present = "tcp", conflicts_with = "tcp")]
    pty_link: Option<PathBuf>,
    /// Listen on ADDR like a network printer (port 9100; port 0: any free port).
    #[arg(long, value_name = "ADDR", required_unless_present = "pty_link")]
    tcp: Option<String>,
    /// Directory for the printed jobs (job-NNNN.txt, job-NNNN.png).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Characters per line in font A: 32 (58 mm paper), 42 or 48 (80 mm).
    #[arg(long, default_value_t = 48, value_parser = clap::builder::TypedValueParser::try_map(clap::builder::PossibleValuesParser::new(["32", "42", "48"]), |s| s.parse::<u32>()))]
    columns: u32,
    /// Receive buffer in bytes (real printers: 4096, or 45 by DIP switch).
    #[arg(long, default_value_t = 4096)]
    buffer: usize,
    /// Print this many bytes per second (default: as fast as they arrive).
    #[arg(long)]
    print_rate: Option<u32>,
    /// Serial flow control by XON/XOFF: XOFF when the buffer is nearly full.
    #[arg(long)]
    xon_xoff: bool,
    /// Take technician commands on ADDR, one per line: paper ok|near-end|out,
    /// paper out-after-lines N, cover open|closed, offline, online, drawer open|closed, status.
    #[arg(long, value_name = "ADDR")]
    control: Option<String>,
}

#[derive(Args)]
struct ReaderArgs {
    /// Create a PTY and a symlink at PATH to its device; posd opens PATH as a serial device.
    #[arg(long, value_name = "PATH", required_unless_present = "tcp", conflicts_with = "tcp")]
    pty_link: Option<PathBuf>,
    /// Listen on ADDR (port 0: any free port; the address is printed) for bare APDUs.
    #[arg(long, value_name = "ADDR", required_unless_present = "pty_link")]
    tcp: Option<String>,
    /// Card brand reported.
    #[arg(long, default_value = "visa")]
    brand: String,
    /// Test card number (never leaves the reader unencrypted).
    #[arg(long, default_value = "4242424242424242")]
    pan: String,
    #[arg(long, value_enum, default_value_t = Entry::Chip)]
    entry_mode: Entry,
    #[arg(long, value_enum, default_value_t = WalletArg::None)]
    wallet: WalletArg,
    #[arg(long, value_enum, default_value_t = Verify::OnlinePin)]
    verification: Verify,
    /// The chip failed and the card was swiped instead.
    #[arg(long)]
    fallback: bool,
    /// Milliseconds until the customer presents the card.
    #[arg(long, default_value_t = 1500)]
    present_delay_ms: u64,
    /// Milliseconds the customer takes for the PIN.
    #[arg(long, default_value_t = 1000)]
    pin_delay_ms: u64,
    /// Never present a card (the payment waits until canceled).
    #[arg(long)]
    no_card: bool,
    /// The reader's encryption keys are missing: card results carry no card data.
    #[arg(long)]
    no_keys: bool,
    /// Pull the plug right after the card result is delivered (the reader drops
    /// while the gateway decides).
    #[arg(long)]
    unplug_after_card: bool,
    /// Reader serial number (also selects its encryption key).
    #[arg(long, default_value = "SIM-READER-0001")]
    serial: String,
    /// Model name the reader reports (default: posd firmware-sim reader).
    #[arg(long)]
    model: Option<String>,
    /// Firmware version the reader reports (default: firmware-sim's version).
    #[arg(long)]
    firmware_version: Option<String>,
    /// Reading every presented card fails: the reader answers with a card
    /// error carrying TEXT, sent as it is (test posd's handling of device text).
    #[arg(long, value_name = "TEXT")]
    collect_fail_message: Option<String>,
    /// Base key file (32 bytes or 64 hex digits); default: the built-in test key.
    #[arg(long)]
    base_key_file: Option<PathBuf>,
    /// Append every frame, both ways, to FILE (card data redacted).
    #[arg(long, value_name = "FILE")]
    transcript: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Entry {
    Chip,
    Contactless,
    Swipe,
    Manual,
}

#[derive(Clone, Copy, ValueEnum)]
enum WalletArg {
    None,
    ApplePay,
    GooglePay,
}

#[derive(Clone, Copy, ValueEnum)]
enum Verify {
    OnlinePin,
    OfflinePin,
    Signature,
    /// No cardholder verification.
    #[value(name = "no-cvm")]
    None,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "firmware_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Reader(args) => run_reader(args).await,
        Command::Printer(args) => run_printer(args).await,
        Command::Zvt(args) => run_zvt(args).await,
        Command::Nexo(args) => run_nexo(args).await,
        Command::Lane(args) => run_lane(args).await,
        Command::Ctl(args) => run_ctl(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firmware-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(a: &ReaderArgs) -> anyhow::Result<ReaderOptions> {
    let base_key = match &a.base_key_file {
        Some(p) => {
            BaseKey::from_file_contents(&std::fs::read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => BaseKey::test_key(),
    };
    if !pos_mask::luhn_valid(&a.pan) || !(13..=19).contains(&a.pan.len()) {
        anyhow::bail!("--pan must be a Luhn-valid card number of 13 to 19 digits");
    }
    Ok(ReaderOptions {
        serial: a.serial.clone(),
        customer: Customer {
            card: CardProfile {
                pan: a.pan.clone(),
                brand: a.brand.clone(),
                entry_mode: match a.entry_mode {
                    Entry::Chip => EntryMode::Chip,
                    Entry::Contactless => EntryMode::Contactless,
                    Entry::Swipe => EntryMode::Swipe,
                    Entry::Manual => EntryMode::Manual,
                },
                wallet: match a.wallet {
                    WalletArg::None => Wallet::None,
                    WalletArg::ApplePay => Wallet::ApplePay,
                    WalletArg::GooglePay => Wallet::GooglePay,
                },
                verification: match a.verification {
                    Verify::OnlinePin => Verification::OnlinePin,
                    Verify::OfflinePin => Verification::OfflinePin,
                    Verify::Signature => Verification::Signature,
                    Verify::None => Verification::NoCvm,
                },
                fallback: a.fallback,
                ..CardProfile::default()
            },
            present_after: (!a.no_card).then(|| Duration::from_millis(a.present_delay_ms)),
            pin_after: Duration::from_millis(a.pin_delay_ms),
            collect_fails: a.collect_fail_message.clone(),
            // Unplugged after the card result: for good (the process ends).
            faults: if a.unplug_after_card {
                vec![(Step::Card, Fault::Disconnect { back_after: Duration::ZERO })]
            } else {
                Vec::new()
            },
            ..Customer::default()
        },
        base_key,
        keys_loaded: !a.no_keys,
        model: a.model.clone().unwrap_or_else(|| ReaderOptions::default().model),
        firmware_version: a.firmware_version.clone().unwrap_or_else(|| ReaderOptions::default().firmware_version),
    })
}

async fn run_printer(args: PrinterArgs) -> anyhow::Result<()> {
    use firmware_sim::printer::{self, Printer, PrinterOptions};
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
    let sim = Printer::new(PrinterOptions {
        columns: args.columns,
        out: args.out.clone(),
        buffer: args.buffer.max(16),
        print_rate: args.print_rate,
        xon_xoff: args.xon_xoff,
    });
    if let Some(addr) = &args.control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for control on {addr}: {e}"))?;
        println!("firmware-sim printer control on {}", listener.local_addr()?);
        tokio::spawn(printer::control(listener, sim.clone()));
    }
    if let Some(link_path) = &args.pty_link {
        let pty = linked_pty(link_path)?;
        println!("firmware-sim printer on {} (device {})", link_path.display(), pty.slave_path().display());
        // The PTY never closes (the simulator holds the device open too):
        // jobs end at their cut.
        let result = printer::serve(pty, sim).await;
        let _ = std::fs::remove_file(link_path);
        return result.map_err(|e| anyhow::anyhow!("printer line failed: {e}"));
    }
    let addr = args.tcp.as_deref().expect("clap requires --pty-link or --tcp");
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("firmware-sim printer listening on {}", listener.local_addr()?);
    loop {
        // One host at a time, as a network printer's port 9100 serves them.
        let (stream, peer) = listener.accept().await?;
        tracing::info!(%peer, "printer: host connected");
        if let Err(e) = printer::serve(stream, sim.clone()).await {
            tracing::warn!(%peer, error = %e, "printer: connection failed");
        }
        tracing::info!(%peer, "printer: host disconnected");
    }
}

fn transcript(path: &Option<PathBuf>, device: &'static str) -> anyhow::Result<Option<Arc<Transcript>>> {
    path.as_ref()
        .map(|p| {
            Transcript::create(p, device)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("cannot open the transcript {}: {e}", p.display()))
        })
        .transpose()
}

async fn run_reader(args: ReaderArgs) -> anyhow::Result<()> {
    let opts = options(&args)?;
    let transcript = transcript(&args.transcript, "reader")?;
    let desk = Desk::new(opts.customer.clone());
    if let Some(link_path) = &args.pty_link {
        let pty = linked_pty(link_path)?;
        println!("firmware-sim reader on {} (device {})", link_path.display(), pty.slave_path().display());
        let line = Line::open(pty, desk.faults.clone(), true, transcript, reader::describe);
        let reason = reader::serve(line, &opts, &desk).await;
        let _ = std::fs::remove_file(link_path);
        anyhow::bail!("link ended: {reason}");
    }
    let addr = args.tcp.as_deref().expect("clap requires --pty-link or --tcp");
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("firmware-sim reader listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tracing::info!(%peer, "reader: host connected");
        let (opts, desk, transcript) = (opts.clone(), desk.clone(), transcript.clone());
        tokio::spawn(async move {
            let line = Line::open(stream, desk.faults.clone(), false, transcript, reader::describe);
            let reason = reader::serve(line, &opts, &desk).await;
            tracing::info!(%peer, %reason, "reader: host disconnected");
        });
    }
}

async fn run_zvt(args: ZvtArgs) -> anyhow::Result<()> {
    use firmware_sim::zvt::{self, Receipts, Scenario, Terminal, ZvtOptions};
    let transcript = transcript(&args.transcript, "zvt")?;
    let words: Vec<&str> = args.scenario.iter().map(String::as_str).collect();
    let scenario = Scenario::parse(&words).map_err(|e| anyhow::anyhow!("--scenario: {e}"))?;
    let password = pos_zvt::message::password(args.password)
        .ok_or_else(|| anyhow::anyhow!("--password must have at most 6 digits"))?;
    let terminal = Terminal::new(
        ZvtOptions {
            password,
            terminal_id: args.terminal_id,
            t3: Duration::from_millis(args.t3_ms),
            step: Duration::from_millis(args.step_ms),
            slow_steps: args.slow_steps,
            receipts: match args.receipts {
                ReceiptsArg::Block => Receipts::Block,
                ReceiptsArg::Lines => Receipts::Lines,
                ReceiptsArg::None => Receipts::None,
            },
            keep_unconfirmed: args.keep_unconfirmed,
            repeat_receipt: !args.no_repeat_receipt,
            ..ZvtOptions::default()
        },
        scenario,
    );
    if let Some(addr) = &args.control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for control on {addr}: {e}"))?;
        println!("firmware-sim zvt control on {}", listener.local_addr()?);
        tokio::spawn(zvt::control(listener, terminal.clone()));
    }
    if let Some(link_path) = &args.pty_link {
        loop {
            // A dropped line comes back as a new device behind the same path,
            // as a USB-serial adapter does when replugged.
            let pty = linked_pty(link_path)?;
            println!("firmware-sim zvt on {} (device {})", link_path.display(), pty.slave_path().display());
            let line = Line::open(pty, terminal.faults.clone(), true, transcript.clone(), zvt::describe);
            let reason = zvt::serve(line, terminal.clone()).await;
            tracing::warn!(%reason, "zvt: line ended");
        }
    }
    let addr = args.tcp.as_deref().expect("clap requires --pty-link or --tcp");
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("firmware-sim zvt listening on {}", listener.local_addr()?);
    loop {
        // One register at a time, as a terminal's ECR port serves them.
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tracing::info!(%peer, "zvt: register connected");
        let line = Line::open(stream, terminal.faults.clone(), false, transcript.clone(), zvt::describe);
        let reason = zvt::serve(line, terminal.clone()).await;
        tracing::info!(%peer, %reason, "zvt: register disconnected");
    }
}

async fn run_nexo(args: NexoArgs) -> anyhow::Result<()> {
    use firmware_sim::nexo::{self, NexoOptions, Scenario, Terminal, pki};
    use firmware_sim::scenario::{Device, ScenarioFile};
    let transcript = transcript(&args.transcript, "nexo")?;
    let key = match &args.passphrase_file {
        None => {
            tracing::warn!("nexo: no --passphrase-file: requests and answers travel in clear");
            None
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let passphrase = text.trim_end_matches(['\r', '\n']);
            let key_id = args.key_id.as_deref().expect("clap requires --key-id with --passphrase-file");
            let key = pos_nexo::Key::derive(passphrase, key_id, args.key_version)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(key)
        }
    };
    let (standing, plans) = if args.scenario.ends_with(".toml") {
        let file = ScenarioFile::load(std::path::Path::new(&args.scenario)).map_err(anyhow::Error::msg)?;
        if file.device != Device::Nexo {
            anyhow::bail!("--scenario {}: written for a {:?} device, not a nexo terminal", args.scenario, file.device);
        }
        (Scenario::Approve, file.nexo_plans().map_err(anyhow::Error::msg)?)
    } else {
        let words: Vec<&str> = args.scenario.split_whitespace().collect();
        (Scenario::parse(&words).map_err(|e| anyhow::anyhow!("--scenario: {e}"))?, Vec::new())
    };
    let card = nexo::answer::card(&args.card).map_err(|e| anyhow::anyhow!("--card: {e}"))?;
    let terminal = Terminal::new(
        NexoOptions {
            poi_id: args.poi_id.clone(),
            key,
            step: Duration::from_millis(args.step_ms),
            slow: Duration::from_millis(args.slow_ms),
            long_delay: Duration::from_millis(args.long_delay_ms),
            restart_takes: Duration::from_millis(args.restart_ms),
            card,
            journal_file: args.journal.clone(),
            clock: None,
        },
        standing,
        transcript,
    );
    terminal.plan(plans);
    let identity =
        pki::issue(&args.poi_id).map_err(|e| anyhow::anyhow!("cannot make the terminal's certificate: {e}"))?;
    pki::write_atomically(&args.ca_out, identity.ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write the CA to {}: {e}", args.ca_out.display()))?;
    let tls = pki::server_config(&identity).map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    if let Some(addr) = &args.control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for control on {addr}: {e}"))?;
        println!("firmware-sim nexo control on {}", listener.local_addr()?);
        tokio::spawn(nexo::control(listener, terminal.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!("firmware-sim nexo CA in {}", args.ca_out.display());
    println!("firmware-sim nexo listening on {}", listener.local_addr()?);
    nexo::serve(listener, acceptor, terminal).await.map_err(|e| anyhow::anyhow!("accepting connections failed: {e}"))
}

async fn run_lane(args: LaneArgs) -> anyhow::Result<()> {
    use firmware_sim::lane::{LaneOptions, SimLane, Wire};
    use firmware_sim::scenario::{Device, ScenarioFile};
    let scenario = args.scenario.as_deref().map(ScenarioFile::load).transpose().map_err(anyhow::Error::msg)?;
    let nexo = args.reader == ReaderKind::Nexo;
    let customer = Customer {
        card: if nexo {
            CardProfile::default()
        } else {
            CardProfile::named(&args.card).map_err(|e| anyhow::anyhow!("--card: {e}"))?
        },
        present_after: (!args.manual).then(|| Duration::from_millis(args.present_after_ms)),
        pin_after: Duration::from_millis(args.pin_after_ms),
        ..Customer::default()
    };
    let opts = LaneOptions {
        dir: args.dir.clone(),
        device: match args.reader {
            ReaderKind::Native => Device::Native,
            ReaderKind::Zvt => Device::Zvt,
            ReaderKind::Nexo => Device::Nexo,
        },
        card_wire: if args.tcp || nexo { Wire::Tcp } else { Wire::Pty },
        printer_wire: match args.printer {
            PrinterWire::Pty => Some(Wire::Pty),
            PrinterWire::Tcp => Some(Wire::Tcp),
            PrinterWire::None => None,
        },
        reader: ReaderOptions { customer, ..ReaderOptions::default() },
        zvt: firmware_sim::zvt::ZvtOptions { step: Duration::from_millis(args.step_ms), ..Default::default() },
        nexo: firmware_sim::nexo::NexoOptions {
            poi_id: args.poi_id.clone(),
            step: Duration::from_millis(args.step_ms),
            card: if nexo {
                firmware_sim::nexo::answer::card(&args.card).map_err(|e| anyhow::anyhow!("--card: {e}"))?
            } else {
                firmware_sim::nexo::NexoOptions::default().card
            },
            ..Default::default()
        },
        printer_columns: 48,
        lane_id: args.lane_id.clone(),
        currency: args.currency.clone(),
    };
    let lane = SimLane::start(opts, scenario.as_ref()).await?;
    let socket = args.socket.clone().unwrap_or_else(|| args.dir.join("control.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot listen for control on {}: {e}", socket.display()))?;
    println!("firmware-sim lane control on {}", socket.display());
    println!("firmware-sim lane transcript in {}", args.dir.join("transcript.log").display());
    println!("firmware-sim lane receipts in {}", args.dir.join("receipts").display());
    if let Some(s) = &scenario {
        println!("firmware-sim lane scenario: {}", s.description.trim());
    }
    let table = lane.posd_config();
    let snippet = args.dir.join("posd-lane.toml");
    std::fs::write(&snippet, &table).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", snippet.display()))?;
    println!("--- posd config for this lane (add it to posd.toml; also in {}) ---", snippet.display());
    print!("{table}");
    println!("--- end of posd config ---");
    println!("firmware-sim lane ready");
    tokio::spawn(lane.clone().serve_control(listener));
    let console = args.console || std::io::IsTerminal::is_terminal(&std::io::stdin());
    if !console {
        tokio::signal::ctrl_c().await?;
        let _ = std::fs::remove_file(&socket);
        return Ok(());
    }
    println!("type help for the commands; Ctrl-D ends the lane");
    let console_lane = lane.clone();
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if line.trim() == "help" {
                print!("{}", firmware_sim::lane::HELP.trim_start());
                continue;
            }
            match console_lane.command(&line) {
                Ok(state) => println!("ok {state}"),
                Err(e) => println!("error {e}"),
            }
        }
    })
    .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn run_ctl(args: CtlArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&args.socket).map_err(|e| {
        anyhow::anyhow!("cannot reach the lane at {}: {e} (is `firmware-sim lane` running?)", args.socket.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(stream, "{}", args.command.join(" "))?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    match reply.trim_end().split_once(' ').unwrap_or((reply.trim_end(), "")) {
        ("ok", state) => {
            println!("{state}");
            Ok(())
        }
        ("error", why) => anyhow::bail!("{why}"),
        _ => anyhow::bail!("no answer from the lane at {}", args.socket.display()),
    }
}
