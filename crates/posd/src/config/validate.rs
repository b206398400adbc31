//! The rules a configuration must meet to start posd: [`Config::problems`],
//! each problem with the settings it is about and its fix, which start-up
//! and `posd check-config` both judge by; the gateway URL's and the metrics
//! address's rules, which the `--gateway` and `--metrics` overrides meet too.

use std::path::Path;
use std::time::Duration;

use super::duration::show;
use super::model::{
    Config, DEFAULT_NEXO_ANSWER_TIMEOUT, DEFAULT_NEXO_CONNECT_TIMEOUT, FileRef, LaneConfig, LaneOfflineConfig,
    MAX_PASSPHRASE_FILE, OfflineConfig, PrinterConfig, ReaderConfig, default_connect_timeout_ms,
    default_request_timeout_ms, passphrase_text,
};
use crate::nexo::line::{is_loopback_host, parse_url};
use crate::nexo::terminal::check_poi_id;

impl Config {
    /// A warning when `capture_window` is set shorter than an hour: card
    /// schemes give days, so authorizations would be reversed very soon.
    pub fn short_capture_window(&self) -> Option<String> {
        let w = self.capture_window.0;
        (!w.is_zero() && w < Duration::from_secs(3600)).then(|| {
            format!(
                "capture_window is {w:?}: a manual-capture payment not captured that soon is reversed, \
                 while card schemes allow days"
            )
        })
    }

    /// Refuses a configuration posd cannot run with, naming every problem
    /// and its fix (without places: see [`Config::load`] for those).
    pub fn validate(&self) -> anyhow::Result<()> {
        let errors: Vec<String> =
            self.problems().into_iter().map(|p| format!("{}\n  fix: {}", p.message, p.fix)).collect();
        if errors.is_empty() { Ok(()) } else { Err(error_list(errors)) }
    }

