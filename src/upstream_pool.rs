//! Connections to the upstream, pooled: HTTP/1.1 exchanges written and read in place
//! ([`crate::upstream_h1`]), one request at a time per connection.
//!
//! A connection goes back to the pool when its response body has been read to the end
//! (the [`UpstreamBody`] does that as it yields the last bytes), with no task per request
//! or per connection; a body dropped before its end closes the connection. The most
//! recently returned connection is used first, one of the calling thread's own first. At
//! most `upstream_max_connections` are open (each holds a permit, pooled, busy or
//! upgraded), and idle ones are closed after `pool_idle`. A pooled connection the upstream
//! has closed meanwhile is noticed before it is used when the runtime has seen it, and
//! otherwise when the request gets no answer on it: an idempotent request (RFC 9110
//! §9.2.2) without a body then goes again on another connection, transparently.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::Moment;
use crate::upstream_connect::{Connect, PoolKey};
use crate::upstream_h1::{BodyError, BoxError, Conn, Decode, ExchangeError, Framing};

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be opened (connect or TLS handshake).
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The request failed on its connection.
    #[error("upstream request failed: {0}")]
    Request(#[source] ExchangeError),
    /// The client's request body failed while it was being sent (the client's error).
    #[error("the client's request body failed: {0}")]
    ClientBody(#[source] BoxError),
}

impl PoolError {
    /// Whether opening the connection failed (the `connect` error label).
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }
}

/// A new connection on its way ([`Pool::open`]).
type Opening<'a, T> =
    Pin<Box<dyn Future<Output = Result<Option<Pooled<T>>, PoolError>> + Send + 'a>>;

/// A connection's I/O as the connector opens it.
type Io<C> = <C as Connect>::Io;

/// The pool. Cheap to clone.
pub(crate) struct Pool<C: Connect> {
    shared: Arc<Shared<C>>,
}

impl<C: Connect> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<C: Connect> {
    connector: C,
    idle_timeout: Duration,
    /// One per open connection (`upstream_max_connections`), held by the connection.
    permits: Arc<Semaphore>,
    /// Oldest at the front; taken from the back.
    idle: Mutex<VecDeque<Idle<Io<C>>>>,
    /// A connection was handed back: a request waiting for a permit may take it instead.
    released: Notify,
}

/// An open connection. Boxed: a TLS stream is large, and a connection moves with every
/// request and response (as does the response body holding it).
pub(crate) struct Pooled<T>(Box<Open<T>>);

struct Open<T> {
    conn: Conn<T>,
    /// Where it goes.
    key: PoolKey,
    /// The thread whose runtime's reactor the connection is registered with
    /// ([`this_thread`]).
    home: u64,
    /// Held for as long as the connection is open.
    _permit: OwnedSemaphorePermit,
}

impl<T> Pooled<T> {
    /// The connection's I/O (an upgraded connection's tunnel uses it).
    pub(crate) fn io_mut(&mut self) -> &mut T {
        &mut self.0.conn.io
    }

    /// What was read past the response head (the first bytes of an upgraded protocol).
    pub(crate) fn take_buffered(&mut self) -> BytesMut {
        self.0.conn.rbuf.split()
    }
}

struct Idle<T> {
    conn: Pooled<T>,
    since: Moment,
}

/// A number for the calling thread. A connection's socket is registered with the
/// reactor of the runtime that opened it: a request served on that thread uses it
/// without waking another thread, so requests take their own thread's connections first.
fn this_thread() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

impl<C: Connect> Shared<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<Io<C>>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the connections idle for longer than the idle timeout.
    fn prune(idle: &mut VecDeque<Idle<Io<C>>>, timeout: Duration, now: Moment) {
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= timeout)
        {
            idle.pop_front();
        }
    }
}

