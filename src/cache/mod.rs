//! The reputation cache: bounded, single-flight, quota-aware, persistent.
//!
//! One entry per client key ([`IpKey`]: an IPv4 address or an IPv6 prefix) holds every
//! provider's answer, each with its own expiry (`ttl_by_status`, or `error_ttl` for a
//! failure). A hit returns the shared `Arc<Lookup>`: nothing is allocated. A miss starts
//! one flight per key in its own task, so however many requests wait for it (and even
//! if they give up at `lookup.timeout`), each provider is called once.

mod front;
pub mod key;
mod limits;
pub mod quota;
pub mod store;
mod tally;
mod tiered;
mod writer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::{BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::{CacheConfig, Config, LookupMode};
use crate::providers::{Availability, Provider};
use crate::reputation::{Answer, ErrorSource, Lookup, ProviderId, Reputation, ReputationSource};
use crate::shared_tier::SharedTier;

pub use key::{IpKey, is_private};
use quota::{Quota, utc_day};
use store::{Store, StoreError, Write};
use writer::{Writer, spawn_purger, spawn_writer};

fn now_ms() -> u64 {
    crate::clock::unix_ms(SystemTime::now())
}

/// One provider's part of an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Part {
    provider: ProviderId,
    /// Unix ms after which this part is stale.
    expires_ms: u64,
    result: PartResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum PartResult {
    Answer(Reputation),
    /// The provider could not answer; the message never holds a secret.
    Error(String),
    /// Not asked (`skip_private`).
    Skipped,
}

/// What the cache holds for one key. A hit reads only this value (kept inline by the
/// cache) and bumps one reference count: the expiries of each provider's part are
/// here, the parts themselves are rebuilt from the shared `Lookup` when needed.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Unix ms until which each provider's part is fresh (0: no part), by
    /// [`ProviderId::index`].
    expires: [u64; ProviderId::ALL.len()],
    /// The parts as a Lookup (cached = true), shared by every hit.
    lookup: Arc<Lookup>,
}

impl Slot {
    fn new(parts: &[Part]) -> Slot {
        let mut lookup = Lookup {
            cached: true,
            ..Lookup::default()
        };
        let mut expires = [0u64; ProviderId::ALL.len()];
        for p in parts {
            expires[p.provider.index()] = p.expires_ms;
            match &p.result {
                PartResult::Answer(r) => lookup.answers.push(r.clone()),
                PartResult::Error(e) => lookup
                    .errors
                    .push((ErrorSource::Provider(p.provider), e.clone())),
                PartResult::Skipped => {}
            }
        }
        Slot {
            expires,
            lookup: Arc::new(lookup),
        }
    }

    /// The part of `provider`, if the slot has one.
    fn part(&self, provider: ProviderId) -> Option<Part> {
        let expires_ms = self.expires[provider.index()];
        if expires_ms == 0 {
            return None;
        }
        let result = if let Some(r) = self.lookup.answers.iter().find(|r| r.provider == provider) {
            PartResult::Answer(r.clone())
        } else if let Some((_, e)) = self
            .lookup
            .errors
            .iter()
            .find(|(p, _)| *p == ErrorSource::Provider(provider))
        {
            PartResult::Error(e.clone())
        } else {
            PartResult::Skipped
        };
        Some(Part {
            provider,
            expires_ms,
            result,
        })
    }
}

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct ProviderSlot {
    provider: Arc<dyn Provider>,
    id: ProviderId,
    quota: Option<Arc<Quota>>,
    /// What this gateway may spend on its own while Redis is down (shared tier only).
    fallback: Option<Arc<Quota>>,
    /// The provider's key fingerprint (a refused key is remembered by it).
    fingerprint: u64,
    requests: [metrics::Counter; 6],
    quota_gauge: metrics::Gauge,
}