    /// Every reason this configuration cannot start posd; empty when it can.
    /// Start-up ([`Config::load`], [`Config::validate`]) and `posd
    /// check-config` both judge by this list.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.check_top(&mut p);
        self.check_lanes(&mut p);
        self.check_offline(&mut p);
        self.check_gateway(&mut p);
        self.check_api(&mut p);
        self.check_files(&mut p);
        p.0
    }

    fn check_top(&self, p: &mut Problems) {
        if self.state_dir.exists() && !self.state_dir.is_dir() {
            p.add(
                key(&["state_dir"]),
                format!("state_dir {} exists and is not a directory", self.state_dir.display()),
                "point state_dir at a directory (posd creates a missing one at start), or move the file out of the way",
            );
        }
        if self.stop_timeout.0.is_zero() {
            p.add(
                key(&["stop_timeout"]),
                "stop_timeout is 0s: payments in progress would get no time to finish when posd stops",
                "give a few seconds, e.g. \"15s\" (the default; keep it well below the unit's TimeoutStopSec=30s)",
            );
        }
        let card = self.card_timeout.0;
        if card < Duration::from_secs(1) || card > Duration::from_secs(600) {
            p.add(
                key(&["card_timeout"]),
                format!("card_timeout must be 1s to 10min (how long a payment waits for the card), not {}", show(card)),
                "give a duration from \"1s\" to \"10m\", e.g. \"120s\" (the default)",
            );
        }
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(&self.log.level)) {
            p.add(
                key(&["log", "level"]),
                format!("[log] level {:?} is not a log level", self.log.level),
                "write one of error, warn, info, debug or trace (finer filters go in RUST_LOG)",
            );
        }
        if let Some(m) = &self.metrics.listen
            && !is_loopback_addr(m)
        {
            p.add(
                key(&["metrics", "listen"]),
                format!("[metrics] listen must be a loopback HOST:PORT such as 127.0.0.1:9464, not {m:?}"),
                "give a loopback address and port, e.g. \"127.0.0.1:9464\", or remove the key for no metrics",
            );
        }
        if let Err(e) = crate::report::ReportSettings::new(&self.report.time_zone, "00:00") {
            p.add(
                key(&["report", "time_zone"]),
                e.to_string(),
                "give an IANA time zone name, e.g. \"Europe/Berlin\" or \"UTC\"",
            );
        }
        if let Err(e) = crate::report::ReportSettings::new("UTC", &self.report.cutover) {
            p.add(
                key(&["report", "cutover"]),
                e.to_string(),
                "write the local time a business day starts as HH:MM, e.g. \"04:00\"",
            );
        }
    }

    fn check_lanes(&self, p: &mut Problems) {
        if self.lanes.is_empty() {
            p.add(
                key(&["lane"]),
                "no [[lane]] configured",
                "add a [[lane]] table with id, currency and reader for each checkout (see systemd/posd.toml)",
            );
        }
        let mut ids: std::collections::HashMap<&str, usize> = Default::default();
        let mut claims: Vec<Claim> = Vec::new();
        for (i, lane) in self.lanes.iter().enumerate() {
            let name = lane_name(lane, i);
            if lane.id.is_empty() {
                p.add(
                    lane_key(i, &["id"]),
                    format!("lane {name}: id is empty"),
                    "give each lane a short unique name, e.g. \"lane-1\"",
                );
            } else if lane.id.chars().any(pos_mask::is_unsafe_char) {
                p.add(
                    lane_key(i, &["id"]),
                    format!("lane {name}: id {:?} contains a control character or an invisible one", lane.id),
                    "write the id with letters, digits, '-' and '_', e.g. \"lane-1\"",
                );
            } else if let Some(&first) = ids.get(lane.id.as_str()) {
                p.add_with(
                    lane_key(i, &["id"]),
                    lane_key(first, &["id"]),
                    format!("lane {} is configured twice ([[lane]] #{} and #{})", lane.id, first + 1, i + 1),
                    "give each [[lane]] its own id",
                );
            } else {
                ids.insert(lane.id.as_str(), i);
            }
            let currency_ok = pos_engine::money::exponent(&lane.currency).is_some();
            if !currency_ok {
                p.add(
                    lane_key(i, &["currency"]),
                    format!("lane {name}: currency must be an ISO 4217 code such as EUR, not {:?}", lane.currency),
                    currency_fix(&lane.currency),
                );
            }
            check_lane_offline(p, i, &name, &lane.offline);
            check_reader(p, i, &name, lane, currency_ok);
            if let Some(printer) = &lane.printer {
                check_printer(p, i, &name, &lane.id, printer);
            }
            for claim in lane_claims(i, &name, lane) {
                if let Some(first) = claims.iter().find(|c| c.device == claim.device) {
                    let message = if first.lane == i {
                        format!("lane {name}: the {} and the {} are both on {}", first.role, claim.role, claim.shown)
                    } else {
                        format!(
                            "lane {name}: the {} is on {}, which lane {} already uses for its {}",
                            claim.role, claim.shown, first.name, first.role
                        )
                    };
                    p.add_with(
                        claim.key.clone(),
                        first.key.clone(),
                        message,
                        "give every reader and printer its own device: its own serial port, USB printer or HOST:PORT",
                    );
                }
                claims.push(claim);
            }
        }
    }

    fn check_offline(&self, p: &mut Problems) {
        let o = &self.offline;
        let d = OfflineConfig::default();
        let retry = "forwarding would retry without a pause after a link error";
        for (k, value, default, why) in [
            ("alert_after", o.alert_after, d.alert_after, "every offline payment would raise the age alert at once"),
            ("stop_after", o.stop_after, d.stop_after, "no payment could ever be taken offline"),
            ("expire_after", o.expire_after, d.expire_after, "offline payments would expire before they are forwarded"),
            ("retry_first", o.retry_first, d.retry_first, retry),
            ("retry_max", o.retry_max, d.retry_max, retry),
            (
                "health_interval",
                o.health_interval,
                d.health_interval,
                "the gateway's reachability cannot be checked every 0s",
            ),
            (
                "ageing_interval",
                o.ageing_interval,
                d.ageing_interval,
                "the offline queue's age cannot be checked every 0s",
            ),
        ] {
            if value.0.is_zero() {
                p.add(
                    key(&["offline", k]),
                    format!("[offline] {k} is 0s: {why}"),
                    format!("give a positive duration, e.g. \"{}\" (the default)", show(default.0)),
                );
            }
        }
        let order = "alert_after <= stop_after <= expire_after must hold: the age alert comes first, then posd stops \
                     taking offline payments, then unsent ones expire";
        if o.alert_after.0 > o.stop_after.0 {
            p.add_with(
                key(&["offline", "alert_after"]),
                key(&["offline", "stop_after"]),
                format!(
                    "[offline] alert_after ({}) is later than stop_after ({})",
                    show(o.alert_after.0),
                    show(o.stop_after.0)
                ),
                order,
            );
        }
        if o.stop_after.0 > o.expire_after.0 {
            p.add_with(
                key(&["offline", "stop_after"]),
                key(&["offline", "expire_after"]),
                format!(
                    "[offline] stop_after ({}) is later than expire_after ({})",
                    show(o.stop_after.0),
                    show(o.expire_after.0)
                ),
                order,
            );
        }
        if o.retry_first.0 > o.retry_max.0 {
            p.add_with(
                key(&["offline", "retry_first"]),
                key(&["offline", "retry_max"]),
                format!(
                    "[offline] retry_first ({}) is longer than retry_max ({})",
                    show(o.retry_first.0),
                    show(o.retry_max.0)
                ),
                "retry_first is the first wait after a link error and retry_max the longest: make retry_first at \
                 most retry_max",
            );
        }
        if o.batch_size == 0 || o.batch_size > 1000 {
            p.add(
                key(&["offline", "batch_size"]),
                format!("[offline] batch_size must be 1 to 1000, not {}", o.batch_size),
                "give how many payments one forwarding call carries, e.g. 200 (the default)",
            );
        }
    }

    fn check_gateway(&self, p: &mut Problems) {
        let g = &self.gateway;
        let https = match check_gateway_url(&g.url) {
            Ok(https) => Some(https),
            Err((why, fix)) => {
                p.add(key(&["gateway", "url"]), format!("[gateway] url {:?}: {why}", g.url), fix);
                None
            }
        };
        for (k, ms, default) in [
            ("connect_timeout_ms", g.connect_timeout_ms, default_connect_timeout_ms()),
            ("request_timeout_ms", g.request_timeout_ms, default_request_timeout_ms()),
        ] {
            if ms == 0 {
                p.add(
                    key(&["gateway", k]),
                    format!("[gateway] {k} is 0: every gateway call would time out at once"),
                    format!("give the timeout in milliseconds, e.g. {default} (the default)"),
                );
            }
        }
        if g.client_cert_file.is_some() != g.client_key_file.is_some() {
            let (set, unset) = if g.client_cert_file.is_some() {
                ("client_cert_file", "client_key_file")
            } else {
                ("client_key_file", "client_cert_file")
            };
            p.add(
                key(&["gateway", set]),
                format!("[gateway] {set} is set without {unset}: client_cert_file and client_key_file go together"),
                format!("give both or neither: add {unset}, or remove {set}"),
            );
        }
        if https == Some(false) {
            for (k, set) in [
                ("ca_file", g.ca_file.is_some()),
                ("client_cert_file", g.client_cert_file.is_some()),
                ("client_key_file", g.client_key_file.is_some()),
            ] {
                if set {
                    p.add_with(
                        key(&["gateway", k]),
                        key(&["gateway", "url"]),
                        format!("[gateway] {k} applies to an https:// url only, not to {:?}", g.url),
                        "use an https:// url, or remove the key",
                    );
                }
            }
        }
    }

    fn check_api(&self, p: &mut Problems) {
        if self.listen.starts_with("unix:") {
            if self.api.tls.is_some() {
                p.add_with(
                    key(&["api", "tls"]),
                    key(&["listen"]),
                    format!("[api.tls] applies to a TCP listen address, not {:?}", self.listen),
                    "remove [api.tls], or listen on HOST:PORT (e.g. \"0.0.0.0:50051\") for registers on other machines",
                );
            }
        } else {
            match self.listen.parse::<std::net::SocketAddr>() {
                Err(e) => p.add(
                    key(&["listen"]),
                    format!("listen {:?}: expected HOST:PORT or unix:PATH ({e})", self.listen),
                    "write unix:/run/posd/posd.sock (the default) or an IP address and port, e.g. 127.0.0.1:50051",
                ),
                Ok(addr) if self.api.tls.is_none() && !addr.ip().is_loopback() => p.add(
                    key(&["listen"]),
                    format!(
                        "listen {addr}: the register API beyond loopback needs [api.tls] (server certificate, \
                         key and the CA of the registers' client certificates), or listen on unix:PATH"
                    ),
                    "add [api.tls] (docs/tls.md shows how to issue the certificates), or listen on loopback or unix:PATH",
                ),
                Ok(_) => {}
            }
        }
        if !(1..=65_536).contains(&self.api.max_connections) {
            p.add(
                key(&["api", "max_connections"]),
                format!("[api] max_connections must be 1 to 65536, not {}", self.api.max_connections),
                "give the most connections the register API may have open at once, e.g. 256 (the default)",
            );
        }
        if self.api.max_streams == 0 {
            p.add(
                key(&["api", "max_streams"]),
                "[api] max_streams is 0: no request could ever be served",
                "give the most requests one connection may have in progress, e.g. 100 (the default)",
            );
        }
        for (name, span) in
            [("handshake_timeout", self.api.handshake_timeout), ("keepalive_interval", self.api.keepalive_interval)]
        {
            if span.0.is_zero() {
                p.add(
                    key(&["api", name]),
                    format!("[api] {name} is 0s"),
                    "give a duration such as \"10s\" (handshake_timeout) or \"30s\" (keepalive_interval)",
                );
            }
        }
        for entry in &self.api.refunds_allowed_from {
            if let Some((why, fix)) = caller_entry_problem(entry) {
                p.add(
                    key(&["api", "refunds_allowed_from"]),
                    format!("[api] refunds_allowed_from: {entry:?} {why}"),
                    fix,
                );
            }
        }
    }

    /// Each file's form; and, where the file can be read here, that it is
    /// the PEM its key needs. A file that cannot be read (a credential
    /// outside the service, say) is skipped: check-config warns about it.
    fn check_files(&self, p: &mut Problems) {
        for FileSetting { label, at, file, holds } in self.file_settings() {
            if let Err(e) = file.check_form(&label) {
                p.add(
                    at,
                    e.to_string(),
                    "give an absolute path, or credential:NAME for a file systemd's LoadCredential= hands posd \
                     (the only way for secrets)",
                );
                continue;
            }
            let Some(path) = file.installed_path() else { continue };
            let problem = match holds {
                Holds::Passphrase => passphrase_problem(&path),
                Holds::PrivateKey => pem_problem(&path, true),
                Holds::Certificates => pem_problem(&path, false),
            };
            if let Some(why) = problem {
                p.add(
                    at,
                    format!("{label}: {} {why}", path.display()),
                    if holds == Holds::Passphrase {
                        "give the passphrase set up on the terminal as ASCII text in a file of its own (one final \
                         line break is allowed)"
                    } else if holds == Holds::PrivateKey {
                        "give the private key as unencrypted PEM (-----BEGIN PRIVATE KEY-----), e.g. converted with \
                         `openssl pkey -in KEY -out KEY.pem`"
                    } else {
                        "give the certificates as PEM (-----BEGIN CERTIFICATE-----), e.g. converted from DER with \
                         `openssl x509 -inform der -in CERT -out CERT.pem`"
                    },
                );
            }
        }
    }

    /// Every file the configuration names: its name in messages, its key,
    /// the file and what it holds.
    pub(super) fn file_settings(&self) -> Vec<FileSetting<'_>> {
        let g = &self.gateway;
        let mut files = Vec::new();
        for (label, name, file, holds) in [
            ("[gateway] ca_file", "ca_file", &g.ca_file, Holds::Certificates),
            ("[gateway] client_cert_file", "client_cert_file", &g.client_cert_file, Holds::Certificates),
            ("[gateway] client_key_file", "client_key_file", &g.client_key_file, Holds::PrivateKey),
        ] {
            if let Some(f) = file {
                files.push(FileSetting { label: label.into(), at: key(&["gateway", name]), file: f, holds });
            }
        }
        if let Some(t) = &self.api.tls {
            for (label, name, file, holds) in [
                ("[api.tls] cert_file", "cert_file", &t.cert_file, Holds::Certificates),
                ("[api.tls] key_file", "key_file", &t.key_file, Holds::PrivateKey),
                ("[api.tls] client_ca_file", "client_ca_file", &t.client_ca_file, Holds::Certificates),
            ] {
                files.push(FileSetting { label: label.into(), at: key(&["api", "tls", name]), file, holds });
            }
        }
        for (i, lane) in self.lanes.iter().enumerate().filter(|(_, l)| l.reader.kind == "nexo") {
            let name = lane_name(lane, i);
            let r = &lane.reader;
            for (k, file, holds) in [
                ("ca_file", &r.ca_file, Holds::Certificates),
                ("passphrase_file", &r.passphrase_file, Holds::Passphrase),
            ] {
                if let Some(f) = file {
                    let (label, at) = (format!("lane {name}: reader {k}"), lane_key(i, &["reader", k]));
                    files.push(FileSetting { label, at, file: f, holds });
                }
            }
        }
        files
    }

    /// Every file the configuration names, with its key.
    pub fn files(&self) -> Vec<(String, &FileRef)> {
        self.file_settings().into_iter().map(|f| (f.label, f.file)).collect()
    }
}

