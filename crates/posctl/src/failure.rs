//! Why a command did not succeed: [`Failure`], the exit codes of the
//! contract in the crate's documentation, and how an error posd answered
//! (its gRPC code and the reason code of its `google.rpc.ErrorInfo`) maps to
//! them.

use serde_json::json;

use crate::output::say;

pub(crate) const EXIT_NOT_APPROVED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
pub(crate) const EXIT_REFUSED: u8 = 4;
pub(crate) const EXIT_PENDING: u8 = 5;
pub(crate) const EXIT_RETRY: u8 = 6;

/// The domain of the `google.rpc.ErrorInfo` posd sends (posd's `api::ERROR_DOMAIN`).
const POSD_ERROR_DOMAIN: &str = "posd.pos.terminal.v1";

/// Why a command did not succeed: its exit code and what scripts see.
pub(crate) struct Failure {
    pub(crate) exit: u8,
    /// The gRPC code's name (`FAILED_PRECONDITION`), or `unreachable`.
    pub(crate) code: &'static str,
    /// posd's reason code (from its `google.rpc.ErrorInfo`), or empty.
    pub(crate) reason: String,
    pub(crate) message: String,
    /// An answer of posd's: its code leads the message when it has no reason.
    pub(crate) from_posd: bool,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit: EXIT_USAGE,
            code: "INVALID_ARGUMENT",
            reason: String::new(),
            message: message.into(),
            from_posd: false,
        }
    }

    pub(crate) fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            exit: EXIT_UNREACHABLE,
            code: "unreachable",
            reason: String::new(),
            message: message.into(),
            from_posd: false,
        }
    }

    /// Names the idempotency key to repeat the call with, when repeating
    /// it is the way on (unreachable, outcome unknown, try again later).
    pub(crate) fn with_key(mut self, key: &str) -> Failure {
        if matches!(self.exit, EXIT_UNREACHABLE | EXIT_PENDING | EXIT_RETRY) {
            self.message = format!("{} (idempotency key {key}: repeat with --key {key})", self.message);
        }
        self
    }

    /// The message on stderr, led by posd's reason code (or its gRPC code);
    /// with `--json`, the error object on stdout as well.
    pub(crate) fn report(&self, json: bool) {
        let lead = if !self.reason.is_empty() {
            format!("{}: ", self.reason)
        } else if self.from_posd {
            format!("{}: ", self.code)
        } else {
            String::new()
        };
        say(&format!("posctl: {lead}{}", self.message));
        if json {
            outln!("{}", json!({"error": {"code": self.code, "reason": self.reason, "message": self.message}}));
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        // A status with a source was made here, from a failed or broken
        // connection (posd refused the TLS handshake, or went away mid-call):
        // posd never answered. Statuses posd sends arrive without one.
        if let Some(source) = std::error::Error::source(&s) {
            return Failure::unreachable(format!("the connection to posd failed: {}", causes(source)));
        }
        let reason = posd_reason(&s);
        Failure {
            exit: exit_code(s.code(), &reason),
            code: code_name(s.code()),
            reason,
            message: s.message().to_string(),
            from_posd: true,
        }
    }
}

/// The reason code of posd's `google.rpc.ErrorInfo` in a status, or empty.
fn posd_reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info().filter(|i| i.domain == POSD_ERROR_DOMAIN).map(|i| i.reason).unwrap_or_default()
}

/// The exit code for an error posd answered: by its reason code first, then
/// by the gRPC code.
fn exit_code(code: tonic::Code, reason: &str) -> u8 {
    use tonic::Code as C;
    match reason {
        "OUTCOME_UNKNOWN" => return EXIT_PENDING,
        "SHUTTING_DOWN" | "GATEWAY_UNREACHABLE" | "TERMINAL_BUSY" | "PAYMENT_BUSY" | "TERMINAL_UNAVAILABLE" => {
            return EXIT_RETRY;
        }
        r if r.starts_with("DATABASE_") => return EXIT_RETRY,
        _ => {}
    }
    match code {
        C::DeadlineExceeded => EXIT_PENDING,
        C::Unavailable | C::ResourceExhausted | C::Aborted => EXIT_RETRY,
        _ => EXIT_REFUSED,
    }
}

