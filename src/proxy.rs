//! Forwarding to the upstream: streamed bodies both ways, header hygiene, X-Forwarded-*,
//! WebSocket upgrades, 502 on upstream failure and 504 on upstream timeout.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::bans::Bans;
use crate::decision::Decision;
use crate::headers;
use crate::snapshot::Snapshot;
use crate::upstream_connect::UpstreamConnector;
use crate::upstream_deadline::Bounded;
use crate::upstream_h1::BodyError;
use crate::upstream_pool::{Pool, PoolError, UpstreamBody};

/// The proxy's response body: the upstream's, streamed as it comes, or a short text of
/// the gateway's own. Not boxed: a response costs no allocation for its body type.
pub(crate) enum ProxyBody {
    /// The upstream's body (its connection goes back to the pool at its end).
    Upstream(UpstreamBody<UpstreamConnector>),
    /// The gateway's own (an error text; empty after an upgrade).
    Local(Full<Bytes>),
}

impl hyper::body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|n| match n {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => hyper::body::Body::is_end_stream(b),
            ProxyBody::Local(b) => hyper::body::Body::is_end_stream(b),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ProxyBody::Upstream(b) => hyper::body::Body::size_hint(b),
            ProxyBody::Local(b) => hyper::body::Body::size_hint(b),
        }
    }
}

/// The connection slot (of `max_connections`) a request's connection holds. An
/// upgraded connection (WebSocket) takes it into its tunnel, so tunnels count against
/// the limit and are waited for on shutdown.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] pub(crate) Arc<tokio::sync::OwnedSemaphorePermit>);

type UpstreamPool = Pool<UpstreamConnector>;

/// The forwarding service, behind the gate's layer. Cheap to clone; reads the upstream
/// and its settings from the snapshot the request was decided on, so a reload changes
/// where new requests go and never splits one request between two configurations.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// Shared: the proxy is cloned for every request.
    shared: Arc<Shared>,
}

struct Shared {
    pool: UpstreamPool,
    tls: bool,
    bans: Bans,
    /// Registered once: recording must not look the metric up per request.
    upstream_seconds: metrics::Histogram,
}

/// How often an open tunnel checks whether its client has been banned since.
const BAN_CHECK: Duration = Duration::from_millis(200);

impl Proxy {
    /// A proxy; `tls` tells whether clients reach us over TLS (X-Forwarded-Proto).
    /// At most `max_upstream` upstream connections are open at once; idle pooled ones
    /// are closed after `pool_idle`. Open tunnels end when `bans` covers their client.
    pub(crate) fn new(tls: bool, max_upstream: usize, pool_idle: Duration, bans: Bans) -> Proxy {
        let pool = Pool::new(UpstreamConnector::new(), pool_idle, max_upstream);
        Proxy {
            shared: Arc::new(Shared {
                pool,
                tls,
                bans,
                upstream_seconds: metrics::histogram!(crate::metrics::UPSTREAM_SECONDS),
            }),
        }
    }
}

/// A plain-text response from the gateway itself.
pub(crate) fn text_response(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        msg.as_bytes(),
    ))));
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

