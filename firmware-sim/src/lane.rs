//! One lane in a box: a card device (the native reader, a ZVT terminal, or
//! a nexo terminal on HTTPS) and a receipt printer, each on a PTY or a TCP
//! port, driven by a scenario file and by a technician's commands (console
//! or `firmware-sim ctl`), with every frame written to one transcript.
//!
//! A nexo terminal listens on a free loopback port and speaks encrypted: the
//! lane writes the CA that signed its certificate (`nexo-ca.pem`) and the
//! shared key's passphrase (`nexo-passphrase`, made at random) into its
//! directory, and posd's config names both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::line::{Line, TapIo, linked_pty};
use crate::nexo::{self, NexoOptions};
use crate::printer::{self, Printer, PrinterOptions};
use crate::reader::{self, Action, CardProfile, Desk, Ended, PinOutcome, ReaderOptions};
use crate::scenario::{Device, ScenarioFile};
use crate::transcript::Transcript;
use crate::zvt::{self, Scenario, Terminal, ZvtOptions};

/// How a device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Pty,
    Tcp,
}

pub struct LaneOptions {
    /// Links, the transcript, the receipts and the control socket go here.
    pub dir: PathBuf,
    pub device: Device,
    pub card_wire: Wire,
    /// `None`: no printer.
    pub printer_wire: Option<Wire>,
    pub reader: ReaderOptions,
    pub zvt: ZvtOptions,
    /// The nexo terminal's settings; its key is made by the lane.
    pub nexo: NexoOptions,
    pub printer_columns: u32,
    pub lane_id: String,
    pub currency: String,
}

/// A plug: the device is connected while it is in.
struct Plug {
    tx: watch::Sender<bool>,
}

impl Plug {
    fn new() -> Plug {
        Plug { tx: watch::Sender::new(true) }
    }

    fn set(&self, plugged: bool) {
        self.tx.send_replace(plugged);
    }

    fn is_in(&self) -> bool {
        *self.tx.borrow()
    }

    async fn wait(&self, plugged: bool) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|p| *p == plugged).await;
    }

    /// Out now, back in after `d` (unless plugged by hand before).
    fn out_for(self: &Arc<Self>, d: Duration) {
        self.set(false);
        let plug = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            plug.set(true);
        });
    }
}

/// The running lane.
pub struct SimLane {
    opts: LaneOptions,
    desk: Arc<Desk>,
    terminal: Arc<Terminal>,
    /// The nexo terminal and its TLS side, on a nexo lane.
    nexo: Option<(Arc<nexo::Terminal>, tokio_rustls::TlsAcceptor)>,
    printer: Option<Arc<Printer>>,
    card_plug: Arc<Plug>,
    printer_plug: Arc<Plug>,
    transcript: Arc<Transcript>,
    /// Where posd finds the devices (links or addresses), set as they start.
    card_at: Mutex<String>,
    printer_at: Mutex<String>,
}

