//! Harness for the end-to-end tests in `tests/tests/`: starts gateway-sim,
//! firmware-sim and posd as separate processes on loopback and PTYs, and
//! scans everything posd left behind for card numbers.
//!
//! The binaries are the workspace's own (`target/<profile>/`); `cargo test
//! --workspace` builds them, because every binary crate has tests of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pos_proto::terminal::payment_terminal_client::PaymentTerminalClient;
use pos_proto::terminal::{self as pb};
use tonic::transport::Channel;

pub mod measure;

/// A value parser for the harness binaries' counts: a whole number from
/// `min` to `max`, or a clear error (never silently clamped).
pub fn count(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ if max == usize::MAX => Err(format!("give a whole number, at least {min}")),
        _ => Err(format!("give a whole number from {min} to {max}")),
    }
}

/// How long any start-up or condition may take before a test fails. It
/// bounds failures only; passing runs never wait for it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Path of one of the workspace's binaries; `POSD_E2E_BIN_DIR` names
/// another directory to take them from (an older release's, to make a
/// fixture the way that release wrote it).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("POSD_E2E_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps, the harness binaries from target/<profile>.
    let parent = exe.parent().expect("target/<profile>");
    let dir = if parent.ends_with("deps") { parent.parent().expect("target/<profile>") } else { parent };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --workspace --bins`) first",
        path.display()
    );
    path
}

/// A child process whose stdout lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` with stderr appended to `log` and waits for a stdout line
    /// starting with `ready`; returns the rest of that line.
    pub fn start(mut cmd: Command, log: &Path, ready: &str) -> (Proc, String) {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        cmd.stdout(Stdio::piped()).stderr(log_file).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Proc { child, lines };
        let rest = proc.wait_line(ready).unwrap_or_else(|| {
            let status = proc.child.try_wait().ok().flatten();
            panic!(
                "{cmd:?} did not print {ready:?} (exit: {status:?}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        (proc, rest)
    }

    /// The rest of the next stdout line starting with `prefix` (lines before it are skipped).
    pub fn wait_line(&mut self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Walks payments stored in CREATED through `inputs`, each step for all of
/// them in batched commits (benchmark data); `update` gives each payment's
/// data for a step (e.g. its card at `Input::CardRead`). Returns the status
/// they end in.
pub async fn advance_all(
    store: &std::sync::Arc<posd::store::Store>,
    ids: &[String],
    inputs: &[pos_engine::Input],
    update: impl Fn(&str, &pos_engine::Input) -> posd::store::Update,
) -> pos_engine::Status {
    let mut status = pos_engine::Status::Created;
    for input in inputs {
        let t = pos_engine::next(status, input).expect("a valid transition");
        for chunk in ids.chunks(5000) {
            let items = chunk.iter().map(|id| (id.clone(), t.clone(), update(id, input))).collect();
            for r in store.apply_batch(items, posd::store::now_ms()).await.expect("a batch of transitions") {
                r.expect("a transition");
            }
        }
        status = t.to;
    }
    status
}

/// Starts a firmware-sim reader (no customer delays) on a PTY in `dir` for
/// each of the lanes `lane-2` to `lane-{last}`; returns them with posd's
/// `[[lane]]` tables for them, each ending with `lane_extra`.
pub fn more_reader_lanes(dir: &Path, last: usize, lane_extra: &str) -> (Vec<Proc>, String) {
    let mut readers = Vec::new();
    let mut tables = String::new();
    for i in 2..=last {
        let link = dir.join(format!("reader-{i}"));
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.arg("reader").arg("--pty-link").arg(&link).args(["--present-delay-ms", "0", "--pin-delay-ms", "0"]);
        let (p, _) = Proc::start(cmd, &dir.join(format!("reader-{i}.log")), "firmware-sim reader on ");
        readers.push(p);
        tables += &format!(
            "[[lane]]\nid = \"lane-{i}\"\ncurrency = \"EUR\"\nreader = {{ device = {link:?} }}\n{lane_extra}\n"
        );
    }
    (readers, tables)
}

/// Sends one command to a simulator's control port and returns its answer,
/// which must be `ok ...`.
pub fn control(addr: &str, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    writeln!(s, "{command}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.starts_with("ok "), "{command}: {line}");
    line
}

/// Runs a command to completion, returning its status and stdout.
pub fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The signal `std::process::abort()` raises: how posd's failpoints end it.
pub const SIGABRT: i32 = 6;

/// Asserts that posd ended at its failpoint: killed by SIGABRT. Any other end
/// fails, notably a posd that refused to start (exit code 2: built without
/// the cargo feature `failpoints`, or `POSD_FAILPOINT` names no failpoint),
/// which "did not exit successfully" alone would let pass.
pub fn assert_aborted(status: &ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "posd was to abort at its failpoint (SIGABRT) but ended with {status} (exit code {:?}, signal {:?}); \
         exit code 2 is a refused start: is posd built with the cargo feature `failpoints`, and does \
         POSD_FAILPOINT name one? (posd's log says)",
        status.code(),
        status.signal(),
    );
}

/// The python of a virtualenv `target/NAME`, made on first use with
/// `pip install PIP_ARGS` from PyPI; an existing one is reused while python
/// runs `probe` (its arguments, e.g. `["-c", "import grpc"]`) successfully.
pub fn python_venv(name: &str, probe: &[&str], pip_args: &[&str]) -> PathBuf {
    let target = bin("posd").parent().unwrap().parent().unwrap().to_path_buf();
    let venv = target.join(name);
    let python = venv.join("bin/python");
    let ready = python.exists() && run(Command::new(&python).args(probe)).0.success();
    if !ready {
        let (st, out, err) = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        assert!(st.success(), "python3 -m venv: {out}{err}");
        let (st, out, err) = run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(pip_args));
        assert!(st.success(), "pip install {pip_args:?}: {out}{err}");
    }
    python
}

/// The `node_modules` of the node project in `dir` (its `package.json` and
/// `package-lock.json`, e.g. `tests/node`), for `NODE_PATH`: `npm ci` from
/// the npm registry into a copy under the target directory,
/// `target/node-<name of dir>/`, made on first use and again when the
/// lockfile changes; a current one is reused. The copy is installed in a
/// staging directory and renamed into place, so test processes that race
/// here end with one complete copy and never remove another's.
pub fn node_modules(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps, the harness binaries from target/<profile>.
    let parent = exe.parent().expect("target/<profile>");
    let profile = if parent.ends_with("deps") { parent.parent().expect("target/<profile>") } else { parent };
    let target = profile.parent().expect("target/").to_path_buf();
    let name = dir.file_name().unwrap_or_else(|| panic!("{} names no directory", dir.display())).to_string_lossy();
    let home = target.join(format!("node-{name}"));
    let lock_file = dir.join("package-lock.json");
    let lock = std::fs::read(&lock_file).unwrap_or_else(|e| panic!("{}: {e}", lock_file.display()));
    let modules = home.join("node_modules");
    let current = || modules.is_dir() && std::fs::read(home.join("package-lock.json")).is_ok_and(|copy| copy == lock);
    if !current() {
        let staging = target.join(format!("node-{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap_or_else(|e| panic!("{}: {e}", staging.display()));
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(dir.join(file), staging.join(file))
                .unwrap_or_else(|e| panic!("copying {file} of {}: {e}", dir.display()));
        }
        let (st, out, err) = run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&staging));
        assert!(st.success(), "npm ci in {} (a copy of {}) failed: {out}{err}", staging.display(), dir.display());
        if !current() {
            let _ = std::fs::remove_dir_all(&home);
        }
        if std::fs::rename(&staging, &home).is_err() {
            // Another test process put a current copy there first.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    assert!(current(), "{} is not installed from {} after npm ci", modules.display(), lock_file.display());
    modules
}

/// Waits until `check` returns `Some`, polling; fails the test after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One lane: gateway-sim, a firmware-sim reader on a PTY, and posd.
pub struct Lane {
    pub dir: tempfile::TempDir,
    pub gateway_addr: String,
    pub control_addr: String,
    pub posd_addr: String,
    /// The metrics address the running posd printed, once asked for.
    metrics_addr: Option<String>,
    gateway: Proc,
    reader: Option<Proc>,
    posd: Option<Proc>,
    reader_args: Vec<String>,
    /// Every API response a test saw, for the leak scan.
    pub responses: Vec<String>,
    pub gateway_timeout_ms: u64,
    reader_tcp: bool,
    reader_addr: String,
    /// The lane's card device is a ZVT payment terminal (`firmware-sim zvt`).
    zvt: bool,
    /// The ZVT or nexo terminal simulator's control address.
    pub terminal_control: String,
    /// The lane's card device is a nexo terminal (`firmware-sim nexo`), set up so.
    nexo: Option<NexoSetup>,
    /// TOML appended to posd's config (e.g. `[lane.offline]` limits).
    pub extra_config: String,
    /// Environment for the next posd start (e.g. `POSD_FAILPOINT`).
    pub posd_env: Vec<(String, String)>,
    gateway_scheme: &'static str,
    gateway_host: String,
    extra_ca: Option<PathBuf>,
    /// TLS settings for API clients, when posd serves the API over TLS.
    pub api_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Extra keys for the lane's `[[lane]]` table (e.g. its printer).
    pub lane_config: String,
    /// Extra top-level keys for posd's config (before any table).
    pub top_config: String,
    /// Extra keys for posd's `[gateway]` table.
    pub gateway_config: String,
    /// Extra posctl arguments (its `--tls-*` options).
    pub posctl_args: Vec<String>,
    /// posd's whole `[[lane]]` table head (id, currency, reader, printer),
    /// for devices the test starts itself (`firmware-sim lane`).
    pub lane_table: Option<String>,
    /// posd's `listen` address: loopback TCP on any free port unless a test
    /// sets another (see [`Lane::listen_on_unix_socket`]).
    pub listen: String,
}

/// The lane's card device and its line.
#[derive(Clone, Copy)]
struct Device {
    /// TCP instead of a PTY.
    tcp: bool,
    /// A ZVT payment terminal instead of the native reader.
    zvt: bool,
    /// The test starts the devices itself.
    external: bool,
}

impl Device {
    const PTY_READER: Device = Device { tcp: false, zvt: false, external: false };
}

/// How a lane's nexo terminal (`firmware-sim nexo`, HTTPS on a free
/// loopback port, encrypted) and posd's settings for it are set up; by
/// default they agree.
#[derive(Debug, Clone)]
pub struct NexoSetup {
    /// `--scenario`: how payments end (a name), or a scenario file.
    pub scenario: String,
    /// More `firmware-sim nexo` arguments (`--slow-ms 3000`); they replace
    /// the harness's defaults of the same name.
    pub args: Vec<String>,
    /// The POIID the terminal's certificate names.
    pub terminal_poi_id: String,
    /// The POIID in posd's lane config.
    pub poi_id: String,
    pub key_id: String,
    pub key_version: u32,
    /// The terminal's passphrase.
    pub terminal_passphrase: String,
    /// The passphrase in posd's `passphrase_file`.
    pub passphrase: String,
}

impl NexoSetup {
    /// The lane's terminal.
    pub const POI_ID: &'static str = "V400m-324688179";
    /// Another terminal (another model and serial).
    pub const OTHER_POI_ID: &'static str = "P400Plus-275008565";

    pub fn new(scenario: &str) -> NexoSetup {
        NexoSetup {
            scenario: scenario.into(),
            args: Vec::new(),
            terminal_poi_id: Self::POI_ID.into(),
            poi_id: Self::POI_ID.into(),
            key_id: "posd-e2e".into(),
            key_version: 2,
            terminal_passphrase: "e2e-Nexo-Passphrase.2026".into(),
            passphrase: "e2e-Nexo-Passphrase.2026".into(),
        }
    }

    /// More `firmware-sim nexo` arguments.
    pub fn args(mut self, args: &[&str]) -> NexoSetup {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The terminal's certificate names another POIID than posd's config.
    pub fn wrong_poi_id(mut self) -> NexoSetup {
        self.terminal_poi_id = Self::OTHER_POI_ID.into();
        self
    }

    /// posd's passphrase file holds another passphrase than the terminal's.
    pub fn wrong_passphrase(mut self) -> NexoSetup {
        self.passphrase = "not-the-Terminals-Passphrase".into();
        self
    }
}

/// A private certificate authority for tests, issuing PEM files.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM) and where it was written.
    pub pem: String,
    pub path: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        let path = dir.join(format!("{name}.pem").replace(' ', "-"));
        std::fs::write(&path, &pem).unwrap();
        TestCa { issuer: rcgen::Issuer::new(params, key), pem, path }
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) with the
    /// common name `cn`; writes `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn issue(&self, dir: &Path, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_with_common_names(dir, stem, &[cn], names)
    }

    /// [`TestCa::issue`] with a subject of one or two common names (CN
    /// attributes), as a badly made certificate may have.
    pub fn issue_with_common_names(&self, dir: &Path, stem: &str, cns: &[&str], names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        // rcgen keeps one value per attribute type: a second CN goes in
        // under the CN's object identifier (2.5.4.3) as a "custom" type.
        let types = [rcgen::DnType::CommonName, rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])];
        assert!((1..=types.len()).contains(&cns.len()), "one or two common names");
        for (ty, cn) in types.into_iter().zip(cns) {
            params.distinguished_name.push(ty, *cn);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Client TLS settings that trust this CA, optionally with an identity.
    pub fn client_tls(&self, identity: Option<&(PathBuf, PathBuf)>) -> tonic::transport::ClientTlsConfig {
        let mut tls =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&self.pem));
        if let Some((c, k)) = identity {
            tls = tls
                .identity(tonic::transport::Identity::from_pem(std::fs::read(c).unwrap(), std::fs::read(k).unwrap()));
        }
        tls
    }
}

