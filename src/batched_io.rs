//! Writes that leave together. A connection's small writes are held, and one task per
//! runtime sends everything held once the tasks the runtime had already woken have run.
//! The peers on the other side (the client, the upstream), often on another core, are
//! then woken once for several answers rather than once for each: this is how an event
//! loop such as HAProxy's or nginx's times its writes, and what halves the wake-ups of
//! the processes around the gateway (docs/benchmarks.md, tenth round).
//!
//! - Writes are held only on a one-thread runtime, the gateway's thread-per-core
//!   serving; on tokio's multi-threaded runtime a task may move between threads, so the
//!   wrapper writes at once there.
//! - A write that would make more than [`HOLD_LIMIT`] bytes held is sent by the
//!   connection's own task, after what is held: a large body is not copied, and a slow
//!   reader pushes back as before.
//! - A send that meets a full socket is finished by a task of its own, with a waker of
//!   its own; the connection's writes wait behind it once [`HOLD_LIMIT`] bytes are
//!   held, its flush and shutdown until it is done. Nothing depends on the connection
//!   polling again. A connection dropped meanwhile has that send given up, as the
//!   bytes in its own buffers would be: the socket is not kept past its slot.
//! - A send that fails makes the connection's next write, flush or shutdown fail (and
//!   every one after it); its reads go on, so an answer the peer sent before closing is
//!   still read.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::{self, Handle, RuntimeFlavor};

/// At most this many bytes are held; a write beyond it sends what is held first.
const HOLD_LIMIT: usize = 16 * 1024;

/// The held buffer a connection keeps between answers; a larger one is let go once
/// sent, so idle keep-alive connections stay small.
const KEEP_CAPACITY: usize = 4 * 1024;

/// A connection whose writes may be held until the end of the runtime's round.
pub(crate) struct Batched<I> {
    shared: Arc<Shared<I>>,
    /// Whether writes are held (made on a one-thread runtime) or sent at once.
    hold: bool,
}

struct Shared<I> {
    // Locked by the connection's task and by the tasks sending for it; all on one
    // thread, except for an upstream connection taken from another thread's pool, so
    // the lock is rarely contended and never held across an await.
    state: Mutex<State<I>>,
}

struct State<I> {
    io: I,
    /// Written by the connection, not sent yet.
    out: Vec<u8>,
    /// The round it is queued on, until that round's sending task has sent it.
    queued: Option<Arc<Round>>,
    /// A send met a full socket: a task of its own finishes it (`finish`).
    stalled: bool,
    /// That task's waker, to tell it the connection was dropped.
    finisher: Option<Waker>,
    /// The connection was dropped: a stalled send is given up.
    dropped: bool,
    /// A send failed: returned by the connection's next write, flush or shutdown.
    failed: Option<io::Error>,
    /// A send failed once: every later write, flush and shutdown fails.
    broken: Option<io::ErrorKind>,
    /// A task waiting for a stalled send to end.
    waiter: Option<Waker>,
}

impl<I> Batched<I> {
    /// Wraps `io`; its writes are held when this is called on a one-thread runtime.
    pub(crate) fn new(io: I) -> Batched<I> {
        let hold = matches!(
            Handle::try_current().map(|h| h.runtime_flavor()),
            Ok(RuntimeFlavor::CurrentThread)
        );
        Batched {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    io,
                    out: Vec::new(),
                    queued: None,
                    stalled: false,
                    finisher: None,
                    dropped: false,
                    failed: None,
                    broken: None,
                    waiter: None,
                }),
            }),
            hold,
        }
    }

    fn state(&self) -> MutexGuard<'_, State<I>> {
        self.shared.state()
    }
}

impl<I> Drop for Batched<I> {
    fn drop(&mut self) {
        let finisher = {
            let mut s = self.state();
            s.dropped = true;
            s.finisher.take()
        };
        // A stalled send is given up: its task must look again.
        if let Some(w) = finisher {
            w.wake();
        }
    }
}

