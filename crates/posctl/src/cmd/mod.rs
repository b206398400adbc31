//! posctl's subcommands, one module each, as in mini-redis's `cmd/`: each
//! takes its arguments and the connection to posd, calls posd and prints the
//! answer, and returns the exit code. `connect` opens the connection and
//! `print` shows payments and refunds; the helpers here serve several
//! commands.

use pos_proto::terminal::payment_terminal_client::PaymentTerminalClient;
use pos_proto::terminal::{self as pb};
use tonic::transport::Channel;

use crate::failure::Failure;
use crate::money;

pub(crate) mod cancel;
pub(crate) mod capture;
pub(crate) mod completions;
pub(crate) mod connect;
pub(crate) mod drawer;
pub(crate) mod end_of_day;
pub(crate) mod events;
pub(crate) mod pay;
pub(crate) mod payment;
pub(crate) mod payments;
pub(crate) mod print;
pub(crate) mod receipt;
pub(crate) mod refund;
pub(crate) mod report;
pub(crate) mod requeue;
pub(crate) mod resolve;
pub(crate) mod status;
pub(crate) mod sync;
pub(crate) mod void;

/// The gRPC client of posd's register API.
pub(crate) type Client = PaymentTerminalClient<Channel>;

/// An amount typed for an existing payment, in its currency's minor units
/// (0 when none is given: "all of it").
pub(crate) async fn minor_for(client: &mut Client, id: &str, amount: Option<&str>) -> Result<i64, Failure> {
    let Some(text) = amount else { return Ok(0) };
    let p = client.get_payment(pb::GetPaymentRequest { payment_id: id.into() }).await?.into_inner();
    let currency = p.amount.map(|m| m.currency).unwrap_or_default();
    money::parse_amount(text, &currency).map_err(Failure::usage)
}

/// A suffix for a new idempotency key: the time in nanoseconds and posctl's process id.
pub(crate) fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}
