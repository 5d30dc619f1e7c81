//! Listeners, HTTP/1.1 + h2c on one port, PROXY protocol, connection limit, header-read
//! and idle timeouts, graceful shutdown.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::gate::Gate;
use crate::layer::{Guarded, Head, guard};
use crate::proxy::{ConnSlot, Proxy, ProxyBody};
use crate::side_wake::SideWake;
pub use crate::tls::{TlsError, tls_acceptor};
pub use crate::upstream_connect::check_upstream_ca;

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
    /// The extra accept threads cannot be started, or cannot share a listener.
    #[error("cannot start the accept threads")]
    Threads(#[source] io::Error),
}

/// Binds every `listen` address of the gate's configuration. Raises the soft
/// open-files limit to the hard one first (see [`serve`]).
pub async fn bind(gate: &Gate) -> Result<Vec<TcpListener>, ServerError> {
    raise_nofile_limit();
    let mut out = Vec::new();
    for addr in gate.config().listen.iter().copied() {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

/// Activity of one connection, for the idle watchdog: counts only, so a request reads
/// no clock for it; the watchdog notices a change at its next tick.
struct Activity {
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Requests finished on this connection.
    finished: AtomicU64,
}

impl Activity {
    /// Requests started plus finished: unchanged between two ticks means no request
    /// started or finished in between.
    fn events(&self) -> u64 {
        self.requests
            .load(Ordering::Relaxed)
            .wrapping_add(self.finished.load(Ordering::Relaxed))
    }
}

/// One connection's requests: the gate's decision (the same as the layer's, with the
/// connection's peer), then the proxy, on the snapshot the request was decided on. No
/// tower stack in between: nothing boxed, no extensions, per request.
struct ConnService {
    gate: Gate,
    proxy: Proxy,
    peer_ip: IpAddr,
    /// Only an upgrade takes the connection's slot into a tunnel.
    slot: ConnSlot,
    activity: Arc<Activity>,
}

impl ConnService {
    async fn serve(&self, req: Request<Incoming>) -> http::Response<ProxyBody> {
        let snapshot = self.gate.snapshot();
        // The guard's answer ends with this statement: not kept across the forward.
        let decision = match guard(
            &self.gate,
            &snapshot,
            Some(self.peer_ip),
            Head::of(&req),
            None,
        )
        .await
        {
            Guarded::Refused(resp) => return resp.map(ProxyBody::Local),
            Guarded::Passed(decision) => decision,
        };
        let slot = req
            .headers()
            .contains_key(http::header::UPGRADE)
            .then(|| self.slot.clone());
        self.proxy
            .forward(req, &snapshot, &decision, self.peer_ip, slot)
            .await
    }
}

/// One request of a connection, counted in its [`Activity`] from its start until this
/// is dropped: with the response body (sent, or given up), or with the request's
/// future when it never got a response.
struct InFlight(Arc<ConnService>);

impl InFlight {
    fn start(conn: Arc<ConnService>) -> InFlight {
        conn.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.activity.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.activity.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct ConnBody {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for ConnBody {
    type Data = bytes::Bytes;
    type Error = crate::upstream_h1::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The idle watchdog's view of one connection: since when its counts have not moved.
struct Quiet {
    seen: u64,
    since: tokio::time::Instant,
}

impl Quiet {
    /// How long the connection has been quiet at `now`: no request in flight, and none
    /// started or finished since then (`None` while one is in flight). A change is
    /// dated to the tick that sees it, so a timeout never fires early (at most two
    /// ticks late).
    fn quiet_for(&mut self, a: &Activity, now: tokio::time::Instant) -> Option<Duration> {
        let events = a.events();
        if events != self.seen {
            self.seen = events;
            self.since = now;
        }
        (a.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| now.saturating_duration_since(self.since))
    }
}

/// Serves the gateway on `listeners` until `shutdown` resolves, then drains in-flight
/// requests for at most `shutdown_grace`. Connections are served on the caller's runtime.
pub async fn serve(
    gate: Gate,
    listeners: Vec<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_threads(gate, listeners, shutdown, 1).await
}

/// As [`serve`], with connections accepted and served on `threads` threads: the caller's
/// runtime and `threads - 1` more, each with a one-thread runtime of its own and every
/// listener. A connection stays on the thread that accepted it. With a one-thread
/// runtime for the caller and one thread per CPU, this is a thread-per-core server
/// (`ipgate run` does so when it may use more than one CPU).
pub async fn serve_threads(
    gate: Gate,
    listeners: Vec<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    threads: usize,
) -> Result<(), ServerError> {
    if gate.config().upstream.is_none() {
        return Err(ServerError::NoUpstream);
    }
    let limits = &gate.config().limits;
    let threads = threads.max(1);
    // Each extra thread's runtime has its own descriptors (epoll, waker, signal pipe)
    // and a copy of each listener.
    let thread_fds = (threads as u64 - 1).saturating_mul(3 + listeners.len() as u64);
    let budget = fd_budget(
        raise_nofile_limit().map(|n| n.saturating_sub(thread_fds)),
        limits.max_connections.min(Semaphore::MAX_PERMITS),
        limits.upstream_max_connections.min(Semaphore::MAX_PERMITS),
    );
    let max = budget.connections;
    let wanted = threads;
    let threads = serving_threads(wanted, max, listeners.len());
    if threads < wanted {
        tracing::warn!(
            threads = wanted,
            serving_threads = threads,
            max_connections = max,
            "serving threads capped at max_connections / listeners: each waiting accept loop holds a connection slot"
        );
    }
    let extra = crate::accept_threads::AcceptThreads::start(threads - 1)
        .await
        .map_err(ServerError::Threads)?;
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
    let proxy = Proxy::new(
        tls.is_some(),
        budget.upstream,
        gate.config().limits.idle_timeout.0,
        gate.bans().clone(),
    );
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr().map_or("?".into(), |a| a.to_string());
        tracing::info!(listen = %addr, threads, "gateway listening");
        let listener = if extra.is_empty() {
            listener
        } else {
            // Each thread's runtime polls its own registration of the same socket.
            let shared = listener.into_std().map_err(ServerError::Threads)?;
            for handle in extra.handles() {
                let copy = shared.try_clone().map_err(ServerError::Threads)?;
                let (gate, proxy, permits, stop, tls) = (
                    gate.clone(),
                    proxy.clone(),
                    permits.clone(),
                    stop_rx.clone(),
                    tls.clone(),
                );
                accept_tasks.push(handle.spawn(async move {
                    match TcpListener::from_std(copy) {
                        Ok(l) => accept_loop(l, gate, proxy, permits, stop, tls).await,
                        Err(e) => {
                            tracing::error!(error = %e, "an accept thread cannot poll the listener")
                        }
                    }
                }));
            }
            TcpListener::from_std(shared).map_err(ServerError::Threads)?
        };
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
    extra.stop().await;
    Ok(())
}

/// Threads to serve on: `threads`, but no more accept loops (one per listener and
/// thread, each holding a connection slot while it waits) than `max_connections` slots,
/// or a listener could be left with none.
fn serving_threads(threads: usize, max_connections: usize, listeners: usize) -> usize {
    threads.clamp(1, (max_connections / listeners.max(1)).max(1))
}

/// Descriptors kept free for everything but client and upstream connections: the
/// listeners, the admin API, the cache store, feed and provider fetches, logs.
const RESERVED_FDS: u64 = 64;

/// How many client and upstream connections fit in the descriptors this process may
/// open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FdBudget {
    connections: usize,
    upstream: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the soft limit in force after
/// (None when it cannot be read, as on platforms without rlimits).
fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// `max_connections` and `upstream_max_connections`, lowered when together they do not
/// fit in the open-files limit less [`RESERVED_FDS`]: the gateway then stops accepting
/// (clients wait in the backlog) before it runs out of descriptors, instead of failing
/// accepts and upstream connects.
fn fd_budget(nofile: Option<u64>, connections: usize, upstream: usize) -> FdBudget {
    let want = FdBudget {
        connections,
        upstream,
    };
    let Some(nofile) = nofile else {
        return want;
    };
    let avail = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if connections.saturating_add(upstream) <= avail {
        return want;
    }
    let upstream_fit = upstream.min(avail / 2).max(1);
    let got = FdBudget {
        connections: connections.min(avail.saturating_sub(upstream_fit)).max(1),
        upstream: upstream_fit,
    };
    tracing::warn!(
        open_files_limit = nofile,
        max_connections = got.connections,
        upstream_max_connections = got.upstream,
        "the open-files limit is too low for limits.max_connections + limits.upstream_max_connections: both lowered"
    );
    got
}

/// Whether an accept error means the process or system is out of descriptors or memory.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

async fn accept_loop(
    listener: TcpListener,
    gate: Gate,
    proxy: Proxy,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    const BACKOFF_START: Duration = Duration::from_millis(50);
    const BACKOFF_MAX: Duration = Duration::from_secs(1);
    let mut backoff = BACKOFF_START;
    loop {
        // Wait for a free slot before accepting: extra connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = BACKOFF_START;
                    x
                }
                Err(e) if out_of_resources(&e) => {
                    // Retrying at once would spin: back off, doubling up to a second.
                    if backoff == BACKOFF_START {
                        tracing::warn!(error = %e, "accept failed: out of resources; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
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

/// What a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocols {
    /// HTTP/1.1 or HTTP/2 with prior knowledge, told apart by the first bytes.
    Either,
    /// ALPN chose `h2`.
    Http2,
    /// ALPN chose `http/1.1`.
    Http1,
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
    // The first request must have arrived by then: PROXY header, TLS handshake,
    // protocol detection and the first request head all count.
    let first_request_by = tokio::time::Instant::now() + cfg.limits.header_read_timeout.0;
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
    let conn = Conn {
        peer,
        peer_ip,
        gate,
        proxy,
        stop,
        slot,
        first_request_by,
    };
    match tls {
        None => conn.serve(stream, Protocols::Either).await,
        Some(started_with) => {
            // The pair in force now (reloaded with the configuration); the one the
            // server started with if a reload dropped `tls` (that needs a restart).
            let acceptor = conn.gate.snapshot().tls().cloned().unwrap_or(started_with);
            let handshake =
                tokio::time::timeout_at(first_request_by, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(tls_stream)) => {
                    let protocols = match tls_stream.get_ref().1.alpn_protocol() {
                        Some(p) if p == b"h2" => Protocols::Http2,
                        Some(p) if p == b"http/1.1" => Protocols::Http1,
                        _ => Protocols::Either,
                    };
                    conn.serve(tls_stream, protocols).await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// The HTTP/2 preface.
    Http2,
    /// Anything that is not the start of the preface.
    Http1,
    /// `PRI ` (the method HTTP/1 reserves for the preface) then something else.
    BadPreface,
    /// The connection closed first.
    Closed,
}

/// Reads until the bytes are the HTTP/2 preface or differ from it; returns what was
/// read, to be replayed.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(Sniffed, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok((Sniffed::Closed, buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        let common = buf
            .iter()
            .zip(H2_PREFACE.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if common == H2_PREFACE.len() {
            return Ok((Sniffed::Http2, buf));
        }
        if common < buf.len().min(H2_PREFACE.len()) {
            let what = if common >= 4 {
                Sniffed::BadPreface
            } else {
                Sniffed::Http1
            };
            return Ok((what, buf));
        }
    }
}

/// An empty SETTINGS frame (the server preface) and GOAWAY(PROTOCOL_ERROR, last stream 0).
const GOAWAY_PROTOCOL_ERROR: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // error code PROTOCOL_ERROR
];

/// A connection whose first bytes were read already: they are read again first.
struct Replay<I> {
    head: Vec<u8>,
    pos: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.head[from..from + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One accepted connection, before its protocol is known.
struct Conn {
    peer: SocketAddr,
    peer_ip: IpAddr,
    gate: Gate,
    proxy: Proxy,
    stop: watch::Receiver<bool>,
    slot: ConnSlot,
    first_request_by: tokio::time::Instant,
}

impl Conn {
    /// Tells HTTP/1.1 from HTTP/2 (or checks the one ALPN chose), then serves.
    async fn serve<I>(self, mut io: I, protocols: Protocols)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::AsyncWriteExt;
        let peer = self.peer;
        let (sniffed, head) = match tokio::time::timeout_at(self.first_request_by, sniff(&mut io))
            .await
        {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection failed before a request");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no request within header_read_timeout; connection closed");
                return;
            }
        };
        let go_away = match (sniffed, protocols) {
            (Sniffed::Closed, _) => return,
            (Sniffed::Http2, Protocols::Http1) => {
                tracing::debug!(peer = %peer, "HTTP/2 preface after ALPN http/1.1; connection closed");
                return;
            }
            (Sniffed::BadPreface, _) | (Sniffed::Http1, Protocols::Http2) => true,
            (Sniffed::Http2, _) | (Sniffed::Http1, _) => false,
        };
        if go_away {
            tracing::debug!(peer = %peer, "invalid HTTP/2 connection preface; GOAWAY");
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = io.write_all(&GOAWAY_PROTOCOL_ERROR).await;
                let _ = io.shutdown().await;
            })
            .await;
            return;
        }
        let io = Replay { head, pos: 0, io };
        serve_io(io, self, sniffed == Sniffed::Http1).await
    }
}

async fn serve_io<I>(io: I, conn: Conn, http1: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        peer_ip,
        gate,
        proxy,
        mut stop,
        slot,
        first_request_by,
    } = conn;
    let cfg = gate.config();
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        finished: AtomicU64::new(0),
    });
    let mut quiet = Quiet {
        seen: 0,
        since: tokio::time::Instant::now(),
    };
    // Idle means no request started or finished: bytes alone (an HTTP/2 PING, say)
    // do not keep a connection open.

    let this = Arc::new(ConnService {
        gate: gate.clone(),
        proxy,
        peer_ip,
        slot,
        activity: activity.clone(),
    });
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        // In flight until the response body has been sent (or the request given up):
        // a long download or event stream is not an idle connection.
        let in_flight = InFlight::start(this.clone());
        async move {
            let resp = in_flight.0.serve(req).await;
            Ok::<_, std::convert::Infallible>(resp.map(|inner| ConnBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // header_read_timeout between HTTP/1.1 requests is the watchdog's (below), not a
    // timer hyper would arm and drop for every request.
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.limits.max_concurrent_streams);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(crate::batched_io::Batched::new(io)), svc);
    tokio::pin!(conn);
    let idle = cfg.limits.idle_timeout.0;
    let header_read = cfg.limits.header_read_timeout.0;
    // HTTP/1.1: the next request's head must be complete within header_read_timeout
    // of the previous response (its body included), as with hyper's own timer.
    let head_by = http1.then_some(header_read);
    // A quarter of the shortest timeout it enforces, and of upstream_timeout: the
    // ticks also poll a request waiting for the upstream (upstream_deadline.rs).
    let tick = (head_by
        .map_or(idle, |h| h.min(idle))
        .min(cfg.limits.upstream_timeout.0)
        / 4)
    .max(Duration::from_millis(50));
    // Once closing gracefully (GOAWAY, or the end of keep-alive), the connection gets
    // this long before it is dropped: a client that never acknowledges the GOAWAY's
    // PING, or never reads, cannot hold its slot.
    let mut close_by: Option<tokio::time::Instant> = None;
    // The timers live as long as the connection, and they and the stop signal are
    // polled only when one of them woke the task (SideWake), not on each of the several
    // wake-ups a request causes.
    let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep_until(first_request_by);
    tokio::pin!(deadline);
    let mut side = SideWake::new();
    loop {
        let stopping = stop.changed();
        tokio::pin!(stopping);
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(ConnEvent::Ended(r));
            }
            if !side.due(cx) {
                return Poll::Pending;
            }
            let mut scx = side.context();
            // Before the first request: first_request_by; once closing: close_by.
            if (close_by.is_some() || activity.requests.load(Ordering::Relaxed) == 0)
                && deadline.as_mut().poll(&mut scx).is_ready()
            {
                return Poll::Ready(ConnEvent::Deadline);
            }
            if close_by.is_none() {
                if watchdog.poll_tick(&mut scx).is_ready() {
                    return Poll::Ready(ConnEvent::Tick);
                }
                if stopping.as_mut().poll(&mut scx).is_ready() {
                    return Poll::Ready(ConnEvent::Stop);
                }
            }
            Poll::Pending
        })
        .await;
        // Whatever fired, every side future is polled again next time.
        side.rearm();
        match event {
            ConnEvent::Ended(r) => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            ConnEvent::Deadline => {
                if close_by.is_some() {
                    tracing::debug!(peer = %peer, "connection did not close gracefully in time; dropped");
                    break;
                }
                if activity.requests.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %peer, "no request within header_read_timeout; connection closed");
                    break;
                }
            }
            ConnEvent::Tick => {
                let quiet_for = quiet.quiet_for(&activity, tokio::time::Instant::now());
                if let (Some(q), Some(h)) = (quiet_for, head_by)
                    && q >= h
                {
                    tracing::debug!(peer = %peer, "no request head within header_read_timeout; connection closed");
                    break;
                }
                if quiet_for.is_some_and(|q| q >= idle) {
                    tracing::debug!(peer = %peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    let by = tokio::time::Instant::now() + cfg.limits.header_read_timeout.0;
                    close_by = Some(by);
                    deadline.as_mut().reset(by);
                }
            }
            ConnEvent::Stop => {
                conn.as_mut().graceful_shutdown();
                let by = tokio::time::Instant::now() + cfg.shutdown_grace.0;
                close_by = Some(by);
                deadline.as_mut().reset(by);
            }
        }
    }
}

/// What ended one wait of a connection's loop.
enum ConnEvent<E> {
    /// The connection ended.
    Ended(Result<(), E>),
    /// `first_request_by` (no request yet) or `close_by` (closing) passed.
    Deadline,
    /// The idle watchdog's tick.
    Tick,
    /// The server is shutting down.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_accept_loops_than_connection_slots() {
        assert_eq!(serving_threads(8, 10_000, 2), 8);
        assert_eq!(serving_threads(8, 6, 2), 3);
        assert_eq!(serving_threads(8, 1, 2), 1);
        assert_eq!(serving_threads(0, 100, 1), 1);
    }

    #[test]
    fn fd_budget_fits_both_pools_in_the_limit() {
        assert_eq!(
            fd_budget(None, 10_000, 1024),
            FdBudget {
                connections: 10_000,
                upstream: 1024
            }
        );
        assert_eq!(
            fd_budget(Some(1 << 20), 10_000, 1024),
            FdBudget {
                connections: 10_000,
                upstream: 1024
            }
        );
        let b = fd_budget(Some(4096), 10_000, 1024);
        assert_eq!(b.upstream, 1024);
        assert_eq!(b.connections, 4096 - 64 - 1024);
        let b = fd_budget(Some(256), 10_000, 1024);
        assert!(b.connections + b.upstream <= 256 - 64, "{b:?}");
        assert!(b.connections >= 1 && b.upstream >= 1);
    }

    #[test]
    fn a_connection_is_idle_only_after_a_quiet_idle_timeout_with_nothing_in_flight() {
        let a = Activity {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        };
        let t0 = tokio::time::Instant::now();
        let idle = Duration::from_secs(60);
        let mut q = Quiet { seen: 0, since: t0 };
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut idle_at = |s: u64| q.quiet_for(&a, at(s)).is_some_and(|d| d >= idle);
        assert!(!idle_at(59));
        // A request started at 50 s is seen at the 61 s tick: quiet from there.
        a.requests.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        assert!(!idle_at(61));
        // Still in flight a long time later: not idle.
        assert!(!idle_at(200));
        // It finishes: quiet again from the tick that sees it.
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.finished.fetch_add(1, Ordering::Relaxed);
        assert!(!idle_at(210));
        assert!(!idle_at(269));
        assert!(idle_at(270));
    }

    #[tokio::test]
    async fn sniff_tells_the_preface_from_http1_and_from_a_bad_preface() {
        for (bytes, want) in [
            (&H2_PREFACE[..], Sniffed::Http2),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], Sniffed::Http1),
            (
                &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..],
                Sniffed::BadPreface,
            ),
            (&b"PRI"[..], Sniffed::Closed),
        ] {
            let mut r: &[u8] = bytes;
            let (got, head) = sniff(&mut r).await.unwrap_or((Sniffed::Closed, vec![]));
            assert_eq!(got, want, "{bytes:?}");
            if want != Sniffed::Closed {
                assert_eq!(head, bytes);
            }
        }
    }
}
