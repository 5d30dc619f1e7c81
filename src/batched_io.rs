//! Writes that leave together. A connection's small writes are held, and one task per
//! thread sends everything held once the tasks the runtime had already woken have run.
//! The peers on the other side (the client, the upstream), often on another core, are
//! then woken once for several answers rather than once for each: this is how an event
//! loop such as HAProxy's or nginx's times its writes, and what halves the wake-ups of
//! the processes around the gateway (docs/benchmarks.md, tenth round).
//!
//! Writes are held only on a one-thread runtime, the gateway's thread-per-core serving;
//! on tokio's multi-threaded runtime a task may move between threads, so the wrapper
//! writes at once there. A write that would make more than [`HOLD_LIMIT`] bytes held,
//! and any write after a send that could not finish, is sent by the connection's own
//! task with its own waker: a client that reads slowly pushes back as before.
//!
//! An error met while sending for a connection is returned by its next read, write or
//! flush; nothing held is dropped while the connection lives, and a connection dropped
//! with bytes held is kept open until they are sent.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::{self, Handle, RuntimeFlavor};

/// At most this many bytes are held; a write beyond it sends what is held first.
const HOLD_LIMIT: usize = 16 * 1024;

/// The held buffer a connection keeps between answers; a larger one is let go once
/// sent, so idle keep-alive connections stay small.
const KEEP_CAPACITY: usize = 8 * 1024;

/// A connection whose writes may be held until the end of the runtime's round.
pub(crate) struct Batched<I> {
    shared: Arc<Shared<I>>,
    /// Whether writes are held (made on a one-thread runtime) or sent at once.
    hold: bool,
}

struct Shared<I> {
    // Locked by the connection's task and by its thread's sending task, never both at
    // once (both run on the one thread), so the lock is never contended.
    state: Mutex<State<I>>,
}

struct State<I> {
    io: I,
    /// Written by the connection, not sent yet.
    out: Vec<u8>,
    /// In its thread's list of connections to send.
    queued: bool,
    /// A send met a full socket: the connection's own task sends the rest.
    stalled: bool,
    /// A send failed: returned by the connection's next read, write or flush.
    failed: Option<io::Error>,
    /// The connection's task, woken when a send for it stalls or fails.
    owner: Option<Waker>,
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
                    queued: false,
                    stalled: false,
                    failed: None,
                    owner: None,
                }),
            }),
            hold,
        }
    }

    fn state(&self) -> MutexGuard<'_, State<I>> {
        self.shared.state()
    }
}

impl<I: AsyncWrite + Unpin + Send + 'static> Batched<I> {
    /// Puts the connection in its thread's list, once per round, with `cx`'s task as
    /// the one to wake if the send stalls or fails. Without a one-thread runtime here
    /// to send it later, it is sent now (what does not go is the task's to send).
    fn queue(&self, mut s: MutexGuard<'_, State<I>>, cx: &mut Context<'_>) {
        match &s.owner {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.owner = Some(cx.waker().clone()),
        }
        if s.queued {
            return;
        }
        s.queued = true;
        drop(s);
        if queue(self.shared.clone()) {
            return;
        }
        let mut s = self.state();
        s.queued = false;
        match s.poll_send(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => s.failed = Some(e),
            Poll::Pending => s.stalled = true,
        }
    }
}

impl<I> Shared<I> {
    fn state(&self) -> MutexGuard<'_, State<I>> {
        // Nothing done under the lock panics; were it poisoned, the state is still
        // whole (every change to it is a single assignment).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<I: AsyncWrite + Unpin> State<I> {
    /// Sends what is held and flushes, with `cx`: ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
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
        self.stalled = false;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what is held, for the sending task: what cannot go now is left to the
    /// connection's task, woken to send it (or to see the error).
    fn send_held(&mut self) {
        if !self.queued {
            return;
        }
        self.queued = false;
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_send(&mut cx) {
            Poll::Ready(Ok(())) => return,
            Poll::Ready(Err(e)) => self.failed = Some(e),
            Poll::Pending => self.stalled = true,
        }
        if let Some(w) = &self.owner {
            w.wake_by_ref();
        }
    }

