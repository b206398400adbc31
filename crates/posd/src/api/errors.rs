//! Engine and store errors as gRPC statuses, mapped in one place: each
//! with a `google.rpc.ErrorInfo` (a stable reason code) and, for a bad
//! field, a `BadRequest` naming it; a failing database answers as the first
//! failure of its episode.

use tonic::Status;

use crate::engine::{Engine, EngineError};
use crate::store::{DatabaseFailure, StoreError};

/// The error domain in every `google.rpc.ErrorInfo` posd sends.
pub const ERROR_DOMAIN: &str = "posd.pos.terminal.v1";

/// A status with `google.rpc` details: an `ErrorInfo` with a stable reason
/// code, and for field errors a `BadRequest` naming the field.
pub(super) fn rich(code: tonic::Code, reason: &str, message: String, field: Option<&str>) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    if let Some(f) = field {
        details.add_bad_request_violation(f, message.clone());
    }
    Status::with_error_details(code, message, details)
}

/// A bad request field, with its `BadRequest` detail.
pub fn invalid(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    rich(tonic::Code::InvalidArgument, "INVALID_FIELD", format!("{field}: {message}"), Some(field))
}

/// How a failing database answers callers. The engine keeps the first
/// failure of an episode ([`Engine::database_failure`]), and every call that
/// meets the database failing (its own write or read, or the refusal of a
/// new payment) is answered as that failure, until posd restarts once the
/// database works again: a full disk is RESOURCE_EXHAUSTED `DATABASE_FULL`
/// from the first failed write to the restart, whatever later writes and
/// reads report.
impl DatabaseFailure {
    /// The answer to every call that meets the database failing so.
    pub fn status(self) -> Status {
        match self {
            Self::Full => rich(
                tonic::Code::ResourceExhausted,
                "DATABASE_FULL",
                "the payment database is full; new payments are refused and queued payments are kept. \
                 Free disk space: posd checks every few seconds and restarts by itself once it can write."
                    .into(),
                None,
            ),
            // Another program holds the database past posd's busy timeout:
            // not a fault of the request, and it passes.
            Self::Locked => rich(
                tonic::Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                "another program holds posd's payment database locked, past posd's wait for it; posd refuses \
                 new payments until the lock is gone and then restarts by itself. Try again then (a repeat \
                 under the same key is safe)."
                    .into(),
                None,
            ),
            Self::Failed => rich(
                tonic::Code::Unavailable,
                "DATABASE_UNAVAILABLE",
                "posd cannot use its payment database (an I/O error or a damaged file); new payments are \
                 refused and queued payments are kept. posd checks the database every few seconds and \
                 restarts by itself once it works (repair or replace it)."
                    .into(),
                None,
            ),
        }
    }
}

/// A store error outside a database failure episode: a full or locked
/// database as [`DatabaseFailure::status`] says, any other error INTERNAL.
fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "storage error");
    match DatabaseFailure::of(&e) {
        DatabaseFailure::Failed => {
            rich(tonic::Code::Internal, "DATABASE_ERROR", format!("payment storage failed: {e}"), None)
        }
        failure => failure.status(),
    }
}

/// A store error met by a call: within a database failure episode, the
/// episode's answer (see [`DatabaseFailure`]); otherwise [`store_status`].
pub(super) fn db_status(engine: &Engine, e: StoreError) -> Status {
    store_status_in(engine.database_failure(), e)
}

/// [`db_status`] with the episode's first failure, if any.
fn store_status_in(episode: Option<DatabaseFailure>, e: StoreError) -> Status {
    match (&e, episode) {
        (StoreError::Db(_), Some(first)) => {
            tracing::error!(error = %e, "storage error");
            first.status()
        }
        _ => store_status(e),
    }
}

/// An engine error as the API answers it; database failures as
/// [`db_status`] says, the refusal of new payments while the database fails
/// included.
pub(super) fn engine_status(engine: &Engine, e: EngineError) -> Status {
    engine_status_in(engine.database_failure(), e)
}

