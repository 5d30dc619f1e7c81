//! Forwarding to the upstream: streamed bodies both ways, header hygiene, X-Forwarded-*,
//! WebSocket upgrades, 502 on upstream failure and 504 on upstream timeout.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use crate::decision::Decision;
use crate::headers;
use crate::layer::ClientIp;
use crate::snapshot::Pinned;

/// Errors crossing the proxy's bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The proxy's response body.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The connection slot (of `max_connections`) a request's connection holds. An
/// upgraded connection (WebSocket) takes it into its tunnel, so tunnels count against
/// the limit and are waited for on shutdown.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] pub(crate) Arc<tokio::sync::OwnedSemaphorePermit>);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// The forwarding service, behind the gate's layer. Cheap to clone; reads the upstream
/// and its settings from the snapshot the request was decided on, so a reload changes
/// where new requests go and never splits one request between two configurations.
#[derive(Clone)]
pub(crate) struct Proxy {
    client: HttpsClient,
    tls: bool,
}

impl Proxy {
    /// A proxy; `tls` tells whether clients reach us over TLS (X-Forwarded-Proto).
    pub(crate) fn new(tls: bool) -> Proxy {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Proxy { client, tls }
    }
}

/// A plain-text response from the gateway itself.
pub(crate) fn text_response(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn upgrade_protocol(req_headers: &http::HeaderMap) -> Option<HeaderValue> {
    let conn_upgrade = req_headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if conn_upgrade {
        req_headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

impl Proxy {
    async fn forward(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let (Some(decision), Some(Pinned(live))) = (
            req.extensions_mut().remove::<Decision>(),
            req.extensions_mut().remove::<Pinned>(),
        ) else {
            tracing::error!("a request reached the proxy without a decision");
            return text_response(StatusCode::INTERNAL_SERVER_ERROR, "no decision\n");
        };
        let Some(upstream) = live.upstream() else {
            crate::metrics::upstream_error("no_upstream");
            return text_response(StatusCode::BAD_GATEWAY, "no upstream configured\n");
        };
        let cfg = live.config();
        let peer = req
            .extensions()
            .get::<ClientIp>()
            .map(|c| c.0)
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));

        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let conn_slot = req.extensions_mut().remove::<ConnSlot>();

        let orig_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let uri = match upstream.uri_for(req.uri().path_and_query()) {
            Ok(u) => u,
            Err(_) => return text_response(StatusCode::BAD_REQUEST, "bad request target\n"),
        };

        let h = req.headers_mut();
        headers::remove_hop_by_hop(h);
        headers::remove_gateway_headers(h);
        let trusted = live.resolver().is_trusted(peer);
        headers::set_forwarding(
            h,
            peer,
            trusted,
            if self.tls { "https" } else { "http" },
            orig_host.as_ref(),
        );
        let host = if cfg.preserve_host {
            orig_host
        } else {
            HeaderValue::from_str(upstream.authority().as_str()).ok()
        };
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        if let Some(proto) = &upgrade {
            h.insert(header::UPGRADE, proto.clone());
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if cfg.upstream_headers {
            enrich(h, &decision);
        }
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;

        let started = Instant::now();
        let sent =
            tokio::time::timeout(cfg.limits.upstream_timeout.0, self.client.request(req)).await;
        metrics::histogram!(crate::metrics::UPSTREAM_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let mut resp = match sent {
            Err(_) => {
                crate::metrics::upstream_error("timeout");
                tracing::warn!(upstream = %upstream.authority(), "upstream timed out");
                return text_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
            }
            Ok(Err(e)) => {
                crate::metrics::upstream_error(if e.is_connect() { "connect" } else { "request" });
                tracing::warn!(upstream = %upstream.authority(), error = %e, "upstream request failed");
                return text_response(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
            }
            Ok(Ok(r)) => r,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let same = match (&upgrade, resp.headers().get(header::UPGRADE)) {
                (Some(a), Some(b)) => a.as_bytes().eq_ignore_ascii_case(b.as_bytes()),
                _ => false,
            };
            let Some(client_upgrade) = client_upgrade.filter(|_| same) else {
                crate::metrics::upstream_error("bad_upgrade");
                tracing::warn!("upstream switched protocols without a matching upgrade request");
                return text_response(StatusCode::BAD_GATEWAY, "bad upgrade from upstream\n");
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let idle = cfg.limits.idle_timeout.0;
            tokio::spawn(async move {
                // The tunnel holds its connection's slot until it ends.
                let _slot = conn_slot;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        match tunnel(&mut c, &mut u, idle).await {
                            Ok(Tunnel::Closed) => {}
                            Ok(Tunnel::Idle) => tracing::debug!(idle = ?idle, "idle tunnel closed"),
                            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            return resp.map(|_| {
                http_body_util::Empty::new()
                    .map_err(|n| match n {})
                    .boxed_unsync()
            });
        }
        headers::remove_hop_by_hop(resp.headers_mut());
        resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
    }
}

/// Adds x-ipgate-client-ip, -decision, -score, -country.
fn enrich(h: &mut http::HeaderMap, d: &Decision) {
    if let Ok(v) = HeaderValue::from_str(&d.client_ip.to_string()) {
        h.insert("x-ipgate-client-ip", v);
    }
    h.insert("x-ipgate-decision", HeaderValue::from_static(d.outcome()));
    if let Some(score) = d.score() {
        h.insert("x-ipgate-score", HeaderValue::from(u16::from(score)));
    }
    if let Some(c) = d.country()
        && let Ok(v) = HeaderValue::from_str(c)
    {
        h.insert("x-ipgate-country", v);
    }
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Tunnel {
    /// Both sides closed.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Copies bytes both ways until both sides have closed, or until nothing has moved in
/// either direction for `idle` (as nginx's `proxy_read_timeout` does for WebSockets).
async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: std::time::Duration) -> std::io::Result<Tunnel>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                n = ar.read(&mut buf_a), if a_open => (true, n),
                n = br.read(&mut buf_b), if b_open => (false, n),
            }
        })
        .await;
        let Ok((from_a, n)) = step else {
            return Ok(Tunnel::Idle);
        };
        match (from_a, n?) {
            (true, 0) => {
                a_open = false;
                bw.shutdown().await?;
            }
            (false, 0) => {
                b_open = false;
                aw.shutdown().await?;
            }
            (true, n) => bw.write_all(&buf_a[..n]).await?,
            (false, n) => aw.write_all(&buf_b[..n]).await?,
        }
    }
    Ok(Tunnel::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tunnel_copies_both_ways_and_ends_when_both_close() {
        let (mut client, mut gw_client) = tokio::io::duplex(64);
        let (mut gw_upstream, mut upstream) = tokio::io::duplex(64);
        let t = tokio::spawn(async move {
            tunnel(
                &mut gw_client,
                &mut gw_upstream,
                std::time::Duration::from_secs(5),
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(client);
        drop(upstream);
        assert_eq!(t.await.unwrap().unwrap(), Tunnel::Closed);
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_closed() {
        let (_client, mut gw_client) = tokio::io::duplex(64);
        let (mut gw_upstream, _upstream) = tokio::io::duplex(64);
        let r = tunnel(
            &mut gw_client,
            &mut gw_upstream,
            std::time::Duration::from_millis(100),
        )
        .await;
        assert_eq!(r.unwrap(), Tunnel::Idle);
    }
}
