//! Fault injection, switched at run time over the control address with a
//! one-line text protocol (`fault down`, `fault flaky 50`, `status`), so it
//! works while the gateway listener itself is down.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The fault the simulator injects into the gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// The listener refuses connections, as when the WAN is cut.
    Down,
    /// Requests are held unanswered until the fault changes, then processed.
    Hang,
    /// This percentage of calls fails with UNAVAILABLE before processing.
    Flaky(u8),
    /// Authorize and Reverse commit, then the answer is lost (UNAVAILABLE).
    LoseAnswers,
    /// Every call is delayed by this many milliseconds.
    Latency(u64),
    /// Every call is refused as unauthenticated, as with expired credentials.
    ExpiredCredentials,
    /// A repeated transaction key is answered ALREADY_EXISTS instead of
    /// replaying the first answer (as some gateways do).
    ConflictOnRepeat,
    /// GetRefund answers UNIMPLEMENTED, as a gateway from before that call.
    NoRefundStatus,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Down => f.write_str("down"),
            Fault::Hang => f.write_str("hang"),
            Fault::Flaky(p) => write!(f, "flaky {p}"),
            Fault::LoseAnswers => f.write_str("lose-answers"),
            Fault::Latency(ms) => write!(f, "latency {ms}"),
            Fault::ExpiredCredentials => f.write_str("expired-credentials"),
            Fault::ConflictOnRepeat => f.write_str("conflict-on-repeat"),
            Fault::NoRefundStatus => f.write_str("no-refund-status"),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["none"] => Ok(Fault::None),
            ["down"] => Ok(Fault::Down),
            ["hang"] => Ok(Fault::Hang),
            ["lose-answers"] => Ok(Fault::LoseAnswers),
            ["expired-credentials"] => Ok(Fault::ExpiredCredentials),
            ["conflict-on-repeat"] => Ok(Fault::ConflictOnRepeat),
            ["no-refund-status"] => Ok(Fault::NoRefundStatus),
            ["flaky", pct] => match pct.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Fault::Flaky(p)),
                _ => Err(format!("flaky takes a percentage from 0 to 100, not {pct:?}")),
            },
            ["latency", ms] => {
                ms.parse().map(Fault::Latency).map_err(|_| format!("latency takes milliseconds, not {ms:?}"))
            }
            _ => Err(format!(
                "unknown fault {s:?}: use none, down, hang, flaky PCT, lose-answers, latency MS, expired-credentials, conflict-on-repeat or no-refund-status"
            )),
        }
    }
}

/// What the control protocol acts on.
#[derive(Clone)]
pub struct Controls {
    pub faults: Arc<watch::Sender<Fault>>,
    pub ledger: Arc<std::sync::Mutex<crate::ledger::Ledger>>,
    /// Bumped when gateway events are appended.
    pub events: Arc<watch::Sender<u64>>,
    /// True while the gateway listener accepts connections.
    pub listening: watch::Receiver<bool>,
    /// The account-mismatch rule for amounts ending in 98 (`accounts`).
    pub account_mismatch: Arc<std::sync::atomic::AtomicBool>,
}

/// Serves the control protocol until the process ends.
pub async fn serve(listener: TcpListener, controls: Controls) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let controls = controls.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = answer(&line, &controls).await;
                if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

const EVENT_KINDS: [&str; 3] = ["refund_settled", "dispute_opened", "settlement_closed"];

/// `emit KIND [KEY]` and `redeliver`: gateway events (webhooks).
fn events_command(line: &str, c: &Controls) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut ledger = c.ledger.lock().unwrap();
    let reply = match words.as_slice() {
        ["emit", kind, rest @ ..] if rest.len() <= 1 => {
            if !EVENT_KINDS.contains(kind) {
                return Some(format!("error unknown event kind {kind:?}: use {}", EVENT_KINDS.join(", ")));
            }
            let key = rest.first().copied().unwrap_or("");
            let (amount_minor, currency) = match ledger.get(key) {
                Ok(Some(charge)) => (charge.amount_minor, charge.currency),
                _ if key.is_empty() => (0, String::new()),
                _ => return Some(format!("error no charge under key {key:?}")),
            };
            let row = crate::ledger::GatewayEventRow {
                sequence: 0,
                event_id: format!("evt_{}", pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes())),
                kind: kind.to_string(),
                key: key.to_string(),
                amount_minor,
                currency,
                message: format!("{kind} (simulated)"),
            };
            match ledger.append_event(&row) {
                Ok(seq) => format!("ok event {} sequence {seq}", row.event_id),
                Err(e) => format!("error {e}"),
            }
        }
        ["redeliver"] => match ledger.distinct_events() {
            Ok(all) => {
                let mut n = 0;
                for e in &all {
                    if ledger.append_event(e).is_ok() {
                        n += 1;
                    }
                }
                format!("ok redelivered {n} events")
            }
            Err(e) => format!("error {e}"),
        },
        _ => return None,
    };
    drop(ledger);
    c.events.send_modify(|v| *v += 1);
    Some(reply)
}

async fn answer(line: &str, c: &Controls) -> String {
    let faults = &c.faults;
    let line = line.trim();
    if let Some(reply) = events_command(line, c) {
        return reply;
    }
    if line == "status" {
        return format!("ok fault={}", *faults.borrow());
    }
    if let Some(rule) = line.strip_prefix("accounts ") {
        let on = match rule.trim() {
            "mismatch" => true,
            "fixed" => false,
            other => {
                return format!(
                    "error unknown accounts setting {other:?}: use `accounts mismatch` or `accounts fixed`"
                );
            }
        };
        c.account_mismatch.store(on, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(account_mismatch = on, "account rule changed");
        return format!("ok accounts={}", if on { "mismatch" } else { "fixed" });
    }
    match line.strip_prefix("fault ").map(str::parse::<Fault>) {
        Some(Ok(f)) => {
            faults.send_replace(f);
            tracing::info!(fault = %f, "fault injection changed");
            // Reply once the fault is in effect: the listener closed for
            // `down`, open again for anything else.
            let mut listening = c.listening.clone();
            let want = f != Fault::Down;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), listening.wait_for(|l| *l == want)).await;
            format!("ok fault={f}")
        }
        Some(Err(e)) => format!("error {e}"),
        None => format!(
            "error unknown command {line:?}: use `fault <none|down|hang|flaky PCT|lose-answers|latency MS|expired-credentials|conflict-on-repeat>`, `emit <refund_settled|dispute_opened|settlement_closed> [KEY]`, `redeliver`, `accounts <mismatch|fixed>` or `status`"
        ),
    }
}

/// Sends one control command and returns the reply line.
pub async fn send_command(addr: &str, command: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the gateway-sim control address {addr}: {e}"))?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{command}\n").as_bytes()).await?;
    let mut lines = BufReader::new(rd).lines();
    let reply = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("control connection closed without a reply"))?;
    match reply.strip_prefix("error ") {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_the_same() {
        for s in [
            "none",
            "down",
            "hang",
            "flaky 50",
            "lose-answers",
            "latency 250",
            "expired-credentials",
            "conflict-on-repeat",
        ] {
            assert_eq!(s.parse::<Fault>().unwrap().to_string(), s);
        }
        assert!("flaky 101".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }
}