/// A file the configuration names (see [`Config::file_settings`]).
pub(super) struct FileSetting<'a> {
    /// Its name in messages, e.g. `[gateway] ca_file`.
    pub(super) label: String,
    pub(super) at: Vec<Seg>,
    pub(super) file: &'a FileRef,
    pub(super) holds: Holds,
}

/// What a file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holds {
    Certificates,
    PrivateKey,
    /// A nexo key's passphrase: ASCII text.
    Passphrase,
}

/// The log levels `[log] level` takes (in any case).
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The largest certificate or key file posd reads to check its PEM.
const MAX_PEM_FILE: u64 = 4 << 20;

/// One step of a setting's place in the file: a key, or the n-th (from 0)
/// table of an array of tables such as `[[lane]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A reason a configuration cannot start posd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting it is about (check-config points there), then any other
    /// setting involved.
    pub keys: Vec<Vec<Seg>>,
    /// What is wrong, naming the setting.
    pub message: String,
    /// How to correct it.
    pub fix: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, at: Vec<Seg>, message: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem { keys: vec![at], message: message.into(), fix: fix.into() });
    }

    /// A problem that also involves the setting `other`.
    fn add_with(&mut self, at: Vec<Seg>, other: Vec<Seg>, message: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem { keys: vec![at, other], message: message.into(), fix: fix.into() });
    }
}

