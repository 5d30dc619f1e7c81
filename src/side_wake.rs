//! Side events of a long-lived future (a connection's watchdog, deadline and stop
//! signal), polled only when one of them woke the task.
//!
//! A connection's task wakes several times per request (the request arrives, the
//! upstream answers, the socket drains); `tokio::select!` would poll every branch each
//! time, re-registering the timers' and the stop signal's wakers. The side futures are
//! instead polled with their own waker, which notes that a side event fired and wakes
//! the task; the task polls them again only then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

/// The side waker of one task.
pub(crate) struct SideWake {
    shared: Arc<Shared>,
    side: Waker,
    /// The task waker last registered (compared with `will_wake`, no atomics).
    registered: Option<Waker>,
}

struct Shared {
    fired: AtomicBool,
    /// The task's waker; kept when woken (the task is registered once, not per poll).
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl SideWake {
    /// A side waker whose side futures are due for their first poll.
    pub(crate) fn new() -> SideWake {
        let shared = Arc::new(Shared {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        SideWake {
            side: Waker::from(shared.clone()),
            shared,
            registered: None,
        }
    }

    /// Whether the side futures are due (one of them woke, or [`SideWake::rearm`] was
    /// called), with `cx`'s task registered to be woken for the next side event. When due,
    /// poll them with [`SideWake::context`].
    pub(crate) fn due(&mut self, cx: &Context<'_>) -> bool {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let mut task = self.shared.task.lock().unwrap_or_else(|e| e.into_inner());
            *task = Some(cx.waker().clone());
            self.registered = Some(cx.waker().clone());
        }
        self.shared.fired.load(Ordering::Acquire) && self.shared.fired.swap(false, Ordering::AcqRel)
    }

    /// Makes the side futures due at the next poll (after one of them was handled, or
    /// after they were replaced).
    pub(crate) fn rearm(&self) {
        self.shared.fired.store(true, Ordering::Release);
    }

    /// The context to poll the side futures with.
    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;
    use std::time::Duration;

    #[tokio::test]
    async fn side_futures_are_polled_only_when_they_woke() {
        let mut side = SideWake::new();
        let mut first = pin!(tokio::time::sleep(Duration::from_millis(30)));
        let mut second = pin!(tokio::time::sleep(Duration::from_millis(60)));
        let (mut first_done, mut side_polls, mut main_polls) = (false, 0, 0);
        let fired = std::future::poll_fn(|cx| {
            main_polls += 1;
            if side.due(cx) {
                side_polls += 1;
                let mut scx = side.context();
                if !first_done && first.as_mut().poll(&mut scx).is_ready() {
                    first_done = true;
                    // Handled: every side future is polled again next time.
                    side.rearm();
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if second.as_mut().poll(&mut scx).is_ready() {
                    return Poll::Ready(());
                }
            }
            // The main future wakes its task often, for its own reasons.
            if main_polls < 50 {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        });
        let main = tokio::time::timeout(Duration::from_secs(10), fired).await;
        assert!(main.is_ok(), "a side timer's wake-up was lost");
        assert!(main_polls >= 50, "{main_polls}");
        // First poll, the first timer, the poll after it, the second timer: not once per
        // main wake-up.
        assert!(
            side_polls <= 4,
            "side futures polled {side_polls} times for {main_polls} task polls"
        );
    }
}
