//! The admin API (docs/admin-api.md) and `/metrics`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use crate::config::parse_duration;
use crate::gate::Gate;

/// Renders the metrics in Prometheus text format.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;
/// Reloads the configuration from its file; `Err` carries every error found.
pub type Reload = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    gate: Gate,
    metrics: Option<MetricsRender>,
    reload: Option<Reload>,
}

/// The admin router. `token` (when non-empty) is required as `Authorization: Bearer`
/// on every route but `/healthz`.
pub fn router(gate: Gate, metrics: Option<MetricsRender>, reload: Option<Reload>) -> Router {
    let state = AdminState {
        gate,
        metrics,
        reload,
    };
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/decision", get(decision))
        .route("/v1/bans", get(list_bans).post(add_ban))
        .route("/v1/bans/{*cidr}", delete(remove_ban))
        .route("/v1/cache/{ip}", delete(evict))
        .route("/v1/reload", post(reload_config))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        .with_state(state)
}

async fn auth(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let cfg = st.gate.config();
    let token = cfg
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| t.0.as_str())
        .unwrap_or("");
    if !token.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "admin token required: Authorization: Bearer TOKEN",
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn readyz(State(st): State<AdminState>) -> Response {
    let problems = st.gate.readiness_problems();
    // Redis is reported, never a reason to leave the load balancer: every gateway
    // serves from its local tier while it is down.
    let redis = st
        .gate
        .shared_tier_state()
        .map(|s| format!("{s}\n"))
        .unwrap_or_default();
    if problems.is_empty() {
        (StatusCode::OK, format!("ready\n{redis}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n{redis}", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics_text(State(st): State<AdminState>) -> Response {
    match &st.metrics {
        Some(render) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no metrics exporter installed"),
    }
}

#[derive(Deserialize)]
struct DecisionQuery {
    ip: String,
    #[serde(default)]
    lookup: bool,
}

async fn decision(State(st): State<AdminState>, Query(q): Query<DecisionQuery>) -> Response {
    let Ok(ip) = q.ip.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not an IP address", q.ip),
        );
    };
    let e = st.gate.explain(ip, q.lookup).await;
    Json(json!({
        "ip": e.ip,
        "decision": e.decision,
        "verdict": e.verdict,
        "rule": e.rule,
        "reason": e.reason,
        "lists": e.lists,
        "trace": e.trace,
        "reputation": e.reputation,
        "reputation_errors": e.reputation_errors,
        "cached": e.cached,
    }))
    .into_response()
}

async fn list_bans(State(st): State<AdminState>) -> Response {
    Json(st.gate.bans().list()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    cidr: String,
    ttl: Option<String>,
    #[serde(default)]
    reason: String,
    /// Accept a network wider than [`MAX_BAN_V4`] / [`MAX_BAN_V6`].
    #[serde(default)]
    force: bool,
}

/// The widest IPv4 ban accepted without `"force": true` (`/8`).
pub const MAX_BAN_V4: u8 = 8;
/// The widest IPv6 ban accepted without `"force": true` (`/32`).
pub const MAX_BAN_V6: u8 = 32;

/// Why `cidr` may not be banned without `"force": true`, if it may not.
fn too_wide(cidr: &ipnet::IpNet) -> Option<String> {
    let (limit, family) = match cidr {
        ipnet::IpNet::V4(_) => (MAX_BAN_V4, "IPv4"),
        ipnet::IpNet::V6(_) => (MAX_BAN_V6, "IPv6"),
    };
    (cidr.prefix_len() < limit).then(|| {
        format!("refusing to ban {cidr}: {family} bans wider than /{limit} need \"force\": true")
    })
}

async fn add_ban(State(st): State<AdminState>, body: axum::body::Bytes) -> Response {
    let req: BanRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad ban request: {e}")),
    };
    let cidr = match crate::config::parse_cidr(&req.cidr) {
        Ok(c) => c.0,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !req.force
        && let Some(msg) = too_wide(&cidr)
    {
        return error(StatusCode::BAD_REQUEST, msg);
    }
    let ttl = match req.ttl.as_deref().map(parse_duration).transpose() {
        Ok(t) => t.unwrap_or(Duration::from_secs(3600)),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ban = st.gate.ban(cidr, ttl, req.reason).await;
    if req.force && too_wide(&cidr).is_some() {
        tracing::warn!(cidr = %ban.cidr, ttl = ?ttl, reason = %ban.reason, "wide ban added with force");
    } else {
        tracing::info!(cidr = %ban.cidr, ttl = ?ttl, reason = %ban.reason, "ban added");
    }
    (StatusCode::CREATED, Json(ban)).into_response()
}

async fn remove_ban(State(st): State<AdminState>, Path(cidr): Path<String>) -> Response {
    let cidr = match crate::config::parse_cidr(&cidr) {
        Ok(c) => c.0,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if st.gate.unban(cidr).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no ban on {cidr}"))
    }
}

async fn evict(State(st): State<AdminState>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{ip}` is not an IP address"),
        );
    };
    let removed = st.gate.evict(ip).await;
    Json(json!({ "ip": ip, "removed": removed })).into_response()
}

async fn reload_config(State(st): State<AdminState>) -> Response {
    match &st.reload {
        None => error(
            StatusCode::NOT_IMPLEMENTED,
            "this gate has no configuration file to reload",
        ),
        Some(r) => match r().await {
            Ok(()) => Json(json!({ "reloaded": true })).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
    }
}
