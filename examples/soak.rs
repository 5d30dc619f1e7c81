//! Soak: runs the release `ipgate` binary for a while under mixed traffic and samples
//! its resident memory and open file descriptors every 10 s. Traffic, all at once:
//! allowed and blocked HTTP/1.1 requests, look-ups of new IPs against a provider
//! emulator, h2c requests, WebSocket echo sessions, and slow clients that never finish
//! their request head. Prints the series and whether both stayed flat.
//!
//! ```text
//! cargo build --release --bin ipgate --example soak
//! target/release/examples/soak [SECONDS]          # default 600
//! ```
//! bench/soak.sh does both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    blocked: AtomicU64,
    other: AtomicU64,
    ws: AtomicU64,
    lookups: AtomicU64,
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// An IOCScout emulator: 203.0.113.x and 198.18.x.y are threats, the rest unknown.
async fn iocscout(
    State(counts): State<Arc<Counts>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    counts.lookups.fetch_add(1, Ordering::Relaxed);
    let ip = q.get("ip").cloned().unwrap_or_default();
    let threat = ip.starts_with("198.18.");
    let body = serde_json::json!({
        "ip": ip,
        "status": if threat { "threat" } else { "unknown" },
        "threat": { "score": if threat { 95 } else { 0 }, "class": if threat { vec!["attack"] } else { vec![] } },
        "net": { "tor": false, "vpn": { "detected": false }, "as": { "number": 64496 } },
        "location": { "country": "Germany" }
    });
    axum::Json(body)
}

async fn ws(up: WebSocketUpgrade) -> impl IntoResponse {
    up.on_upgrade(|mut socket| async move {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) || socket.send(m).await.is_err() {
                break;
            }
        }
    })
}

fn sample(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let counts = Arc::new(Counts::default());
    let upstream = serve(
        Router::new()
            .route("/", get(|| async { "ok\n" }))
            .route("/ws", get(ws)),
    )
    .await;
    let emulator = serve(
        Router::new()
            .route("/v1", get(iocscout))
            .with_state(counts.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("soak.yaml");
    std::fs::write(
        &policy,
        format!(
            "listen: 127.0.0.1:0
upstream: http://{upstream}
client_ip: {{ trusted_proxies: [127.0.0.1/32] }}
limits: {{ header_read_timeout: 2s, idle_timeout: 10s, max_connections: 2000 }}
providers:
  iocscout: {{ api_key: soak-key, base_url: 'http://{emulator}/v1', daily_quota: 100000000, timeout: 1s }}
lookup: {{ timeout: 1s, on_error: allow }}
cache: {{ max_entries: 10000, ttl: 1m, error_ttl: 10s }}
lists: {{ block: [203.0.113.0/24] }}
rules:
  - {{ name: block-threats, when: {{ status: threat }}, action: block }}
"
        ),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let ipgate = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("ipgate"))
        .unwrap();
    let mut child = tokio::process::Command::new(&ipgate)
        .args(["run", "-c", policy.to_str().unwrap()])
        .env("IPGATE_LOG", "ipgate=warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it: cargo build --release)",
                ipgate.display()
            )
        });
    let pid = child.id().unwrap();
    let gateway: SocketAddr = {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next_line().await.unwrap().expect("ipgate exited");
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.parse().unwrap();
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();

    // HTTP/1.1: allowed, blocked (list), new IPs (look-ups; some threats).
    for kind in 0..6u32 {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut n: u64 = u64::from(kind) * 1_000_003;
            while Instant::now() < deadline {
                n += 1;
                let ip = match kind {
                    0 | 1 => "192.0.2.10".to_string(),
                    2 => format!("203.0.113.{}", n % 250),
                    3 => format!("198.18.{}.{}", (n >> 8) % 256, n % 256),
                    _ => format!("11.{}.{}.{}", (n >> 16) % 256, (n >> 8) % 256, n % 256),
                };
                let r = client
                    .get(format!("http://{gateway}/"))
                    .header("x-forwarded-for", ip)
                    .send()
                    .await;
                let c = match r.map(|r| r.status().as_u16()) {
                    Ok(200) => &counts.ok,
                    Ok(403) => &counts.blocked,
                    _ => &counts.other,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // h2c.
    {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .http2_prior_knowledge()
                .build()
                .unwrap();
            while Instant::now() < deadline {
                let ok = client
                    .get(format!("http://{gateway}/"))
                    .header("x-forwarded-for", "192.0.2.20")
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                (if ok { &counts.ok } else { &counts.other }).fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // WebSocket sessions of 100 echoes each.
    {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok((mut s, _)) =
                    tokio_tungstenite::connect_async(format!("ws://{gateway}/ws")).await
                else {
                    counts.other.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for i in 0..100 {
                    let m = tokio_tungstenite::tungstenite::Message::text(format!("ping {i}"));
                    if s.send(m).await.is_err() || s.next().await.is_none() {
                        break;
                    }
                }
                let _ = s.close(None).await;
                counts.ws.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Slow clients: 20 at a time, a byte a second, cut off by header_read_timeout.
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(mut s) = tokio::net::TcpStream::connect(gateway).await else {
                    continue;
                };
                for b in b"GET / HTTP/1.1\r\nHost: slow\r\n" {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }

    println!(
        "| t (s) | RSS (MiB) | fds | allowed | blocked | other | WebSocket sessions | provider calls |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut series = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, fds) = sample(pid);
        series.push((rss, fds));
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            started.elapsed().as_secs(),
            rss as f64 / 1024.0,
            fds,
            counts.ok.load(Ordering::Relaxed),
            counts.blocked.load(Ordering::Relaxed),
            counts.other.load(Ordering::Relaxed),
            counts.ws.load(Ordering::Relaxed),
            counts.lookups.load(Ordering::Relaxed),
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    // Flat: the last minute's average within 10% (RSS) / 20 descriptors of the second
    // minute's (the first minute fills the cache).
    let avg = |s: &[(u64, usize)]| {
        let n = s.len().max(1) as f64;
        (
            s.iter().map(|x| x.0 as f64).sum::<f64>() / n,
            s.iter().map(|x| x.1 as f64).sum::<f64>() / n,
        )
    };
    if series.len() >= 12 {
        let early = avg(&series[6..12]);
        let late = avg(&series[series.len() - 6..]);
        println!(
            "\nRSS {:.1} -> {:.1} MiB ({:+.1}%), fds {:.0} -> {:.0}: {}",
            early.0 / 1024.0,
            late.0 / 1024.0,
            (late.0 / early.0 - 1.0) * 100.0,
            early.1,
            late.1,
            if late.0 <= early.0 * 1.10 && late.1 <= early.1 + 20.0 {
                "flat"
            } else {
                "GROWING"
            }
        );
    }
    let _ = child.kill().await;
}
