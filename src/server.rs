//! Listeners, HTTP/1.1 + h2c on one port, PROXY protocol, connection limit, header-read
//! and idle timeouts, graceful shutdown.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_layer::Layer;

use crate::gate::Gate;
use crate::layer::ClientIp;
use crate::proxy::{ConnSlot, Proxy};
pub use crate::tls::{TlsError, tls_acceptor};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A `listen` address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The certificate and key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `upstream` is missing.
    #[error(
        "`upstream` is required to run the gateway (set it in the config, or use --upstream / IPGATE_UPSTREAM)"
    )]
    NoUpstream,
}

/// Binds every `listen` address of the gate's configuration.
pub async fn bind(gate: &Gate) -> Result<Vec<TcpListener>, ServerError> {
    let mut out = Vec::new();
    for addr in gate.config().listen.iter().copied() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

/// A body error with a concrete type (hyper's builder bounds do not infer well with
/// `Box<dyn Error>` directly).
#[derive(Debug)]
pub struct BodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {}

/// Activity of one connection, for the idle watchdog.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }
}

/// Serves the gateway on `listeners` until `shutdown` resolves, then drains in-flight
/// requests for at most `shutdown_grace`.
pub async fn serve(
    gate: Gate,
    listeners: Vec<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    if gate.config().upstream.is_none() {
        return Err(ServerError::NoUpstream);
    }
    let max = gate
        .config()
        .limits
        .max_connections
        .min(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Whether the listeners speak TLS is fixed at start (a change needs a restart);
    // the certificate and key come from the snapshot, so a reload replaces them.
    let tls = match gate.snapshot().tls() {
        Some(acceptor) => Some(acceptor.clone()),
        None => match &gate.config().tls {
            Some(t) => Some(tls_acceptor(&t.cert.0, &t.key.0)?),
            None => None,
        },
    };
    let proxy = Proxy::new(tls.is_some());
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr().map_or("?".into(), |a| a.to_string());
        tracing::info!(listen = %addr, "gateway listening");
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            gate.clone(),
            proxy.clone(),
            permits.clone(),
            stop_rx.clone(),
            tls.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    let grace = gate.config().shutdown_grace.0;
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, permits.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => {
            tracing::warn!(grace = ?grace, "shutdown grace elapsed with connections still open")
        }
    }
    gate.close().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    gate: Gate,
    proxy: Proxy,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        // Wait for a free slot before accepting: extra connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let gate = gate.clone();
        let proxy = proxy.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let slot = ConnSlot(Arc::new(permit));
        tokio::spawn(async move {
            let _open = crate::metrics::OpenConnection::new();
            serve_connection(stream, peer, gate, proxy, stop, tls, slot).await;
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    gate: Gate,
    proxy: Proxy,
    stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
    slot: ConnSlot,
) {
    let _ = stream.set_nodelay(true);
    let cfg = gate.config();
    let mut peer_ip: IpAddr = peer.ip().to_canonical();
    if cfg.client_ip.proxy_protocol && gate.snapshot().resolver().is_trusted(peer_ip) {
        match crate::proxy_protocol::read_header(&mut stream, cfg.limits.header_read_timeout.0)
            .await
        {
            Ok(Some(src)) => peer_ip = src.ip().to_canonical(),
            Ok(None) => {}
            Err(e) => {
                tracing::info!(peer = %peer, error = %e, "bad PROXY protocol header; connection closed");
                return;
            }
        }
    }
    match tls {
        None => serve_io(stream, peer, peer_ip, gate, proxy, stop, slot).await,
        Some(started_with) => {
            // The pair in force now (reloaded with the configuration); the one the
            // server started with if a reload dropped `tls` (that needs a restart).
            let acceptor = gate.snapshot().tls().cloned().unwrap_or(started_with);
            let handshake =
                tokio::time::timeout(cfg.limits.header_read_timeout.0, acceptor.accept(stream))
                    .await;
            match handshake {
                Ok(Ok(tls_stream)) => {
                    serve_io(tls_stream, peer, peer_ip, gate, proxy, stop, slot).await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    peer_ip: IpAddr,
    gate: Gate,
    proxy: Proxy,
    mut stop: watch::Receiver<bool>,
    slot: ConnSlot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = gate.config();
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    // Idle means no request started or finished: bytes alone (an HTTP/2 PING, say)
    // do not keep a connection open.

    let guarded = gate.layer().pinning().layer(proxy);
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientIp(peer_ip));
        req.extensions_mut().insert(slot.clone());
        let svc = guarded.clone();
        let act = act.clone();
        act.in_flight.fetch_add(1, Ordering::Relaxed);
        act.touch();
        async move {
            let r = svc.oneshot(req).await;
            act.in_flight.fetch_sub(1, Ordering::Relaxed);
            act.touch();
            r.map(|resp| resp.map(|b| b.map_err(BodyError).boxed_unsync()))
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.limits.header_read_timeout.0)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = cfg.limits.idle_timeout.0;
    let tick = (idle / 4).max(Duration::from_millis(50));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep(tick), if !shutting_down => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= idle {
                    tracing::debug!(peer = %peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
            _ = stop.changed(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}
