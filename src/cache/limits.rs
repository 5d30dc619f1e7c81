//! What may be spent on a provider, checked before each call: the provider's own
//! availability, cool-downs (a 429, a spent quota, a refused key) remembered in
//! `cache.path` and shared through Redis, and the daily quota (the cluster's in Redis;
//! this gateway's without it, or a fallback while Redis is down).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::Write;
use super::{ProviderSlot, ReputationCache};
use crate::providers::{Availability, ProviderError, next_utc_midnight};

/// Why a provider is not asked until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Cooldown {
    /// Unix ms.
    pub until_ms: u64,
    pub kind: CooldownKind,
    /// For a refused key: the fingerprint of that key (a new key is tried at once).
    #[serde(default)]
    pub fingerprint: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum CooldownKind {
    /// 429 or a spent quota.
    Quota,
    /// 401/403: the key was refused.
    Unauthorized,
}

impl Cooldown {
    /// Whether it stops `slot` at `now_ms`.
    fn holds(&self, slot: &ProviderSlot, now_ms: u64) -> bool {
        now_ms < self.until_ms
            && (self.kind == CooldownKind::Quota || self.fingerprint == slot.fingerprint)
    }

    fn describe(&self, now_ms: u64) -> String {
        let secs = self.until_ms.saturating_sub(now_ms) / 1000;
        match self.kind {
            CooldownKind::Quota => format!("quota exhausted; no calls for {secs}s"),
            CooldownKind::Unauthorized => {
                format!("disabled: the API key was refused; not asked again with it for {secs}s")
            }
        }
    }
}

/// The state-table key of a provider's cool-down.
pub(super) fn cooldown_record(provider: &str) -> String {
    format!("cooldown:{provider}")
}

impl ReputationCache {
    /// Ok when `slot` may be asked now (a quota reservation is then made); otherwise
    /// the reason, for the error part.
    pub(super) async fn may_ask(&self, slot: &ProviderSlot) -> Result<(), String> {
        match slot.provider.availability() {
            Availability::Ready => {}
            Availability::Disabled(why) => return Err(format!("disabled: {why}")),
            Availability::CoolingDown { until } => {
                let secs = until
                    .duration_since(self.inner.clock.now())
                    .unwrap_or(Duration::ZERO)
                    .as_secs();
                return Err(format!("quota exhausted; no calls for {secs}s"));
            }
        }
        let now = self.now_ms();
        if let Some(c) = self.cooldown(slot).await.filter(|c| c.holds(slot, now)) {
            return Err(c.describe(now));
        }
        self.reserve(slot).await
    }

