//! Failpoints for crash tests: `POSD_FAILPOINT=<name>` makes posd abort
//! itself (as abruptly as a power cut) the first time it reaches that step.
//!
//! They are the `fail` crate's, behind posd's cargo feature `failpoints`,
//! which only the tests enable: the packaged posd has none (no code at the
//! steps, no `fail` crate), and refuses to start with `POSD_FAILPOINT` set.

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
    // A payment terminal sent a payment's result and posd stored it; the terminal has not had 80 00.
    "zvt_result_stored",
];

/// The environment variable that names the step to abort at.
pub const ENV: &str = "POSD_FAILPOINT";

/// What a posd built without the cargo feature `failpoints` answers
/// `POSD_FAILPOINT` with.
pub const NO_FAILPOINTS: &str = "POSD_FAILPOINT is set, but this posd was built without the cargo feature \
    `failpoints` (crash tests only; `cargo build --workspace` and `cargo test --workspace` turn it on): unset \
    POSD_FAILPOINT, or build posd with `--features failpoints`";

/// Arms the failpoint `POSD_FAILPOINT` names, if any; called once at start-up.
/// An unknown name, or any name in a build without failpoints, is an error.
pub fn arm_from_env() -> anyhow::Result<()> {
    let Some(name) = std::env::var(ENV).ok().filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    if !cfg!(feature = "failpoints") {
        anyhow::bail!("{NO_FAILPOINTS}");
    }
    if !NAMES.contains(&name.as_str()) {
        anyhow::bail!("{ENV}={name:?} names no failpoint; one of {}", NAMES.join(", "));
    }
    #[cfg(feature = "failpoints")]
    fail::cfg(name, "return").map_err(|e| anyhow::anyhow!("{ENV}: {e}"))?;
    Ok(())
}

/// The step `name` (one of [`NAMES`]): aborts the process if it is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    fail::fail_point!(name, |_| {
        eprintln!("posd: failpoint {name} reached; aborting");
        std::process::abort()
    });
}

/// The step `name` (one of [`NAMES`]): nothing, in a build without failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