impl SimLane {
    /// Starts the devices; returns once every one of them is reachable.
    pub async fn start(mut opts: LaneOptions, scenario: Option<&ScenarioFile>) -> anyhow::Result<Arc<SimLane>> {
        if let Some(s) = scenario {
            s.setup.apply(&mut opts.reader, &mut opts.zvt);
        }
        std::fs::create_dir_all(opts.dir.join("receipts"))
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", opts.dir.display()))?;
        let transcript = Arc::new(Transcript::create(&opts.dir.join("transcript.log"), "lane")?);
        let desk = Desk::new(opts.reader.customer.clone());
        let terminal = Terminal::new(opts.zvt.clone(), Scenario::Approve);
        let nexo = if opts.device == Device::Nexo {
            let device_transcript = Some(Arc::new(transcript.device("terminal")));
            Some(start_nexo(&opts.dir, &mut opts.nexo, device_transcript)?)
        } else {
            None
        };
        let printer = opts.printer_wire.map(|_| {
            Printer::new(PrinterOptions {
                columns: opts.printer_columns,
                out: opts.dir.join("receipts"),
                buffer: 4096,
                print_rate: None,
                xon_xoff: false,
            })
        });
        let lane = Arc::new(SimLane {
            opts,
            desk,
            terminal,
            nexo,
            printer,
            card_plug: Arc::new(Plug::new()),
            printer_plug: Arc::new(Plug::new()),
            transcript,
            card_at: Mutex::default(),
            printer_at: Mutex::default(),
        });
        if let Some(s) = scenario {
            lane.apply(s)?;
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(card_device(lane.clone(), ready_tx));
        ready_rx.await.map_err(|_| anyhow::anyhow!("the card device did not start"))??;
        if lane.printer.is_some() {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(printer_device(lane.clone(), ready_tx));
            ready_rx.await.map_err(|_| anyhow::anyhow!("the printer did not start"))??;
        }
        Ok(lane)
    }

    /// Plans a scenario's payments and sets its printer up.
    pub fn apply(&self, s: &ScenarioFile) -> anyhow::Result<()> {
        if s.device != self.opts.device {
            anyhow::bail!(
                "the scenario is written for a {:?} card device, this lane has a {:?} one",
                s.device,
                self.opts.device
            );
        }
        match s.device {
            Device::Native => self.desk.plan(s.customers(&self.opts.reader.customer).map_err(anyhow::Error::msg)?),
            Device::Zvt => self.terminal.plan(s.zvt_plans().map_err(anyhow::Error::msg)?),
            Device::Nexo => self.nexo_terminal()?.plan(s.nexo_plans().map_err(anyhow::Error::msg)?),
        }
        let p = &s.printer;
        let mut commands = Vec::new();
        if let Some(paper) = &p.paper {
            commands.push(format!("paper {paper}"));
        }
        if let Some(n) = p.paper_out_after_lines {
            commands.push(format!("paper out-after-lines {n}"));
        }
        if p.cover_open {
            commands.push("cover open".into());
        }
        if !commands.is_empty() {
            let printer = self
                .printer
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the scenario sets up a printer; start the lane with one"))?;
            for c in commands {
                printer.command(&c).map_err(anyhow::Error::msg)?;
            }
        }
        self.transcript.note(&format!("scenario: {}", s.description));
        Ok(())
    }

    /// posd's `[[lane]]` table for this lane.
    pub fn posd_config(&self) -> String {
        let card_at = self.card_at.lock().unwrap().clone();
        let place = |wire: Wire, at: &str| match wire {
            Wire::Pty => format!("device = {at:?}"),
            Wire::Tcp => format!("tcp = {at:?}"),
        };
        let reader = match self.opts.device {
            Device::Native => format!("{{ {} }}", place(self.opts.card_wire, &card_at)),
            Device::Zvt => format!(
                "{{ kind = \"zvt\", {}, password = {} }}",
                place(self.opts.card_wire, &card_at),
                pos_zvt::bcd::decode(&self.opts.zvt.password).unwrap_or_default()
            ),
            Device::Nexo => {
                let key = self.opts.nexo.key.as_ref();
                format!(
                    "{{ kind = \"nexo\", url = \"https://{card_at}/nexo\", poi_id = {:?}, ca_file = {:?}, \
                     key_id = {:?}, key_version = {}, passphrase_file = {:?} }}",
                    self.opts.nexo.poi_id,
                    absolute(&self.opts.dir.join(NEXO_CA)),
                    key.map_or("", |k| k.key_identifier()),
                    key.map_or(1, |k| k.key_version()),
                    absolute(&self.opts.dir.join(NEXO_PASSPHRASE)),
                )
            }
        };
        let mut out =
            format!("[[lane]]\nid = {:?}\ncurrency = {:?}\nreader = {reader}\n", self.opts.lane_id, self.opts.currency);
        if let Some(wire) = self.opts.printer_wire {
            out += &format!("printer = {{ {} }}\n", place(wire, &self.printer_at.lock().unwrap()));
        }
        out
    }

    /// One technician command; the answer is the lane's state, or why not.
    pub fn command(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let need_native = |what: &str| {
            let terminal = match self.opts.device {
                Device::Native => return Ok(()),
                Device::Zvt => "a ZVT terminal",
                Device::Nexo => "a nexo terminal",
            };
            Err(format!("{what}: {terminal} reads cards by itself; set its outcome (outcome approve|decline ...)"))
        };
        if let Some((terminal, _)) = &self.nexo {
            match words.as_slice() {
                ["outcome", rest @ ..] => terminal.command(&format!("scenario {}", rest.join(" ")))?,
                ["card", name] => terminal.command(&format!("card {name}"))?,
                ["reboot", rest @ ..] => terminal.command(&format!("restart {}", rest.join(" ")))?,
                ["fault", _] => return Err("a nexo terminal takes no line faults; try outcome or reboot".into()),
                _ => return self.common_command(line, &words, need_native),
            }
            self.transcript.note(&format!("technician: {}", line.trim()));
            return Ok(self.status_line());
        }
        self.common_command(line, &words, need_native)
    }

    /// The commands every kind of card device takes the same way (and the
    /// native reader's and ZVT terminal's own).
    fn common_command(
        &self,
        line: &str,
        words: &[&str],
        need_native: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, String> {
        let native = self.opts.device == Device::Native;
        match words {
            [] | ["status"] => {}
            ["help"] => return Ok(HELP.trim().replace('\n', "; ")),
            ["tap"] => {
                need_native("tap")?;
                self.desk.act(Action::Tap);
            }
            ["cancel"] => {
                need_native("cancel")?;
                self.desk.act(Action::Cancel);
            }
            ["card", name] => {
                need_native("card")?;
                self.desk.pick_card(CardProfile::named(name)?);
            }
            ["pin", outcome] => {
                need_native("pin")?;
                let o = PinOutcome::parse(outcome)?;
                self.desk.set_pin(o);
            }
            ["manual", on] => {
                need_native("manual")?;
                self.desk.set_manual(match *on {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("manual on|off, not {other:?}")),
                });
            }
            ["outcome", rest @ ..] => {
                if native {
                    return Err(
                        "a native reader's outcome comes from the gateway (test amounts); try card or pin".into()
                    );
                }
                self.terminal.command(&format!("scenario {}", rest.join(" ")))?;
            }
            ["fault", which] => {
                let faults = if native { &self.desk.faults } else { &self.terminal.faults };
                faults.lock().unwrap().arm(which)?;
            }
            ["reboot", rest @ ..] => {
                let ms = match rest {
                    [] => 3000,
                    [ms] => ms.parse().map_err(|_| format!("reboot [MS], not {ms:?}"))?,
                    _ => return Err("reboot [MS]".into()),
                };
                if native {
                    self.desk.act(Action::Reboot(Duration::from_millis(ms)));
                } else {
                    self.card_plug.out_for(Duration::from_millis(ms));
                }
            }
            ["unplug", which] | ["plug", which] => {
                let plugged = words[0] == "plug";
                match *which {
                    "reader" | "terminal" | "card" => self.card_plug.set(plugged),
                    "printer" if self.printer.is_some() => self.printer_plug.set(plugged),
                    "printer" => return Err("this lane has no printer".into()),
                    other => return Err(format!("{} reader|printer, not {other:?}", words[0])),
                }
            }
            ["paper", ..] | ["cover", _] | ["drawer", _] | ["offline"] | ["online"] => {
                self.printer.as_ref().ok_or("this lane has no printer")?.command(line)?;
            }
            ["scenario", path] => {
                let s = ScenarioFile::load(Path::new(path))?;
                if s.setup != Default::default() {
                    return Err(
                        "its [setup] applies when the lane starts: run firmware-sim lane --scenario FILE".into()
                    );
                }
                self.apply(&s).map_err(|e| e.to_string())?;
            }
            _ => return Err(format!("unknown command {line:?}; try help")),
        }
        if !matches!(words, [] | ["status"]) {
            self.transcript.note(&format!("technician: {}", line.trim()));
        }
        Ok(self.status_line())
    }

    pub fn status_line(&self) -> String {
        let card = match (&self.nexo, self.opts.device) {
            (Some((terminal, _)), _) => format!("terminal {}", terminal.status_line()),
            (None, Device::Native) => self.desk.status_line(),
            (None, _) => format!("terminal {}", self.terminal.status_line()),
        };
        let plug = |p: &Plug| if p.is_in() { "plugged in" } else { "unplugged" };
        let mut s = format!("{card}; card device {}", plug(&self.card_plug));
        if let Some(p) = &self.printer {
            s += &format!("; printer {}, {}", plug(&self.printer_plug), p.status_line());
        }
        s
    }

    /// Serves technician commands on a Unix socket, one per line, each
    /// answered with `ok <state>` or `error <why>`.
    pub async fn serve_control(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let lane = self.clone();
            tokio::spawn(crate::control::answer_lines(stream, move |line| lane.command(line)));
        }
    }