impl ProviderSlot {
    /// The provider with its metrics and its daily quota (shared through `quotas`, so
    /// a reload keeps what was spent today).
    fn new(
        provider: Arc<dyn Provider>,
        quotas: &Mutex<HashMap<ProviderId, Arc<Quota>>>,
        today: u32,
    ) -> Self {
        let id = provider.id();
        let quota = provider.daily_quota().map(|limit| {
            let mut quotas = quotas.lock().unwrap_or_else(|p| p.into_inner());
            let q = match quotas.get(&id) {
                Some(q) if q.limit() == limit => q.clone(),
                other => Arc::new(Quota::new(
                    limit,
                    today,
                    other.map_or(0, |q| q.spent(today)),
                )),
            };
            quotas.insert(id, q.clone());
            q
        });
        let name = id.as_str();
        // No series for what cannot happen: the local `file` provider answers from
        // memory (always `ok`), and a provider without a quota has nothing left to show.
        let requests = OUTCOMES.map(|o| {
            if id == ProviderId::File && o != "ok" {
                metrics::Counter::noop()
            } else {
                metrics::counter!(crate::metrics::PROVIDER_REQUESTS, "provider" => name, "outcome" => o)
            }
        });
        let quota_gauge = match &quota {
            Some(q) => {
                let g =
                    metrics::gauge!(crate::metrics::PROVIDER_QUOTA_REMAINING, "provider" => name);
                g.set(f64::from(q.remaining(today)));
                g
            }
            None => metrics::Gauge::noop(),
        };
        ProviderSlot {
            fingerprint: provider.key_fingerprint(),
            provider,
            id,
            quota,
            fallback: None,
            requests,
            quota_gauge,
        }
    }
}

const OUTCOMES: [&str; 6] = [
    "ok",
    "timeout",
    "error",
    "quota_exhausted",
    "unauthorized",
    "bad_request",
];

type Flight = futures_util::future::Shared<BoxFuture<'static, Arc<Lookup>>>;

/// What survives a reload: the entries, the flights, the store and the quota counters.
struct Kept {
    entries: quick_cache::sync::Cache<IpKey, Slot>,
    flights: Mutex<HashMap<IpKey, Flight>>,
    writer: Option<Arc<Writer>>,
    path: Option<String>,
    max_entries: u64,
    ipv6_prefix: u8,
    quotas: Mutex<HashMap<ProviderId, Arc<Quota>>>,
    /// Provider cool-downs (429, spent quota, refused key), from `cache.path` at start.
    cooldowns: Mutex<HashMap<ProviderId, limits::Cooldown>>,
    /// The ban records found in `cache.path` when it was opened (taken once).
    bans_at_open: Mutex<Vec<(String, Vec<u8>)>>,
    /// Look-ups by result since this state was made, for the status page's hit rate:
    /// hits (counted on the hot path) in a per-thread tally, then miss, stale and
    /// coalesced.
    hits: tally::Tally,
    others: [std::sync::atomic::AtomicU64; 3],
    /// Raised after every eviction and flush: what the per-thread fronts stored
    /// before is no longer served.
    epoch: std::sync::atomic::AtomicU32,
}

/// Removes a key from the in-flight map when dropped: on completion, on error, when
/// the flight is cancelled and when it panics. A flight can never pin its key.
struct FlightGuard {
    kept: Arc<Kept>,
    key: IpKey,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.kept
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

struct Inner {
    shared: Arc<Kept>,
    /// This instance in the per-thread fronts (a reload makes another).
    owner: u32,
    /// Redis, when `cache.redis` is set.
    tier: Option<SharedTier>,
    /// How long one cluster-wide look-up may hold its lock.
    lock_ttl: Duration,
    /// Expiries and quota days are read from it.
    clock: SharedClock,
    providers: Vec<ProviderSlot>,
    cfg: CacheConfig,
    skip_private: bool,
    background: bool,
    results: [metrics::Counter; 4],
    entries_gauge: metrics::Gauge,
}

/// Cache look-ups by result ([`ReputationCache::lookup_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LookupCounts {
    /// A fresh entry answered.
    pub hit: u64,
    /// Nothing cached.
    pub miss: u64,
    /// An entry had expired.
    pub stale: u64,
    /// Joined a look-up already running.
    pub coalesced: u64,
}

/// One provider as the status page shows it ([`ReputationCache::provider_states`]).
#[derive(Debug, Clone)]
pub struct ProviderState {
    /// Which provider.
    pub provider: ProviderId,
    /// `daily_quota`, when it has one.
    pub quota_limit: Option<u32>,
    /// Look-ups left today, when it has a quota.
    pub quota_remaining: Option<u32>,
    /// Ready, cooling down until a time, or disabled with a reason.
    pub availability: crate::providers::Availability,
}

