//! `posd check-config`, and the reading of a configuration file at start
//! by the same rules: a file's text examined for every error, each at its
//! line and column (TOML syntax, then form, then [`Config::problems`]),
//! and the warnings only a check on this machine gives (devices and files
//! missing or unreadable here, a very short capture window).

use std::path::Path;

use serde::Deserialize;

use super::model::{CREDENTIAL_PREFIX, CREDENTIALS_SOURCE, Config};
use super::validate::{FileSetting, Holds, Seg, error_list, key, lane_key};

impl Config {
    /// Reads a configuration file and validates it. The error lists every
    /// problem, each with file:line:col and its fix, as `posd check-config`
    /// does: start-up and check-config judge by the same rules.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_text(&text, path)
    }

    /// Parses and validates a configuration's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::from_text(text, Path::new("config"))
    }

    fn from_text(text: &str, path: &Path) -> anyhow::Result<Self> {
        let examined = Examined::new(text);
        let errors: Vec<String> = examined.findings.iter().filter(|f| f.error).map(|f| f.render(path)).collect();
        match examined.config {
            Some(cfg) if errors.is_empty() => Ok(cfg),
            _ => Err(error_list(errors)),
        }
    }
}

/// One finding of `posd check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub error: bool,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub fix: String,
}

impl Finding {
    pub fn render(&self, path: &Path) -> String {
        let at = self.at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
        let level = if self.error { "error" } else { "warning" };
        format!("{}{at}: {level}: {}\n  fix: {}", path.display(), self.message, self.fix)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Line and column of a byte offset; the file's start when unknown.
fn position(text: &str, offset: Option<usize>) -> (usize, usize) {
    offset.map_or((1, 1), |o| line_col(text, o))
}

/// Where in the document `path` is: the start of its last key (or of the
/// `[[table]]` it ends at) as far as the document has it, and whether the
/// whole path is there. The byte offsets are toml's own spans (every key
/// and value of a [`toml::de::DeTable`] is a [`toml::Spanned`]): a setting
/// is found by its path, never by searching the text for it.
fn locate(table: &toml::de::DeTable<'_>, path: &[Seg]) -> (Option<usize>, bool) {
    let Some((Seg::Key(name), rest)) = path.split_first() else {
        return (None, path.is_empty());
    };
    let Some((found, value)) = table.get_key_value(*name) else {
        return (None, false);
    };
    let (deeper, whole) = locate_in(value.get_ref(), rest);
    (deeper.or(Some(found.span().start)), whole)
}

fn locate_in(value: &toml::de::DeValue<'_>, path: &[Seg]) -> (Option<usize>, bool) {
    match (path.first(), value) {
        (None, _) => (None, true),
        (Some(Seg::Key(_)), toml::de::DeValue::Table(t)) => locate(t, path),
        (Some(Seg::Index(i)), toml::de::DeValue::Array(items)) => match items.get(*i) {
            Some(item) => {
                let (deeper, whole) = locate_in(item.get_ref(), &path[1..]);
                (deeper.or(Some(item.span().start)), whole)
            }
            None => (None, false),
        },
        _ => (None, false),
    }
}

/// Where a problem is: its first setting the document has, else as much of
/// its own setting's path as the document has (a default judged: the table
/// it would be in).
fn place(document: &toml::de::DeTable<'_>, text: &str, keys: &[Vec<Seg>]) -> (usize, usize) {
    let whole = keys.iter().map(|k| locate(document, k)).find(|(_, whole)| *whole).and_then(|(at, _)| at);
    position(text, whole.or_else(|| keys.first().and_then(|k| locate(document, k).0)))
}

/// Sets aside the setting at byte `at` (the innermost key there, or the
/// scalar or array value there) so the rest can be read; its key, or `None`
/// when no single setting is there (a table missing a key, say).
fn remove_setting_at(table: &mut toml::de::DeTable<'_>, at: usize) -> Option<String> {
    use toml::de::DeValue;
    let mut here = None;
    for (k, value) in table.iter_mut() {
        let container = match value.get_mut() {
            DeValue::Table(inner) => {
                if let Some(removed) = remove_setting_at(inner, at) {
                    return Some(removed);
                }
                true
            }
            DeValue::Array(items) if items.iter().any(|item| matches!(item.get_ref(), DeValue::Table(_))) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(inner) = item.get_mut()
                        && let Some(removed) = remove_setting_at(inner, at)
                    {
                        return Some(removed);
                    }
                }
                true
            }
            _ => false,
        };
        if k.span().contains(&at) || (!container && value.span().contains(&at)) {
            here = Some(k.get_ref().to_string());
            break;
        }
    }
    let name = here?;
    table.remove(name.as_str());
    Some(name)
}

fn serde_fix(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; systemd/posd.toml lists every key with its default"
    } else if message.contains("missing field") {
        "add the key; systemd/posd.toml shows it with an example"
    } else if message.contains("invalid value: integer `-") {
        "a count or limit cannot be negative: give 0 or more"
    } else if message.contains("invalid type") {
        "write the value in the form the message names: text in double quotes, numbers and true or false without"
    } else {
        "correct the value to the form the message names (see systemd/posd.toml)"
    }
}

/// A configuration's text examined: the configuration when it could be
/// built, and every error in it, each at its line and column.
pub(super) struct Examined<'t> {
    /// The parsed document, to locate settings in.
    document: toml::Spanned<toml::de::DeTable<'t>>,
    config: Option<Config>,
    pub(super) findings: Vec<Finding>,
}

