//! Connections to the upstream: HTTP/1.1 on hyper's connection-level client, pooled.
//!
//! A connection serves one request at a time. It goes back to the pool when its response
//! body has been read to the end (the response's [`Lease`] sees that), with no task per
//! request; a body dropped before its end closes the connection. The most recently
//! returned connection is used first. At most `upstream_max_connections` are open (each
//! holds a permit of the connector, pooled, busy or upgraded), and idle ones are closed
//! after `pool_idle`. A reused connection that turns out closed before the request was
//! written is replaced by a new one, transparently.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service;

/// Errors crossing the pool.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a pooled connection goes: connections are reused only for the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolKey {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be opened (connect, TLS or HTTP/1.1 handshake).
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The request failed on its connection.
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper::Error),
}

impl PoolError {
    /// Whether opening the connection failed (the `connect` error label).
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }
}

/// The pool. Cheap to clone.
pub(crate) struct Pool<C, B> {
    shared: Arc<Shared<C, B>>,
}

impl<C, B> Clone for Pool<C, B> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<C, B> {
    connector: C,
    idle_timeout: Duration,
    /// One per open connection (`upstream_max_connections`), held by its task.
    permits: Arc<Semaphore>,
    /// Oldest at the front; taken from the back.
    idle: Mutex<VecDeque<Idle<B>>>,
    /// A connection was handed back: a request waiting for a permit may take it instead.
    released: Notify,
}

struct Idle<B> {
    key: PoolKey,
    sender: SendRequest<B>,
    since: Instant,
    /// The thread whose runtime runs the connection's task ([`this_thread`]).
    home: u64,
}

/// A number for the calling thread. A connection's task runs on the runtime of the
/// thread that opened it: a request served on that thread uses it without waking
/// another thread, so requests take their own thread's connections first.
fn this_thread() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

impl<C, B> Shared<C, B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<B>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the connections idle for longer than the idle timeout.
    fn prune(idle: &mut VecDeque<Idle<B>>, timeout: Duration, now: Instant) {
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= timeout)
        {
            idle.pop_front();
        }
    }
}

