//! Failpoints for crash tests: `POSD_FAILPOINT=<name>` makes posd abort
//! itself (as abruptly as a power cut) the first time it reaches that step.
//! Unset, a failpoint costs one cached environment read.

use std::sync::OnceLock;

/// The steps that can be named.
pub const NAMES: &[&str] = &[
    // An offline approval is committed; the register has not heard of it.
    "offline_after_persist",
    // Queued payments are marked FORWARDING; nothing is sent yet.
    "forward_after_claim",
    // The gateway committed and answered a forwarding batch; posd has not stored the answers.
    "forward_after_response",
    // The gateway answered an online authorization; posd has not stored it.
    "online_after_response",
    // The gateway captured an authorized payment; posd has not stored it.
    "capture_after_response",
    // The gateway answered a refund; posd has not stored the outcome.
    "refund_after_response",
    // A payment terminal sent a refund's result; posd has not stored it.
    "zvt_refund_result",
];

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("POSD_FAILPOINT").ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("posd: failpoint {name} reached; aborting");
        std::process::abort();
    }
}
