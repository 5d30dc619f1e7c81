//! What observing a decision costs, beside the decision itself, measured in one run
//! with the gateway's Prometheus recorder installed (docs/metrics.md,
//! "ipgate_decision_seconds"; docs/admin-api.md, "GET /v1/status"):
//! - `decide_allow_list`: a whole decision on a small policy (allow-listed client), timed;
//! - `layer_request_allowed`: a request through the tower layer to a service that answers
//!   at once: what ipgate adds to a request in the process (decision, timing, log check,
//!   status record), without the network;
//! - `timing`: reading the decision's clock (`clock::Moment`) twice and recording into the bucketed histogram, what
//!   timing one decision adds;
//! - `status_record`: recording one decision for the status page (ring + minute counts),
//!   from one thread and from four at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use ipgate::{Config, Gate};

fn bench(c: &mut Criterion) {
    let _exporter = ipgate::metrics::install_exporter().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let yaml = "lists: { allow: [192.0.2.0/24], block: [203.0.113.0/24] }\nrules:\n  - { name: block-tor, when: { tor: true }, action: block }\n";
    let gate = rt
        .block_on(Gate::from_config(Config::from_yaml(yaml, "bench").unwrap()))
        .unwrap();
    let allowed: IpAddr = "192.0.2.7".parse().unwrap();
    let blocked: IpAddr = "203.0.113.7".parse().unwrap();

    let mut g = c.benchmark_group("observe");
    g.bench_function("decide_allow_list", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(gate.decide(black_box(allowed)).await) })
    });
    {
        use tower::{Service, ServiceExt};
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let svc = tower_layer::Layer::layer(&gate.layer(), inner);
        g.bench_function("layer_request_allowed", |b| {
            b.to_async(&rt).iter(|| {
                let mut svc = svc.clone();
                async move {
                    let mut req = http::Request::new(());
                    req.extensions_mut()
                        .insert(ipgate::ClientIp("192.0.2.7".parse().unwrap()));
                    let svc = svc.ready().await.unwrap();
                    black_box(svc.call(req).await.unwrap())
                }
            })
        });
    }
    let h = metrics::histogram!(ipgate::metrics::DECISION_SECONDS);
    g.bench_function("timing", |b| {
        b.iter(|| {
            let t = ipgate::clock::Moment::now();
            h.record(black_box(t).elapsed().as_secs_f64());
        })
    });
    let d_allow = rt.block_on(gate.decide(allowed));
    let d_block = rt.block_on(gate.decide(blocked));
    g.bench_function("status_record_allowed", |b| {
        b.iter(|| gate.activity().record(black_box(&d_allow)))
    });
    g.bench_function("status_record_blocked", |b| {
        b.iter(|| gate.activity().record(black_box(&d_block)))
    });
    // Four threads recording at once (contention on the one mutex): time per record.
    let gate = Arc::new(gate);
    g.bench_function("status_record_4_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let gate = gate.clone();
                    let d = d_allow.clone();
                    s.spawn(move || {
                        for _ in 0..iters / 4 {
                            gate.activity().record(&d);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