impl Lane {
    /// Starts everything; `reader_args` go to `firmware-sim reader`.
    pub fn start(reader_args: &[&str]) -> Lane {
        Self::start_with(reader_args, 1500)
    }

    pub fn start_with(reader_args: &[&str], gateway_timeout_ms: u64) -> Lane {
        Self::build(reader_args, gateway_timeout_ms, false)
    }

    /// A lane whose reader is reached over TCP (bare APDUs) instead of a PTY.
    pub fn start_tcp_reader(reader_args: &[&str]) -> Lane {
        Self::build(reader_args, 1500, true)
    }

    /// A lane with extra posd configuration (appended TOML).
    pub fn start_configured(reader_args: &[&str], extra_config: &str) -> Lane {
        Self::build_with(reader_args, 1500, false, extra_config, true)
    }

    /// Like [`Lane::start_configured`], but the gateway is down before posd
    /// first starts, so posd has never reached it.
    pub fn start_never_online(reader_args: &[&str], extra_config: &str) -> Lane {
        Self::build_with(reader_args, 1500, false, extra_config, false)
    }

    /// A lane whose card device is a ZVT payment terminal (firmware-sim zvt,
    /// `args` added), on a PTY or over TCP, with ZVT timers scaled down
    /// (T3 1 s, T4 1.5 s). posd is not started yet.
    pub fn prepare_zvt(args: &[&str], tcp: bool, extra_config: &str) -> Lane {
        let dir = tempfile::tempdir().unwrap();
        Self::build_inner(dir, args, 1500, Device { tcp, zvt: true, external: false }, extra_config, true, &[])
    }

