//! An axum application guarded by ipgate.
//!
//! ```text
//! cargo run --example axum -- [policy.yaml] [listen-addr]
//! ```
//! Handlers take the gate's `Decision` as an extractor.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

async fn hello(decision: ipgate::Decision) -> String {
    format!(
        "hello {}: {} by {}\n",
        decision.client_ip,
        decision.action.as_str(),
        decision.rule()
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = match args.next() {
        Some(path) => ipgate::Config::from_file(path)?,
        None => ipgate::Config::from_yaml("lists: { block: [203.0.113.0/24] }", "inline")?,
    };
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_string());

    let gate = ipgate::Gate::from_config(config).await?;
    let app = Router::new().route("/", get(hello)).layer(gate.layer());

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