/// The reputation cache in front of the providers. Cheap to clone.
#[derive(Clone)]
pub struct ReputationCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReputationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReputationCache")
            .field("entries", &self.inner.shared.entries.len())
            .finish()
    }
}

impl Kept {
    /// The state kept for `cfg`: the previous cache's when nothing it depends on
    /// changed, else a new one (with the store opened, or the same file's writer kept).
    /// Returns the store when it was opened now (its entries are to be loaded).
    fn for_config(
        cfg: &CacheConfig,
        previous: Option<&ReputationCache>,
    ) -> Result<(Arc<Kept>, Option<Store>), CacheError> {
        let path = cfg
            .path
            .as_ref()
            .filter(|p| !p.0.is_empty())
            .map(|p| p.0.clone());
        let previous = previous.map(|p| &p.inner.shared);
        if let Some(same) = previous.filter(|s| {
            s.path == path && s.max_entries == cfg.max_entries && s.ipv6_prefix == cfg.ipv6_prefix
        }) {
            return Ok((same.clone(), None));
        }
        // The same file as before: keep its writer (the file stays open and locked by
        // this process; opening it again would fail).
        let same_file = previous.filter(|s| s.path.is_some() && s.path == path);
        let store = match (&path, same_file) {
            (Some(p), None) => Some(Store::open(std::path::Path::new(p))?),
            _ => None,
        };
        let quotas = Self::quotas(previous, store.as_ref())?;
        let capacity = usize::try_from(cfg.max_entries)
            .unwrap_or(usize::MAX)
            .max(1);
        let entries = quick_cache::sync::Cache::new(capacity);
        if let Some(old) = same_file.filter(|s| s.ipv6_prefix == cfg.ipv6_prefix) {
            // Only the size changed: carry the entries over (as many as fit).
            for (k, v) in old.entries.iter().take(capacity) {
                entries.insert(k, v);
            }
        }
        let writer = match same_file {
            Some(s) => s.writer.clone(),
            None => store.as_ref().map(|s| spawn_writer(s.clone())),
        };
        let cooldowns = match (&store, same_file) {
            (Some(st), _) => Self::stored_cooldowns(st)?,
            (None, Some(s)) => s
                .cooldowns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            (None, None) => previous
                .map(|p| {
                    p.cooldowns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                })
                .unwrap_or_default(),
        };
        let kept = Arc::new(Kept {
            entries,
            flights: Mutex::new(HashMap::new()),
            writer,
            path,
            max_entries: cfg.max_entries,
            ipv6_prefix: cfg.ipv6_prefix,
            quotas: Mutex::new(quotas),
            cooldowns: Mutex::new(cooldowns),
            bans_at_open: Mutex::new(match &store {
                Some(st) => st.load_state("ban:")?,
                None => Vec::new(),
            }),
            hits: Default::default(),
            others: Default::default(),
            epoch: Default::default(),
        });
        Ok((kept, store))
    }

    /// The cool-downs kept in the store.
    fn stored_cooldowns(
        store: &Store,
    ) -> Result<HashMap<ProviderId, limits::Cooldown>, CacheError> {
        let mut out = HashMap::new();
        for (record, json) in store.load_state("cooldown:")? {
            let id = record.trim_start_matches("cooldown:").parse::<ProviderId>();
            match (id, serde_json::from_slice::<limits::Cooldown>(&json)) {
                (Ok(id), Ok(c)) => {
                    out.insert(id, c);
                }
                _ => tracing::warn!(record = %record, "ignoring an unreadable stored cool-down"),
            }
        }
        Ok(out)
    }