    /// A ZVT lane with posd running.
    pub fn start_zvt(args: &[&str], tcp: bool) -> Lane {
        let mut lane = Self::prepare_zvt(args, tcp, "");
        lane.start_posd();
        lane
    }

    /// Sends a technician command to the ZVT or nexo terminal simulator; returns its answer.
    pub fn terminal(&self, command: &str) -> String {
        control(&self.terminal_control, command)
    }

    /// A lane whose card device is a nexo terminal (`firmware-sim nexo`
    /// over HTTPS on a free loopback port, set up by `setup`), posd
    /// configured for it; posd is not started yet.
    pub fn prepare_nexo(setup: NexoSetup, extra_config: &str) -> Lane {
        let device = Device { external: true, ..Device::PTY_READER };
        let mut lane = Self::build_inner(tempfile::tempdir().unwrap(), &[], 1500, device, extra_config, true, &[]);
        lane.nexo = Some(setup);
        lane.start_reader();
        lane
    }

    /// A nexo lane with posd running.
    pub fn start_nexo(setup: NexoSetup) -> Lane {
        let mut lane = Self::prepare_nexo(setup, "");
        lane.start_posd();
        lane
    }

    /// The nexo terminal's transcript so far: every request and answer,
    /// decrypted (card numbers masked), and its notes.
    pub fn nexo_transcript(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nexo-transcript.log")).unwrap_or_default()
    }