/// A key path from the top of the file, e.g. `key(&["offline", "retry_max"])`.
pub(super) fn key(parts: &[&'static str]) -> Vec<Seg> {
    parts.iter().copied().map(Seg::Key).collect()
}

/// A key path in the `i`-th `[[lane]]`.
pub(super) fn lane_key(i: usize, parts: &[&'static str]) -> Vec<Seg> {
    let mut path = vec![Seg::Key("lane"), Seg::Index(i)];
    path.extend(parts.iter().copied().map(Seg::Key));
    path
}

/// A lane as messages name it: its id, or its place when the id is unusable.
fn lane_name(lane: &LaneConfig, i: usize) -> String {
    if lane.id.is_empty() || lane.id.chars().any(pos_mask::is_unsafe_char) {
        format!("#{}", i + 1)
    } else {
        lane.id.clone()
    }
}

fn currency_fix(code: &str) -> String {
    let upper = code.trim().to_ascii_uppercase();
    if upper != code && pos_engine::money::exponent(&upper).is_some() {
        format!("write the code in capitals: \"{upper}\"")
    } else {
        "write the three-letter code of an active ISO 4217 currency, e.g. \"EUR\", \"USD\" or \"GBP\"".into()
    }
}

fn check_lane_offline(p: &mut Problems, i: usize, name: &str, o: &LaneOfflineConfig) {
    for (k, limit) in [("max_payment_minor", o.max_payment_minor), ("max_total_minor", o.max_total_minor)] {
        if let Some(v) = limit
            && v < 0
        {
            p.add(
                lane_key(i, &["offline", k]),
                format!("lane {name}: [lane.offline] {k} is {v}; a limit cannot be negative"),
                "give the limit in minor units of the lane's currency (1000 = 10.00 EUR), 0 or more",
            );
        }
    }
    if let Some(r) = o.readiness
        && r.0.is_zero()
    {
        p.add(
            lane_key(i, &["offline", "readiness"]),
            format!("lane {name}: [lane.offline] readiness is 0s, so no payment could ever be approved offline"),
            "give how recently the gateway must have answered, e.g. \"30d\" (the default); to take no offline \
             payments set enabled = false",
        );
    }
    for c in o.currencies.iter().flatten() {
        if pos_engine::money::exponent(c).is_none() {
            p.add(
                lane_key(i, &["offline", "currencies"]),
                format!("lane {name}: [lane.offline] currencies lists {c:?}, which is not an ISO 4217 code"),
                currency_fix(c),
            );
        }
    }
}

/// The reader's settings one by one, then whatever else the lane's start
/// would refuse ([`ReaderConfig::device`](super::ReaderConfig::device)).
fn check_reader(p: &mut Problems, i: usize, name: &str, lane: &LaneConfig, currency_ok: bool) {
    let r = &lane.reader;
    let before = p.0.len();
    let at = |k: &'static str| lane_key(i, &["reader", k]);
    let nexo = r.kind == "nexo";
    if nexo {
        check_nexo(p, i, name, r);
    } else {
        match (&r.device, &r.tcp) {
            (Some(_), Some(_)) => p.add(
                at("tcp"),
                format!("lane {name}: reader needs exactly one of `device` (serial) or `tcp`, not both"),
                "keep one: device for a reader on a serial port, tcp for one on the network",
            ),
            (None, None) => p.add(
                lane_key(i, &["reader"]),
                format!("lane {name}: reader needs exactly one of `device` (serial) or `tcp`"),
                "add device = \"/dev/pos/lane1-reader\" (serial) or tcp = \"HOST:PORT\"",
            ),
            _ => {}
        }
        if let Some(a) = &r.tcp
            && let Err(why) = host_port(a)
        {
            p.add(
                at("tcp"),
                format!("lane {name}: reader tcp {a:?} {why}"),
                "write the reader's address as HOST:PORT, e.g. \"192.0.2.10:20007\"",
            );
        }
        for (k, set) in nexo_keys(r) {
            if set {
                p.add(
                    at(k),
                    format!("lane {name}: reader {k} applies to kind = \"nexo\" only"),
                    "remove it, or set kind = \"nexo\" when the lane's card device is a nexo payment terminal",
                );
            }
        }
    }
    match r.kind.as_str() {
        "reader" | "nexo" => {
            for (k, set) in
                [("password", r.password.is_some()), ("t3_ms", r.t3_ms.is_some()), ("t4_ms", r.t4_ms.is_some())]
            {
                if set {
                    p.add(
                        at(k),
                        format!("lane {name}: reader {k} applies to kind = \"zvt\" only"),
                        "remove it, or set kind = \"zvt\" when the lane's card device is a ZVT payment terminal",
                    );
                }
            }
        }
        "zvt" => {
            if let Some(pw) = r.password
                && pos_zvt::message::password(pw).is_none()
            {
                p.add(
                    at("password"),
                    format!("lane {name}: the ZVT password {pw} has more than 6 digits"),
                    "give the terminal's password, at most 6 digits (default 123456)",
                );
            }
            let t3 = r.t3_ms.unwrap_or(5_000);
            let t4 = r.t4_ms.unwrap_or(180_000);
            if t3 == 0 {
                p.add(
                    at("t3_ms"),
                    format!("lane {name}: reader t3_ms is 0"),
                    "give T3, the wait for the terminal's acknowledgement, in milliseconds, e.g. 5000 (the default)",
                );
            }
            if t4 == 0 || t4 < t3 {
                p.add_with(
                    at("t4_ms"),
                    at("t3_ms"),
                    format!("lane {name}: reader t4_ms is {t4}; it must be positive and at least t3_ms ({t3})"),
                    "give T4, the wait for a command's end, in milliseconds, at least t3_ms, e.g. 180000 (the default)",
                );
            }
        }
        other => p.add(
            at("kind"),
            format!("lane {name}: reader kind must be \"reader\" or \"zvt\" or \"nexo\", not {other:?}"),
            "write kind = \"reader\" for a card reader posd authorizes for, \"zvt\" for a ZVT payment terminal \
             or \"nexo\" for a nexo (Adyen Terminal API) one",
        ),
    }
    // A nexo terminal's start reads its secrets: its settings were judged
    // one by one above, and its files with the others (`check_files`).
    if p.0.len() == before
        && currency_ok
        && !nexo
        && let Err(e) = r.device(&lane.id, &lane.currency)
    {
        let message = e.to_string();
        if message.contains("ISO") {
            p.add(
                lane_key(i, &["currency"]),
                message,
                "a ZVT lane needs a currency ZVT can carry, e.g. EUR, CHF, GBP or USD",
            );
        } else {
            p.add(lane_key(i, &["reader"]), message, "correct the reader's settings as the message says");
        }
    }
}

/// The settings only a nexo reader takes, and whether each is set.
fn nexo_keys(r: &ReaderConfig) -> [(&'static str, bool); 8] {
    [
        ("url", r.url.is_some()),
        ("poi_id", r.poi_id.is_some()),
        ("ca_file", r.ca_file.is_some()),
        ("key_id", r.key_id.is_some()),
        ("key_version", r.key_version.is_some()),
        ("passphrase_file", r.passphrase_file.is_some()),
        ("connect_timeout", r.connect_timeout.is_some()),
        ("answer_timeout", r.answer_timeout.is_some()),
    ]
}

/// A nexo terminal's settings one by one, as its start judges them
/// ([`ReaderConfig::nexo`]); what its files hold is judged with the other
/// files ([`Config::check_files`]).
fn check_nexo(p: &mut Problems, i: usize, name: &str, r: &ReaderConfig) {
    let at = |k: &'static str| lane_key(i, &["reader", k]);
    let reader = || lane_key(i, &["reader"]);
    for (k, set) in [("device", r.device.is_some()), ("tcp", r.tcp.is_some())] {
        if set {
            p.add(
                at(k),
                format!(
                    "lane {name}: reader {k} does not apply to kind = \"nexo\": the terminal is reached at its url"
                ),
                "remove it; give the terminal's address as url = \"https://HOST:8443/nexo\"",
            );
        }
    }
    match &r.url {
        None => p.add(
            reader(),
            format!("lane {name}: reader kind = \"nexo\" needs url, the terminal's address"),
            "add url = \"https://HOST:8443/nexo\" with the terminal's address, e.g. \"https://192.0.2.30:8443/nexo\"",
        ),
        Some(url) => match parse_url(url) {
            Err(why) => p.add(
                at("url"),
                format!("lane {name}: reader url {why}"),
                "write the terminal's address as https://HOST:8443/nexo, e.g. \"https://192.0.2.30:8443/nexo\"",
            ),
            Ok((host, _, _)) if r.passphrase_file.is_none() && !is_loopback_host(&host) => p.add(
                at("url"),
                format!(
                    "lane {name}: without passphrase_file posd would speak to the terminal at {host} unencrypted, \
                     which it does only on this machine (127.0.0.0/8, ::1, localhost)"
                ),
                "give passphrase_file, key_id and key_version as the shared key is set up on the terminal",
            ),
            Ok(_) => {}
        },
    }
    match &r.poi_id {
        None => p.add(
            reader(),
            format!("lane {name}: reader kind = \"nexo\" needs poi_id, the terminal's POIID"),
            "add poi_id = \"<model>-<serial>\" as the terminal shows it, e.g. \"V400m-324688179\"",
        ),
        Some(id) => {
            if let Err(why) = check_poi_id(id) {
                p.add(
                    at("poi_id"),
                    format!("lane {name}: reader poi_id {id:?} {why}"),
                    "write the POIID as the terminal shows it, e.g. \"V400m-324688179\"",
                );
            }
        }
    }
    if r.ca_file.is_none() {
        p.add(
            reader(),
            format!("lane {name}: reader kind = \"nexo\" needs ca_file, the CA that signs the terminal's certificate"),
            "add ca_file = \"/etc/posd/nexo-ca.pem\" with the payment provider's terminal CA (PEM)",
        );
    }
    match &r.key_id {
        Some(id) if id.is_empty() => p.add(
            at("key_id"),
            format!("lane {name}: reader key_id is empty"),
            "give the shared key's identifier as set up on the terminal",
        ),
        None if r.passphrase_file.is_some() => p.add(
            reader(),
            format!("lane {name}: reader passphrase_file needs key_id, the shared key's identifier"),
            "add key_id and key_version as the shared key is set up on the terminal",
        ),
        _ => {}
    }
    if r.key_version == Some(0) {
        p.add(
            at("key_version"),
            format!("lane {name}: reader key_version is 0; key versions start at 1"),
            "give the shared key's version as set up on the terminal, e.g. 1",
        );
    }
    for (k, span, default) in [
        ("connect_timeout", r.connect_timeout, DEFAULT_NEXO_CONNECT_TIMEOUT),
        ("answer_timeout", r.answer_timeout, DEFAULT_NEXO_ANSWER_TIMEOUT),
    ] {
        if span.is_some_and(|s| s.0.is_zero()) {
            p.add(
                at(k),
                format!("lane {name}: reader {k} is 0s"),
                format!("give a positive duration, e.g. \"{}\" (the default)", show(default)),
            );
        }
    }
}

/// Why a passphrase file is not what a nexo key needs, as the end of a
/// sentence; `None` when it is, or when it cannot be read here.
fn passphrase_problem(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some("is not a regular file".into());
    }
    if meta.len() > MAX_PASSPHRASE_FILE {
        return Some(format!("has {} bytes: far too many for a passphrase", meta.len()));
    }
    passphrase_text(&std::fs::read(path).ok()?).err()
}

/// The printer's settings one by one, then whatever else the lane's start
/// would refuse ([`PrinterConfig::line`](super::PrinterConfig::line)).
fn check_printer(p: &mut Problems, i: usize, name: &str, id: &str, printer: &PrinterConfig) {
    let before = p.0.len();
    let at = |k: &'static str| lane_key(i, &["printer", k]);
    if pos_escpos::Width::from_columns(printer.columns).is_none() {
        p.add(
            at("columns"),
            format!("lane {name}: printer columns must be 32, 42 or 48, not {}", printer.columns),
            "give 32 for 58 mm paper, 42 or 48 for 80 mm (48 is the default)",
        );
    }
    let lines = [printer.device.is_some(), printer.usb.is_some(), printer.tcp.is_some()];
    if lines.into_iter().filter(|set| *set).count() != 1 {
        p.add(
            lane_key(i, &["printer"]),
            format!("lane {name}: printer needs exactly one of `device` (serial), `usb` or `tcp`"),
            "keep the one the printer is on: device = \"/dev/pos/lane1-printer\", usb = \"/dev/usb/lp0\" or \
             tcp = \"HOST:PORT\"",
        );
    }
    if printer.device.is_some() && !["xon-xoff", "rts-cts", "none"].contains(&printer.flow_control.as_str()) {
        p.add(
            at("flow_control"),
            format!(
                "lane {name}: printer flow_control must be xon-xoff, rts-cts or none, not {:?}",
                printer.flow_control
            ),
            "write \"xon-xoff\" (the default), \"rts-cts\" or \"none\", as the printer is set up",
        );
    }
    if let Some(a) = &printer.tcp
        && let Err(why) = host_port(a)
    {
        p.add(
            at("tcp"),
            format!("lane {name}: printer tcp {a:?} {why}"),
            "write the printer's address as HOST:PORT, e.g. \"192.0.2.20:9100\"",
        );
    }
    if p.0.len() == before
        && let Err(e) = printer.line(id)
    {
        p.add(lane_key(i, &["printer"]), e.to_string(), "correct the printer's settings as the message says");
    }
}

/// Where metrics may be served (`[metrics] listen`, `--metrics`): a
/// loopback address and port, `HOST:PORT` (port 0: any free port).
pub(super) fn is_loopback_addr(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
}

/// Checks a `HOST:PORT` (an IPv6 host in brackets); why not, as the end of a sentence.
fn host_port(addr: &str) -> Result<(), &'static str> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("is not HOST:PORT: the :PORT is missing");
    };
    if host.is_empty() {
        return Err("is not HOST:PORT: the host is missing");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("is not HOST:PORT: an IPv6 host goes in brackets, e.g. [2001:db8::10]:20007");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("is not HOST:PORT: the port must be 1 to 65535"),
    }
}

