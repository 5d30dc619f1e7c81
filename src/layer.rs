//! Tower glue: [`GateLayer`] / [`GateService`]. A blocked request is answered here; an
//! allowed one goes on with its [`Decision`] in the request extensions, where handlers
//! read it as an extractor.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//!
//! let gate = ipgate::Gate::from_config(ipgate::Config::from_yaml("lists: { block: [203.0.113.0/24] }", "inline")?).await?;
//! let app = Router::new()
//!     .route("/", get(|d: ipgate::Decision| async move { format!("hello {}", d.client_ip) }))
//!     // Everything routed above this line is guarded; routes added after it are not.
//!     .layer(gate.layer().block_with(|d, _headers| {
//!         http::Response::builder()
//!             .status(451)
//!             .body(format!("no entry for {}\n", d.client_ip).into())
//!             .unwrap_or_default()
//!     }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // The layer needs the peer address: serve with connect info (or insert ipgate::ClientIp).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! `Router::layer` wraps the routes added before it: a route added after `.layer()` is
//! not guarded. Put the layer last (or use `Router::route_layer` for matched routes only).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::decision::Decision;
use crate::gate::Gate;
use crate::snapshot::Snapshot;

/// The connection's peer address, for servers that do not provide axum's
/// `ConnectInfo<SocketAddr>`. Trusted proxies and forwarding headers still apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Body of a guarded response: the inner service's, or the gate's block answer.
pub type GateBody<B> = Either<B, Full<Bytes>>;

/// Builds the answer to a blocked request from its decision and request headers.
pub type BlockAnswer = Arc<dyn Fn(&Decision, &HeaderMap) -> Response<Full<Bytes>> + Send + Sync>;

/// Layer that guards a service with a [`Gate`].
#[derive(Clone)]
pub struct GateLayer {
    gate: Gate,
    block: Option<BlockAnswer>,
}

impl std::fmt::Debug for GateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateLayer")
            .field("custom_block_answer", &self.block.is_some())
            .finish_non_exhaustive()
    }
}

impl GateLayer {
    /// A layer over `gate`; blocked requests get the configured `block_response`.
    pub fn new(gate: Gate) -> Self {
        GateLayer { gate, block: None }
    }

    /// Answers blocked requests with `f` instead of the configured `block_response`.
    pub fn block_with(
        mut self,
        f: impl Fn(&Decision, &HeaderMap) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        self.block = Some(Arc::new(f));
        self
    }
}

impl Gate {
    /// A tower layer that guards a service with this gate.
    pub fn layer(&self) -> GateLayer {
        GateLayer::new(self.clone())
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            gate: self.gate.clone(),
            block: self.block.clone(),
            inner,
        }
    }
}

/// A service guarded by a [`Gate`].
#[derive(Clone)]
pub struct GateService<S> {
    gate: Gate,
    block: Option<BlockAnswer>,
    inner: S,
}

impl<S: std::fmt::Debug> std::fmt::Debug for GateService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The peer of a request: a [`ClientIp`] extension, else axum's `ConnectInfo`.
fn peer_of<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
        return Some(*ip);
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip())
}

/// What a request without a peer address is told, and why it is refused.
const NO_PEER: &str = "no peer address for the request: serve with into_make_service_with_connect_info::<SocketAddr>() or insert ipgate::ClientIp";

impl<S, ReqB, ResB> Service<Request<ReqB>> for GateService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<GateBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The clone is not ready; the ready one (self.inner) serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // One snapshot for the whole request: the decision keeps it.
        let snapshot = self.gate.snapshot();
        let gate = self.gate.clone();
        let block = self.block.clone();
        Box::pin(async move {
            let peer = peer_of(&req);
            match guard(&gate, &snapshot, peer, Head::of(&req), block.as_ref()).await {
                Guarded::Refused(resp) => Ok(resp.map(Either::Right)),
                Guarded::Passed(decision) => {
                    req.extensions_mut().insert(decision);
                    inner.call(req).await.map(|r| r.map(Either::Left))
                }
            }
        })
    }
}

/// What the gate reads of a request (borrowed: the body stays with the request).
#[derive(Clone, Copy)]
pub(crate) struct Head<'r> {
    pub(crate) method: &'r http::Method,
    pub(crate) uri: &'r http::Uri,
    pub(crate) headers: &'r HeaderMap,
}