    /// Today's quota counters: carried over from the previous cache, raised to what the
    /// store says was spent (a count never goes backwards).
    fn quotas(
        previous: Option<&Arc<Kept>>,
        store: Option<&Store>,
    ) -> Result<HashMap<ProviderId, Arc<Quota>>, CacheError> {
        let mut quotas = previous
            .map(|p| p.quotas.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        if let Some(st) = store {
            for (name, (day, spent)) in st.load_quotas()? {
                let Ok(id) = name.parse::<ProviderId>() else {
                    tracing::warn!(provider = %name, "ignoring a stored quota of an unknown provider");
                    continue;
                };
                let carried = quotas.get(&id).map_or(0, |q| q.spent(day));
                quotas.insert(id, Arc::new(Quota::new(u32::MAX, day, spent.max(carried))));
            }
        }
        Ok(quotas)
    }
}

impl ReputationCache {
    /// A cache over `providers`, configured by `config.cache` and `config.lookup`.
    /// With `previous` (a reload), its entries, store and quota counters are kept when
    /// `cache.path`, `max_entries` and `ipv6_prefix` are unchanged; quota counters are
    /// always carried over, so a reload never hands out a spent quota again.
    pub(crate) fn new(
        config: &Config,
        providers: Vec<Arc<dyn Provider>>,
        previous: Option<&ReputationCache>,
        clock: SharedClock,
        tier: Option<SharedTier>,
    ) -> Result<ReputationCache, CacheError> {
        let cfg = config.cache.clone();
        let (shared, store) = Kept::for_config(&cfg, previous)?;
        let today = utc_day(clock.now());
        let providers = providers
            .into_iter()
            .map(|p| {
                let mut slot = ProviderSlot::new(p, &shared.quotas, today);
                if tier.is_some() && slot.quota.is_some() {
                    slot.fallback = Some(Arc::new(Quota::new(cfg.redis_fallback_quota, today, 0)));
                }
                slot
            })
            .collect();
        // A look-up is bounded by each provider's timeout, all at once; the lock
        // outlives the slowest by a margin.
        let slowest = [
            config.providers.iocscout.as_ref().map(|p| p.timeout.0),
            config.providers.ipswamp.as_ref().map(|p| p.timeout.0),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO)
        .max(config.lookup.timeout.0);
        let cache = ReputationCache {
            inner: Arc::new(Inner {
                shared,
                owner: front::next_owner(),
                tier,
                lock_ttl: slowest + Duration::from_secs(1),
                clock,
                providers,
                skip_private: config.lookup.skip_private,
                background: config.lookup.mode == LookupMode::Background,
                cfg,
                results: ["hit", "miss", "stale", "coalesced"]
                    .map(|r| metrics::counter!(crate::metrics::CACHE_LOOKUPS, "result" => r)),
                entries_gauge: metrics::gauge!(crate::metrics::CACHE_ENTRIES),
            }),
        };
        if let Some(s) = &store {
            cache.load(s)?;
            spawn_purger(Arc::downgrade(&cache.inner.shared));
        }
        Ok(cache)
    }

    fn load(&self, store: &Store) -> Result<(), CacheError> {
        let now = self.now_ms();
        let mut loaded = 0usize;
        let mut stale = Vec::new();
        for (key, bytes) in store.load_entries()? {
            let Some(json) = store::entry_json(&bytes, now) else {
                stale.push(Write::Remove(key));
                continue;
            };
            match serde_json::from_slice::<Vec<Part>>(json) {
                Ok(parts) => {
                    self.inner.shared.entries.insert(key, Slot::new(&parts));
                    loaded += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "dropping an unreadable cache entry");
                    stale.push(Write::Remove(key));
                }
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                removed = stale.len(),
                "expired cache entries removed from disk"
            );
            store.write(&stale)?;
        }
        tracing::info!(entries = loaded, "reputation cache loaded from disk");
        self.inner
            .entries_gauge
            .set(self.inner.shared.entries.len() as f64);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        crate::clock::unix_ms(self.inner.clock.now())
    }

    fn today(&self) -> u32 {
        utc_day(self.inner.clock.now())
    }

    fn key(&self, ip: IpAddr) -> IpKey {
        IpKey::new(ip, self.inner.cfg.ipv6_prefix)
    }

    /// What the cache holds for `ip`, fresh or not.
    pub fn peek(&self, ip: IpAddr) -> Option<Arc<Lookup>> {
        self.inner
            .shared
            .entries
            .get(&self.key(ip))
            .map(|e| e.lookup.clone())
    }

    /// Forgets `ip` (its key); true when there was an entry.
    pub fn evict(&self, ip: IpAddr) -> bool {
        let key = self.key(ip);
        let removed = self.inner.shared.entries.remove(&key).is_some();
        self.inner.shared.epoch.fetch_add(1, Ordering::Release);
        self.persist(Write::Remove(key), None);
        self.inner
            .entries_gauge
            .set(self.inner.shared.entries.len() as f64);
        removed
    }