impl<I> Shared<I> {
    fn state(&self) -> MutexGuard<'_, State<I>> {
        // Nothing done under the lock panics; were it poisoned, the state is still
        // whole (each change to it is an assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<I> State<I> {
    /// The error a write, flush or shutdown returns after a failed send.
    fn failure(&mut self) -> Option<io::Error> {
        if let Some(e) = self.failed.take() {
            return Some(e);
        }
        self.broken
            .map(|kind| io::Error::new(kind, "an earlier send on this connection failed"))
    }

    /// Records a failed send: what is held is dropped (the connection is broken).
    fn fail(&mut self, e: io::Error) {
        self.broken = Some(e.kind());
        self.failed = Some(e);
        self.out = Vec::new();
    }

    /// Keeps `cx`'s task as the one to wake when a send it waits for ends: the socket's
    /// write readiness may be taken over by a sending task meanwhile, which then wakes
    /// this one instead. Ready: nothing is waited for any more.
    fn settle<T>(&mut self, cx: &Context<'_>, p: Poll<T>) -> Poll<T> {
        if p.is_pending() {
            match &self.waiter {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => self.waiter = Some(cx.waker().clone()),
            }
        } else {
            self.waiter = None;
        }
        p
    }
}

impl<I: AsyncWrite + Unpin> State<I> {
    /// Sends what is held and flushes, with `cx`: ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.out)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n == self.out.len() => self.out.clear(),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// [`Self::poll_send`] for the connection's own task: a failure is returned, and
    /// recorded for the calls after it.
    fn poll_send_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sent = self.poll_send(cx);
        if let Poll::Ready(Err(e)) = &sent {
            self.broken = Some(e.kind());
            self.out = Vec::new();
        }
        self.settle(cx, sent)
    }

    /// Sends what is held, for its round's sending task.
    fn send_held(&mut self) -> Outcome {
        self.queued = None;
        if self.stalled {
            return Outcome::Sent(None);
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_send(&mut cx) {
            Poll::Ready(Ok(())) => Outcome::Sent(None),
            Poll::Ready(Err(e)) => {
                self.fail(e);
                Outcome::Sent(self.waiter.take())
            }
            Poll::Pending => {
                self.stalled = true;
                Outcome::Stalled
            }
        }
    }
}

impl<I: AsyncWrite + Unpin + Send + 'static> Batched<I> {
    /// Queues the connection on its runtime's round, once per round. Without a
    /// one-thread runtime here to send it later, it is sent now (what cannot go now is
    /// left to a task of its own).
    fn queue(&self, mut s: MutexGuard<'_, State<I>>) {
        if s.queued.as_ref().is_some_and(|r| r.is_alive()) {
            return;
        }
        match Round::current() {
            Some(round) => {
                s.queued = Some(round.clone());
                drop(s);
                round.push(self.shared.clone());
            }
            None => {
                let held = s.send_held();
                drop(s);
                held.follow_up(&self.shared);
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Batched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.state().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Batched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let hold = self.hold;
        let mut s = self.state();
        if let Some(e) = s.failure() {
            return Poll::Ready(Err(e));
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let fits = s.out.len() + len <= HOLD_LIMIT;
        if s.stalled {
            // Behind the stalled send, up to the limit.
            if !fits {
                return s.settle(cx, Poll::Pending);
            }
        } else if !hold || !fits {
            if !s.out.is_empty() {
                std::task::ready!(s.poll_send_own(cx))?;
            }
            if !hold || len > HOLD_LIMIT {
                let wrote = Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
                return s.settle(cx, wrote);
            }
        }
        s.out.reserve(len);
        for b in bufs {
            s.out.extend_from_slice(b);
        }
        // Queued now, not at the flush: a writer that never flushes (as plain sockets
        // allow) still has its bytes sent.
        if !s.stalled {
            self.queue(s);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let hold = self.hold;
        let mut s = self.state();
        if let Some(e) = s.failure() {
            return Poll::Ready(Err(e));
        }
        if s.stalled {
            return s.settle(cx, Poll::Pending);
        }
        if s.out.is_empty() || !hold {
            return s.poll_send_own(cx);
        }
        // Queued by the write, and again if that round's runtime has ended since:
        // what is held leaves at the end of the round.
        self.queue(s);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.state();
        if let Some(e) = s.failure() {
            return Poll::Ready(Err(e));
        }
        if s.stalled {
            return s.settle(cx, Poll::Pending);
        }
        std::task::ready!(s.poll_send_own(cx))?;
        let shut = Pin::new(&mut s.io).poll_shutdown(cx);
        s.settle(cx, shut)
    }
}

/// What a round's send left to do.
enum Outcome {
    /// Sent, or failed; the task that waited for it, to wake.
    Sent(Option<Waker>),
    /// Stalled: a task of its own must finish it.
    Stalled,
}

impl Outcome {
    fn follow_up<I: AsyncWrite + Unpin + Send + 'static>(self, shared: &Arc<Shared<I>>) {
        match self {
            Outcome::Sent(Some(w)) => w.wake(),
            Outcome::Sent(None) => {}
            Outcome::Stalled => start_finish(shared.clone()),
        }
    }
}

/// A connection with bytes held, as its round sees it.
trait Held: Send + Sync {
    /// Sends what is held; a send that stalls is handed to a task of its own.
    fn send_held(self: Arc<Self>);
}

impl<I: AsyncWrite + Unpin + Send + 'static> Held for Shared<I> {
    fn send_held(self: Arc<Self>) {
        let held = self.state().send_held();
        held.follow_up(&self);
    }
}

/// Starts the task that finishes a stalled send. Without a runtime to run it, the send
/// fails (the connection's next write, flush or shutdown says so).
fn start_finish<I: AsyncWrite + Unpin + Send + 'static>(shared: Arc<Shared<I>>) {
    let guard = Finishing {
        shared,
        done: false,
    };
    if let Ok(h) = Handle::try_current() {
        h.spawn(tokio::task::unconstrained(finish(guard)));
    }
}

