//! The central gateway in process: gateway-sim's own gRPC service, served
//! by hyper over in-memory pipes in the current life's runtime, on a ledger
//! that outlives posd's crashes. A call in flight when posd crashes is lost
//! with the runtime, as a request lost on the network is.
//!
//! Two things keep a seed replaying exactly: hyper serves each connection
//! directly (not tonic's server, whose accept loop picks among ready
//! branches at random), and `hang` is played here, holding calls in a queue
//! released in the order they arrived (gateway-sim's own hang waits on a
//! watch channel, whose waiters wake in an order tokio draws at random).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use gateway_sim::Fault;
use gateway_sim::ledger::Ledger;
use gateway_sim::service::GatewayService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use pos_cardcrypt::BaseKey;
use pos_proto::gateway::gateway_server::GatewayServer;
use posd::gateway::Dial;
use tokio::io::DuplexStream;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

/// Calls held while the gateway hangs, released in the order they came;
/// and the calls received and answered so far in the life (what a crash may
/// wait for).
#[derive(Default)]
pub struct Calls {
    held: Mutex<Option<VecDeque<oneshot::Sender<()>>>>,
    /// Calls so far by (answered, method); method `None`: of any method.
    counts: watch::Sender<BTreeMap<(bool, Option<String>), u32>>,
}

/// A moment a crash waits for: the `n`-th call of `method` (of any method
/// when `None`) in the life, when the gateway receives it or, with
/// `answered`, once it has carried it out and its answer is on the way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallMoment {
    pub method: Option<&'static str>,
    pub n: u32,
    pub answered: bool,
}

/// The gateway's methods a crash may wait for (forwarding twice as often:
/// it happens only after the gateway was away).
pub const METHODS: &[&str] = &[
    "Authorize",
    "ForwardBatch",
    "ForwardBatch",
    "GetTransaction",
    "Reverse",
    "Capture",
    "Void",
    "Refund",
    "GetRefund",
    "RecordTerminalTransaction",
];

impl Calls {
    /// Switches the gateway's fault: gateway-sim plays every fault but
    /// `hang`, which this plays.
    pub fn switch(&self, faults: &watch::Sender<Fault>, fault: Fault) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if fault == Fault::Hang {
            held.get_or_insert_with(VecDeque::new);
            faults.send_replace(Fault::None);
            return;
        }
        faults.send_replace(fault);
        for call in held.take().into_iter().flatten() {
            let _ = call.send(());
        }
    }

    /// Returns once the gateway has come to `moment` in this life.
    pub async fn reached(&self, moment: CallMoment) {
        let key = (moment.answered, moment.method.map(str::to_string));
        let _ = self.counts.subscribe().wait_for(|c| c.get(&key).is_some_and(|n| *n >= moment.n)).await;
    }

    fn count(&self, method: &str, answered: bool) {
        self.counts.send_modify(|c| {
            *c.entry((answered, Some(method.to_string()))).or_default() += 1;
            *c.entry((answered, None)).or_default() += 1;
        });
    }

    /// Counts a call, then returns once the gateway is not hanging.
    async fn pass(&self, method: &str) {
        self.count(method, false);
        let wait = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let Some(queue) = held.as_mut() else { return };
            let (tx, rx) = oneshot::channel();
            queue.push_back(tx);
            rx
        };
        let _ = wait.await;
    }
}

/// Serves the gateway in this runtime; returns how posd's client reaches it.
/// `down` refuses connections, as gateway-sim's closed listener does.
pub fn serve(ledger: Arc<Mutex<Ledger>>, faults: watch::Receiver<Fault>, hang: Arc<Calls>) -> Dial {
    let (events_tx, events) = watch::channel(0u64);
    // Amounts ending in .98 are refused as another merchant's (declined
    // online; quarantined when forwarded, left to a person).
    let account_mismatch = Arc::new(AtomicBool::new(true));
    let service =
        GatewayServer::new(GatewayService::new(ledger, faults.clone(), BaseKey::test_key(), events, account_mismatch));
    Arc::new(move || -> std::io::Result<DuplexStream> {
        if *faults.borrow() == Fault::Down {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (service, hang) = (service.clone(), hang.clone());
        let held = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (service, hang) = (service.clone(), hang.clone());
            async move {
                let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
                hang.pass(&method).await;
                let answer = service.oneshot(req).await;
                hang.count(&method, true);
                answer
            }
        });
        let service = TowerToHyperService::new(held);
        // The event stream's sender lives as long as a connection that may use it.
        let events = events_tx.clone();
        tokio::spawn(async move {
            let _events = events;
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(theirs), service)
                .await;
        });
        Ok(ours)
    })
}