impl<'t> Examined<'t> {
    /// Syntax errors (all of them, and nothing else: the document is
    /// incomplete); else errors of form (a key unknown or missing, a value
    /// of the wrong type), each setting at fault set aside to read on; then,
    /// once a configuration could be built, [`Config::problems`].
    pub(super) fn new(text: &'t str) -> Self {
        let (document, syntax) = toml::de::DeTable::parse_recoverable(text);
        let mut findings = Vec::new();
        if !syntax.is_empty() {
            for e in &syntax {
                findings.push(Finding {
                    error: true,
                    at: Some(position(text, e.span().map(|s| s.start))),
                    message: e.message().to_string(),
                    fix: "correct the TOML here: text in double quotes, one key = value per line, tables as [name] \
                          (see systemd/posd.toml)"
                        .into(),
                });
            }
            return Self { document, config: None, findings };
        }
        let mut repaired = document.clone();
        let mut removed: Vec<String> = Vec::new();
        let mut config = None;
        for _ in 0..64 {
            let e = match Config::deserialize(toml::de::Deserializer::from(repaired.clone())) {
                Ok(cfg) => {
                    config = Some(cfg);
                    break;
                }
                Err(e) => e,
            };
            let message = e.message().to_string();
            let start = e.span().map(|s| s.start);
            let missing = message.starts_with("missing field");
            // A key set aside below for its own error is missing next: not a second error.
            if !(missing && removed.iter().any(|k| message.contains(&format!("`{k}`")))) {
                let fix = serde_fix(&message).to_string();
                findings.push(Finding { error: true, at: Some(position(text, start)), message, fix });
            }
            match start.filter(|_| !missing).and_then(|at| remove_setting_at(repaired.get_mut(), at)) {
                Some(k) => removed.push(k),
                None => break,
            }
        }
        if let Some(cfg) = &config {
            for problem in cfg.problems() {
                // A setting set aside above was read as its default: judging
                // it, or another setting against it, would mislead.
                let set_aside =
                    problem.keys.iter().any(|k| locate(document.get_ref(), k).1 && !locate(repaired.get_ref(), k).1);
                if !set_aside {
                    let at = place(document.get_ref(), text, &problem.keys);
                    findings.push(Finding { error: true, at: Some(at), message: problem.message, fix: problem.fix });
                }
            }
        }
        Self { document, config, findings }
    }
}

/// Validates a config file for `posd check-config`: every error (the file
/// would not start posd; the same rules posd starts by) and warnings
/// (devices or files missing on this machine, files it cannot read here),
/// each with line and column, in the order of the file.
pub fn check(path: &Path) -> Vec<Finding> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding {
                error: true,
                at: None,
                message: format!("cannot read the file: {e}"),
                fix: "check the path (the default is /etc/posd/posd.toml) and that you may read it".into(),
            }];
        }
    };
    let examined = Examined::new(&text);
    let mut findings = examined.findings;
    let Some(cfg) = examined.config else { return findings };
    let document = examined.document.get_ref();
    let at = |k: Vec<Seg>| Some(place(document, &text, &[k]));
    for (i, lane) in cfg.lanes.iter().enumerate() {
        if let Some(d) = &lane.reader.device
            && !d.exists()
        {
            findings.push(Finding {
                error: false,
                at: at(lane_key(i, &["reader", "device"])),
                message: format!("lane {}: the reader device {} does not exist on this machine", lane.id, d.display()),
                fix: "plug the reader in, or check the udev rule that names it (systemd/60-posd.rules)".into(),
            });
        }
        if lane.reader.kind == "nexo" && lane.reader.passphrase_file.is_none() {
            findings.push(Finding {
                error: false,
                at: at(lane_key(i, &["reader", "url"])),
                message: format!(
                    "lane {}: the nexo terminal is spoken to unencrypted (no passphrase_file): anyone who can \
                     reach it on this machine can send it requests",
                    lane.id
                ),
                fix: "for a test terminal only; give passphrase_file, key_id and key_version for a real one".into(),
            });
        }
        if let Some(printer) = &lane.printer
            && let Some(p) = printer.path()
            && !p.exists()
        {
            let k = if printer.device.is_some() { "device" } else { "usb" };
            findings.push(Finding {
                error: false,
                at: at(lane_key(i, &["printer", k])),
                message: format!("lane {}: the printer device {} does not exist on this machine", lane.id, p.display()),
                fix: "plug the printer in, or check the udev rule that names it".into(),
            });
        }
    }
    if let Some(message) = cfg.short_capture_window() {
        findings.push(Finding {
            error: false,
            at: at(key(&["capture_window"])),
            message,
            fix: "use the acquirer's capture window (for example \"2d\"), or \"0s\" to keep authorizations until \
                  captured or voided"
                .into(),
        });
    }
    for FileSetting { label, at: k, file, holds } in cfg.file_settings() {
        if !file.well_formed() {
            continue; // an error above
        }
        let credential_fix = || {
            if file.0.starts_with("credential:") {
                format!(
                    "put the file in {CREDENTIALS_SOURCE} (credential:{CREDENTIAL_PREFIX}F is the file F there; \
                     mode 0600, owner root)"
                )
            } else {
                "install the file, or correct the path".into()
            }
        };
        let (message, fix) = match file.installed_path() {
            None => (
                format!("{label}: the credential {:?} cannot be checked outside the service", file.0),
                credential_fix(),
            ),
            Some(p) if !p.exists() => {
                (format!("{label}: {} does not exist on this machine", p.display()), credential_fix())
            }
            Some(p) => match std::fs::File::open(&p) {
                Ok(_) => continue,
                Err(e) => (
                    format!(
                        "{label}: cannot read {} here ({e}), so {} not checked",
                        p.display(),
                        if holds == Holds::Passphrase { "the passphrase was" } else { "its PEM was" }
                    ),
                    "run posd check-config as root to check it".into(),
                ),
            },
        };
        findings.push(Finding { error: false, at: at(k), message, fix });
    }
    findings.sort_by_key(|f| f.at);
    findings
}
