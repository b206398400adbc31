//! `ServiceID`: 1 to 10 ASCII letters or digits, unique per request and
//! SaleID while the terminal remembers it; how a TransactionStatus or an
//! Abort names the request. posd makes them from a counter it keeps per
//! SaleID ([`ServiceId::from_counter`]), so they stay unique across restarts.

use std::fmt;

/// The most characters a ServiceID has.
pub const MAX_LEN: usize = 10;

/// How many different ids [`ServiceId::from_counter`] makes before it wraps.
pub const COUNTER_SPAN: u64 = 10_000_000_000;

/// Why a text is not a ServiceID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceIdError {
    #[error("a ServiceID is not empty")]
    Empty,
    #[error("a ServiceID has at most {MAX_LEN} characters")]
    TooLong,
    #[error("a ServiceID has only ASCII letters and digits")]
    NotAlphanumeric,
}

/// A valid ServiceID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    /// Checks a ServiceID (from the store, or a message).
    pub fn parse(text: &str) -> Result<ServiceId, ServiceIdError> {
        if text.is_empty() {
            Err(ServiceIdError::Empty)
        } else if text.len() > MAX_LEN {
            Err(ServiceIdError::TooLong)
        } else if !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Err(ServiceIdError::NotAlphanumeric)
        } else {
            Ok(ServiceId(text.to_owned()))
        }
    }

    /// The id for counter value `n`: its last ten decimal digits, zero-padded
    /// (`42` → `0000000042`); distinct for [`COUNTER_SPAN`] consecutive values.
    pub fn from_counter(n: u64) -> ServiceId {
        ServiceId(format!("{:010}", n % COUNTER_SPAN))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ServiceId {
    type Err = ServiceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceId::parse(s)
    }
}