/// [`engine_status`] with the episode's first failure, if any.
fn engine_status_in(episode: Option<DatabaseFailure>, e: EngineError) -> Status {
    match e {
        EngineError::Store(e) => store_status_in(episode, e),
        EngineError::Unavailable("DATABASE_UNAVAILABLE", m) => match episode {
            Some(first) => first.status(),
            None => EngineError::Unavailable("DATABASE_UNAVAILABLE", m).into(),
        },
        e => e.into(),
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        use tonic::Code;
        match e {
            EngineError::InvalidArgument { field, message } => invalid(field, message),
            EngineError::AlreadyExists(m) => rich(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", m, None),
            EngineError::NotFound(m) => rich(Code::NotFound, "NOT_FOUND", m, None),
            EngineError::FailedPrecondition(reason, m) => rich(Code::FailedPrecondition, reason, m, None),
            EngineError::Unavailable(reason, m) => rich(Code::Unavailable, reason, m, None),
            EngineError::DeadlineExceeded(reason, m) => rich(Code::DeadlineExceeded, reason, m, None),
            EngineError::Store(e) => store_status(e),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Db(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn a_locked_database_is_unavailable_a_full_one_exhausted_and_the_rest_internal() {
        for (code, want, reason) in [
            (rusqlite::ffi::SQLITE_BUSY, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE"),
            (rusqlite::ffi::SQLITE_LOCKED, tonic::Code::Unavailable, "DATABASE_UNAVAILABLE"),
            (rusqlite::ffi::SQLITE_FULL, tonic::Code::ResourceExhausted, "DATABASE_FULL"),
            (rusqlite::ffi::SQLITE_IOERR, tonic::Code::Internal, "DATABASE_ERROR"),
        ] {
            let status = store_status(sqlite(code));
            assert_eq!(status.code(), want, "{code}: {status:?}");
            let details = tonic_types::StatusExt::get_details_error_info(&status).expect("an ErrorInfo");
            assert_eq!(details.reason, reason, "{code}");
        }
    }

    pub(in crate::api) fn reason(status: &Status) -> String {
        tonic_types::StatusExt::get_details_error_info(status).expect("an ErrorInfo").reason
    }

    /// The field a status's `BadRequest` names.
    pub(in crate::api) fn field(status: &Status) -> String {
        let details = tonic_types::StatusExt::get_details_bad_request(status).expect("a BadRequest");
        details.field_violations[0].field.clone()
    }

    #[test]
    fn a_database_failure_episode_answers_as_its_first_failure_throughout() {
        use tonic::Code;
        let full = Some(DatabaseFailure::of(&sqlite(rusqlite::ffi::SQLITE_FULL)));
        assert_eq!(full, Some(DatabaseFailure::Full));
        let refusal = || EngineError::Unavailable("DATABASE_UNAVAILABLE", "posd cannot use its database".into());
        // A full disk: the failed write, a later write failing otherwise, a
        // read, and the refusal of new payments all say DATABASE_FULL.
        for status in [
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_FULL))),
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_IOERR))),
            engine_status_in(full, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_BUSY))),
            store_status_in(full, sqlite(rusqlite::ffi::SQLITE_CANTOPEN)),
            engine_status_in(full, refusal()),
        ] {
            assert_eq!((status.code(), reason(&status)), (Code::ResourceExhausted, "DATABASE_FULL".to_string()));
        }
        // A lock, and anything else: UNAVAILABLE throughout.
        for first in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_IOERR, rusqlite::ffi::SQLITE_CORRUPT] {
            let episode = Some(DatabaseFailure::of(&sqlite(first)));
            for status in [
                engine_status_in(episode, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_FULL))),
                engine_status_in(episode, EngineError::Store(sqlite(first))),
                engine_status_in(episode, refusal()),
            ] {
                assert_eq!((status.code(), reason(&status)), (Code::Unavailable, "DATABASE_UNAVAILABLE".to_string()));
            }
        }
        // What is not a database failure keeps its own answer.
        let status = engine_status_in(full, EngineError::Store(StoreError::NotFound("pay_x".into())));
        assert_ne!(reason(&status), "DATABASE_FULL");
        let status = engine_status_in(full, EngineError::FailedPrecondition("WRONG_STATE", "no".into()));
        assert_eq!((status.code(), reason(&status)), (Code::FailedPrecondition, "WRONG_STATE".to_string()));
        // Outside an episode: as the error itself says.
        let status = engine_status_in(None, EngineError::Store(sqlite(rusqlite::ffi::SQLITE_IOERR)));
        assert_eq!((status.code(), reason(&status)), (Code::Internal, "DATABASE_ERROR".to_string()));
        let status = engine_status_in(None, refusal());
        assert_eq!((status.code(), reason(&status)), (Code::Unavailable, "DATABASE_UNAVAILABLE".to_string()));
    }
}
