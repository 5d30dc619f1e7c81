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
        .route("/", get(status_page))
        .route("/v1/status", get(status))
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
            .map(given_token)
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "admin token required: Authorization: Bearer TOKEN",
            );
            // A browser asks for a user name and password on the status page: any
            // user name, the token as password (HTTP Basic, sent again by the page's
            // own requests).
            let challenge = if req.uri().path() == "/" {
                "Basic realm=\"ipgate admin\", charset=\"UTF-8\""
            } else {
                "Bearer"
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
            return resp;
        }
    }
    next.run(req).await
}

/// The token an `Authorization` value carries: `Bearer TOKEN`, or `Basic` with the
/// token as password (any user name), for browsers.
fn given_token(value: &str) -> String {
    if let Some(t) = value.strip_prefix("Bearer ") {
        return t.to_string();
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, pw)| pw.to_string()))
        .unwrap_or_default()
}

/// Standard base64 (with or without padding); None when not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    Some(out)
}

/// The status page: one HTML file with its CSS and script, no external assets; it
/// polls `/v1/status`.
const STATUS_PAGE: &str = include_str!("status_page.html");

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

fn unix_ms(t: std::time::SystemTime) -> Option<u64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// `GET /v1/status`: everything the status page shows (docs/admin-api.md).
async fn status(State(st): State<AdminState>) -> Response {
    use crate::providers::Availability;
    let gate = &st.gate;
    let cfg = gate.config();
    let activity = gate.activity();
    let window = activity.window();
    let cache = gate.reputation_cache();
    let providers: Vec<serde_json::Value> = cache
        .as_ref()
        .map(|c| c.provider_states())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let (state, until_ms, reason) = match &p.availability {
                Availability::Ready => ("ready", None, None),
                Availability::CoolingDown { until } => ("cooling_down", unix_ms(*until), None),
                Availability::Disabled(why) => ("disabled", None, Some(why.clone())),
            };
            json!({
                "provider": p.provider.as_str(),
                "quota_limit": p.quota_limit,
                "quota_remaining": p.quota_remaining,
                "state": state,
                "cooling_down_until_ms": until_ms,
                "disabled_reason": reason,
            })
        })
        .collect();
    let cache_json = cache.as_ref().map(|c| {
        let n = c.lookup_counts();
        let asked = n.hit + n.miss + n.stale + n.coalesced;
        json!({
            "entries": c.len(),
            "max_entries": cfg.cache.max_entries,
            "lookups": n,
            "hit_rate": (asked > 0).then(|| n.hit as f64 / asked as f64),
        })
    });
    let now = std::time::SystemTime::now();
    let feeds: Vec<serde_json::Value> = gate
        .feeds()
        .status()
        .into_iter()
        .map(|f| {
            json!({
                "name": f.name,
                "source": f.source,
                "tag": f.tag.map(|t| match t {
                    crate::config::FeedTag::Tor => "tor",
                    crate::config::FeedTag::Vpn => "vpn",
                }),
                "entries": f.entries,
                "loaded": f.loaded,
                "from_store": f.from_store,
                "age_seconds": f.last_ok.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs()),
                "last_error": f.last_error,
                "refreshes": { "ok": f.refreshes_ok, "not_modified": f.refreshes_not_modified, "error": f.refreshes_error },
            })
        })
        .collect();
    let by_rule: Vec<serde_json::Value> = window
        .by_rule
        .iter()
        .map(|(rule, c)| json!({ "rule": rule, "allow": c.allow, "block": c.block, "dry_run_block": c.dry_run_block }))
        .collect();
    let redis = gate
        .shared_tier_state()
        .map(|s| s.trim_start_matches("redis: "));
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": unix_ms(now),
        "mode": match cfg.mode { crate::config::Mode::Enforce => "enforce", crate::config::Mode::DryRun => "dry_run" },
        "problems": gate.readiness_problems(),
        "redis": redis,
        "window": {
            "minutes": window.minutes,
            "by_decision": window.by_decision,
            "by_rule": by_rule,
            "per_minute": window.per_minute,
        },
        "recent": activity.recent(),
        "recent_blocked": activity.recent_blocked(),
        "providers": providers,
        "cache": cache_json,
        "feeds": feeds,
        "bans": gate.bans().list(),
    }))
    .into_response()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn basic_credentials_carry_the_token() {
        // printf 'admin:s3cret' | base64
        assert_eq!(given_token("Basic YWRtaW46czNjcmV0"), "s3cret");
        // printf ':a:b' | base64 (no user name; the password may hold a colon)
        assert_eq!(given_token("Basic OmE6Yg=="), "a:b");
        assert_eq!(given_token("Bearer xyz"), "xyz");
        assert_eq!(given_token("Basic !!!"), "");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
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
