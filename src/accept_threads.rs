//! Extra threads that serve the gateway's listeners beside the caller's runtime, each
//! with its own one-thread runtime: a connection accepted on a thread is served there
//! to its end, with no work-stealing scheduler between the threads.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One thread and the handle of its runtime.
struct Worker {
    handle: Handle,
    /// Dropped (or sent) to end the thread's runtime.
    end: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The extra accept threads (none when the caller's runtime serves alone).
#[derive(Default)]
pub(crate) struct AcceptThreads {
    workers: Vec<Worker>,
}

impl AcceptThreads {
    /// Starts `extra` threads, each running a one-thread runtime until [`Self::stop`].
    pub(crate) fn start(extra: usize) -> io::Result<AcceptThreads> {
        let mut threads = AcceptThreads::default();
        for i in 1..=extra {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (end, ended) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("ipgate-serve-{i}"))
                .spawn(move || {
                    // Tasks spawned on this runtime (connections, their look-ups and
                    // upstream connections) run while it waits for the end.
                    rt.block_on(async move {
                        let _ = ended.await;
                    });
                })?;
            threads.workers.push(Worker {
                handle,
                end,
                thread,
            });
        }
        Ok(threads)
    }

    /// Whether there are no extra threads.
    pub(crate) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The runtimes of the extra threads.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.workers.iter().map(|w| &w.handle)
    }

    /// Ends each thread's runtime (its remaining tasks are dropped) and waits for the
    /// threads without blocking the caller's runtime.
    pub(crate) async fn stop(self) {
        for w in self.workers {
            let _ = w.end.send(());
            let joined = tokio::task::spawn_blocking(move || w.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("an accept thread ended with a panic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_extra_threads_until_stopped() {
        let threads = AcceptThreads::start(2).unwrap();
        let mut names = Vec::new();
        for h in threads.handles() {
            let name = h
                .spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .unwrap();
            names.push(name.unwrap_or_default());
        }
        assert_eq!(names, ["ipgate-serve-1", "ipgate-serve-2"]);
        let handle = threads.handles().next().unwrap().clone();
        threads.stop().await;
        // The runtime is gone: a task spawned now never runs to completion.
        assert!(handle.spawn(async {}).await.is_err());
    }
}
