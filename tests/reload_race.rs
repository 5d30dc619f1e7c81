//! A request finishes on the configuration it started with, even when a reload lands
//! while it waits for reputation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use ipgate::{Answer, Config, Gate, Lookup, ProviderId, Reputation, ReputationSource, Status};
use tokio::sync::Notify;

/// Answers "threat" for every IP, but only once `release` is notified; tells `entered`
/// when a look-up starts.
struct HeldSource {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl ReputationSource for HeldSource {
    fn lookup(&self, _ip: IpAddr, _allow_remote: bool) -> BoxFuture<'_, Answer> {
        Box::pin(async move {
            self.entered.notify_one();
            self.release.notified().await;
            let mut r = Reputation::unknown(ProviderId::Iocscout);
            r.status = Status::Threat;
            Answer::Known(Arc::new(Lookup {
                answers: vec![r],
                ..Lookup::default()
            }))
        })
    }
}

const OLD: &str = "
rules:
  - { name: old-block-threats, when: { status: threat }, action: block }
";
/// The same index now allows threats: a request that mixed the two policies would say
/// `new-allow-threats`.
const NEW: &str = "
rules:
  - { name: new-allow-threats, when: { status: threat }, action: allow }
";

/// A gate on the `OLD` policy whose look-ups wait for `release` (the second value tells
/// when one starts: `entered`).
async fn held_gate() -> (Gate, Arc<Notify>, Arc<Notify>) {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let source = Arc::new(HeldSource {
        entered: entered.clone(),
        release: release.clone(),
    });
    let gate = Gate::with_source(Config::from_yaml(OLD, "old").unwrap(), source)
        .await
        .unwrap();
    (gate, entered, release)
}

#[tokio::test]
async fn a_reload_during_the_look_up_does_not_change_the_policy_of_a_request() {
    let (gate, entered, release) = held_gate().await;
    let ip: IpAddr = "198.51.100.20".parse().unwrap();

    let g = gate.clone();
    let in_flight = tokio::spawn(async move { g.decide(ip).await });
    // The synchronous step is done: the request waits for reputation.
    entered.notified().await;
    gate.reload(Config::from_yaml(NEW, "new").unwrap())
        .await
        .unwrap();
    release.notify_one();
    let d = in_flight.await.unwrap();
    assert_eq!(d.rule(), "old-block-threats");
    assert!(d.is_blocked());

    // A request that starts after the reload is decided by the new policy.
    let g = gate.clone();
    let after = tokio::spawn(async move { g.decide(ip).await });
    entered.notified().await;
    release.notify_one();
    let d = after.await.unwrap();
    assert_eq!(d.rule(), "new-allow-threats");
    assert!(!d.is_blocked());
}

/// `decide_request` decides in the call as far as it can without waiting: the future it
/// returns borrows neither the gate nor the headers, and a reload before it is first
/// polled does not change the configuration it decides on.
#[tokio::test]
async fn a_decision_is_started_by_the_call_and_its_future_borrows_nothing() {
    let (gate, entered, release) = held_gate().await;
    let pending = {
        let g = gate.clone();
        let headers = http::HeaderMap::new();
        let f = g.decide_request("198.51.100.21".parse().unwrap(), &headers);
        drop(headers);
        drop(g);
        f
    };
    gate.reload(Config::from_yaml(NEW, "new").unwrap())
        .await
        .unwrap();
    let task = tokio::spawn(pending);
    entered.notified().await;
    release.notify_one();
    let d = task.await.unwrap();
    assert_eq!(d.rule(), "old-block-threats");
    assert!(d.is_blocked());
}