    /// Forgets everything.
    pub fn flush(&self) {
        self.inner.shared.entries.clear();
        self.inner.shared.epoch.fetch_add(1, Ordering::Release);
        self.persist(Write::Clear, None);
        self.inner.entries_gauge.set(0.0);
    }

    /// The ban records `cache.path` held when it was opened (once; empty after).
    pub(crate) fn take_stored_bans(&self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(
            &mut *self
                .inner
                .shared
                .bans_at_open
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Writes a record of the state table (`ban:...`) to `cache.path` (no-op without it).
    pub(crate) fn put_record(&self, key: String, value: Vec<u8>) {
        self.persist(Write::Put(key, value), None);
    }

    /// Removes a record of the state table from `cache.path`.
    pub(crate) fn delete_record(&self, key: String) {
        self.persist(Write::Delete(key), None);
    }

    /// Waits until every write so far is committed to `cache.path` (no-op without it).
    pub async fn sync(&self) {
        if self.inner.shared.writer.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.persist(Write::Barrier, Some(tx));
            let _ = rx.await;
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.shared.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.inner.shared.entries.is_empty()
    }

    /// Counts a look-up in `ipgate_cache_lookups_total` and for [`Self::lookup_counts`].
    #[inline]
    fn count(&self, result: usize) {
        self.inner.results[result].increment(1);
        match result.checked_sub(1) {
            None => self.inner.shared.hits.add_one(),
            Some(i) => {
                if let Some(n) = self.inner.shared.others.get(i) {
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Look-ups since the cache was set up (a reload that changes `cache.path`,
    /// `max_entries` or `ipv6_prefix` starts again): hits, misses, stale, coalesced.
    pub fn lookup_counts(&self) -> LookupCounts {
        let n = |i: usize| self.inner.shared.others[i].load(std::sync::atomic::Ordering::Relaxed);
        LookupCounts {
            hit: self.inner.shared.hits.get(),
            miss: n(0),
            stale: n(1),
            coalesced: n(2),
        }
    }

    /// Each provider: today's quota (limit and what is left) and whether it is ready,
    /// cooling down or disabled.
    pub fn provider_states(&self) -> Vec<ProviderState> {
        let today = self.today();
        self.inner
            .providers
            .iter()
            .map(|s| ProviderState {
                provider: s.id,
                quota_limit: s.quota.as_ref().map(|q| q.limit()),
                quota_remaining: s.quota.as_ref().map(|q| q.remaining(today)),
                availability: s.provider.availability(),
            })
            .collect()
    }

    /// Look-ups left today per provider with a quota.
    pub fn quota_remaining(&self) -> Vec<(ProviderId, u32)> {
        let today = self.today();
        self.inner
            .providers
            .iter()
            .filter_map(|s| s.quota.as_ref().map(|q| (s.id, q.remaining(today))))
            .collect()
    }

    /// A fresh entry: every provider's part unexpired.
    #[inline]
    fn fresh(&self, slot: &Slot, now: u64) -> bool {
        self.fresh_until(slot) > now
    }

    /// Unix ms until which the entry is fresh: its earliest part's expiry.
    #[inline]
    fn fresh_until(&self, slot: &Slot) -> u64 {
        self.inner
            .providers
            .iter()
            .map(|s| slot.expires[s.id.index()])
            .min()
            .unwrap_or(u64::MAX)
    }

    fn persist(&self, w: Write, ack: Option<tokio::sync::oneshot::Sender<()>>) {
        if let Some(writer) = &self.inner.shared.writer {
            writer.send(w, ack);
        }
    }

    /// The cached answer for `ip` when it is fresh (the hot path: no allocation).
    #[inline]
    pub fn cached(&self, ip: IpAddr) -> Option<Arc<Lookup>> {
        self.cached_at(ip, crate::clock::Moment::now())
    }

    /// [`Self::cached`] with the time derived from `at`, an instant read a moment ago
    /// (the decision's start): one clock read per decision instead of two.
    #[inline]
    pub fn cached_at(&self, ip: IpAddr, at: crate::clock::Moment) -> Option<Arc<Lookup>> {
        let key = self.key(ip);
        let now = self.inner.clock.unix_ms_at(at);
        // Read before the main cache: an eviction after this makes what is stored below
        // stale for the front.
        let epoch = self.inner.shared.epoch.load(Ordering::Acquire);
        let owner = self.inner.owner;
        if let Some(lookup) = front::get(owner, epoch, key, now) {
            self.count(0);
            return Some(lookup);
        }
        let slot = self.inner.shared.entries.get(&key)?;
        let until = self.fresh_until(&slot);
        if until > now {
            self.count(0);
            front::offer(owner, epoch, key, until, &slot.lookup);
            Some(slot.lookup)
        } else {
            None
        }
    }

    /// Reputation for `ip`: the cache, else one flight to the providers. Without
    /// `allow_remote`, only what is stored (fresh or not) and local providers answer.
    pub async fn get(&self, ip: IpAddr, allow_remote: bool) -> Answer {
        if self.inner.providers.is_empty() {
            return Answer::Known(Arc::new(Lookup::failure(
                ErrorSource::NoProvider,
                "no reputation provider configured",
            )));
        }
        if let Some(l) = self.cached(ip) {
            return Answer::Known(l);
        }
        let key = self.key(ip);
        let previous = self.inner.shared.entries.get(&key);
        if !allow_remote {
            return Answer::Known(self.local_only(ip, previous).await);
        }
        let (flight, joined) = {
            let mut flights = self
                .inner
                .shared
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), true),
                // A flight may have finished between the cache check above and this
                // lock: its answer is in the cache, so no second call.
                None if let Some(slot) = self.inner.shared.entries.get(&key)
                    && self.fresh(&slot, self.now_ms()) =>
                {
                    self.count(0);
                    return Answer::Known(slot.lookup);
                }
                None => {
                    let me = self.clone();
                    let prev = previous.clone();
                    // Moved into the task: dropped when it ends, however it ends.
                    let guard = FlightGuard {
                        kept: self.inner.shared.clone(),
                        key,
                    };
                    let task = tokio::spawn(async move {
                        let _guard = guard;
                        me.fly(key, ip, prev).await
                    });
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "a reputation look-up task failed");
                            Arc::new(Lookup::failure(ErrorSource::Failed, "look-up task failed"))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, f.clone());
                    (f, false)
                }
            }
        };
        if joined {
            self.count(3);
        } else if previous.is_some() {
            self.count(2);
        } else {
            self.count(1);
        }
        if self.inner.background {
            // Decide now; the flight fills the cache for next time. A stale answer is
            // better than none (a known threat stays blocked while it is refreshed);
            // without one, on_miss decides.
            drop(flight);
            return match previous.filter(|p| !p.lookup.answers.is_empty()) {
                Some(prev) => Answer::Known(prev.lookup),
                None => Answer::Pending,
            };
        }
        Answer::Known(flight.await)
    }

    /// What is known without a remote call: the stored entry (fresh or not), with the
    /// local providers' answers (they spend nothing) asked when the entry lacks them.
    async fn local_only(&self, ip: IpAddr, previous: Option<Slot>) -> Arc<Lookup> {
        let stored = previous.map(|e| e.lookup).unwrap_or_default();
        let missing: Vec<&ProviderSlot> = self
            .inner
            .providers
            .iter()
            .filter(|s| !s.id.is_remote() && !stored.answers.iter().any(|r| r.provider == s.id))
            .collect();
        if missing.is_empty() {
            return stored;
        }
        let mut l = (*stored).clone();
        for slot in missing {
            match slot.provider.lookup(ip).await {
                Ok(rep) => l.answers.push(rep),
                Err(e) => l
                    .errors
                    .push((ErrorSource::Provider(slot.id), e.to_string())),
            }
        }
        Arc::new(l)
    }

    /// One flight: asks every provider whose part is missing or stale, concurrently.
    async fn fly(self, key: IpKey, ip: IpAddr, previous: Option<Slot>) -> Arc<Lookup> {
        let mut previous = previous;
        let mut locked = false;
        let tier = self.inner.tier.clone();
        if let Some(tier) = &tier {
            match self.ask_tier(tier, key).await {
                tiered::FromTier::Fresh(slot, bytes) => {
                    self.install(key, &slot, bytes);
                    return slot.lookup;
                }
                tiered::FromTier::Ask { stale, locked: l } => {
                    previous = stale.or(previous);
                    locked = l;
                }
            }
        }
        let now = self.now_ms();
        let this = &self;
        let inner = &self.inner;
        let asks = inner.providers.iter().map(|slot| {
            let keep = previous
                .as_ref()
                .and_then(|e| e.part(slot.id))
                .filter(|p| p.expires_ms > now);
            async move {
                match keep {
                    Some(p) => p,
                    None => this.ask(slot, ip).await,
                }
            }
        });
        let parts: Vec<Part> = futures_util::future::join_all(asks).await;
        if let Ok(json) = serde_json::to_vec(&parts) {
            let expires = parts.iter().map(|p| p.expires_ms).max().unwrap_or(0);
            let bytes = store::entry_bytes(expires, &json);
            if let Some(tier) = &tier {
                self.store_in_tier(tier, key, &bytes, expires, locked).await;
            }
            self.persist(Write::Entry(key, bytes), None);
        }
        let entry = Slot::new(&parts);
        inner.shared.entries.insert(key, entry.clone());
        inner.entries_gauge.set(inner.shared.entries.len() as f64);
        let mut l = (*entry.lookup).clone();
        l.cached = false;
        Arc::new(l)
    }

    async fn ask(&self, slot: &ProviderSlot, ip: IpAddr) -> Part {
        let cfg = &self.inner.cfg;
        let id = slot.id;
        let name = id.as_str();
        let error_part = |msg: String| Part {
            provider: id,
            expires_ms: self.now_ms() + cfg.error_ttl.0.as_millis() as u64,
            result: PartResult::Error(msg),
        };
        if id.is_remote() && self.inner.skip_private && is_private(ip) {
            return Part {
                provider: id,
                expires_ms: self.now_ms() + cfg.ttl.0.as_millis() as u64,
                result: PartResult::Skipped,
            };
        }
        if let Err(why) = self.may_ask(slot).await {
            return error_part(why);
        }
        match slot.provider.lookup(ip).await {
            Ok(rep) => {
                slot.requests[0].increment(1);
                let ttl = cfg.ttl_by_status.for_status(rep.status, cfg.ttl.0);
                Part {
                    provider: id,
                    expires_ms: self.now_ms() + ttl.as_millis() as u64,
                    result: PartResult::Answer(rep),
                }
            }
            Err(e) => {
                let outcome = e.outcome();
                if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
                    slot.requests[i].increment(1);
                }
                self.after_error(slot, &e).await;
                tracing::info!(provider = name, outcome, error = %e, "provider look-up failed");
                error_part(e.to_string())
            }
        }
    }

    /// Reasons a provider cannot be used (for `/readyz`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .inner
            .providers
            .iter()
            .filter_map(|s| match s.provider.availability() {
                Availability::Disabled(why) => Some(format!("provider {} disabled: {why}", s.id)),
                _ => None,
            })
            .collect();
        if problems.is_empty() {
            problems = self.refused_keys();
        }
        problems
    }
}

