//! The cache's second tier: before any provider is asked, what the cluster already
//! knows (Redis), and one look-up per IP for the whole cluster (a lock with an expiry;
//! the other gateways wait for the answer). A Redis that is down or slow is skipped:
//! the gateway asks on its own, within its fallback quota.

use std::time::Duration;

use super::key::IpKey;
use super::store::{self, Write};
use super::{Part, ReputationCache, Slot};
use crate::shared_tier::SharedTier;

/// What the cluster said about a key before this gateway asks the providers.
pub(super) enum FromTier {
    /// A fresh entry (and its stored bytes): no provider call.
    Fresh(Slot, Vec<u8>),
    /// Ask the providers, reusing the fresh parts of `stale`; `locked` when this
    /// gateway holds the cluster's look-up lock (release it after storing the answer).
    Ask { stale: Option<Slot>, locked: bool },
}

/// How often a gateway waiting for another's look-up looks for the answer.
const POLL: Duration = Duration::from_millis(15);

impl ReputationCache {
    /// The entry the cluster holds for `key`, or the lock to ask for it; while another
    /// gateway holds the lock, waits for its answer (at most twice the lock's life: a
    /// gateway that died holding it blocks nobody beyond its expiry).
    pub(super) async fn ask_tier(&self, tier: &SharedTier, key: IpKey) -> FromTier {
        let rep = tier.keys().rep(key);
        let lock = tier.keys().lock(key);
        let ttl = self.inner.lock_ttl;
        let deadline = tokio::time::Instant::now() + ttl * 2;
        let mut stale = None;
        loop {
            match tier.get(&rep).await {
                Ok(Some(bytes)) => {
                    if let Some(slot) = self.slot_from(&bytes) {
                        if self.fresh(&slot, self.now_ms()) {
                            return FromTier::Fresh(slot, bytes);
                        }
                        stale = Some(slot);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    return FromTier::Ask {
                        stale,
                        locked: false,
                    };
                }
            }
            match tier.try_lock(&lock, ttl).await {
                Ok(true) => {
                    return FromTier::Ask {
                        stale,
                        locked: true,
                    };
                }
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                _ => {
                    return FromTier::Ask {
                        stale,
                        locked: false,
                    };
                }
            }
        }
    }

    /// Stores an answer for the cluster (expiring with its last part) and releases the
    /// lock when held.
    pub(super) async fn store_in_tier(
        &self,
        tier: &SharedTier,
        key: IpKey,
        bytes: &[u8],
        expires_ms: u64,
        locked: bool,
    ) {
        let ttl = Duration::from_millis(expires_ms.saturating_sub(self.now_ms()));
        if !ttl.is_zero() {
            let _ = tier.set_px(&tier.keys().rep(key), bytes, ttl).await;
        }
        if locked {
            let _ = tier.unlock(&tier.keys().lock(key)).await;
        }
    }

    /// An entry as stored (locally or in Redis), when it is not expired.
    pub(super) fn slot_from(&self, bytes: &[u8]) -> Option<Slot> {
        let json = store::entry_json(bytes, self.now_ms())?;
        let parts: Vec<Part> = serde_json::from_slice(json).ok()?;
        Some(Slot::new(&parts))
    }

    /// Installs an entry the cluster had, in the local tier and `cache.path`.
    pub(super) fn install(&self, key: IpKey, slot: &Slot, bytes: Vec<u8>) {
        self.persist(Write::Entry(key, bytes), None);
        self.inner.shared.entries.insert(key, slot.clone());
        self.inner
            .entries_gauge
            .set(self.inner.shared.entries.len() as f64);
    }
}