    fn nexo_terminal(&self) -> anyhow::Result<&Arc<nexo::Terminal>> {
        self.nexo.as_ref().map(|(t, _)| t).ok_or_else(|| anyhow::anyhow!("this lane has no nexo terminal"))
    }
}

/// Where a nexo lane writes the CA of its terminal's certificate, and the
/// shared key's passphrase.
const NEXO_CA: &str = "nexo-ca.pem";
const NEXO_PASSPHRASE: &str = "nexo-passphrase";

/// Makes a nexo lane's terminal: a random passphrase (written to the
/// lane's directory, readable by its owner only) for its key unless `opts`
/// has one, and a certificate from a new CA (written there too).
fn start_nexo(
    dir: &Path,
    opts: &mut NexoOptions,
    transcript: Option<Arc<Transcript>>,
) -> anyhow::Result<(Arc<nexo::Terminal>, tokio_rustls::TlsAcceptor)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if opts.key.is_none() {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no random passphrase: {e}"))?;
        let passphrase: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(NEXO_PASSPHRASE);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{passphrase}"))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        opts.key = Some(pos_nexo::Key::derive(&passphrase, "firmware-sim-lane", 1)?);
    }
    let identity =
        nexo::pki::issue(&opts.poi_id).map_err(|e| anyhow::anyhow!("cannot make the terminal's certificate: {e}"))?;
    let ca = dir.join(NEXO_CA);
    nexo::pki::write_atomically(&ca, identity.ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", ca.display()))?;
    let tls = nexo::pki::server_config(&identity).map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    let terminal = nexo::Terminal::new(opts.clone(), nexo::Scenario::Approve, transcript);
    Ok((terminal, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

pub const HELP: &str = "
status                       the lane's state
tap                          present the card now (native reader)
cancel                       the customer presses cancel (native reader)
card NAME                    the card of the next payments (visa, visa-apple-pay, mastercard, amex, girocard, ...)
pin ok|wrong|abandon         how the next PIN entries end (native reader)
manual on|off                cards only when tapped, or presented by themselves
outcome WORDS                how the terminal ends the next sales (ZVT: approve, decline 05, cancel, offline, ...;
                             nexo: approve, decline, cancel, busy, slow, wrong-pin, partial, lost-answer, ...)
card NAME                    nexo: the card of the next payments (visa, mc, maestro)
fault drop-ack|bad-crc|coalesce|silent|none   a fault on the card device's line (not nexo)
reboot [MS]                  the card device restarts (default 3000 ms; nexo: its journal of finished payments stays)
unplug reader|printer        pull a plug; plug reader|printer puts it back
paper ok|near-end|out        the printer's paper; paper out-after-lines N
cover open|closed            the printer's cover; drawer open|closed
scenario FILE                plan a scenario file's payments
";

/// Where one device plugs in: a PTY behind a symlink in the lane's
/// directory, or a TCP port (the same one each time it is plugged back).
struct Socket {
    name: &'static str,
    wire: Wire,
    link_path: PathBuf,
    tcp_addr: Option<std::net::SocketAddr>,
    /// Told once the device is first reachable (or cannot be).
    ready: Option<Ready>,
}

type Ready = tokio::sync::oneshot::Sender<anyhow::Result<()>>;

impl Socket {
    fn new(name: &'static str, wire: Wire, dir: &Path, ready: Ready) -> Socket {
        Socket { name, wire, link_path: dir.join(name), tcp_addr: None, ready: Some(ready) }
    }

    /// Waits until the device is plugged in and, on TCP, posd has connected;
    /// `None` when it cannot be plugged in.
    async fn connect(&mut self, plug: &Plug, posd_at: &Mutex<String>) -> Option<Box<dyn Io>> {
        loop {
            plug.wait(true).await;
            match self.wire {
                Wire::Pty => {
                    return match linked_pty(&self.link_path) {
                        Ok(pty) => {
                            let place =
                                format!("on {} (device {})", self.link_path.display(), pty.slave_path().display());
                            self.announce(&place, absolute(&self.link_path), posd_at);
                            Some(Box::new(pty))
                        }
                        Err(e) => {
                            self.fail(e);
                            None
                        }
                    };
                }
                Wire::Tcp => {
                    let bind = self.tcp_addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
                    let listener = match tokio::net::TcpListener::bind(&bind).await {
                        Ok(l) => l,
                        Err(e) => {
                            self.fail(anyhow::anyhow!("cannot listen on {bind}: {e}"));
                            return None;
                        }
                    };
                    let addr = listener.local_addr().expect("a bound listener has an address");
                    self.tcp_addr = Some(addr);
                    self.announce(&format!("listening on {addr}"), addr.to_string(), posd_at);
                    // Unplugged while nobody is connected: stop listening.
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                return Some(Box::new(stream));
                            }
                            Err(e) => tracing::warn!(device = self.name, error = %e, "lane: accept failed"),
                        },
                        () = plug.wait(false) => {}
                    }
                }
            }
        }
    }

    fn announce(&mut self, place: &str, for_posd: String, posd_at: &Mutex<String>) {
        if let Some(ready) = self.ready.take() {
            println!("firmware-sim lane {} {place}", self.name);
            *posd_at.lock().unwrap() = for_posd;
            let _ = ready.send(Ok(()));
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(e));
            }
            None => tracing::error!(device = self.name, error = %e, "lane: cannot plug the device back in"),
        }
    }

    /// The device's line is gone: so is its link.
    fn disconnected(&self) {
        if self.wire == Wire::Pty {
            let _ = std::fs::remove_file(&self.link_path);
        }
    }
}

