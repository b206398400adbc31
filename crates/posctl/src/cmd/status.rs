//! `posctl status`: a lane's devices and connectivity.

use pos_proto::terminal::{self as pb};
use serde_json::json;

use crate::cmd::Client;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, terminal: String, json: bool) -> Result<u8, Failure> {
    let s = client.get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: terminal }).await?.into_inner();
    if json {
        outln!(
            "{:#}",
            json!({
                "terminal_id": s.terminal_id,
                "reader_connected": s.reader_connected,
                "reader_serial": s.reader_serial,
                "reader_firmware": s.reader_firmware,
                "printer_connected": s.printer_connected,
                "gateway_online": s.gateway_online,
                "busy_with_payment_id": s.busy_with_payment_id,
                "demo": s.demo,
                "currency": s.currency,
            })
        );
    } else {
        let demo = if s.demo { "  [DEMO]" } else { "" };
        outln!("{} ({}){demo}", s.terminal_id, s.currency);
        let reader = if s.reader_connected {
            format!("connected ({} firmware {})", s.reader_serial, s.reader_firmware)
        } else {
            "not connected".into()
        };
        outln!("  card reader: {reader}");
        outln!("  printer:     {}", if s.printer_connected { "connected" } else { "not connected" });
        outln!("  gateway:     {}", if s.gateway_online { "online" } else { "offline" });
        if !s.busy_with_payment_id.is_empty() {
            outln!("  busy with:   {}", s.busy_with_payment_id);
        }
    }
    Ok(0)
}