/// A device a lane's reader or printer is on.
struct Claim {
    /// The device, comparable: `file:` and the resolved path, or `tcp:` and the address.
    device: String,
    /// As the file writes it.
    shown: String,
    key: Vec<Seg>,
    /// "reader" or "printer".
    role: &'static str,
    /// The lane's index and name.
    lane: usize,
    name: String,
}

fn lane_claims(i: usize, name: &str, lane: &LaneConfig) -> Vec<Claim> {
    let file =
        |path: &Path| format!("file:{}", std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display());
    let tcp = |addr: &str| {
        let canonical = addr.parse::<std::net::SocketAddr>().map(|a| a.to_string());
        format!("tcp:{}", canonical.unwrap_or_else(|_| addr.to_ascii_lowercase()))
    };
    let claim = |device: String, shown: String, role: &'static str, k: &'static str| Claim {
        device,
        shown,
        key: lane_key(i, &[role, k]),
        role,
        lane: i,
        name: name.to_string(),
    };
    let mut claims = Vec::new();
    if let Some(d) = &lane.reader.device {
        claims.push(claim(file(d.as_path()), d.display().to_string(), "reader", "device"));
    }
    if let Some(a) = &lane.reader.tcp {
        claims.push(claim(tcp(a.as_str()), a.clone(), "reader", "tcp"));
    }
    if let Some(pr) = &lane.printer {
        if let Some(d) = &pr.device {
            claims.push(claim(file(d.as_path()), d.display().to_string(), "printer", "device"));
        }
        if let Some(u) = &pr.usb {
            claims.push(claim(file(u.as_path()), u.display().to_string(), "printer", "usb"));
        }
        if let Some(a) = &pr.tcp {
            claims.push(claim(tcp(a.as_str()), a.clone(), "printer", "tcp"));
        }
    }
    claims
}

