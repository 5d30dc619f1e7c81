//! The store writer: one thread that batches writes into one transaction each, and the
//! hourly purge of expired rows.

use std::time::Duration;

use super::store::{Store, Write};
use super::{Kept, now_ms};

/// Sends writes (with an optional acknowledgement once committed) to the writer.
pub(super) type Writer = std::sync::mpsc::Sender<(Write, Option<tokio::sync::oneshot::Sender<()>>)>;

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
                let _ = w.send((Write::PurgeExpired(now_ms()), None));
            }
        }
    });
}

/// The store writer: batches writes into one transaction each, on a blocking thread.
pub(super) fn spawn_writer(store: Store) -> Writer {
    let (tx, rx) = std::sync::mpsc::channel::<(Write, Option<tokio::sync::oneshot::Sender<()>>)>();
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
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cache writer; nothing will be persisted");
    }
    tx
}
