//! `posctl drawer`: opens the lane's cash drawer.

use pos_proto::terminal::{self as pb};
use serde_json::json;

use crate::cmd::Client;
use crate::failure::Failure;

pub(crate) async fn run(client: &mut Client, terminal: String, json: bool) -> Result<u8, Failure> {
    client.open_drawer(pb::OpenDrawerRequest { terminal_id: terminal.clone() }).await?;
    if json {
        outln!("{:#}", json!({"terminal_id": terminal, "drawer": "opened"}));
    } else {
        outln!("drawer of {terminal} opened");
    }
    Ok(0)
}
