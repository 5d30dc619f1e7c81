//! ipgate: decides, for every request, whether the client IP may pass.
//!
//! Use it as a reverse proxy (the `ipgate` binary) or inside an axum application:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//!
//! let gate = ipgate::Gate::from_config(ipgate::Config::from_file("policy.yaml")?).await?;
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(gate.layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod bans;
pub mod block_page;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod feeds;
pub mod gate;
pub mod headers;
pub mod layer;
pub mod lists;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod proxy_protocol;
pub mod reputation;
pub mod server;

pub use config::Config;
pub use gate::{Decision, Explanation, Gate, GateError};
pub use layer::{ClientIp, GateLayer, GateService};
