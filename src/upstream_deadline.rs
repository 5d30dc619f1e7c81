//! The upstream timeout of a request, without a timer for every request.
//!
//! A response usually arrives at the request's second poll (the first writes the request
//! and waits; the response's arrival wakes it). Registering a timer at the first poll
//! and clearing it at the second cost about 0.1 µs a request for a timer that almost
//! never fires. [`Bounded`] arms its timer only when a request is still waiting at a
//! later poll. An HTTP/1.1 request's future is polled again at least at every tick of
//! its connection's watchdog, which ticks a quarter of `upstream_timeout` apart (50 ms
//! at least, and `upstream_timeout` is at least 100 ms: `server::serve_connection`), so
//! the timer is armed before it is due, for the time left since the request started:
//! the timeout stays exact. A request whose future
//! nothing else polls (an HTTP/2 stream runs in a task of its own) arms it at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock::Moment;

/// The timeout fired.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// `inner`, failed with [`Elapsed`] once `limit` has passed since it was made.
pub(crate) struct Bounded<F> {
    inner: F,
    limit: Duration,
    started: Moment,
    /// Armed on the first poll that finds the request still waiting after its first.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Arm at the first wait (nothing else polls this future periodically).
    eager: bool,
    waited: bool,
}

impl<F: Future + Unpin> Bounded<F> {
    /// Bounds `inner` by `limit` from `started`. `polled_periodically`: something polls
    /// the future more often than every `limit` while it waits (an HTTP/1.1 connection's
    /// watchdog).
    pub(crate) fn new(
        inner: F,
        limit: Duration,
        polled_periodically: bool,
        started: Moment,
    ) -> Bounded<F> {
        Bounded {
            inner,
            limit,
            started,
            timer: None,
            eager: !polled_periodically,
            waited: false,
        }
    }
}

impl<F: Future + Unpin> Future for Bounded<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(v) = Pin::new(&mut this.inner).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if this.timer.is_none() {
            if !this.eager && !this.waited {
                this.waited = true;
                return Poll::Pending;
            }
            let left = this.limit.saturating_sub(this.started.elapsed());
            this.timer = Some(Box::pin(tokio::time::sleep(left)));
        }
        match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Polls `f` once, in the test's task.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn an_answer_in_time_passes_and_no_timer_is_armed_for_it() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut b = Bounded::new(rx, Duration::from_secs(5), true, Moment::now());
        assert!(poll_once(&mut b).await.is_pending());
        tx.send(7).unwrap();
        assert_eq!((&mut b).await.unwrap().unwrap(), 7);
        assert!(b.timer.is_none(), "the timer was armed for a prompt answer");
    }

    #[tokio::test]
    async fn a_periodically_polled_wait_times_out_on_time() {
        let (_tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let limit = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let mut b = Bounded::new(rx, limit, true, Moment::now());
        assert!(poll_once(&mut b).await.is_pending());
        assert!(b.timer.is_none());
        // What the connection's watchdog does: a poll within a quarter of the limit.
        tokio::time::sleep(limit / 4).await;
        assert!(poll_once(&mut b).await.is_pending());
        assert!(b.timer.is_some());
        assert_eq!((&mut b).await, Err(Elapsed));
        let took = started.elapsed();
        assert!(took >= limit, "fired early: {took:?}");
    }

    #[tokio::test]
    async fn an_eager_bound_arms_at_the_first_wait() {
        let (_tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut b = Bounded::new(rx, Duration::from_millis(100), false, Moment::now());
        assert!(poll_once(&mut b).await.is_pending());
        assert!(b.timer.is_some());
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), &mut b)
                .await
                .unwrap(),
            Err(Elapsed)
        );
    }
}