    /// The nexo terminal's journal file: one JSON line per finished payment.
    pub fn nexo_journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("nexo-journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a journal line is JSON"))
            .collect()
    }

    /// Starts the lane's nexo terminal: its passphrase file, posd's, and the
    /// CA it writes, all in the lane's directory.
    fn start_nexo_terminal(&mut self) {
        let n = self.nexo.clone().expect("a nexo lane");
        let dir = self.dir.path().to_path_buf();
        let terminal_passphrase = dir.join("nexo-terminal-passphrase");
        std::fs::write(&terminal_passphrase, format!("{}\n", n.terminal_passphrase)).unwrap();
        std::fs::write(dir.join("nexo-passphrase"), format!("{}\n", n.passphrase)).unwrap();
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.arg("nexo").args(["--poi-id", &n.terminal_poi_id, "--key-id", &n.key_id]);
        cmd.args(["--key-version", &n.key_version.to_string(), "--scenario", &n.scenario]);
        cmd.arg("--passphrase-file").arg(&terminal_passphrase).arg("--ca-out").arg(dir.join("nexo-ca.pem"));
        cmd.arg("--transcript").arg(dir.join("nexo-transcript.log"));
        cmd.arg("--journal").arg(dir.join("nexo-journal.jsonl"));
        let defaults = [("--listen", "127.0.0.1:0"), ("--control", "127.0.0.1:0"), ("--step-ms", "20")];
        for (flag, value) in defaults {
            if !n.args.iter().any(|a| a == flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&n.args);
        let log = dir.join("firmware-sim.log");
        let (mut proc, control_addr) = Proc::start(cmd, &log, "firmware-sim nexo control on ");
        self.terminal_control = control_addr;
        self.reader_addr = proc.wait_line("firmware-sim nexo listening on ").expect("the terminal's address");
        self.reader = Some(proc);
    }

    /// Everything but posd, which the test starts (after setting its
    /// environment, say) with [`Lane::start_posd`].
    /// gateway-sim only: the test starts the lane's devices itself and sets
    /// [`Lane::lane_table`]; posd is not started yet.
    pub fn prepare_external(extra_config: &str) -> Lane {
        let device = Device { external: true, ..Device::PTY_READER };
        Self::build_inner(tempfile::tempdir().unwrap(), &[], 1500, device, extra_config, true, &[])
    }

    /// [`Lane::prepare`] in a directory that already holds files: a
    /// gateway ledger (`ledger.db`) and posd's state (`posd-state/`).
    pub fn prepare_in(dir: tempfile::TempDir, reader_args: &[&str], extra_config: &str) -> Lane {
        Self::build_inner(dir, reader_args, 1500, Device::PTY_READER, extra_config, true, &[])
    }

    pub fn prepare(reader_args: &[&str], extra_config: &str) -> Lane {
        Self::build_inner(tempfile::tempdir().unwrap(), reader_args, 1500, Device::PTY_READER, extra_config, true, &[])
    }

    fn build(reader_args: &[&str], gateway_timeout_ms: u64, reader_tcp: bool) -> Lane {
        Self::build_with(reader_args, gateway_timeout_ms, reader_tcp, "", true)
    }

    /// A lane whose gateway speaks TLS with a certificate from a private CA
    /// that posd is configured to trust (`[gateway] ca_file`). With
    /// `client_ca`, the gateway also requires client certificates from it.
    pub fn start_with_tls_gateway(client_ca: Option<&Path>, extra_config: &str) -> Lane {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "gateway CA");
        let (cert, key) = ca.issue(dir.path(), "gw", "gateway", &["localhost"]);
        let mut gateway_args = vec!["--tls-cert".into(), cert, "--tls-key".into(), key];
        if let Some(c) = client_ca {
            gateway_args.extend(["--tls-client-ca".into(), c.to_path_buf()]);
        }
        let mut lane = Self::build_inner(dir, &[], 1500, Device::PTY_READER, extra_config, true, &gateway_args);
        lane.gateway_scheme = "https";
        lane.gateway_host = "localhost".into();
        lane.extra_ca = Some(ca.path);
        lane
    }

    fn build_with(
        reader_args: &[&str],
        gateway_timeout_ms: u64,
        reader_tcp: bool,
        extra_config: &str,
        gateway_up: bool,
    ) -> Lane {
        let dir = tempfile::tempdir().unwrap();
        let mut lane = Self::build_inner(
            dir,
            reader_args,
            gateway_timeout_ms,
            Device { tcp: reader_tcp, zvt: false, external: false },
            extra_config,
            gateway_up,
            &[],
        );
        lane.start_posd();
        lane
    }

    fn build_inner(
        dir: tempfile::TempDir,
        reader_args: &[&str],
        gateway_timeout_ms: u64,
        device: Device,
        extra_config: &str,
        gateway_up: bool,
        gateway_args: &[PathBuf],
    ) -> Lane {
        let Device { tcp: reader_tcp, zvt, external } = device;
        let mut cmd = Command::new(bin("gateway-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--db"]).arg(dir.path().join("ledger.db"));
        cmd.args(gateway_args);
        let log = dir.path().join("gateway-sim.log");
        let (mut gateway, gateway_addr) = Proc::start(cmd, &log, "gateway-sim listening on ");
        let control_addr = gateway.wait_line("gateway-sim control on ").expect("control address");
        let mut lane = Lane {
            dir,
            gateway_addr,
            control_addr,
            posd_addr: String::new(),
            metrics_addr: None,
            gateway,
            reader: None,
            posd: None,
            reader_args: reader_args.iter().map(|s| s.to_string()).collect(),
            responses: Vec::new(),
            gateway_timeout_ms,
            reader_tcp,
            reader_addr: String::new(),
            zvt,
            terminal_control: String::new(),
            nexo: None,
            extra_config: String::new(),
            posd_env: Vec::new(),
            gateway_scheme: "http",
            gateway_host: "127.0.0.1".into(),
            extra_ca: None,
            api_tls: None,
            posctl_args: Vec::new(),
            gateway_config: String::new(),
            top_config: String::new(),
            lane_config: String::new(),
            lane_table: None,
            listen: "127.0.0.1:0".into(),
        };
        lane.extra_config = extra_config.to_string();
        if !gateway_up {
            lane.fault("down");
        }
        if !external {
            lane.start_reader();
        }
        lane
    }

    pub fn reader_link(&self) -> PathBuf {
        self.dir.path().join("reader-link")
    }

    pub fn posd_log(&self) -> PathBuf {
        self.dir.path().join("posd.log")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("posd-state")
    }

    /// posd's next start listens on the Unix socket `posd.sock` in the
    /// lane's directory (posd's default transport); returns its path. The
    /// address posd prints, and so [`Lane::posd_addr`], is then `unix:PATH`.
    pub fn listen_on_unix_socket(&mut self) -> PathBuf {
        let path = self.dir.path().join("posd.sock");
        self.listen = format!("unix:{}", path.display());
        path
    }

    pub fn start_reader(&mut self) {
        if self.nexo.is_some() {
            // A new process makes a new CA and takes a new port: posd's
            // config is written for them at its next start.
            self.start_nexo_terminal();
            return;
        }
        let kind = if self.zvt { "zvt" } else { "reader" };
        let mut cmd = Command::new(bin("firmware-sim"));
        cmd.arg(kind);
        if self.reader_tcp {
            cmd.args(["--tcp", "127.0.0.1:0"]);
        } else {
            cmd.arg("--pty-link").arg(self.reader_link());
        }
        let defaults: &[(&str, &str)] = if self.zvt {
            &[("--step-ms", "20"), ("--control", "127.0.0.1:0")]
        } else {
            &[("--present-delay-ms", "0"), ("--pin-delay-ms", "0")]
        };
        for (flag, value) in defaults {
            if !self.reader_args.iter().any(|a| a == flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&self.reader_args);
        let log = self.dir.path().join("firmware-sim.log");
        let (first, ready) = if self.zvt {
            (
                "firmware-sim zvt control on ",
                if self.reader_tcp { "firmware-sim zvt listening on " } else { "firmware-sim zvt on " },
            )
        } else if self.reader_tcp {
            ("firmware-sim reader listening on ", "")
        } else {
            ("firmware-sim reader on ", "")
        };
        let (mut proc, rest) = Proc::start(cmd, &log, first);
        if self.zvt {
            self.terminal_control = rest;
            let line = proc.wait_line(ready).expect("the terminal's line");
            if self.reader_tcp {
                self.reader_addr = line;
            }
        } else if self.reader_tcp {
            self.reader_addr = rest;
        }
        self.reader = Some(proc);
    }

    /// Pulls the reader's plug: the simulator process dies, its PTY closes.
    pub fn kill_reader(&mut self) {
        if let Some(mut r) = self.reader.take() {
            r.kill();
        }
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("posd.toml");
        let text = format!(
            "state_dir = {state:?}\nlisten = {listen:?}\nstore_id = \"e2e\"\n{top}\n[gateway]\nurl = \"{scheme}://{gw}\"\n{ca}\
             request_timeout_ms = {timeout}\nconnect_timeout_ms = 1000\n\n{lane_table}{lane}\n[offline]\nhealth_interval = \"100ms\"\nretry_first = \"50ms\"\nretry_max = \"400ms\"\n\
             ageing_interval = \"50ms\"\n{extra}\n",
            state = self.state_dir(),
            listen = self.listen,
            gw = match self.gateway_addr.rsplit_once(':') {
                Some((_, port)) => format!("{}:{port}", self.gateway_host),
                None => self.gateway_addr.clone(),
            },
            timeout = self.gateway_timeout_ms,
            top = self.top_config,
            lane = self.lane_config,
            scheme = self.gateway_scheme,
            ca =
                self.extra_ca.as_ref().map(|c| format!("ca_file = {c:?}\n")).unwrap_or_default() + &self.gateway_config,
            extra = self.extra_config,
            lane_table = self.lane_table.clone().unwrap_or_else(|| format!(
                "[[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = {}\n",
                self.reader_line()
            )),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The `reader = ...` value for the lane's own simulated card device.
    fn reader_line(&self) -> String {
        if let Some(n) = &self.nexo {
            let dir = self.dir.path();
            return format!(
                "{{ kind = \"nexo\", url = \"https://{addr}/nexo\", poi_id = {poi:?}, ca_file = {ca:?}, \
                 key_id = {key:?}, key_version = {version}, passphrase_file = {pass:?} }}",
                addr = self.reader_addr,
                poi = n.poi_id,
                ca = dir.join("nexo-ca.pem"),
                key = n.key_id,
                version = n.key_version,
                pass = dir.join("nexo-passphrase"),
            );
        }
        match (self.reader_tcp, self.zvt) {
            (true, false) => format!("{{ tcp = {:?} }}", self.reader_addr),
            (false, false) => format!("{{ device = {:?} }}", self.reader_link()),
            (true, true) => format!("{{ kind = \"zvt\", tcp = {:?}, t3_ms = 1000, t4_ms = 1500 }}", self.reader_addr),
            (false, true) => {
                format!("{{ kind = \"zvt\", device = {:?}, t3_ms = 1000, t4_ms = 1500 }}", self.reader_link())
            }
        }
    }

    pub fn posd_command(&self) -> Command {
        let mut cmd = Command::new(bin("posd"));
        cmd.arg("--config").arg(self.config_path()).env("RUST_LOG", "posd=debug,pos_link=debug");
        cmd.envs(self.posd_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub fn start_posd(&mut self) {
        self.start_posd_with(|_| {});
    }

    /// Starts posd with its command adjusted first (its limits, say).
    pub fn start_posd_with(&mut self, adjust: impl FnOnce(&mut Command)) {
        let mut cmd = self.posd_command();
        adjust(&mut cmd);
        let (p, addr) = Proc::start(cmd, &self.posd_log(), "posd listening on ");
        self.posd = Some(p);
        self.posd_addr = addr;
        self.metrics_addr = None;
    }

    /// Kills posd with SIGKILL: no shutdown path runs, as in a power cut.
    pub fn kill_posd(&mut self) {
        if let Some(mut p) = self.posd.take() {
            p.kill();
        }
    }

    /// Runs posd until it ends by itself (a failpoint it reaches at once,
    /// possibly before it prints its address) and returns the exit status.
    pub async fn run_posd_until_exit(&mut self) -> std::process::ExitStatus {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.posd_log()).unwrap();
        let mut child = self.posd_command().stdout(Stdio::null()).stderr(log).stdin(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("posd did not stop by itself");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The rest of posd's next stdout line starting with `prefix`.
    pub fn posd_line(&mut self, prefix: &str) -> Option<String> {
        self.posd.as_mut().expect("posd running").wait_line(prefix)
    }

    /// HOST:PORT of posd's metrics listener (the config's `[metrics] listen`)
    /// as posd printed it.
    pub fn metrics_addr(&mut self) -> String {
        if self.metrics_addr.is_none() {
            let url = self.posd_line("posd metrics on ").expect("posd serves metrics ([metrics] listen)");
            self.metrics_addr = Some(url.trim_start_matches("http://").trim_end_matches("/metrics").to_string());
        }
        self.metrics_addr.clone().unwrap()
    }

    /// GET `path` from posd's metrics listener; the whole HTTP answer.
    pub async fn metrics_get(&mut self, path: &str) -> String {
        self.metrics_request("GET", path).await
    }

    /// `method path` to posd's metrics listener; the whole HTTP answer (posd
    /// closes the connection after it).
    pub async fn metrics_request(&mut self, method: &str, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr()).await.unwrap();
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: posd\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        self.responses.push(answer.clone());
        answer
    }

    /// posd's exit status if it ended by itself; it is then no longer running.
    pub fn posd_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.posd.as_mut()?.child.try_wait().ok().flatten()?;
        self.posd = None;
        Some(status)
    }

    pub fn posd_pid(&self) -> u32 {
        self.posd.as_ref().expect("posd running").child.id()
    }

    /// Stops the gateway simulator (its ledger stays on disk).
    pub fn kill_gateway(&mut self) {
        self.gateway.kill();
    }

    /// Asks posd to stop, as systemd does: SIGTERM.
    pub fn terminate_posd(&self) {
        let (st, _, err) = run(Command::new("kill").args(["-TERM", &self.posd_pid().to_string()]));
        assert!(st.success(), "kill -TERM posd: {err}");
    }

    /// Waits for posd to end by itself (a failpoint, a signal) and returns
    /// its exit status. Async, so the test's own connections keep running.
    pub async fn wait_posd_exit(&mut self) -> std::process::ExitStatus {
        let mut p = self.posd.take().expect("posd running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = p.child.try_wait().expect("wait for posd") {
                return st;
            }
            assert!(Instant::now() < deadline, "posd did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn sync(&self) -> pb::SyncStatus {
        self.client().await.get_sync_status(pb::GetSyncStatusRequest {}).await.expect("sync status").into_inner()
    }

    /// All stored register events.
    pub async fn events(&self) -> Vec<pb::TerminalEvent> {
        events_from(&mut self.client().await, 0, None).await
    }

    /// Waits until a payment reaches `want`.
    pub async fn wait_status(&mut self, payment_id: &str, want: pb::PaymentStatus) -> pb::Payment {
        let mut client = self.client().await;
        let p = eventually(&format!("payment {payment_id} to be {want:?}"), async || {
            let p =
                client.get_payment(pb::GetPaymentRequest { payment_id: payment_id.into() }).await.ok()?.into_inner();
            (status(&p) == want).then_some(p)
        })
        .await;
        self.responses.push(format!("{p:?}"));
        p
    }

    /// Kills posd with SIGKILL and starts it again.
    pub fn restart_posd(&mut self) {
        self.kill_posd();
        self.start_posd();
    }

    pub async fn client(&self) -> PaymentTerminalClient<Channel> {
        if self.posd_addr.starts_with("unix:") {
            // tonic dials a `unix:PATH` endpoint itself.
            let endpoint = tonic::transport::Endpoint::from_shared(self.posd_addr.clone()).unwrap();
            return PaymentTerminalClient::new(endpoint.connect().await.expect("connect to posd"));
        }
        let url =
            if self.posd_addr.contains("://") { self.posd_addr.clone() } else { format!("http://{}", self.posd_addr) };
        let mut endpoint = Channel::from_shared(url).unwrap();
        if let Some(tls) = &self.api_tls {
            endpoint = endpoint.tls_config(tls.clone()).unwrap();
        }
        PaymentTerminalClient::new(endpoint.connect().await.expect("connect to posd"))
    }

    /// Waits until posd's reader link is up and posd has reached the gateway
    /// (so it is ready to take payments offline).
    pub async fn ready(&mut self) {
        self.reader_ready().await;
        let mut client = self.client().await;
        eventually("posd to reach the gateway", async || {
            let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
            s.last_online_at.is_some().then_some(())
        })
        .await;
    }

    /// Waits until posd's reader link is up.
    pub async fn reader_ready(&mut self) {
        let mut client = self.client().await;
        let status = eventually("the reader to connect", async || {
            let s = client
                .get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-1".into() })
                .await
                .ok()?
                .into_inner();
            (s.reader_connected && !s.reader_serial.is_empty()).then_some(s)
        })
        .await;
        self.responses.push(format!("{status:?}"));
    }

    /// Sets a gateway-sim fault through its command-line control client.
    pub fn fault(&self, fault: &str) {
        self.ctl(&std::iter::once("fault").chain(fault.split(' ')).collect::<Vec<_>>());
    }

    /// Runs `gateway-sim ctl --addr CONTROL <args>` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let (status, out, err) =
            run(Command::new(bin("gateway-sim")).args(["ctl", "--addr", &self.control_addr]).args(args));
        assert!(status.success(), "gateway-sim ctl {args:?}: {out}{err}");
        out
    }

    /// Runs posctl against this lane's posd.
    pub fn posctl(&mut self, args: &[&str]) -> (ExitStatus, String, String) {
        let r = run(Command::new(bin("posctl")).args(["--addr", &self.posd_addr]).args(&self.posctl_args).args(args));
        self.responses.push(r.1.clone());
        r
    }

    /// The gateway-sim ledger, through `gateway-sim ledger --json`.
    pub fn ledger(&self) -> Vec<serde_json::Value> {
        let (status, out, err) = run(Command::new(bin("gateway-sim"))
            .arg("ledger")
            .arg("--db")
            .arg(self.dir.path().join("ledger.db"))
            .arg("--json"));
        assert!(status.success(), "gateway-sim ledger: {err}");
        serde_json::from_str(&out).expect("ledger JSON")
    }

    /// Takes a payment through the API and returns every event of its stream.
    pub async fn pay(&mut self, key: &str, amount_minor: i64) -> Vec<pb::PaymentEvent> {
        let events = take(&mut self.client().await, key, amount_minor)
            .await
            .unwrap_or_else(|e| panic!("TakePayment {key} refused: {:?} {}", e.code(), e.message()));
        self.responses.push(format!("{events:?}"));
        events
    }

    /// Stops everything and fails the test if posd left a card number in its
    /// database files, its log, or any API response the test saw.
    pub fn finish(mut self) {
        if let Some(mut p) = self.posd.take() {
            p.kill();
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("posd.db")));
        assert!(files.iter().any(|p| p.ends_with("posd.db")), "posd.db not found in {:?}", self.state_dir());
        files.push(self.posd_log());
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert_eq!(card_numbers(&bytes), Vec::<String>::new(), "card number found in {}", f.display());
        }
        for r in &self.responses {
            assert_eq!(card_numbers(r.as_bytes()), Vec::<String>::new(), "card number in an API response: {r}");
        }
        drop(self.gateway);
    }
}

/// Register events after `from`: the stored backlog, then live ones until
/// `count` events arrived (or, without a count, until 300 ms pass quietly).
pub async fn events_from(
    client: &mut PaymentTerminalClient<Channel>,
    from: u64,
    count: Option<usize>,
) -> Vec<pb::TerminalEvent> {
    let mut stream = client.stream_events(pb::StreamEventsRequest { from_cursor: from }).await.unwrap().into_inner();
    let mut out = Vec::new();
    loop {
        if count.is_some_and(|c| out.len() >= c) {
            return out;
        }
        let wait = if count.is_some() { PATIENCE } else { Duration::from_millis(300) };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(e))) => out.push(e),
            Ok(_) => return out,
            Err(_) => {
                assert!(count.is_none(), "only {} of {:?} events arrived", out.len(), count);
                return out;
            }
        }
    }
}

