//! The lane's devices as the register sees and uses them: the terminal's
//! status (card device, printer, gateway), receipts and the cash drawer.

use pos_proto::terminal as pb;
use tonic::{Request, Response, Status};

use super::TerminalApi;
use super::errors::invalid;
use super::identity::caller;
use super::request::{RequestText, quote};
use crate::convert;
use crate::engine::EngineError;

impl TerminalApi {
    pub(super) async fn get_terminal_status(
        &self,
        request: Request<pb::GetTerminalStatusRequest>,
    ) -> Result<Response<pb::TerminalStatus>, Status> {
        request.get_ref().check_text()?;
        let id = &request.get_ref().terminal_id;
        let lane = self.engine.lane(id).ok_or_else(|| {
            let known: Vec<&str> = self.engine.lanes().map(|l| l.id.as_str()).collect();
            Status::from(EngineError::NotFound(format!(
                "unknown terminal {}; this posd drives {}",
                quote(id),
                known.join(", ")
            )))
        })?;
        let reader = lane.reader_state();
        let printer = lane.printer.as_ref().map(|p| p.status());
        Ok(Response::new(pb::TerminalStatus {
            terminal_id: lane.id.clone(),
            reader_connected: reader.connected,
            reader_serial: reader.serial,
            reader_firmware: reader.firmware,
            printer_connected: printer.as_ref().is_some_and(|p| p.connected),
            printer: Some(convert::printer_status(printer.as_ref())),
            gateway_online: self.engine.gateway().is_online(),
            busy_with_payment_id: self.engine.busy_with(&lane.id).unwrap_or_default(),
            demo: self.engine.demo(),
            currency: lane.currency.clone(),
        }))
    }

    pub(super) async fn print_receipt(
        &self,
        request: Request<pb::PrintReceiptRequest>,
    ) -> Result<Response<pb::PrintReceiptResponse>, Status> {
        request.get_ref().check_text()?;
        let r = request.into_inner();
        let copy = match pb::ReceiptCopy::try_from(r.copy) {
            Ok(pb::ReceiptCopy::Merchant) => crate::receipt::Copy::Merchant,
            Ok(_) => crate::receipt::Copy::Customer,
            Err(_) => return Err(invalid("copy", format!("unknown receipt copy {}", r.copy))),
        };
        let (terminal_id, reprint) = self.engine.print_receipt(&r.payment_id, copy).await.map_err(self.failed())?;
        Ok(Response::new(pb::PrintReceiptResponse { terminal_id, reprint }))
    }

    pub(super) async fn open_drawer(
        &self,
        request: Request<pb::OpenDrawerRequest>,
    ) -> Result<Response<pb::OpenDrawerResponse>, Status> {
        request.get_ref().check_text()?;
        let who = caller(&request);
        let terminal = request.into_inner().terminal_id;
        self.engine.open_drawer(&terminal).await.map_err(self.failed())?;
        tracing::info!(terminal = %terminal, caller = %who.description, "cash drawer opened");
        Ok(Response::new(pb::OpenDrawerResponse {}))
    }
}