/// Why an `[api] refunds_allowed_from` entry can never match a caller (the
/// end of a sentence), and the fix. posd matches callers as "uid=N",
/// "cn=NAME" and "ip=ADDR", written exactly as [`crate::api::caller`] does.
fn caller_entry_problem(entry: &str) -> Option<(String, String)> {
    let forms = "write each caller as \"uid=N\" (Unix socket peer), \"cn=NAME\" (TLS client certificate) or \
                 \"ip=ADDR\" (plain TCP peer)";
    match entry.split_once('=') {
        Some(("uid", n)) => match n.parse::<u32>() {
            Ok(uid) if uid.to_string() == n => None,
            Ok(uid) => {
                Some((format!("never matches: posd writes that user as uid={uid}"), format!("write \"uid={uid}\"")))
            }
            Err(_) => Some((
                format!("names no numeric user id ({n:?})"),
                "write the register's numeric uid, e.g. \"uid=1001\" (`id -u USER` shows it)".into(),
            )),
        },
        Some(("ip", a)) => match a.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.to_string() == a => None,
            Ok(ip) => {
                Some((format!("never matches: posd writes that address as ip={ip}"), format!("write \"ip={ip}\"")))
            }
            Err(_) => Some((
                format!("names no IP address ({a:?})"),
                "write the register's address without port or brackets, e.g. \"ip=192.0.2.31\"".into(),
            )),
        },
        Some(("cn", cn)) if !cn.is_empty() && !cn.chars().any(char::is_control) => None,
        Some(("cn", _)) => Some((
            "names no certificate".into(),
            "write the common name of the register's client certificate, e.g. \"cn=register-1\"".into(),
        )),
        _ => Some(("is not uid=N, cn=NAME or ip=ADDR".into(), forms.into())),
    }
}