async fn card_device(lane: Arc<SimLane>, ready: Ready) {
    let name = match lane.opts.device {
        Device::Native => "reader",
        Device::Zvt => "terminal",
        Device::Nexo => return nexo_device(lane, ready).await,
    };
    let mut socket = Socket::new(name, lane.opts.card_wire, &lane.opts.dir, ready);
    while let Some(io) = socket.connect(&lane.card_plug, &lane.card_at).await {
        let serial = lane.opts.card_wire == Wire::Pty;
        let transcript = Some(Arc::new(lane.transcript.device(name)));
        let ended = match lane.opts.device {
            Device::Native => {
                let line = Line::open(io, lane.desk.faults.clone(), serial, transcript, reader::describe);
                tokio::select! {
                    e = reader::serve(line, &lane.opts.reader, &lane.desk) => Some(e),
                    () = lane.card_plug.wait(false) => None,
                }
            }
            // Served by `nexo_device`.
            Device::Nexo => None,
            Device::Zvt => {
                let line = Line::open(io, lane.terminal.faults.clone(), serial, transcript, zvt::describe);
                tokio::select! {
                    reason = zvt::serve(line, lane.terminal.clone()) => {
                        tracing::warn!(%reason, "lane: the terminal's line ended");
                        None
                    }
                    () = lane.card_plug.wait(false) => None,
                }
            }
        };
        socket.disconnected();
        match ended {
            Some(Ended::Unplugged { back_after }) => {
                lane.transcript.note(&format!("{name} unplugged; back in {back_after:?}"));
                lane.card_plug.out_for(back_after);
            }
            Some(Ended::Line(e)) => tracing::info!(error = %e, "lane: the reader's line ended"),
            None => {}
        }
        if !lane.card_plug.is_in() {
            lane.transcript.note(&format!("{name} unplugged"));
            println!("firmware-sim lane {name} unplugged");
        }
    }
}

