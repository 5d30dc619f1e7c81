//! Bans beyond this process. With `cache.path` every ban is also a record of the store,
//! so a restart keeps it. With `cache.redis` the cluster's bans are one Redis hash: a
//! ban posted to any gateway is written there and announced on a channel; every gateway
//! reads the hash again on the announcement (within a second), every few seconds as a
//! safety net, and, after Redis comes back, once it has republished its own bans.

use std::sync::Weak;
use std::time::Duration;

use ipnet::IpNet;

use crate::bans::{Ban, Bans};
use crate::shared_tier::{SharedTier, TierError};

/// How often the cluster's bans are read even without an announcement.
const RESYNC: Duration = Duration::from_secs(5);

/// The store record of a ban: `ban:CIDR` → JSON.
pub(crate) fn record(ban: &Ban) -> Option<(String, Vec<u8>)> {
    Some((record_key(ban.cidr), serde_json::to_vec(ban).ok()?))
}

/// The store key of the ban on `cidr`.
pub(crate) fn record_key(cidr: IpNet) -> String {
    format!("ban:{cidr}")
}

/// The bans of a store (records `ban:*`), unreadable ones skipped.
pub(crate) fn from_records(records: Vec<(String, Vec<u8>)>) -> Vec<Ban> {
    records
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice::<Ban>(&v) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(record = %k, error = %e, "ignoring an unreadable stored ban");
                None
            }
        })
        .collect()
}

/// Writes `ban` for the cluster and announces it.
pub(crate) async fn publish(tier: &SharedTier, ban: &Ban) -> Result<(), TierError> {
    let Some(field) = record(ban) else {
        return Ok(());
    };
    let key = tier.keys().bans();
    tier.hset(&key, &[(ban.cidr.to_string(), field.1)]).await?;
    tier.publish(&key).await
}

/// Removes the ban on `cidr` for the cluster and announces it.
pub(crate) async fn withdraw(tier: &SharedTier, cidr: IpNet) -> Result<(), TierError> {
    let key = tier.keys().bans();
    tier.hdel(&key, &[cidr.to_string()]).await?;
    tier.publish(&key).await
}

/// Puts the cluster's bans in force here (expired ones are removed from Redis).
pub(crate) async fn resync(tier: &SharedTier, bans: &Bans) -> Result<Vec<Ban>, TierError> {
    let key = tier.keys().bans();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for (field, value) in tier.hgetall(&key).await? {
        match serde_json::from_slice::<Ban>(&value) {
            Ok(b) if b.expires > now => live.push(b),
            _ => expired.push(field),
        }
    }
    tier.hdel(&key, &expired).await?;
    bans.replace_all(live.clone());
    Ok(live)
}

/// After Redis lost its data (restarted without persistence) or on first use, one
/// gateway (the first to claim the marker) writes the bans it holds back. A Redis that
/// kept its data is trusted as is: a ban removed there is not brought back.
pub(crate) async fn restore_if_lost(tier: &SharedTier, bans: &Bans) -> Result<(), TierError> {
    if tier.claim(&tier.keys().bans_kept()).await? {
        republish(tier, bans).await?;
    }
    Ok(())
}

/// Writes every ban in force here to the cluster.
async fn republish(tier: &SharedTier, bans: &Bans) -> Result<(), TierError> {
    let fields: Vec<(String, Vec<u8>)> = bans
        .list()
        .iter()
        .filter_map(|b| Some((b.cidr.to_string(), record(b)?.1)))
        .collect();
    let key = tier.keys().bans();
    tier.hset(&key, &fields).await?;
    tier.publish(&key).await
}

/// Keeps this gateway's bans in step with the cluster's for as long as `alive` lives.
/// `keep` is called with the bans in force after each resynchronisation (to store them
/// in `cache.path`).
pub(crate) fn spawn<T: Send + Sync + 'static>(
    tier: SharedTier,
    bans: Bans,
    alive: Weak<T>,
    keep: impl Fn(&[Ban]) + Send + Sync + 'static,
) {
    let announced = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = announced.clone();
    tier.subscribe(tier.keys().bans(), move || notify.notify_one());
    tokio::spawn(async move {
        let mut ups = tier.ups();
        let mut seen = *ups.borrow_and_update();
        loop {
            tokio::select! {
                _ = announced.notified() => {}
                changed = ups.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
            if alive.strong_count() == 0 {
                return;
            }
            if !tier.is_up() {
                continue;
            }
            // Redis came back: it may have lost the bans.
            let epoch = *ups.borrow_and_update();
            if epoch != seen && restore_if_lost(&tier, &bans).await.is_ok() {
                seen = epoch;
            }
            if let Ok(live) = resync(&tier, &bans).await {
                keep(&live);
            }
        }
    });
}
