//! Payments, refunds, reversals and end of day on a nexo terminal (issue
//! #23): the thin driver of `pos_engine::nexo` (`NexoPayment`, `AfterSale`),
//! as `engine/terminal` is of `TerminalPayment` for ZVT.
//!
//! The terminal is reached through [`NexoDevice`], implemented by
//! [`NexoTerminal`] (one HTTPS POST per exchange, encrypted, its answer
//! checked against the request), so the driver runs in one process with a
//! fake terminal under tokio's paused clock in tests.

use std::future::Future;

use pos_nexo::{RequestBody, SaleToPoiResponse, ServiceId};

use crate::nexo::terminal::{NexoError, NexoTerminal};

mod after_sale;

/// What the engine needs of a lane's nexo terminal.
#[allow(dead_code)] // TODO(#23): the drivers below use it.
pub(crate) trait NexoDevice: Sync {
    /// The lane's SaleID (stable across restarts; ServiceIDs are unique per
    /// SaleID).
    fn sale_id(&self) -> &str;
    /// Sends `body` under `service_id` and returns the terminal's answer to
    /// it; [`NexoError`] keeps "not sent" (nothing left posd), "refused"
    /// (nothing booked) and "in doubt" (settle by TransactionStatus) apart.
    fn exchange(
        &self,
        service_id: &ServiceId,
        body: RequestBody,
    ) -> impl Future<Output = Result<SaleToPoiResponse, NexoError>> + Send;
}

impl NexoDevice for NexoTerminal {
    fn sale_id(&self) -> &str {
        NexoTerminal::sale_id(self)
    }

    fn exchange(
        &self,
        service_id: &ServiceId,
        body: RequestBody,
    ) -> impl Future<Output = Result<SaleToPoiResponse, NexoError>> + Send {
        NexoTerminal::exchange(self, service_id, body)
    }
}