/// Why the file at `path` is not the PEM its setting needs (a private key,
/// or certificates), as the end of a sentence; `None` when it is, or when
/// it cannot be read here.
fn pem_problem(path: &Path, private_key: bool) -> Option<String> {
    use x509_parser::pem::Pem;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some("is not a regular file".into());
    }
    if meta.len() > MAX_PEM_FILE {
        return Some(format!("has {} bytes: far too many for PEM certificates or a key", meta.len()));
    }
    let bytes = std::fs::read(path).ok()?;
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(&bytes) {
        match block {
            Ok(b) => blocks.push(b),
            Err(e) => return Some(format!("is not valid PEM ({e})")),
        }
    }
    let labels = || blocks.iter().map(|b| b.label.as_str()).collect::<Vec<_>>().join(", ");
    if private_key {
        if blocks.iter().any(|b| b.label == "ENCRYPTED PRIVATE KEY") {
            return Some("holds an encrypted private key, which posd cannot unlock".into());
        }
        let key = blocks.iter().any(|b| {
            matches!(b.label.as_str(), "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY") && !b.contents.is_empty()
        });
        if !key {
            return Some(if blocks.is_empty() {
                "is not PEM: it has no -----BEGIN PRIVATE KEY----- block".into()
            } else {
                format!("holds no private key, only PEM blocks of {}", labels())
            });
        }
    } else {
        let certs: Vec<&Pem> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
        if certs.is_empty() {
            return Some(if blocks.is_empty() {
                "is not PEM: it has no -----BEGIN CERTIFICATE----- block".into()
            } else {
                format!("holds no certificate, only PEM blocks of {}", labels())
            });
        }
        if let Some(n) = certs.iter().position(|c| c.parse_x509().is_err()) {
            return Some(format!("has a CERTIFICATE block (#{}) that is not an X.509 certificate", n + 1));
        }
    }
    None
}