impl<C, B> Pool<C, B>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool opening at most `max_connections` connections with `connector`; idle
    /// connections close after `idle_timeout` (checked by a task on the current runtime,
    /// when there is one).
    pub(crate) fn new(connector: C, idle_timeout: Duration, max_connections: usize) -> Pool<C, B> {
        let shared = Arc::new(Shared {
            connector,
            idle_timeout,
            permits: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            idle: Mutex::new(VecDeque::new()),
            released: Notify::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&shared)));
        }
        Pool { shared }
    }

    /// Sends `req` (its URI in origin form) to `key`'s upstream on a pooled connection,
    /// or a new one. The response comes with the lease of its connection.
    pub(crate) async fn send(
        &self,
        key: &PoolKey,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<C, B>), PoolError> {
        loop {
            // Waiting for a permit and connecting are the rare paths: boxed, so the
            // future of every request (moved a few times on its way into hyper) stays
            // small (2 KB less).
            let (mut sender, home, reused) = match self.take(key) {
                Some((s, home)) => (s, home, true),
                None => match Box::pin(self.permit(key)).await? {
                    Some(permit) => (
                        Box::pin(self.connect(key, permit)).await?,
                        this_thread(),
                        false,
                    ),
                    // A connection came back meanwhile.
                    None => continue,
                },
            };
            // A connection handed back as its last body ended may need its task to run
            // once more before it takes the next request.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(PoolError::Connect(Box::new(e)));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: Arc::downgrade(&self.shared),
                        key: key.clone(),
                        sender: Some(sender),
                        home,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the reused connection had closed. Again, on another.
                    Some(back) if reused => req = back,
                    _ => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned open connection to `key`, if any (one of this
    /// thread's first), with its home thread.
    fn take(&self, key: &PoolKey) -> Option<(SendRequest<B>, u64)> {
        let mut idle = self.shared.lock();
        Shared::<C, B>::prune(&mut idle, self.shared.idle_timeout, Instant::now());
        let me = this_thread();
        // One pass from the most recent: this thread's first, else the most recent.
        let pick = |idle: &VecDeque<Idle<B>>| {
            let mut any = None;
            for (pos, i) in idle.iter().enumerate().rev() {
                if i.home == me {
                    if &i.key == key {
                        return Some(pos);
                    }
                } else if any.is_none() && &i.key == key {
                    any = Some(pos);
                }
            }
            any
        };
        while let Some(pos) = pick(&idle) {
            let Some(i) = idle.remove(pos) else { break };
            if !i.sender.is_closed() {
                return Some((i.sender, i.home));
            }
        }
        None
    }

    /// A permit for a new connection; `None` when a pooled connection was handed back
    /// first (take it instead). With every permit taken and idle connections to other
    /// upstreams (a reload moved the upstream), the oldest of those is closed.
    async fn permit(&self, key: &PoolKey) -> Result<Option<OwnedSemaphorePermit>, PoolError> {
        if let Ok(p) = self.shared.permits.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let released = self.shared.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        {
            let mut idle = self.shared.lock();
            if idle.iter().any(|i| &i.key == key) {
                return Ok(None);
            }
            idle.pop_front();
        }
        tokio::select! {
            p = self.shared.permits.clone().acquire_owned() => p
                .map(Some)
                .map_err(|e| PoolError::Connect(Box::new(e))),
            () = released => Ok(None),
        }
    }

    async fn connect(
        &self,
        key: &PoolKey,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<B>, PoolError> {
        let uri = Uri::builder()
            .scheme(key.scheme.clone())
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| PoolError::Connect(Box::new(e)))?;
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let io = Counted {
            io,
            _permit: permit,
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// An upstream connection and the permit it holds for as long as it is open.
struct Counted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// Closes idle connections past the idle timeout, until the pool is gone.
async fn sweep<C, B>(pool: Weak<Shared<C, B>>) {
    let every = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        let mut idle = p.lock();
        Shared::<C, B>::prune(&mut idle, p.idle_timeout, Instant::now());
    }
}

/// A response's hold on its connection: handed back to the pool by
/// [`Lease::release`] once the body has been read to its end, closed if dropped before.
pub(crate) struct Lease<C, B> {
    pool: Weak<Shared<C, B>>,
    key: PoolKey,
    sender: Option<SendRequest<B>>,
    home: u64,
}

impl<C, B> Lease<C, B> {
    /// The response is complete: the connection can serve another request.
    pub(crate) fn release(&mut self) {
        let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        pool.lock().push_back(Idle {
            key: self.key.clone(),
            sender,
            since: Instant::now(),
            home: self.home,
        });
        pool.released.notify_one();
    }

    /// The connection was upgraded (or must not be reused): it leaves the pool for good.
    pub(crate) fn forget(mut self) {
        self.sender = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream answering `hello` (or, on `/slow`, a body that ends after 300 ms),
    /// counting the connections it accepted.
    async fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body: http_body_util::combinators::BoxBody<Bytes, hyper::Error> =
                            if req.uri().path() == "/slow" {
                                Slow::default().boxed()
                            } else {
                                http_body_util::Full::new(Bytes::from_static(b"hello"))
                                    .map_err(|n| match n {})
                                    .boxed()
                            };
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// A body sending `part `, then `end` 300 ms later.
    #[derive(Default)]
    struct Slow {
        step: u8,
        wait: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Body for Slow {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
            match self.step {
                0 => {
                    self.step = 1;
                    self.wait = Some(Box::pin(tokio::time::sleep(Duration::from_millis(300))));
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                        b"part ",
                    )))))
                }
                1 => {
                    if let Some(w) = self.wait.as_mut() {
                        std::task::ready!(w.as_mut().poll(cx));
                    }
                    self.step = 2;
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                        b"end",
                    )))))
                }
                _ => Poll::Ready(None),
            }
        }
    }

    type TestPool = Pool<HttpConnector, Empty<Bytes>>;

    fn key(addr: std::net::SocketAddr) -> PoolKey {
        PoolKey {
            scheme: Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
        }
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .uri(path)
            .header("host", "x")
            .body(Empty::new())
            .unwrap()
    }

    /// Reads the body to its end, then releases its connection (what the proxy's body does).
    async fn finish(
        resp: Response<Incoming>,
        mut lease: Lease<HttpConnector, Empty<Bytes>>,
    ) -> Bytes {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        lease.release();
        body
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_ended_and_not_before() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        for _ in 0..5 {
            let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
            assert_eq!(finish(resp, lease).await, "hello");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "sequential requests share one connection"
        );

        // While a body is still streaming, its connection is not handed to anyone else.
        let (slow, slow_lease) = pool.send(&k, get("/slow")).await.unwrap();
        let (resp, lease) = tokio::time::timeout(Duration::from_secs(5), pool.send(&k, get("/")))
            .await
            .expect("a request waited behind another response's body")
            .unwrap();
        assert_eq!(finish(resp, lease).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(finish(slow, slow_lease).await, "part end");
    }

    #[tokio::test]
    async fn a_request_takes_a_connection_of_its_own_thread_first() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        // A connection opened on another thread, whose runtime runs its task.
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let (p2, k2) = (pool.clone(), k.clone());
        let other = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (r, l) = p2.send(&k2, get("/")).await.unwrap();
                finish(r, l).await;
                let _ = opened_tx.send(this_thread());
                let _ = end_rx.await;
            });
        });
        let other_home = opened_rx.await.unwrap();
        assert_ne!(other_home, this_thread());
        // Here, with none of its own, a request borrows it...
        let (slow, slow_lease) = pool.send(&k, get("/slow")).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // ...while it is busy, a connection of this thread is opened...
        let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
        assert_eq!(finish(resp, lease).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // ...and once both are idle (the other thread's returned last), this thread's
        // own comes first.
        assert_eq!(finish(slow, slow_lease).await, "part end");
        let (_, home) = pool.take(&k).unwrap();
        assert_eq!(home, this_thread());
        let (_, home) = pool.take(&k).unwrap();
        assert_eq!(home, other_home);
        let _ = end_tx.send(());
        other.join().unwrap();
    }

    #[tokio::test]
    async fn with_every_connection_busy_a_request_waits_for_one_handed_back() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_secs(30), 1);
        let k = key(addr);
        let (slow, slow_lease) = pool.send(&k, get("/slow")).await.unwrap();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            let k = k.clone();
            async move {
                let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
                finish(resp, lease).await
            }
        });
        assert_eq!(finish(slow, slow_lease).await, "part end");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request never got the handed-back connection")
            .unwrap();
        assert_eq!(got, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        let (slow, lease) = pool.send(&k, get("/slow")).await.unwrap();
        drop(slow);
        drop(lease);
        let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
        assert_eq!(finish(resp, lease).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_millis(200), 8);
        let k = key(addr);
        let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
        finish(resp, lease).await;
        assert_eq!(pool.shared.lock().len(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.shared.lock().len(), 0, "the idle connection was kept");
        let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
        finish(resp, lease).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced() {
        // An upstream that answers one request per connection, then closes it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"once"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let pool: TestPool = Pool::new(HttpConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        for _ in 0..3 {
            let (resp, lease) = pool.send(&k, get("/")).await.unwrap();
            assert_eq!(finish(resp, lease).await, "once");
        }
    }
}