    /// The cool-down of `slot`: this gateway's, or a newer one from Redis.
    async fn cooldown(&self, slot: &ProviderSlot) -> Option<Cooldown> {
        let local = self.cooldowns().get(&slot.id).cloned();
        let Some(tier) = self.inner.tier.as_ref().filter(|t| t.is_up()) else {
            return local;
        };
        let shared = tier
            .get(&tier.keys().cooldown(slot.id.as_str()))
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Cooldown>(&b).ok());
        match (local, shared) {
            (Some(l), Some(s)) if s.until_ms > l.until_ms => Some(self.remember(slot, s)),
            (None, Some(s)) => Some(self.remember(slot, s)),
            (l, _) => l,
        }
    }

    fn remember(&self, slot: &ProviderSlot, c: Cooldown) -> Cooldown {
        self.cooldowns().insert(slot.id, c.clone());
        c
    }

    fn cooldowns(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<crate::reputation::ProviderId, Cooldown>>
    {
        self.inner
            .shared
            .cooldowns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves one look-up of the day, before the call.
    async fn reserve(&self, slot: &ProviderSlot) -> Result<(), String> {
        let Some(q) = &slot.quota else {
            return Ok(());
        };
        let today = self.today();
        let name = slot.id.as_str();
        if let Some(tier) = &self.inner.tier {
            match tier.reserve(name, today, q.limit()).await {
                Ok(Some(spent)) => {
                    q.raise(today, spent);
                    slot.quota_gauge
                        .set(f64::from(q.limit().saturating_sub(spent)));
                    self.persist(Write::Quota(name.to_string(), today, spent), None);
                    return Ok(());
                }
                Ok(None) => {
                    q.exhaust(today);
                    slot.quota_gauge.set(0.0);
                    return Err(format!(
                        "daily quota of {} spent (counted for every gateway)",
                        q.limit()
                    ));
                }
                Err(e) => {
                    // The cluster's count cannot be read: only the fallback quota may
                    // be spent, then on_error decides.
                    let fallback = self.inner.cfg.redis_fallback_quota;
                    return match &slot.fallback {
                        Some(fb) if fb.try_reserve(today).is_some() => {
                            tracing::warn!(provider = name, error = %e, "Redis is down: spending the fallback quota");
                            Ok(())
                        }
                        _ => Err(format!(
                            "the daily quota cannot be counted while Redis is down (fallback quota of {fallback} spent)"
                        )),
                    };
                }
            }
        }
        let Some(spent) = q.try_reserve(today) else {
            slot.quota_gauge.set(0.0);
            return Err(format!("daily quota of {} spent", q.limit()));
        };
        slot.quota_gauge
            .set(f64::from(q.limit().saturating_sub(spent)));
        // The reservation is on disk before the call is made.
        if self.inner.shared.writer.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.persist(Write::Quota(name.to_string(), today, spent), Some(tx));
            let _ = rx.await;
        }
        Ok(())
    }

    /// Remembers what a failed call says about the provider: a spent quota or a 429
    /// cools it down (until `Retry-After`, else the next UTC midnight), a refused key
    /// until the next UTC midnight (for that key). Kept in `cache.path` and Redis, so
    /// no gateway, reload or restart asks again before then.
    pub(super) async fn after_error(&self, slot: &ProviderSlot, e: &ProviderError) {
        let now = self.inner.clock.now();
        let (kind, until) = match e {
            ProviderError::QuotaExhausted { retry_after } => (
                CooldownKind::Quota,
                retry_after
                    .and_then(|d| now.checked_add(d))
                    .unwrap_or_else(|| next_utc_midnight(now)),
            ),
            ProviderError::Unauthorized(_) => (CooldownKind::Unauthorized, next_utc_midnight(now)),
            _ => return,
        };
        if let ProviderError::QuotaExhausted { retry_after: None } = e
            && let Some(q) = &slot.quota
        {
            // The provider says today's quota is spent: spend our count too.
            let today = self.today();
            q.exhaust(today);
            slot.quota_gauge.set(0.0);
            self.persist(
                Write::Quota(slot.id.as_str().to_string(), today, q.limit()),
                None,
            );
            if let Some(tier) = &self.inner.tier {
                let _ = tier.exhaust(slot.id.as_str(), today, q.limit()).await;
            }
        }
        let c = Cooldown {
            until_ms: crate::clock::unix_ms(until),
            kind,
            fingerprint: slot.fingerprint,
        };
        self.record(slot, c, until.duration_since(now).unwrap_or(Duration::ZERO))
            .await;
    }

    async fn record(&self, slot: &ProviderSlot, c: Cooldown, lasts: Duration) {
        let Ok(json) = serde_json::to_vec(&c) else {
            return;
        };
        self.remember(slot, c);
        self.persist(
            Write::Put(cooldown_record(slot.id.as_str()), json.clone()),
            None,
        );
        if let Some(tier) = &self.inner.tier {
            let _ = tier
                .set_px(&tier.keys().cooldown(slot.id.as_str()), &json, lasts)
                .await;
        }
    }

    /// Providers whose key was refused (for `/readyz`).
    pub(super) fn refused_keys(&self) -> Vec<String> {
        let now = self.now_ms();
        let cooldowns = self.cooldowns();
        self.inner
            .providers
            .iter()
            .filter(|s| {
                cooldowns
                    .get(&s.id)
                    .is_some_and(|c| c.kind == CooldownKind::Unauthorized && c.holds(s, now))
            })
            .map(|s| format!("provider {} disabled: its API key was refused", s.id))
            .collect()
    }
}