    /// Whether the connection's task must send for itself: the writes are not held, or
    /// a send for it stalled or failed.
    fn sends_itself(&self, hold: bool) -> bool {
        !hold || self.stalled || self.failed.is_some()
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.state();
        // A send that stalled or failed is this task's now: a connection that waits for
        // an answer to what it sent would otherwise never finish sending it.
        if (s.stalled || s.failed.is_some())
            && let Poll::Ready(Err(e)) = s.poll_send(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut s.io).poll_read(cx, buf)
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
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if s.sends_itself(hold) || s.out.len() + len > HOLD_LIMIT {
            if !s.out.is_empty() || s.stalled || s.failed.is_some() {
                std::task::ready!(s.poll_send(cx))?;
            }
            if !hold || len > HOLD_LIMIT {
                return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
            }
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        s.out.reserve(len);
        for b in bufs {
            s.out.extend_from_slice(b);
        }
        // Queued now, not at the flush: a writer that never flushes (as plain sockets
        // allow) still has its bytes sent.
        self.queue(s, cx);
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let hold = self.hold;
        let mut s = self.state();
        if s.out.is_empty() || s.sends_itself(hold) {
            return s.poll_send(cx);
        }
        // Queued by the write: what is held leaves at the end of the round.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.state();
        std::task::ready!(s.poll_send(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

/// A connection with bytes held.
trait Held: Send + Sync {
    fn send_held(&self);
}

impl<I: AsyncWrite + Unpin + Send> Held for Shared<I> {
    fn send_held(&self) {
        self.state().send_held();
    }
}

/// One runtime's connections with bytes held, and its sending task.
struct Round {
    runtime: runtime::Id,
    held: Vec<Arc<dyn Held>>,
    /// The sending task's waker while it waits for work.
    sender: Option<Waker>,
    /// Cleared when the sending task ends (with its runtime).
    alive: Arc<AtomicBool>,
}

thread_local! {
    /// The rounds of the one-thread runtimes run on this thread: one, unless runtimes
    /// take turns on it.
    static ROUNDS: RefCell<Vec<Round>> = const { RefCell::new(Vec::new()) };
}

/// Puts `held` in the current runtime's round, waking (or starting) its sending task:
/// false, and nothing queued, when there is no one-thread runtime here to run it.
fn queue(held: Arc<dyn Held>) -> bool {
    let Ok(handle) = Handle::try_current() else {
        return false;
    };
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return false;
    }
    let id = handle.id();
    let start = ROUNDS.with(|rounds| {
        let mut rounds = rounds.borrow_mut();
        if let Some(r) = rounds.iter_mut().find(|r| r.runtime == id)
            && r.alive.load(Ordering::Relaxed)
        {
            r.held.push(held);
            if let Some(w) = r.sender.take() {
                w.wake();
            }
            return None;
        }
        // Runtimes that ended leave what they held to this one's sending task.
        let mut inherited = vec![held];
        rounds.retain_mut(|r| {
            let ended = r.runtime == id || !r.alive.load(Ordering::Relaxed);
            if ended {
                inherited.append(&mut r.held);
            }
            !ended
        });
        let alive = Arc::new(AtomicBool::new(true));
        rounds.push(Round {
            runtime: id,
            held: inherited,
            sender: None,
            alive: alive.clone(),
        });
        Some(alive)
    });
    if let Some(alive) = start {
        handle.spawn(sender(id, Alive(alive)));
    }
    true
}

/// Marks a sending task ended when it is dropped.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Sends what the connections of `runtime` hold, each time it is woken. Being woken
/// puts it behind the tasks the runtime has already woken, so it runs at the end of
/// their round.
async fn sender(runtime: runtime::Id, alive: Alive) {
    let _alive = alive;
    let mut taken: Vec<Arc<dyn Held>> = Vec::new();
    std::future::poll_fn(|cx| -> Poll<()> {
        loop {
            ROUNDS.with(|rounds| {
                let mut rounds = rounds.borrow_mut();
                if let Some(r) = rounds.iter_mut().find(|r| r.runtime == runtime) {
                    std::mem::swap(&mut r.held, &mut taken);
                    if taken.is_empty() {
                        r.sender = Some(cx.waker().clone());
                    }
                }
            });
            if taken.is_empty() {
                return Poll::Pending;
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
        // 64 bytes of room: most sends stall, and the connection's task finishes them.
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
        for i in 0..200u32 {
            let piece = format!("<{i}>").repeat(5);
            want.extend_from_slice(piece.as_bytes());
            a.write_all(piece.as_bytes()).await.unwrap();
            a.flush().await.unwrap();
        }
        a.shutdown().await.unwrap();
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
    async fn a_stalled_send_is_finished_by_a_connection_that_only_reads() {
        // The request does not fit the peer's 8 bytes of room: the sending task stalls,
        // and the connection, waiting for the answer, must send the rest itself.
        let (a, mut pa) = duplex(8);
        let upstream = tokio::spawn(async move {
            let mut request = [0u8; 100];
            pa.read_exact(&mut request).await.unwrap();
            pa.write_all(b"answer").await.unwrap();
            request
        });
        let mut a = Batched::new(a);
        a.write_all(&[b'r'; 100]).await.unwrap();
        a.flush().await.unwrap();
        let mut buf = [0u8; 6];
        tokio::time::timeout(std::time::Duration::from_secs(5), a.read_exact(&mut buf))
            .await
            .expect("the whole request was sent")
            .unwrap();
        assert_eq!(&buf, b"answer");
        assert_eq!(upstream.await.unwrap(), [b'r'; 100]);
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
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), pb.read_to_end(&mut got))
            .await
            .expect("the peer sees the end")
            .unwrap();
        assert_eq!(got, b"held");
    }

    #[test]
    fn runtimes_taking_turns_on_one_thread_each_send_their_own() {
        // The first runtime's sending task lives on while the second runs, but only
        // its own runtime polls it: the second needs one of its own.
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (first, second) = (rt(), rt());
        for (turn, rt) in [&first, &second, &first].into_iter().enumerate() {
            rt.block_on(async {
                let (a, mut pa) = duplex(64);
                let mut a = Batched::new(a);
                a.write_all(b"turn").await.unwrap();
                let mut got = [0u8; 4];
                tokio::time::timeout(std::time::Duration::from_secs(5), pa.read_exact(&mut got))
                    .await
                    .unwrap_or_else(|_| panic!("turn {turn}: never sent"))
                    .unwrap();
                assert_eq!(&got, b"turn");
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
