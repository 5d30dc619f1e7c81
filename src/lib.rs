//! ipgate: decides, for every request, whether the client IP may pass.
//!
//! Use it as a reverse proxy (the `ipgate` binary, feature `gateway`, on by default) or
//! inside an axum application (feature `axum`):
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//!
//! let gate = ipgate::Gate::from_config(ipgate::Config::from_file("policy.yaml")?).await?;
//! let app = Router::new()
//!     .route("/", get(|d: ipgate::Decision| async move { format!("hello {}", d.client_ip) }))
//!     .layer(gate.layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! `cargo add ipgate --no-default-features --features axum` gives the layer alone,
//! without the gateway's server, admin API and command line.
//!
//! The request path reads top to bottom: `server` → `layer` → `gate` (a [`Gate`] holds
//! the live snapshot) → `snapshot` (lists, `policy`, the reputation `cache`) →
//! `providers`; `proxy` forwards what the layer lets through. See docs/architecture.md.
#![forbid(unsafe_code)]

mod ban_sync;
mod bans;
mod block_page;
mod cache;
mod client_ip;
pub mod clock;
pub mod config;
mod decision;
mod explain;
pub mod feeds;
mod gate;
mod lists;
pub mod metrics;
mod policy;
pub mod providers;
pub mod reputation;
mod shared_tier;
mod snapshot;
pub mod status;
mod upstream;

#[cfg(feature = "axum")]
mod layer;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "gateway")]
mod accept_threads;
#[cfg(feature = "gateway")]
pub mod admin;
#[cfg(feature = "gateway")]
mod batched_io;
#[cfg(feature = "gateway")]
mod headers;
#[cfg(feature = "gateway")]
mod proxy;
#[cfg(feature = "gateway")]
mod proxy_protocol;
#[cfg(feature = "gateway")]
pub mod server;
#[cfg(feature = "gateway")]
mod side_wake;
#[cfg(feature = "gateway")]
mod tls;
#[cfg(feature = "gateway")]
mod upstream_connect;
#[cfg(feature = "gateway")]
mod upstream_deadline;
#[cfg(feature = "gateway")]
mod upstream_h1;
#[cfg(feature = "gateway")]
mod upstream_pool;

pub use bans::{Ban, Bans};
pub use block_page::{BlockBody, BlockPage, BlockPageError};
pub use cache::store::StoreError;
pub use cache::{CacheError, LookupCounts, ProviderState, ReputationCache};
pub use client_ip::ClientIpError;
pub use config::{Action, Config, ConfigError};
pub use decision::{DecidedBy, Decision, Reason};
pub use explain::Explanation;
pub use gate::{Gate, GateBuilder, GateError};
pub use lists::IpSet;
pub use policy::TraceStep;
pub use reputation::{
    Answer, ErrorSource, Lookup, NoReputation, ProviderId, Reputation, ReputationSource, Status,
    ThreatClass,
};
pub use upstream::UpstreamError;
#[cfg(feature = "gateway")]
pub use upstream_connect::UpstreamCaError;

#[cfg(feature = "axum")]
pub use layer::{BlockAnswer, ClientIp, GateBody, GateLayer, GateService, MissingDecision};