/// A stalled send being finished. Dropped before it is done (given up, or its task
/// dropped with its runtime), it marks the send failed and wakes whoever waits.
struct Finishing<I> {
    shared: Arc<Shared<I>>,
    done: bool,
}

impl<I> Drop for Finishing<I> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waiter = {
            let mut s = self.shared.state();
            s.stalled = false;
            s.finisher = None;
            s.fail(io::Error::other("a stalled send was given up"));
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

/// Finishes a stalled send with a waker of its own, then wakes whoever waits for it;
/// gives up once the connection is dropped.
async fn finish<I: AsyncWrite + Unpin>(mut task: Finishing<I>) {
    std::future::poll_fn(|cx| {
        let mut s = task.shared.state();
        match s.poll_send(cx) {
            Poll::Ready(done) => {
                if let Err(e) = done {
                    s.fail(e);
                }
                s.stalled = false;
                s.finisher = None;
                let waiter = s.waiter.take();
                drop(s);
                task.done = true;
                if let Some(w) = waiter {
                    w.wake();
                }
                Poll::Ready(())
            }
            Poll::Pending if s.dropped => Poll::Ready(()),
            Poll::Pending => {
                s.finisher = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// One runtime's connections with bytes held, and its sending task.
struct Round {
    runtime: runtime::Id,
    /// Cleared when the sending task ends (with its runtime).
    alive: AtomicBool,
    inner: Mutex<RoundInner>,
}

#[derive(Default)]
struct RoundInner {
    held: Vec<Arc<dyn Held>>,
    /// The sending task's waker while it waits for work.
    sender: Option<Waker>,
}

thread_local! {
    /// The rounds of the one-thread runtimes this thread has written on: one, unless
    /// runtimes take turns on it.
    static ROUNDS: RefCell<Vec<Arc<Round>>> = const { RefCell::new(Vec::new()) };
}

impl Round {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    fn inner(&self) -> MutexGuard<'_, RoundInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The round of the one-thread runtime this thread is in, its sending task started
    /// if need be; none outside such a runtime.
    fn current() -> Option<Arc<Round>> {
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let id = handle.id();
        ROUNDS
            .try_with(|rounds| {
                let mut rounds = rounds.borrow_mut();
                if let Some(r) = rounds.iter().find(|r| r.runtime == id && r.is_alive()) {
                    return Some(r.clone());
                }
                // Rounds whose runtime ended go; what they held went with their task.
                rounds.retain(|r| r.is_alive());
                let round = Arc::new(Round {
                    runtime: id,
                    alive: AtomicBool::new(true),
                    inner: Mutex::new(RoundInner::default()),
                });
                rounds.push(round.clone());
                handle.spawn(tokio::task::unconstrained(sender(Alive(round.clone()))));
                Some(round)
            })
            // This thread is ending: no round here.
            .ok()
            .flatten()
    }

    /// Adds a connection, waking the sending task if it waits.
    fn push(&self, held: Arc<dyn Held>) {
        let sender = {
            let mut inner = self.inner();
            inner.held.push(held);
            inner.sender.take()
        };
        if let Some(w) = sender {
            w.wake();
        }
    }
}

/// Marks a round's sending task ended when it is dropped.
struct Alive(Arc<Round>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
        // The connections still queued point at the round: let go of them (their next
        // write or flush queues them again, on a live round).
        let held = std::mem::take(&mut self.0.inner().held);
        drop(held);
    }
}

/// Sends what the connections of a round hold, each time it is woken. Being woken
/// puts it behind the tasks the runtime has already woken, so it runs at the end of
/// their round. It runs unconstrained by tokio's cooperative budget: a round of more
/// than 128 connections is still sent in one go.
async fn sender(round: Alive) {
    let mut taken: Vec<Arc<dyn Held>> = Vec::new();
    std::future::poll_fn(|cx| -> Poll<()> {
        loop {
            {
                let mut inner = round.0.inner();
                std::mem::swap(&mut inner.held, &mut taken);
                if taken.is_empty() {
                    inner.sender = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            for h in taken.drain(..) {
                h.send_held();
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// What the peer can read now, without waiting.
    fn readable_now(peer: &mut DuplexStream) -> Vec<u8> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0u8; 256];
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(peer).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => buf.filled().to_vec(),
            Poll::Ready(Err(e)) => panic!("read failed: {e}"),
            Poll::Pending => Vec::new(),
        }
    }

    fn one_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Reads from the peer to its end, failing the test after 5 s.
    async fn read_to_the_end(peer: &mut DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
            .await
            .expect("the peer sees the end")
            .unwrap();
        got
    }

    /// Reads `n` bytes from the peer, failing the test after 5 s.
    async fn read_exactly(peer: &mut DuplexStream, n: usize, what: &str) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: not sent"))
            .unwrap();
        got
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_of_several_connections_leave_together_after_the_round() {
        let (a, mut pa) = duplex(1024);
        let (b, mut pb) = duplex(1024);
        let (mut a, mut b) = (Batched::new(a), Batched::new(b));
        a.write_all(b"first").await.unwrap();
        a.flush().await.unwrap();
        b.write_all(b"second").await.unwrap();
        b.flush().await.unwrap();
        a.write_all(b" and more").await.unwrap();
        a.flush().await.unwrap();
        assert!(
            readable_now(&mut pa).is_empty(),
            "held until the round ends"
        );
        assert!(
            readable_now(&mut pb).is_empty(),
            "held until the round ends"
        );
        tokio::task::yield_now().await;
        assert_eq!(readable_now(&mut pa), b"first and more");
        assert_eq!(readable_now(&mut pb), b"second");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_never_flushed_still_leaves_after_the_round() {
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        a.write_all(b"no flush").await.unwrap();
        assert!(readable_now(&mut pa).is_empty());
        tokio::task::yield_now().await;
        assert_eq!(readable_now(&mut pa), b"no flush");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_multi_threaded_runtime_writes_leave_at_once() {
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        a.write_all(b"now").await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(readable_now(&mut pa), b"now");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_beyond_the_limit_leaves_at_once_after_what_is_held() {
        let (a, mut pa) = duplex(4 * HOLD_LIMIT);
        let mut a = Batched::new(a);
        a.write_all(b"head").await.unwrap();
        let big = vec![7u8; HOLD_LIMIT + 1];
        a.write_all(&big).await.unwrap();
        let mut got = Vec::new();
        loop {
            let now = readable_now(&mut pa);
            if now.is_empty() {
                break;
            }
            got.extend_from_slice(&now);
        }
        assert_eq!(
            got.len(),
            4 + big.len(),
            "sent without waiting for the round"
        );
        assert_eq!(&got[..4], b"head");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_reader_gets_every_byte_in_order() {
        // 64 bytes of room and about 60 KiB written, flushed piece by piece: most sends
        // stall, the writer waits behind them, and every byte arrives in order.
        let (a, mut pa) = duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 16];
            loop {
                let n = pa.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
        });
        let mut a = Batched::new(a);
        let mut want = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            for i in 0..2000u32 {
                let piece = format!("<{i}>").repeat(5);
                want.extend_from_slice(piece.as_bytes());
                a.write_all(piece.as_bytes()).await.unwrap();
                a.flush().await.unwrap();
            }
            a.shutdown().await.unwrap();
        })
        .await
        .expect("no hang");
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_send_is_returned_by_the_next_call() {
        let (a, pa) = duplex(1024);
        let mut a = Batched::new(a);
        drop(pa);
        a.write_all(b"to no one").await.unwrap();
        a.flush().await.unwrap();
        tokio::task::yield_now().await;
        let e = a.write_all(b"again").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_send_is_finished_without_the_connection_polling_again() {
        // The request does not fit the peer's 8 bytes of room, and the connection then
        // waits on something else entirely (as a tunnel whose other side closed, or an
        // upload waiting for the client's next piece): the rest must still be sent.
        let (a, mut pa) = duplex(8);
        let mut a = Batched::new(a);
        a.write_all(&[b'r'; 100]).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(read_exactly(&mut pa, 100, "the request").await, [b'r'; 100]);
        // The connection still works once the stall is over.
        a.write_all(b"next").await.unwrap();
        a.flush().await.unwrap();
        let mut next = [0u8; 4];
        pa.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_wait_behind_a_stalled_send_once_the_limit_is_held() {
        let (a, mut pa) = duplex(8);
        let mut a = Batched::new(a);
        let mut want = Vec::new();
        // Three times the limit, in pieces: the writer is held back, never refused, and
        // the reader (a task of its own: only the stalled send's end wakes the writer)
        // gets everything in order.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            pa.read_to_end(&mut got).await.unwrap();
            got
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            for i in 0..(3 * HOLD_LIMIT / 1000) {
                let piece = vec![(i % 251) as u8; 1000];
                a.write_all(&piece).await.unwrap();
                want.extend_from_slice(&piece);
            }
            a.shutdown().await.unwrap();
        })
        .await
        .expect("no hang");
        assert_eq!(reader.await.unwrap(), want);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_round_of_many_connections_is_sent_in_one_go() {
        // More connections than tokio's cooperative budget (128 operations per poll).
        let mut conns = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..300 {
            let (a, pa) = duplex(64);
            let mut a = Batched::new(a);
            a.write_all(b"hello").await.unwrap();
            conns.push(a);
            peers.push(pa);
        }
        tokio::task::yield_now().await;
        // Checked outside the budget too: these reads count against this task's.
        tokio::task::unconstrained(async {
            for (i, pa) in peers.iter_mut().enumerate() {
                assert_eq!(readable_now(pa), b"hello", "connection {i}");
            }
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_a_failed_send_what_the_peer_sent_is_still_read() {
        // An upstream that answers early (413, say) and closes while the request is
        // still going out: its answer must be read, not the send's error.
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        a.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        pa.write_all(b"HTTP/1.1 413 Too Large\r\n\r\n")
            .await
            .unwrap();
        drop(pa);
        tokio::task::yield_now().await;
        // Read first: the send's error is not the read's.
        let mut answer = String::new();
        a.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "HTTP/1.1 413 Too Large\r\n\r\n");
        assert_eq!(
            a.write_all(b"body").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        // The connection stays broken for writes.
        assert!(a.flush().await.is_err());
    }

    /// A stream that sends only when flushed, as a TLS stream may.
    struct SendsOnFlush {
        inner: DuplexStream,
        pending: Vec<u8>,
    }

    impl AsyncWrite for SendsOnFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.pending.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.pending.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &this.pending))?;
                this.pending.drain(..n);
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_that_sends_on_flush_is_flushed_by_the_round() {
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(SendsOnFlush {
            inner: a,
            pending: Vec::new(),
        });
        a.write_all(b"sealed").await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(readable_now(&mut pa), b"sealed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_from_a_blocking_thread_of_the_runtime_is_sent() {
        // That thread is in the runtime without running it: the round it queues on
        // must still be sent by a task of the runtime.
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                a.write_all(b"from aside").await.unwrap();
            });
            a
        })
        .await
        .unwrap();
        assert_eq!(read_exactly(&mut pa, 10, "the write").await, b"from aside");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_send_of_a_dropped_connection_is_given_up() {
        let (a, mut pa) = duplex(8);
        let mut a = Batched::new(a);
        a.write_all(&[b'z'; 100]).await.unwrap();
        tokio::task::yield_now().await;
        drop(a);
        // The peer had not read: it gets what could go without waiting, then the end;
        // the socket is not kept open for the rest.
        let got = read_to_the_end(&mut pa).await;
        assert!((8..100).contains(&got.len()), "{} bytes", got.len());
        assert!(got.iter().all(|&b| b == b'z'));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_shutdown_behind_a_stalled_send_is_woken_when_it_ends() {
        // As a tunnel's last message to a slow client, then its end: the shutdown
        // waits for the stalled send, which the round's sending task took over.
        let (a, mut pa) = duplex(8);
        let mut a = Batched::new(a);
        a.write_all(&[b's'; 100]).await.unwrap();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = Vec::new();
            pa.read_to_end(&mut got).await.unwrap();
            got
        });
        tokio::time::timeout(Duration::from_secs(2), a.shutdown())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(reader.await.unwrap(), [b's'; 100]);
    }

    #[test]
    fn a_stalled_send_whose_runtime_ended_fails_instead_of_waiting() {
        let first = one_thread_runtime();
        let (mut a, pa) = first.block_on(async {
            let (a, pa) = duplex(8);
            let mut a = Batched::new(a);
            a.write_all(&[b'q'; 100]).await.unwrap();
            tokio::task::yield_now().await;
            (a, pa)
        });
        // Its sending tasks end with it, the one finishing this send among them.
        drop(first);
        one_thread_runtime().block_on(async {
            let flushed = tokio::time::timeout(Duration::from_secs(5), a.flush())
                .await
                .expect("no hang");
            assert!(flushed.is_err());
        });
        drop(pa);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_and_drop_send_what_is_held() {
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        a.write_all(b"last words").await.unwrap();
        a.shutdown().await.unwrap();
        assert_eq!(
            readable_now(&mut pa),
            b"last words",
            "sent by shutdown itself"
        );

        let (b, mut pb) = duplex(1024);
        let mut b = Batched::new(b);
        b.write_all(b"held").await.unwrap();
        b.flush().await.unwrap();
        drop(b);
        assert_eq!(read_to_the_end(&mut pb).await, b"held");
    }

    #[test]
    fn runtimes_taking_turns_on_one_thread_each_send_their_own() {
        // The first runtime's sending task lives on while the second runs, but only
        // its own runtime polls it: the second needs one of its own.
        let (first, second) = (one_thread_runtime(), one_thread_runtime());
        for (turn, rt) in [&first, &second, &first].into_iter().enumerate() {
            rt.block_on(async {
                let (a, mut pa) = duplex(64);
                let mut a = Batched::new(a);
                a.write_all(b"turn").await.unwrap();
                let got = read_exactly(&mut pa, 4, &format!("turn {turn}")).await;
                assert_eq!(got, b"turn");
            });
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_sending_task_is_started_again_on_a_new_runtime() {
        // This thread's previous runtime (another test's, or none) may have ended with
        // its sending task: a write on a new one must still leave.
        let (a, mut pa) = duplex(1024);
        let mut a = Batched::new(a);
        a.write_all(b"x").await.unwrap();
        a.flush().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(readable_now(&mut pa), b"x");
    }
}