/// Starts a payment and collects its events until the stream ends.
pub async fn take(
    client: &mut PaymentTerminalClient<Channel>,
    key: &str,
    amount_minor: i64,
) -> Result<Vec<pb::PaymentEvent>, tonic::Status> {
    let mut stream = client.take_payment(request(key, amount_minor)).await?.into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await? {
        events.push(ev);
    }
    Ok(events)
}

pub fn request(key: &str, amount_minor: i64) -> pb::TakePaymentRequest {
    pb::TakePaymentRequest {
        idempotency_key: key.into(),
        order_reference: format!("order-{key}"),
        amount: Some(pb::Money { amount_minor, currency: "EUR".into() }),
        terminal_id: "lane-1".into(),
        capture_mode: pb::CaptureMode::Automatic as i32,
    }
}

/// A refund of `amount_minor` of a payment under the register's `key`.
pub fn refund_request(key: &str, payment_id: &str, amount_minor: i64) -> pb::RefundPaymentRequest {
    pb::RefundPaymentRequest {
        idempotency_key: key.into(),
        payment_id: payment_id.into(),
        amount_minor,
        reason: String::new(),
    }
}

/// The payment in the last event of a stream.
pub fn final_payment(events: &[pb::PaymentEvent]) -> pb::Payment {
    events.last().and_then(|e| e.payment.clone()).expect("a final event with the payment")
}

pub fn status(p: &pb::Payment) -> pb::PaymentStatus {
    pb::PaymentStatus::try_from(p.status).unwrap()
}

/// Every Luhn-valid run of 13 to 19 ASCII digits in `bytes`.
pub fn card_numbers(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    for &b in bytes.iter().chain(std::iter::once(&b' ')) {
        if b.is_ascii_digit() {
            run.push(b as char);
            continue;
        }
        if (13..=19).contains(&run.len()) && pos_mask::luhn_valid(&run) {
            found.push(run.clone());
        }
        run.clear();
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_leak_scan_finds_card_numbers_and_ignores_other_numbers() {
        assert_eq!(super::card_numbers(b"pan=4242424242424242;"), vec!["4242424242424242"]);
        assert_eq!(super::card_numbers(b"4242424242424242D3012"), vec!["4242424242424242"]);
        assert!(super::card_numbers(b"4242424242424241 1234 424242******4242").is_empty());
    }
}