/// The nexo terminal on HTTPS: a loopback port (the same one each time it
/// is plugged back), every connection served while it is plugged in.
async fn nexo_device(lane: Arc<SimLane>, ready: Ready) {
    let Some((terminal, acceptor)) = lane.nexo.clone() else {
        let _ = ready.send(Err(anyhow::anyhow!("the lane has no nexo terminal")));
        return;
    };
    let mut ready = Some(ready);
    let mut addr: Option<std::net::SocketAddr> = None;
    loop {
        lane.card_plug.wait(true).await;
        let bind = addr.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let listener = match tokio::net::TcpListener::bind(&bind).await {
            Ok(l) => l,
            Err(e) => {
                let e = anyhow::anyhow!("cannot listen on {bind}: {e}");
                match ready.take() {
                    Some(r) => {
                        let _ = r.send(Err(e));
                    }
                    None => tracing::error!(error = %e, "lane: cannot plug the terminal back in"),
                }
                return;
            }
        };
        let at = listener.local_addr().expect("a bound listener has an address");
        addr = Some(at);
        if let Some(r) = ready.take() {
            println!("firmware-sim lane terminal listening on {at} (nexo, HTTPS)");
            *lane.card_at.lock().unwrap() = at.to_string();
            let _ = r.send(Ok(()));
        }
        tokio::select! {
            served = nexo::serve(listener, acceptor.clone(), terminal.clone()) => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "lane: the terminal stopped taking connections");
                }
                return;
            }
            () = lane.card_plug.wait(false) => {
                lane.transcript.note("terminal unplugged");
                println!("firmware-sim lane terminal unplugged");
            }
        }
    }
}

async fn printer_device(lane: Arc<SimLane>, ready: Ready) {
    let printer = lane.printer.clone().expect("a lane with a printer");
    let wire = lane.opts.printer_wire.expect("a lane with a printer");
    let mut socket = Socket::new("printer", wire, &lane.opts.dir, ready);
    while let Some(io) = socket.connect(&lane.printer_plug, &lane.printer_at).await {
        let io = TapIo::new(io, Arc::new(lane.transcript.device("printer")), printer::describe);
        tokio::select! {
            r = printer::serve(io, printer.clone()) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "lane: the printer's line failed");
                }
            }
            () = lane.printer_plug.wait(false) => {
                lane.transcript.note("printer unplugged");
                println!("firmware-sim lane printer unplugged");
            }
        }
        socket.disconnected();
    }
}

/// Any byte stream a device can sit on.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

fn absolute(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}
