//! Extra threads that serve the gateway's listeners beside the caller's runtime, each
//! with its own one-thread runtime: a connection accepted on a thread is served there
//! to its end, with no work-stealing scheduler between the threads.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// How long an ending thread's runtime waits for its blocking tasks (a DNS
    /// resolution, say) before it is dropped: the drain before has had its grace.
    const SHUTDOWN_WAIT: Duration = Duration::from_millis(500);

    /// Starts `extra` threads, each running a one-thread runtime until [`Self::stop`].
    /// Each runtime is built on its own thread, so a failure (to spawn a thread or to
    /// build a runtime) is an error here, with the threads already started stopped.
    pub(crate) async fn start(extra: usize) -> io::Result<AcceptThreads> {
        let mut threads = AcceptThreads::default();
        for i in 1..=extra {
            match Self::spawn(i) {
                Ok(w) => threads.workers.push(w),
                Err(e) => {
                    threads.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(threads)
    }

    fn spawn(i: usize) -> io::Result<Worker> {
        let (end, ended) = oneshot::channel::<()>();
        let (built_tx, built_rx) = std::sync::mpsc::channel::<io::Result<Handle>>();
        let thread = std::thread::Builder::new()
            .name(format!("ipgate-serve-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                let _ = built_tx.send(Ok(rt.handle().clone()));
                // Tasks spawned on this runtime (connections, their look-ups and
                // upstream connections) run while it waits for the end.
                rt.block_on(async move {
                    let _ = ended.await;
                });
                rt.shutdown_timeout(Self::SHUTDOWN_WAIT);
            })?;
        // The thread answers at once: building a runtime does not wait on anything.
        match built_rx.recv() {
            Ok(Ok(handle)) => Ok(Worker {
                handle,
                end,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other(
                    "an accept thread ended before its runtime was built",
                ))
            }
        }
    }

    /// Whether there are no extra threads.
    pub(crate) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The runtimes of the extra threads.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.workers.iter().map(|w| &w.handle)
    }

    /// Ends every thread's runtime (its remaining tasks are dropped, its blocking tasks
    /// waited for at most [`Self::SHUTDOWN_WAIT`]), then waits for the threads without
    /// blocking the caller's runtime.
    pub(crate) async fn stop(self) {
        let mut threads = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            let _ = w.end.send(());
            threads.push(w.thread);
        }
        // Every thread is joined, whatever happened to the others.
        let joined = tokio::task::spawn_blocking(move || {
            let mut panicked = 0usize;
            for t in threads {
                if t.join().is_err() {
                    panicked += 1;
                }
            }
            panicked == 0
        })
        .await;
        if !matches!(joined, Ok(true)) {
            tracing::warn!("an accept thread ended with a panic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_extra_threads_until_stopped() {
        let threads = AcceptThreads::start(2).await.unwrap();
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
