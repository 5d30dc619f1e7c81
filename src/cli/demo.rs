//! `ipgate demo`: a demo upstream, the gateway with an embedded policy, and curl lines
//! that show what it does. Needs no network and no API key.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use ipgate::{Config, Gate, server};

use super::Failure;

/// The demo's policy; `{upstream}` and `{listen}` are filled in at start.
const DEMO_POLICY: &str = include_str!("demo_policy.yaml");
/// The offline reputation the demo's `file` provider reads.
const DEMO_REPUTATION: &str = include_str!("demo_reputation.yaml");

async fn demo_app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "hello from the demo app: path={} client={} decision={}\n",
        req.uri().path(),
        h("x-ipgate-client-ip"),
        h("x-ipgate-decision"),
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn start_demo_upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(demo_app))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Binds the demo's admin API: `admin`, or a free loopback port when it is taken.
async fn bind_admin(admin: SocketAddr) -> Result<tokio::net::TcpListener, Failure> {
    match tokio::net::TcpListener::bind(admin).await {
        Ok(l) => Ok(l),
        Err(e) => {
            tracing::warn!(listen = %admin, error = %e, "admin address taken: using a free port");
            let any = SocketAddr::new(admin.ip(), 0);
            tokio::net::TcpListener::bind(any)
                .await
                .with_context(|| format!("cannot listen on {any} (admin)"))
                .map_err(Failure::Runtime)
        }
    }
}

pub async fn demo(listen: SocketAddr, admin: SocketAddr) -> Result<(), Failure> {
    let exporter =
        ipgate::metrics::install_exporter().context("installing the metrics recorder")?;
    let upstream = start_demo_upstream().await?;
    let dir = std::env::temp_dir().join(format!("ipgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let reputation = dir.join("reputation.yaml");
    std::fs::write(&reputation, DEMO_REPUTATION)
        .with_context(|| format!("writing {}", reputation.display()))?;
    let yaml = DEMO_POLICY
        .replace("{upstream}", &format!("http://{upstream}"))
        .replace("{listen}", &listen.to_string())
        .replace("{reputation}", &reputation.display().to_string());
    let cfg = Config::from_yaml(&yaml, "embedded demo policy")
        .map_err(|e| Failure::Runtime(anyhow!("embedded demo policy: {e}")))?;
    let gate = Gate::from_config(cfg)
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
    let listeners = server::bind(&gate)
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
    // Signal handlers first: Ctrl-C stops the demo gracefully from the first line on.
    let shutdown = super::run::shutdown_signal();
    for l in &listeners {
        super::run::announce("listening on", l)?;
    }
    let addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or_else(|| anyhow!("no listener"))?;
    // The admin API on loopback, without a token: the status page, /metrics, bans.
    let admin_listener = bind_admin(admin).await?;
    let admin_addr = super::run::announce("admin listening on", &admin_listener)?;
    let render: ipgate::admin::MetricsRender = Arc::new(move || exporter.render());
    let app = ipgate::admin::router(gate.clone(), Some(render), None);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    let url = format!("http://{addr}/");
    let w = "-w ' -> HTTP %{http_code}\\n'";
    println!("ipgate demo: gateway on {url} in front of a demo app on http://{upstream}/");
    println!(
        "The demo trusts X-Forwarded-For from loopback, so each line below plays another client."
    );
    println!("Try:");
    println!(
        "curl -s {w} -H 'X-Forwarded-For: 198.51.100.20' {url}   # expect 200: allowed (default)"
    );
    println!(
        "curl -s {w} -H 'X-Forwarded-For: 192.0.2.10' {url}   # expect 200: allowed (lists.allow)"
    );
    println!(
        "curl -s {w} -H 'X-Forwarded-For: 203.0.113.7' {url}   # expect 403: blocked (lists.block)"
    );
    println!(
        "curl -s {w} -H 'Accept: application/json' -H 'X-Forwarded-For: 203.0.113.7' {url}   # expect 403: blocked, JSON answer"
    );
    println!(
        "curl -s {w} -H 'X-Forwarded-For: not-an-ip' {url}   # expect 403: invalid-client-ip (fails closed)"
    );
    // Clients the offline reputation file knows (src/cli/demo_reputation.yaml).
    for (client, expect) in [
        ("198.51.100.66", "403: a threat (block-threats)"),
        ("198.51.100.71", "403: score 71 (block-score: above 70)"),
        ("198.51.100.70", "200: score 70 is not above 70"),
        ("198.51.100.99", "403: a TOR exit (block-tor)"),
        ("198.51.100.77", "403: a VPN address (block-vpn)"),
        (
            "198.51.100.10",
            "200: a known scanner with score 90 (allow-scanners comes first)",
        ),
    ] {
        println!("curl -s {w} -H 'X-Forwarded-For: {client}' {url}   # expect {expect}");
    }
    let admin_url = format!("http://{admin_addr}");
    println!("Admin API (loopback, no token in the demo):");
    println!("  status page: {admin_url}/   (open it in a browser while you run the lines above)");
    println!("  metrics:     curl -s {admin_url}/metrics | grep ^ipgate_requests_total");
    println!(
        "  ban:         curl -s -X POST -d '{{\"cidr\":\"198.51.100.20/32\",\"ttl\":\"10m\",\"reason\":\"demo\"}}' {admin_url}/v1/bans   # then the first line answers 403"
    );
    println!("  unban:       curl -s -X DELETE {admin_url}/v1/bans/198.51.100.20/32");
    println!("Press Ctrl-C to stop.");
    let served = server::serve_threads(gate, listeners, shutdown, super::serve_threads()).await;
    let _ = std::fs::remove_dir_all(&dir);
    served.map_err(|e| Failure::Runtime(anyhow::Error::new(e)))
}