impl Proxy {
    /// Forwards a request the gate let through: `live` is the snapshot it was decided
    /// on, `peer` the connection's peer, `conn_slot` the connection's slot when the
    /// request asks for an upgrade (a tunnel takes it).
    ///
    /// Not an `async fn`: its arguments would be copied into the future twice (the
    /// request is 264 bytes), and the future is moved with every request.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn forward<'a>(
        &'a self,
        mut req: Request<Incoming>,
        live: &'a Snapshot,
        decision: &'a Decision,
        peer: IpAddr,
        conn_slot: Option<ConnSlot>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        async move {
            let Some(upstream) = live.upstream() else {
                crate::metrics::upstream_error("no_upstream");
                return text_response(StatusCode::BAD_GATEWAY, "no upstream configured\n");
            };
            let cfg = live.config();

            // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
            if req.version() == Version::HTTP_11
                && req.headers().get_all(header::HOST).iter().count() != 1
            {
                return text_response(StatusCode::BAD_REQUEST, "missing or repeated Host\n");
            }
            let upgrade = upgrade_protocol(req.headers());
            let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

            let orig_host = req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let target = match upstream.origin_for(req.uri().path_and_query()) {
                Ok(t) => t,
                Err(_) => return text_response(StatusCode::BAD_REQUEST, "bad request target\n"),
            };

            let trusted = live.resolver().is_trusted(peer);
            // From an untrusted peer the chain is the peer alone: no walk, no allocation.
            let walked;
            let chain: &[IpAddr] = if trusted {
                walked = live
                    .resolver()
                    .chain(peer, req.headers())
                    .unwrap_or_else(|_| vec![peer]);
                &walked
            } else {
                std::slice::from_ref(&peer)
            };
            let proto = if self.shared.tls { "https" } else { "http" };
            let h = req.headers_mut();
            headers::prepare_request(h, chain, trusted, proto, orig_host.as_ref());
            let host = if cfg.preserve_host {
                orig_host
            } else {
                upstream.host().cloned()
            }
            // An HTTP/1.0 request may come without any Host: the upstream's then.
            .or_else(|| upstream.host().cloned());
            if let Some(host) = host {
                h.insert(header::HOST, host);
            }
            if let Some(proto) = &upgrade {
                h.insert(header::UPGRADE, proto.clone());
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            if cfg.upstream_headers {
                enrich(h, decision);
            }
            if let Some(target) = target {
                *req.uri_mut() = target;
            }
            // An HTTP/1.x request's future is polled by its connection's watchdog; an
            // HTTP/2 stream's runs in a task of its own.
            let polled_by_watchdog = req.version() <= Version::HTTP_11;
            *req.version_mut() = Version::HTTP_11;

            let client_ip = decision.client_ip;
            let started = crate::clock::Moment::now();
            // One clock reading for the timeout, the pool's idle check and the metric.
            let sent = Bounded::new(
                std::pin::pin!(
                    self.shared
                        .pool
                        .send_at(upstream.pool_key(), &mut req, started)
                ),
                cfg.limits.upstream_timeout.0,
                polled_by_watchdog,
                started,
            )
            .await;
            self.shared
                .upstream_seconds
                .record(started.elapsed().as_secs_f64());
            let resp = match sent {
                Err(_) => {
                    crate::metrics::upstream_error("timeout");
                    tracing::warn!(upstream = %upstream.authority(), "upstream timed out");
                    return text_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
                }
                // A body the client garbles (bad chunked framing) fails the upstream
                // request: that is the client's error (400), not the upstream's (502).
                Ok(Err(PoolError::ClientBody(e))) => {
                    tracing::debug!(error = %e, "the client's request body was malformed");
                    return text_response(StatusCode::BAD_REQUEST, "malformed request body\n");
                }
                Ok(Err(e)) => {
                    crate::metrics::upstream_error(if e.is_connect() {
                        "connect"
                    } else {
                        "request"
                    });
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
                    tracing::warn!(
                        "upstream switched protocols without a matching upgrade request"
                    );
                    return text_response(StatusCode::BAD_GATEWAY, "bad upgrade from upstream\n");
                };
                // The upgraded connection leaves the pool for good.
                let (parts, body) = resp.into_parts();
                let Some(mut upstream_conn) = body.into_upgraded() else {
                    return text_response(StatusCode::BAD_GATEWAY, "bad upgrade from upstream\n");
                };
                let idle = cfg.limits.idle_timeout.0;
                let bans = self.shared.bans.clone();
                tokio::spawn(async move {
                    // The tunnel holds its connection's slot until it ends.
                    let _slot = conn_slot;
                    match client_upgrade.await {
                        Ok(c) => {
                            let mut c = TokioIo::new(c);
                            // What the upstream sent right after its 101 goes first.
                            let early = upstream_conn.take_buffered();
                            if !early.is_empty()
                                && let Err(e) = c.write_all(&early).await
                            {
                                tracing::debug!(error = %e, "upgraded connection ended");
                                return;
                            }
                            let banned = || bans.find(client_ip).is_some();
                            match tunnel(&mut c, upstream_conn.io_mut(), idle, banned).await {
                                Ok(Tunnel::Closed) => {}
                                Ok(Tunnel::Banned) => {
                                    tracing::info!(client = %client_ip, "tunnel closed: client banned")
                                }
                                Ok(Tunnel::Idle) => {
                                    tracing::debug!(idle = ?idle, "idle tunnel closed")
                                }
                                Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
                return Response::from_parts(parts, ProxyBody::Local(Full::new(Bytes::new())));
            }
            // Hop-by-hop headers were left out as the response was read.
            resp.map(ProxyBody::Upstream)
        }
    }
}

/// Adds x-ipgate-client-ip, -decision, -score, -country.
fn enrich(h: &mut http::HeaderMap, d: &Decision) {
    use headers::names::{X_IPGATE_CLIENT_IP, X_IPGATE_COUNTRY, X_IPGATE_DECISION, X_IPGATE_SCORE};
    if let Ok(v) = HeaderValue::from_str(&d.client_ip.to_string()) {
        h.insert(X_IPGATE_CLIENT_IP, v);
    }
    h.insert(X_IPGATE_DECISION, HeaderValue::from_static(d.outcome()));
    if let Some(score) = d.score() {
        h.insert(X_IPGATE_SCORE, HeaderValue::from(u16::from(score)));
    }
    if let Some(c) = d.country()
        && let Ok(v) = HeaderValue::from_str(c)
    {
        h.insert(X_IPGATE_COUNTRY, v);
    }
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Tunnel {
    /// Both sides closed.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A ban now covers the client.
    Banned,
}

/// Copies bytes both ways until both sides have closed, until nothing has moved in
/// either direction for `idle` (as nginx's `proxy_read_timeout` does for WebSockets), or
/// until `banned` holds (checked every [`BAN_CHECK`]).
async fn tunnel<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    banned: impl Fn() -> bool,
) -> std::io::Result<Tunnel>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    let mut last = tokio::time::Instant::now();
    let mut check = tokio::time::interval(BAN_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while a_open || b_open {
        let (from_a, n) = tokio::select! {
            n = ar.read(&mut buf_a), if a_open => (true, n),
            n = br.read(&mut buf_b), if b_open => (false, n),
            _ = tokio::time::sleep_until(last + idle) => return Ok(Tunnel::Idle),
            _ = check.tick() => {
                if banned() {
                    return Ok(Tunnel::Banned);
                }
                continue;
            }
        };
        last = tokio::time::Instant::now();
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
    use std::sync::atomic::{AtomicBool, Ordering};
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
                || false,
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
            || false,
        )
        .await;
        assert_eq!(r.unwrap(), Tunnel::Idle);
    }

    #[tokio::test]
    async fn a_tunnel_ends_when_its_client_is_banned() {
        let (_client, mut gw_client) = tokio::io::duplex(64);
        let (mut gw_upstream, _upstream) = tokio::io::duplex(64);
        let banned = AtomicBool::new(false);
        let r = tokio::join!(
            tunnel(
                &mut gw_client,
                &mut gw_upstream,
                std::time::Duration::from_secs(30),
                || banned.load(Ordering::Relaxed),
            ),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                banned.store(true, Ordering::Relaxed);
            }
        );
        assert_eq!(r.0.unwrap(), Tunnel::Banned);
    }
}
