//! The store writer: one thread that batches writes into one transaction each, and the
//! hourly purge of expired rows.

use std::time::Duration;

use super::store::{Store, Write};
use super::{Kept, now_ms};

type Job = (Write, Option<tokio::sync::oneshot::Sender<()>>);

/// The writer thread and the way to it. Shared by every cache on the same file (a
/// reload keeps it); when the last one lets go, the thread finishes what it was sent
/// and closes the file before the drop returns, so the file can be opened again at once.
pub(super) struct Writer {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Queues a write; `ack` is answered once it is committed.
    pub(super) fn send(&self, w: Write, ack: Option<tokio::sync::oneshot::Sender<()>>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((w, ack));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes expired rows from the store every hour, for as long as the cache lives.
pub(super) fn spawn_purger(kept: std::sync::Weak<Kept>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(kept) = kept.upgrade() else { return };
            if let Some(w) = &kept.writer {
                w.send(Write::PurgeExpired(now_ms()), None);
            }
        }
    });
}

/// The store writer: batches writes into one transaction each, on a blocking thread.
pub(super) fn spawn_writer(store: Store) -> std::sync::Arc<Writer> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("ipgate-cache-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 1024 {
                        break;
                    }
                }
                let writes: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
                if let Err(e) = store.write(&writes) {
                    tracing::error!(error = %e, "cache store write failed");
                }
                for (_, ack) in batch {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
            }
        });
    let thread = match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the cache writer; nothing will be persisted");
            None
        }
    };
    std::sync::Arc::new(Writer {
        tx: Some(tx),
        thread,
    })
}
