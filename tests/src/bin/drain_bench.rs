//! Benchmark: drain queued offline payments into gateway-sim, which adds
//! 5 ms of latency to every call; batched forwarding against one payment per
//! call, measured in the same run. Prints a markdown table.
//!
//! ```sh
//! cargo run --release -p posd-e2e --bin drain-bench            # 10,000 payments
//! cargo run --release -p posd-e2e --bin drain-bench -- 2000     # fewer
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pos_cardcrypt::{BaseKey, Binding, CardData};
use pos_engine::{Input, Status};
use posd::engine::{Engine, EngineSettings, ForwardSettings};
use posd::gateway::{Gateway, GatewaySettings};
use posd::lane::{CardDeviceSettings, Lane};
use posd::line::ReaderLine;
use posd::store::{CardInfo, Data, PaymentRecord, Store, Update, now_ms};
use posd_e2e::advance_all;

const STORE_ID: &str = "bench";
const LATENCY_MS: u64 = 5;

/// Puts `n` payments in the outbox, each with card data bound to it.
async fn seed(store: &Arc<Store>, n: usize) {
    let key = BaseKey::test_key();
    let card = CardData { pan: "4242424242424242".into(), expiry: "3012".into(), track2_equivalent: "t2".into() };
    let recs: Vec<PaymentRecord> = (0..n)
        .map(|i| {
            PaymentRecord::created(
                format!("pay_bench_{i:06}"),
                format!("bench-{i}"),
                pos_mask::crockford32(uuid::Uuid::now_v7().as_bytes()),
                "lane-1".into(),
                1000 + 100 * (i as i64 % 50),
                "EUR".into(),
                now_ms(),
            )
        })
        .collect();
    store.insert_batch(&recs, "bench").await.expect("seed payments");
    let blobs: HashMap<String, Vec<u8>> = recs
        .iter()
        .map(|rec| {
            let binding = Binding {
                amount_minor: rec.amount_minor,
                currency: "EUR",
                terminal_id: "bench/lane-1",
                transaction_key: &rec.gateway_key,
            };
            (rec.id.clone(), pos_cardcrypt::encrypt(&key, "BENCH-READER", &card, &binding))
        })
        .collect();
    let info =
        CardInfo { masked_pan: "424242******4242".into(), brand: "visa".into(), entry_mode: 1, ..Default::default() };
    let ids: Vec<String> = recs.into_iter().map(|r| r.id).collect();
    let inputs = [Input::Start, Input::CardRead, Input::Sending, Input::ApprovedOffline];
    let status = advance_all(store, &ids, &inputs, |id, input| {
        let data = match input {
            Input::CardRead => Data::Card(info.clone(), blobs[id].clone()),
            Input::ApprovedOffline => Data::Queued { queued_at_ms: now_ms(), last_error: String::new() },
            _ => Data::None,
        };
        Update { data, ..Default::default() }
    })
    .await;
    assert_eq!(status, Status::OfflineApproved);
}

/// Drains `n` seeded payments with `batch_size` per call; returns the elapsed time.
async fn drain(n: usize, batch_size: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let sim = gateway_sim::start(gateway_sim::Options {
        listen: "127.0.0.1:0".into(),
        control: "127.0.0.1:0".into(),
        db: dir.path().join("ledger.db"),
        base_key: BaseKey::test_key(),
        tls: None,
        client_ca: None,
    })
    .await
    .expect("gateway-sim");
    sim.faults.send_replace(gateway_sim::Fault::Latency(LATENCY_MS));
    let store = Arc::new(Store::open(&dir.path().join("posd.db")).unwrap());
    seed(&store, n).await;
    let gateway = Arc::new(
        Gateway::new(GatewaySettings {
            url: format!("http://{}", sim.listen_addr),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            ca_pem: None,
            identity: None,
        })
        .unwrap(),
    );
    // No reader is needed to forward; the lane's line points nowhere.
    let policy = pos_engine::offline::OfflinePolicy::defaults_for("EUR");
    let lane = Lane::spawn(
        "lane-1".into(),
        "EUR".into(),
        CardDeviceSettings::Reader(ReaderLine::Tcp("127.0.0.1:9".into())),
        policy,
        None,
    );
    let engine = Engine::new(
        store.clone(),
        gateway,
        vec![lane],
        EngineSettings {
            store_id: STORE_ID.into(),
            demo: false,
            collect_timeout: Duration::from_secs(60),
            capture_window: None,
            status_attempts: 3,
            status_backoff: Duration::from_millis(500),
            reversal_backoff: (Duration::from_millis(500), Duration::from_secs(30)),
            forward: ForwardSettings {
                batch_size,
                retry_first: Duration::from_millis(50),
                retry_max: Duration::from_secs(1),
                health_interval: Duration::from_secs(5),
                ageing_interval: Duration::from_secs(3600),
                alert_after: Duration::from_secs(12 * 3600),
                stop_after: Duration::from_secs(24 * 3600),
                expire_after: Duration::from_secs(72 * 3600),
            },
            receipt: posd::receipt::ReceiptSettings { header: vec![], footer: vec![], tz: jiff::tz::TimeZone::UTC },
            auto_print: vec![],
        },
    );
    // The monitor's health check tells the forwarder the gateway is up, as in posd.
    tokio::spawn(engine.clone().monitor());
    tokio::spawn(engine.clone().forwarder());
    let start = Instant::now();
    engine.sync_now();
    loop {
        let left = store.queue_summary().unwrap().count;
        if left == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "drain did not finish: {left} left");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let captured = store
        .list(&posd::store::ListFilter { statuses: vec![Status::Captured], limit: n + 1, ..Default::default() })
        .unwrap()
        .len();
    assert_eq!(captured, n, "every payment forwarded and approved");
    let ledger = gateway_sim::ledger::Ledger::open_read_only(&dir.path().join("ledger.db")).unwrap().all().unwrap();
    assert_eq!(ledger.len(), n, "exactly one charge per payment");
    elapsed
}

/// (d) The offline backlog drain, batched against one payment per call, at an added
/// gateway latency of 5 ms per call (docs/performance.md).
#[derive(clap::Parser)]
struct Options {
    /// Queued payments for the batched drain (the one-per-call drain takes a twentieth, 50 to 500)
    #[arg(default_value_t = 10_000, value_parser = posd_e2e::count(1, usize::MAX))]
    payments: usize,
}

#[tokio::main]
async fn main() {
    let n = <Options as clap::Parser>::parse().payments;
    let single_n = (n / 20).clamp(50, 500);
    let batched = drain(n, 200).await;
    let single = drain(single_n, 1).await;
    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    let (rb, rs) = (rate(n, batched), rate(single_n, single));
    println!("| drain ({LATENCY_MS} ms added gateway latency per call) | payments | seconds | payments/s |");
    println!("|---|---:|---:|---:|");
    println!("| batched, 200 per call | {n} | {:.2} | {rb:.0} |", batched.as_secs_f64());
    println!("| one per call | {single_n} | {:.2} | {rs:.0} |", single.as_secs_f64());
    println!();
    println!("speed-up: {:.1}x (target: >= 2,000/s and >= 10x)", rb / rs);
}
