//! The tower layer inside an axum application, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use common::client;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn serve(gate: ipgate::Gate, with_connect_info: bool) -> SocketAddr {
    let app = Router::new()
        .route(
            "/",
            get(|Extension(d): Extension<ipgate::Decision>| async move {
                format!("{} {} {}", d.client_ip, d.action.as_str(), d.rule())
            }),
        )
        .layer(gate.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if with_connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        } else {
            axum::serve(listener, app).await.unwrap();
        }
    });
    addr
}

async fn gate(yaml: &str) -> ipgate::Gate {
    ipgate::Gate::from_config(ipgate::Config::from_yaml(yaml, "t").unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn allowed_request_carries_the_decision() {
    let addr = serve(gate("lists: { allow: [127.0.0.1] }").await, true).await;
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "127.0.0.1 allow allow-list");
}

#[tokio::test]
async fn blocked_request_is_answered_by_the_layer() {
    let addr = serve(gate("lists: { block: [127.0.0.0/8] }").await, true).await;
    let r = client()
        .get(format!("http://{addr}/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rule"], "block-list");
}

#[tokio::test]
async fn without_connect_info_the_layer_fails_closed() {
    let addr = serve(gate("{}").await, false).await;
    let r = client()
        .get(format!("http://{addr}/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rule"], "invalid-client-ip");
    // The reason names the fix.
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("into_make_service_with_connect_info"),
        "{v}"
    );
}

/// A router whose `/` takes the decision as an extractor, with a custom block answer;
/// `/outside` is added after the layer, so it is not guarded.
async fn serve_with_extractor(gate: ipgate::Gate) -> SocketAddr {
    let app = Router::new()
        .route(
            "/",
            get(
                |d: ipgate::Decision| async move { format!("{} by {:?}", d.action.as_str(), d.by) },
            ),
        )
        .layer(gate.layer().block_with(|d, headers| {
            let ua = headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            http::Response::builder()
                .status(451)
                .header("x-blocked-rule", d.rule())
                .body(format!("custom: {} ({ua})\n", d.client_ip).into())
                .unwrap()
        }))
        .route(
            "/outside",
            get(|d: ipgate::Decision| async move { d.rule().to_string() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[tokio::test]
async fn decision_extractor_and_custom_block_answer() {
    let addr = serve_with_extractor(gate("lists: { allow: [127.0.0.1] }").await).await;
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "allow by AllowList");

    let addr = serve_with_extractor(gate("lists: { block: [127.0.0.0/8] }").await).await;
    let r = client()
        .get(format!("http://{addr}/"))
        .header("user-agent", "probe/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 451);
    assert_eq!(r.headers()["x-blocked-rule"], "block-list");
    assert_eq!(r.text().await.unwrap(), "custom: 127.0.0.1 (probe/1)\n");
}

#[tokio::test]
async fn a_route_added_after_the_layer_is_not_guarded_and_the_extractor_says_so() {
    let addr = serve_with_extractor(gate("lists: { block: [127.0.0.0/8] }").await).await;
    let r = client()
        .get(format!("http://{addr}/outside"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(text.contains("not behind ipgate's layer"), "{text}");
}

#[tokio::test]
async fn layer_honours_reload() {
    let g = gate("{}").await;
    let addr = serve(g.clone(), true).await;
    assert_eq!(
        client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    g.reload(ipgate::Config::from_yaml("lists: { block: [127.0.0.1] }", "t").unwrap())
        .await
        .unwrap();
    assert_eq!(
        client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
}

fn example_binary() -> PathBuf {
    // target/debug/deps/layer-xxxx -> target/debug/examples/axum
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("axum")
}

#[tokio::test]
async fn the_axum_example_runs() {
    let bin = example_binary();
    assert!(
        bin.exists(),
        "example not built at {} (cargo test builds examples)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "lists: { block: [127.0.0.2] }\n").unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .arg(&policy)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line.strip_prefix("listening on ").expect(&line).to_string();
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "hello 127.0.0.1: allow by default\n"
    );
    // 127.0.0.2 is blocked by the file's policy.
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let c = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    child.kill().await.unwrap();
}