impl ReputationSource for ReputationCache {
    fn cached(&self, ip: IpAddr) -> Option<Arc<Lookup>> {
        ReputationCache::cached(self, ip)
    }

    fn cached_at(&self, ip: IpAddr, at: crate::clock::Moment) -> Option<Arc<Lookup>> {
        ReputationCache::cached_at(self, ip, at)
    }

    fn lookup(&self, ip: IpAddr, allow_remote: bool) -> BoxFuture<'_, Answer> {
        Box::pin(self.get(ip, allow_remote))
    }

    fn problems(&self) -> Vec<String> {
        ReputationCache::problems(self)
    }

    fn evict(&self, ip: IpAddr) -> BoxFuture<'_, bool> {
        let removed = ReputationCache::evict(self, ip);
        let key = self.key(ip);
        Box::pin(async move {
            // The cluster forgets it too, or the next miss would bring it back.
            if let Some(tier) = &self.inner.tier {
                let _ = tier.del(&tier.keys().rep(key)).await;
            }
            removed
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::providers::ProviderError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Panics on its first look-up, answers after that.
    #[derive(Debug, Default)]
    struct PanicsOnce {
        calls: AtomicU32,
    }

    impl Provider for PanicsOnce {
        fn id(&self) -> ProviderId {
            ProviderId::Iocscout
        }
        fn lookup(&self, _ip: IpAddr) -> BoxFuture<'_, Result<Reputation, ProviderError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert!(n > 0, "the provider panics on its first call");
                Ok(Reputation::unknown(ProviderId::Iocscout))
            })
        }
        fn availability(&self) -> Availability {
            Availability::Ready
        }
    }

    #[tokio::test]
    async fn a_flight_that_panics_does_not_pin_its_ip() {
        let config = Config::from_yaml("{}", "t").unwrap();
        let provider = Arc::new(PanicsOnce::default());
        let cache = ReputationCache::new(
            &config,
            vec![provider.clone()],
            None,
            crate::clock::system(),
            None,
        )
        .unwrap();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();

        let Answer::Known(first) = cache.get(ip, true).await else {
            panic!("inline mode never answers pending");
        };
        assert_eq!(
            first.errors,
            [(ErrorSource::Failed, "look-up task failed".to_string())]
        );

        // The next request for the same IP asks the provider again and gets its answer.
        let Answer::Known(second) = cache.get(ip, true).await else {
            panic!("inline mode never answers pending");
        };
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
        assert_eq!(second.answers.len(), 1, "{second:?}");
        assert!(cache.inner.shared.flights.lock().unwrap().is_empty());
    }

    /// Answers every look-up, counting them.
    #[derive(Debug)]
    struct Counting {
        id: ProviderId,
        calls: AtomicU32,
    }

    impl Counting {
        fn new(id: ProviderId) -> Arc<Counting> {
            Arc::new(Counting {
                id,
                calls: AtomicU32::new(0),
            })
        }
    }

    impl Provider for Counting {
        fn id(&self) -> ProviderId {
            self.id
        }
        fn lookup(&self, _ip: IpAddr) -> BoxFuture<'_, Result<Reputation, ProviderError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(Reputation::unknown(self.id)) })
        }
        fn availability(&self) -> Availability {
            Availability::Ready
        }
    }

    fn cache_over(
        providers: Vec<Arc<dyn Provider>>,
        previous: Option<&ReputationCache>,
    ) -> ReputationCache {
        let config = Config::from_yaml("{}", "t").unwrap();
        ReputationCache::new(&config, providers, previous, crate::clock::system(), None).unwrap()
    }

    /// Asks until the answer comes from this thread's front (the main cache's entry
    /// is then removed behind the front's back to prove it).
    async fn hit_from_front(cache: &ReputationCache, ip: IpAddr) {
        let Answer::Known(_) = cache.get(ip, true).await else {
            panic!("inline mode never answers pending");
        };
        for _ in 0..3 {
            assert!(cache.cached(ip).is_some());
        }
        let key = cache.key(ip);
        let kept = cache.inner.shared.entries.remove(&key);
        assert!(cache.cached(ip).is_some(), "a hit now comes from the front");
        let (k, v) = kept.unwrap();
        cache.inner.shared.entries.insert(k, v);
    }

    #[tokio::test]
    async fn an_evicted_or_flushed_entry_is_not_served_from_the_front() {
        let provider = Counting::new(ProviderId::Iocscout);
        let cache = cache_over(vec![provider.clone()], None);
        let ip: IpAddr = "198.51.100.8".parse().unwrap();

        hit_from_front(&cache, ip).await;
        assert!(cache.evict(ip));
        assert!(cache.cached(ip).is_none(), "evicted: no hit");
        let _ = cache.get(ip, true).await;
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2, "asked again");

        hit_from_front(&cache, ip).await;
        cache.flush();
        assert!(cache.cached(ip).is_none(), "flushed: no hit");
        let _ = cache.get(ip, true).await;
        assert_eq!(provider.calls.load(Ordering::SeqCst), 3, "asked again");
    }

    #[tokio::test]
    async fn a_reload_that_adds_a_provider_does_not_answer_from_the_front() {
        let first = Counting::new(ProviderId::Iocscout);
        let cache = cache_over(vec![first.clone()], None);
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        hit_from_front(&cache, ip).await;

        // Same entries (kept across the reload), one more provider: the entry lacks its
        // part, so it is not a hit, and only the new provider is asked.
        let second = Counting::new(ProviderId::Ipswamp);
        let reloaded = cache_over(vec![first.clone(), second.clone()], Some(&cache));
        assert!(reloaded.cached(ip).is_none());
        let Answer::Known(l) = reloaded.get(ip, true).await else {
            panic!("inline mode never answers pending");
        };
        assert_eq!(l.answers.len(), 2);
        assert_eq!(first.calls.load(Ordering::SeqCst), 1);
        assert_eq!(second.calls.load(Ordering::SeqCst), 1);
    }
}