/// Whether a request may be sent twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<C> Pool<C>
where
    C: Connect,
{
    /// A pool opening at most `max_connections` connections with `connector`; idle
    /// connections close after `idle_timeout` (checked by a task on the current runtime,
    /// when there is one).
    pub(crate) fn new(connector: C, idle_timeout: Duration, max_connections: usize) -> Pool<C> {
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

    /// Sends `req` (its URI in origin form, its headers as they go upstream) to `key`'s
    /// upstream on a pooled connection, or a new one; its body is taken as it is sent.
    /// The response's body holds the connection until it has been read to its end.
    #[cfg(test)]
    pub(crate) async fn send<B>(
        &self,
        key: &PoolKey,
        req: &mut Request<B>,
    ) -> Result<Response<UpstreamBody<C>>, PoolError>
    where
        B: Body + Unpin,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        self.send_at(key, req, Moment::now()).await
    }

    /// As `send`, at `now` (the caller's clock reading: idle connections older than
    /// the idle timeout then are not used).
    pub(crate) async fn send_at<B>(
        &self,
        key: &PoolKey,
        req: &mut Request<B>,
        now: Moment,
    ) -> Result<Response<UpstreamBody<C>>, PoolError>
    where
        B: Body + Unpin,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        // The caller's reading holds for the first pass only: a retry comes after an
        // exchange that may have taken a while.
        let mut now = Some(now);
        loop {
            // Waiting for a permit and connecting are the rare paths: boxed, so the
            // future of every request stays small.
            let at = now.take().unwrap_or_else(Moment::now);
            let (mut conn, reused) = match self.take(key, at) {
                Some(c) => (c, true),
                None => match self.open(key).await? {
                    Some(c) => (c, false),
                    // A connection came back meanwhile.
                    None => continue,
                },
            };
            match conn.0.conn.exchange(req).await {
                Ok(got) => {
                    let mut body = UpstreamBody {
                        conn: Some(conn),
                        state: Decode::of(got.framing),
                        reusable: got.reusable,
                        upgraded: got.framing == Framing::Upgrade,
                        pool: Arc::downgrade(&self.shared),
                    };
                    if body.state == Decode::Done && !body.upgraded {
                        body.finish();
                    }
                    return Ok(Response::from_parts(got.response, body));
                }
                // The pooled connection had been closed: again, on another.
                Err(ExchangeError::Closed { stale: true })
                    if reused && idempotent(req.method()) => {}
                Err(ExchangeError::ClientBody(e)) => return Err(PoolError::ClientBody(e)),
                Err(e) => return Err(PoolError::Request(e)),
            }
        }
    }

    /// A new connection to `key` once a permit is free; `None` when a pooled one was
    /// handed back first. Boxed, made outside any `async` body: the rare path, kept
    /// out of the future of every request (which is moved several times on its way).
    fn open<'a>(&'a self, key: &'a PoolKey) -> Opening<'a, Io<C>> {
        Box::pin(async move {
            match self.permit(key).await? {
                Some(permit) => self.connect(key, permit).await.map(Some),
                None => Ok(None),
            }
        })
    }

    /// The most recently returned open connection to `key`, if any (one of this
    /// thread's first).
    fn take(&self, key: &PoolKey, now: Moment) -> Option<Pooled<Io<C>>> {
        let mut idle = self.shared.lock();
        Shared::<C>::prune(&mut idle, self.shared.idle_timeout, now);
        let me = this_thread();
        // One pass from the most recent: this thread's first, else the most recent.
        let pick = |idle: &VecDeque<Idle<Io<C>>>| {
            let mut any = None;
            for (pos, i) in idle.iter().enumerate().rev() {
                let open = &i.conn.0;
                if open.home == me {
                    if &open.key == key {
                        return Some(pos);
                    }
                } else if any.is_none() && &open.key == key {
                    any = Some(pos);
                }
            }
            any
        };
        while let Some(pos) = pick(&idle) {
            let Some(mut i) = idle.remove(pos) else { break };
            if i.conn.0.conn.looks_open() {
                return Some(i.conn);
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
            if idle.iter().any(|i| &i.conn.0.key == key) {
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
    ) -> Result<Pooled<Io<C>>, PoolError> {
        let io = self
            .shared
            .connector
            .connect(key)
            .await
            .map_err(PoolError::Connect)?;
        Ok(Pooled(Box::new(Open {
            conn: Conn::new(io),
            key: key.clone(),
            home: this_thread(),
            _permit: permit,
        })))
    }
}

/// Closes idle connections past the idle timeout, until the pool is gone.
async fn sweep<C: Connect>(pool: Weak<Shared<C>>) {
    let every = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        let mut idle = p.lock();
        Shared::<C>::prune(&mut idle, p.idle_timeout, Moment::now());
    }
}

/// A response's body, read from its connection as it is polled. The connection goes
/// back to the pool as the body's last bytes are taken, and is closed if the body is
/// dropped before its end or fails.
pub(crate) struct UpstreamBody<C: Connect> {
    conn: Option<Pooled<Io<C>>>,
    state: Decode,
    /// The connection may serve another request after this body.
    reusable: bool,
    /// A 101 answer: the connection carries another protocol ([`Self::into_upgraded`]).
    upgraded: bool,
    pool: Weak<Shared<C>>,
}

impl<C: Connect> UpstreamBody<C> {
    /// The body has been read to its end: the connection serves the next request, if
    /// it can (nothing unasked-for was read past the body).
    fn finish(&mut self) {
        self.state = Decode::Done;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.reusable || !conn.0.conn.rbuf.is_empty() {
            return;
        }
        conn.0.conn.shrink();
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        pool.lock().push_back(Idle {
            conn,
            since: Moment::now(),
        });
        pool.released.notify_one();
    }

    /// The connection of a 101 answer, which leaves the pool for good (its permit
    /// stays with it); `None` for any other answer.
    pub(crate) fn into_upgraded(mut self) -> Option<Pooled<Io<C>>> {
        if self.upgraded {
            self.conn.take()
        } else {
            None
        }
    }
}

impl<C> Body for UpstreamBody<C>
where
    C: Connect,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut().filter(|_| !this.upgraded) else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(crate::upstream_h1::poll_body(
            &mut conn.0.conn,
            &mut this.state,
            cx
        ));
        match &frame {
            Some(Err(_)) => this.conn = None,
            _ if this.state == Decode::Done => this.finish(),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.state == Decode::Done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.state {
            Decode::Done => hyper::body::SizeHint::with_exact(0),
            Decode::Length(n) => hyper::body::SizeHint::with_exact(n),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::upstream_connect::UpstreamConnector;
    use http::uri::Scheme;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
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

    type TestPool = Pool<UpstreamConnector>;

    fn key(addr: std::net::SocketAddr) -> PoolKey {
        PoolKey {
            scheme: Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
            tls: None,
        }
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .uri(path)
            .header("host", "x")
            .body(Empty::new())
            .unwrap()
    }

    /// Reads the body to its end (which hands its connection back).
    async fn finish(resp: Response<UpstreamBody<UpstreamConnector>>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_ended_and_not_before() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        for _ in 0..5 {
            let resp = pool.send(&k, &mut get("/")).await.unwrap();
            assert_eq!(finish(resp).await, "hello");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "sequential requests share one connection"
        );

        // While a body is still streaming, its connection is not handed to anyone else.
        let slow = pool.send(&k, &mut get("/slow")).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), pool.send(&k, &mut get("/")))
            .await
            .expect("a request waited behind another response's body")
            .unwrap();
        assert_eq!(finish(resp).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(finish(slow).await, "part end");
    }

    #[tokio::test]
    async fn a_request_takes_a_connection_of_its_own_thread_first() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_secs(30), 8);
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
                let r = p2.send(&k2, &mut get("/")).await.unwrap();
                finish(r).await;
                let _ = opened_tx.send(this_thread());
                let _ = end_rx.await;
            });
        });
        let other_home = opened_rx.await.unwrap();
        assert_ne!(other_home, this_thread());
        // Here, with none of its own, a request borrows it...
        let slow = pool.send(&k, &mut get("/slow")).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // ...while it is busy, a connection of this thread is opened...
        let resp = pool.send(&k, &mut get("/")).await.unwrap();
        assert_eq!(finish(resp).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // ...and once both are idle (the other thread's returned last), this thread's
        // own comes first.
        assert_eq!(finish(slow).await, "part end");
        assert_eq!(pool.take(&k, Moment::now()).unwrap().0.home, this_thread());
        assert_eq!(pool.take(&k, Moment::now()).unwrap().0.home, other_home);
        let _ = end_tx.send(());
        other.join().unwrap();
    }

    #[tokio::test]
    async fn with_every_connection_busy_a_request_waits_for_one_handed_back() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_secs(30), 1);
        let k = key(addr);
        let slow = pool.send(&k, &mut get("/slow")).await.unwrap();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            let k = k.clone();
            async move {
                let resp = pool.send(&k, &mut get("/")).await.unwrap();
                finish(resp).await
            }
        });
        assert_eq!(finish(slow).await, "part end");
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
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        let slow = pool.send(&k, &mut get("/slow")).await.unwrap();
        drop(slow);
        let resp = pool.send(&k, &mut get("/")).await.unwrap();
        assert_eq!(finish(resp).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (addr, accepted) = upstream().await;
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_millis(200), 8);
        let k = key(addr);
        let resp = pool.send(&k, &mut get("/")).await.unwrap();
        finish(resp).await;
        assert_eq!(pool.shared.lock().len(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.shared.lock().len(), 0, "the idle connection was kept");
        let resp = pool.send(&k, &mut get("/")).await.unwrap();
        finish(resp).await;
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
        let pool: TestPool = Pool::new(UpstreamConnector::new(), Duration::from_secs(30), 8);
        let k = key(addr);
        for _ in 0..3 {
            let resp = pool.send(&k, &mut get("/")).await.unwrap();
            assert_eq!(finish(resp).await, "once");
        }
    }
}