/// A gRPC code's canonical name, as in the gRPC documentation and posd's.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error with its causes, "outer: inner: innermost", repeats left out.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as posd sends it: with an `ErrorInfo` in its details.
    fn from_posd(code: tonic::Code, reason: &str, domain: &str) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_error_info(reason, domain, std::collections::HashMap::new());
        tonic::Status::with_error_details(code, "what posd says", details)
    }

    #[test]
    fn posds_reason_decides_the_exit_code_before_the_grpc_code() {
        use tonic::Code as C;
        for (code, reason, exit) in [
            (C::Unavailable, "OUTCOME_UNKNOWN", EXIT_PENDING),
            (C::DeadlineExceeded, "OUTCOME_UNKNOWN", EXIT_PENDING),
            (C::DeadlineExceeded, "PRINTER_TIMEOUT", EXIT_PENDING),
            (C::Unavailable, "SHUTTING_DOWN", EXIT_RETRY),
            (C::Unavailable, "DATABASE_UNAVAILABLE", EXIT_RETRY),
            (C::ResourceExhausted, "DATABASE_FULL", EXIT_RETRY),
            (C::Internal, "DATABASE_ERROR", EXIT_RETRY),
            (C::Unavailable, "GATEWAY_UNREACHABLE", EXIT_RETRY),
            (C::FailedPrecondition, "TERMINAL_BUSY", EXIT_RETRY),
            (C::Unavailable, "PAYMENT_BUSY", EXIT_RETRY),
            (C::Unavailable, "PRINTER_NOT_CONNECTED", EXIT_RETRY),
            (C::InvalidArgument, "INVALID_FIELD", EXIT_REFUSED),
            (C::FailedPrecondition, "REFUND_EXCEEDS_CAPTURE", EXIT_REFUSED),
            (C::FailedPrecondition, "WRONG_STATE", EXIT_REFUSED),
            (C::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", EXIT_REFUSED),
            (C::NotFound, "NOT_FOUND", EXIT_REFUSED),
            (C::PermissionDenied, "REFUND_NOT_ALLOWED", EXIT_REFUSED),
        ] {
            let f = Failure::from(from_posd(code, reason, POSD_ERROR_DOMAIN));
            assert_eq!((f.exit, f.reason.as_str(), f.code), (exit, reason, code_name(code)), "{code:?} {reason}");
            assert!(f.from_posd && f.message == "what posd says");
        }
    }

    #[test]
    fn a_status_without_posds_reason_goes_by_its_grpc_code() {
        use tonic::Code as C;
        for (code, exit) in [
            (C::Unavailable, EXIT_RETRY),
            (C::ResourceExhausted, EXIT_RETRY),
            (C::DeadlineExceeded, EXIT_PENDING),
            (C::InvalidArgument, EXIT_REFUSED),
            (C::Unauthenticated, EXIT_REFUSED),
            (C::OutOfRange, EXIT_REFUSED),
            (C::Internal, EXIT_REFUSED),
        ] {
            let f = Failure::from(tonic::Status::new(code, "no details"));
            assert_eq!((f.exit, f.reason.as_str()), (exit, ""), "{code:?}");
        }
        // A reason in another domain is not posd's.
        let f = Failure::from(from_posd(tonic::Code::FailedPrecondition, "OUTCOME_UNKNOWN", "example.com"));
        assert_eq!((f.exit, f.reason.as_str()), (EXIT_REFUSED, ""));
    }

    #[test]
    fn a_status_made_from_a_broken_connection_is_unreachable() {
        let mut s = tonic::Status::unavailable("transport error");
        s.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let f = Failure::from(s);
        assert_eq!((f.exit, f.code, f.from_posd), (EXIT_UNREACHABLE, "unreachable", false));
    }

    #[test]
    fn the_key_to_repeat_with_is_named_only_when_repeating_helps() {
        let pending = Failure::from(from_posd(tonic::Code::Unavailable, "OUTCOME_UNKNOWN", POSD_ERROR_DOMAIN));
        assert!(pending.with_key("k1").message.ends_with("(idempotency key k1: repeat with --key k1)"));
        let refused = Failure::from(from_posd(tonic::Code::NotFound, "NOT_FOUND", POSD_ERROR_DOMAIN));
        assert_eq!(refused.with_key("k1").message, "what posd says");
    }
}
