//! Tower glue: `GateLayer` / `GateService`. A blocked request is answered here; an
//! allowed one goes on with its [`Decision`] in the request extensions.

use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::gate::{Decision, Gate};

/// The connection's peer address, for servers that do not provide axum's
/// `ConnectInfo<SocketAddr>`. Trusted proxies and forwarding headers still apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Body of a guarded response: the inner service's, or the gate's block page.
pub type GateBody<B> = Either<B, Full<Bytes>>;

/// Layer that guards a service with a [`Gate`].
#[derive(Clone, Debug)]
pub struct GateLayer {
    gate: Gate,
}

impl GateLayer {
    /// A layer over `gate`.
    pub fn new(gate: Gate) -> Self {
        GateLayer { gate }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            gate: self.gate.clone(),
            inner,
        }
    }
}

/// A service guarded by a [`Gate`].
#[derive(Clone, Debug)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

/// The peer of a request: a [`ClientIp`] extension, else axum's `ConnectInfo`.
pub fn peer_of<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
        return Some(*ip);
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip())
}

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
        let gate = self.gate.clone();
        Box::pin(async move {
            let decision = match peer_of(&req) {
                Some(peer) => gate.decide_request(peer, req.headers()).await,
                None => gate.decide_without_peer(),
            };
            if decision.is_blocked() {
                return Ok(block_response(
                    &gate,
                    &decision,
                    req.headers().get(header::ACCEPT),
                ));
            }
            if decision.verdict == crate::config::Action::Block {
                tracing::info!(ip = %decision.client_ip, rule = %decision.rule, "dry_run: would block");
            }
            req.extensions_mut().insert(decision);
            inner.call(req).await.map(|r| r.map(Either::Left))
        })
    }
}

/// The response for a blocked request.
pub fn block_response<B>(
    gate: &Gate,
    decision: &Decision,
    accept: Option<&http::HeaderValue>,
) -> Response<Either<B, Full<Bytes>>> {
    let page = gate.block_response(decision, accept);
    let mut resp = Response::new(Either::Right(Full::new(page.body)));
    *resp.status_mut() = page.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, page.content_type);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}