impl<'r> Head<'r> {
    pub(crate) fn of<B>(req: &'r Request<B>) -> Head<'r> {
        Head {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// What the gate made of one request.
pub(crate) enum Guarded {
    /// Let through, with the decision.
    Passed(Decision),
    /// Refused: the answer to send.
    Refused(Response<Full<Bytes>>),
}

/// Decides for a request on `snapshot` (the peer as the server saw it), logs and
/// records the decision, and builds the answer to a refused request (`block`, else the
/// configured block response). The layer and the gateway's own service share it.
pub(crate) async fn guard(
    gate: &Gate,
    snapshot: &Snapshot,
    peer: Option<IpAddr>,
    req: Head<'_>,
    block: Option<&BlockAnswer>,
) -> Guarded {
    let decision = match peer {
        Some(peer) => snapshot.decide_request(peer, req.headers).await,
        None => {
            tracing::warn!("{NO_PEER}");
            snapshot.refuse_invalid(IpAddr::from([0, 0, 0, 0]), crate::Reason::fixed(NO_PEER))
        }
    };
    log_decision(req, peer, &decision);
    gate.activity().record(&decision);
    if decision.is_blocked() {
        Guarded::Refused(match block {
            Some(f) => f(&decision, req.headers),
            None => block_response(snapshot, &decision, req.headers.get(header::ACCEPT)),
        })
    } else {
        Guarded::Passed(decision)
    }
}

/// `-` for a missing value, the value itself otherwise (log fields read `peer=-`, not
/// `peer=None`).
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn header_str(req: Head<'_>, name: header::HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's host: the `Host` header, else the authority of its URI (HTTP/2).
fn host_of(req: Head<'_>) -> Option<&str> {
    header_str(req, header::HOST).or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// One line per decided request (README.md, "Observability"): INFO for a blocked
/// request and for one `mode: dry_run` lets through but would block, DEBUG for an
/// allowed one. The fields are evaluated only when the line is enabled. The path is
/// logged without its query string (which may carry tokens).
fn log_decision(req: Head<'_>, peer: Option<IpAddr>, d: &Decision) {
    if d.verdict == crate::config::Action::Block {
        let mode = if d.is_blocked() { "enforce" } else { "dry_run" };
        let message = if d.is_blocked() {
            "request blocked"
        } else {
            "request would be blocked (dry run: let through)"
        };
        tracing::info!(
            client = %d.client_ip,
            peer = %OrDash(peer),
            method = %req.method,
            host = %OrDash(host_of(req)),
            path = %req.uri.path(),
            user_agent = %OrDash(header_str(req, header::USER_AGENT)),
            rule = %d.by,
            reason = %d.reason,
            mode = %mode,
            "{message}"
        );
    } else {
        tracing::debug!(
            client = %d.client_ip,
            peer = %OrDash(peer),
            method = %req.method,
            host = %OrDash(host_of(req)),
            path = %req.uri.path(),
            user_agent = %OrDash(header_str(req, header::USER_AGENT)),
            rule = %d.by,
            "request allowed"
        );
    }
}

/// The configured block response for a decision.
fn block_response(
    snapshot: &Snapshot,
    decision: &Decision,
    accept: Option<&http::HeaderValue>,
) -> Response<Full<Bytes>> {
    let page = snapshot.block_page().render(
        decision.client_ip,
        decision.rule(),
        decision.public_reason(),
        accept,
    );
    let mut resp = Response::new(Full::new(page.body));
    *resp.status_mut() = page.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, page.content_type);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The rejection when a handler asks for a [`Decision`] on a route the layer does not
/// guard.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MissingDecision;

impl std::fmt::Display for MissingDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no ipgate decision for this request: the route is not behind ipgate's layer (routes added after `.layer(gate.layer())` are not guarded)")
    }
}

impl std::error::Error for MissingDecision {}

impl axum::response::IntoResponse for MissingDecision {
    fn into_response(self) -> axum::response::Response {
        tracing::error!("{self}");
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{self}\n")).into_response()
    }
}

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Decision {
    type Rejection = MissingDecision;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Decision>()
            .cloned()
            .ok_or(MissingDecision)
    }
}

impl<St: Send + Sync> axum::extract::OptionalFromRequestParts<St> for Decision {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &St,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Decision>().cloned())
    }
}
