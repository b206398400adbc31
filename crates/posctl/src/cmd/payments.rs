//! `posctl payments`: lists payments, newest first, a page at a time.

use pos_proto::terminal::{self as pb};
use serde_json::{Value, json};

use crate::cmd::Client;
use crate::cmd::print::{payment_json, summary};
use crate::failure::Failure;

pub(crate) async fn run(
    client: &mut Client,
    terminal: Option<String>,
    statuses: Vec<String>,
    limit: u32,
    page_token: Option<String>,
    json: bool,
) -> Result<u8, Failure> {
    let mut st = Vec::new();
    for s in &statuses {
        let name = format!("PAYMENT_STATUS_{}", s.to_uppercase());
        let v = pb::PaymentStatus::from_str_name(&name)
            .ok_or_else(|| Failure::usage(format!("--status {s:?}: unknown status")))?;
        st.push(v as i32);
    }
    let resp = client
        .list_payments(pb::ListPaymentsRequest {
            terminal_id: terminal.unwrap_or_default(),
            statuses: st,
            page_size: limit,
            page_token: page_token.unwrap_or_default(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if json {
        let list: Vec<Value> = resp.payments.iter().map(payment_json).collect();
        outln!("{:#}", json!({ "payments": list, "next_page_token": resp.next_page_token }));
    } else {
        for p in &resp.payments {
            let key = if p.gateway_key.is_empty() { String::new() } else { format!("  gateway key {}", p.gateway_key) };
            outln!("{}{key}", summary(p));
        }
        if !resp.next_page_token.is_empty() {
            outln!("more: --page-token {}", resp.next_page_token);
        }
    }
    Ok(0)
}