/// Judges a gateway URL: `Ok(true)` for https, `Ok(false)` for plain http
/// to this machine (127.0.0.0/8, ::1, localhost); otherwise what is wrong
/// (the end of a sentence) and the fix. The scheme is read in any case; a
/// user name or password before `@` is refused (posd would connect to the
/// host after it), and so is every scheme but http and https.
pub fn check_gateway_url(url: &str) -> Result<bool, (String, String)> {
    let example = || "write it as https://HOST:PORT, e.g. https://gateway.example.net:443".to_string();
    let uri: tonic::transport::Uri = url.parse().map_err(|e| (format!("is not a URL ({e})"), example()))?;
    let Some(scheme) = uri.scheme_str().map(str::to_ascii_lowercase) else {
        return Err(("has no scheme".into(), example()));
    };
    let Some(authority) = uri.authority() else {
        return Err(("names no host".into(), example()));
    };
    if authority.as_str().contains('@') {
        return Err((
            "carries a user name or password (before '@'); posd would connect to the host after the '@'".into(),
            "remove everything from :// up to and including the '@'; posd proves itself to the gateway with \
             client_cert_file and client_key_file"
                .into(),
        ));
    }
    let hostport = authority.as_str();
    let host = match hostport.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => hostport.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err(("names no host".into(), example()));
    }
    match scheme.as_str() {
        "https" => Ok(true),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback());
            if loopback {
                Ok(false)
            } else {
                Err((
                    format!(
                        "plain http:// is allowed only on loopback (127.0.0.0/8, ::1, localhost), not to {host}: \
                         payments would cross the network unencrypted"
                    ),
                    format!("use https:// for {host}"),
                ))
            }
        }
        other => Err((
            format!("the scheme {other}:// is not one posd speaks"),
            "use https://HOST:PORT (plain http:// only to this machine: 127.0.0.1, ::1 or localhost)".into(),
        )),
    }
}

/// One error, or a count and the list.
pub(super) fn error_list(errors: Vec<String>) -> anyhow::Error {
    match errors.len() {
        0 => anyhow::anyhow!("the configuration could not be read"),
        1 => anyhow::anyhow!("{}", errors[0]),
        n => anyhow::anyhow!("{n} errors in the configuration:\n{}", errors.join("\n")),
    }
}
