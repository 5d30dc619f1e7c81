//! The [`Gate`]: the live [`Snapshot`], swapped atomically on reload, and the bans that
//! outlive every reload. Cheap to clone; shared by the server, the layer and the admin
//! API.

use std::future::{Future, Ready};
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::{BoxFuture, Either};

use arc_swap::ArcSwap;

use crate::bans::{Ban, Bans};
use crate::block_page::{BlockPage, BlockPageError};
use crate::cache::{CacheError, ReputationCache};
use crate::clock::{Clock, SharedClock};
use crate::config::{Config, ConfigError};
use crate::decision::Decision;
use crate::explain::Explanation;
use crate::feeds::Feeds;
use crate::reputation::{NoReputation, ReputationSource};
use crate::shared_tier::{SharedTier, TierSetupError};
use crate::snapshot::{Parts, Snapshot, Step};
use crate::upstream::{Upstream, UpstreamError};

/// Why a gate could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `block_response` cannot be used.
    #[error(transparent)]
    BlockPage(#[from] BlockPageError),
    /// The reputation cache (its store) cannot be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// `upstream` cannot be used.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// `tls` cannot be used (a reload keeps the pair in force).
    #[cfg(feature = "gateway")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `upstream_ca` cannot be used (a reload keeps the roots in force).
    #[cfg(feature = "gateway")]
    #[error(transparent)]
    UpstreamCa(#[from] crate::upstream_connect::UpstreamCaError),
    /// `cache.redis` cannot be used.
    #[error(transparent)]
    SharedTier(#[from] TierSetupError),
    /// A provider (or the HTTP client providers and feeds share) cannot be set up.
    #[error(transparent)]
    Providers(#[from] crate::providers::ProviderBuildError),
}

struct Inner {
    live: ArcSwap<Snapshot>,
    bans: Bans,
    /// A source given by the embedding application (kept across reloads).
    custom_source: Option<Arc<dyn ReputationSource>>,
    clock: SharedClock,
    /// Redis, when `cache.redis` is set (kept for the process's life).
    tier: Option<SharedTier>,
    /// The ban records written to `cache.path` (to remove those the cluster dropped).
    stored_bans: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Serializes reloads.
    reloading: tokio::sync::Mutex<()>,
    /// The last decisions and the counts of the last minutes (the status page).
    activity: crate::status::Activity,
}

/// Builds a [`Gate`]: `Gate::builder(config).clock(c).build().await`.
#[must_use]
pub struct GateBuilder {
    config: Config,
    source: Option<Arc<dyn ReputationSource>>,
    clock: SharedClock,
}

impl std::fmt::Debug for GateBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateBuilder")
            .field("custom_source", &self.source.is_some())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl GateBuilder {
    /// Asks `source` for reputation instead of the configured providers and cache.
    pub fn source(mut self, source: Arc<dyn ReputationSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Reads time from `clock` (cache expiries, quota days, provider cool-downs), e.g.
    /// a [`crate::clock::ManualClock`] in tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the gate: opens the cache store, loads the feeds, sets up the providers.
    pub async fn build(self) -> Result<Gate, GateError> {
        // The decision's clock calibrates here, not on the first request.
        crate::clock::Moment::calibrate();
        let bans = Bans::default();
        let tier = match self.config.cache.redis.as_ref().filter(|u| !u.0.is_empty()) {
            Some(url) => Some(
                SharedTier::connect(
                    &url.0,
                    &self.config.cache.redis_prefix.0,
                    self.config.cache.redis_timeout.0,
                )
                .await?,
            ),
            None => None,
        };
        let live = build_snapshot(
            self.config,
            None,
            self.source.clone(),
            bans.clone(),
            &self.clock,
            tier.as_ref(),
        )
        .await?;
        // Bans a restart must keep: those of cache.path, then the cluster's.
        let mut stored = std::collections::HashSet::new();
        if let Some(cache) = live.cache() {
            for ban in crate::ban_sync::from_records(cache.take_stored_bans()) {
                stored.insert(crate::ban_sync::record_key(ban.cidr));
                bans.restore(ban);
            }
        }
        let gate = Gate {
            inner: Arc::new(Inner {
                live: ArcSwap::from_pointee(live),
                bans,
                custom_source: self.source,
                clock: self.clock,
                tier,
                stored_bans: std::sync::Mutex::new(stored),
                reloading: tokio::sync::Mutex::new(()),
                activity: crate::status::Activity::new(),
            }),
        };
        if let Some(tier) = gate.inner.tier.clone() {
            if tier.is_up() {
                let _ = crate::ban_sync::restore_if_lost(&tier, &gate.inner.bans).await;
                if let Ok(live) = crate::ban_sync::resync(&tier, &gate.inner.bans).await {
                    gate.keep_bans(&live);
                }
            }
            let weak = Arc::downgrade(&gate.inner);
            let keeper = weak.clone();
            crate::ban_sync::spawn(tier, gate.inner.bans.clone(), weak, move |live| {
                if let Some(inner) = keeper.upgrade() {
                    (Gate { inner }).keep_bans(live);
                }
            });
        }
        Ok(gate)
    }
}

/// The gate: cheap to clone, reloadable.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// Builds a gate from a validated configuration.
    pub async fn from_config(config: Config) -> Result<Gate, GateError> {
        Gate::builder(config).build().await
    }

    /// Builds a gate that asks `source` for reputation instead of the configured
    /// providers and cache (for embedding and tests).
    pub async fn with_source(
        config: Config,
        source: Arc<dyn ReputationSource>,
    ) -> Result<Gate, GateError> {
        Gate::builder(config).source(source).build().await
    }

    /// A gate with more than a configuration: a reputation source, a clock.
    pub fn builder(config: Config) -> GateBuilder {
        GateBuilder {
            config,
            source: None,
            clock: crate::clock::system(),
        }
    }

    /// The state in force now; a request keeps the one it started with.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.live.load_full()
    }

    /// The reputation cache, when the gate uses the configured providers: read, evict
    /// and flush entries, see today's quotas.
    pub fn reputation_cache(&self) -> Option<ReputationCache> {
        self.inner.live.load().cache().cloned()
    }

    /// Finishes background work before exit: waits until the cache store has committed
    /// every write.
    pub async fn close(&self) {
        if let Some(cache) = self.inner.live.load().cache() {
            cache.sync().await;
        }
    }

    /// Replaces the configuration; on error the old one stays in force. Requests in
    /// flight finish on the configuration they started with.
    pub async fn reload(&self, config: Config) -> Result<(), GateError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let previous = self.inner.live.load_full();
        let built = build_snapshot(
            config,
            Some(&previous),
            self.inner.custom_source.clone(),
            self.inner.bans.clone(),
            &self.inner.clock,
            self.inner.tier.as_ref(),
        )
        .await;
        match built {
            Ok(live) => {
                let restart = needs_restart(previous.config(), live.config());
                let old = self.inner.live.swap(Arc::new(live));
                old.feeds().stop();
                if restart.is_empty() {
                    metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "ok")
                        .increment(1);
                    tracing::info!("configuration reloaded");
                } else {
                    metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "restart_required").increment(1);
                    tracing::warn!(
                        changed = %restart.join("; "),
                        "configuration reloaded, but these changes need a restart: the running listeners are kept"
                    );
                }
                Ok(())
            }
            Err(e) => {
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "error").increment(1);
                tracing::warn!(error = %e, "configuration reload failed; the previous configuration stays in force");
                Err(e)
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner.live.load().config().clone()
    }

    /// Temporary bans in force (read them; change them with [`Gate::ban`] and
    /// [`Gate::unban`], which also store and share them).
    pub fn bans(&self) -> &Bans {
        &self.inner.bans
    }

    /// Bans `cidr` for `ttl`: in force here at once, kept in `cache.path`, and on every
    /// gateway of the cluster within a second (`cache.redis`).
    pub async fn ban(&self, cidr: ipnet::IpNet, ttl: std::time::Duration, reason: String) -> Ban {
        let ban = self.inner.bans.add(cidr, ttl, reason);
        if let (Some(cache), Some((key, value))) = (
            self.inner.live.load().cache(),
            crate::ban_sync::record(&ban),
        ) {
            self.stored_bans().insert(key.clone());
            cache.put_record(key, value);
        }
        if let Some(tier) = &self.inner.tier
            && let Err(e) = crate::ban_sync::publish(tier, &ban).await
        {
            tracing::warn!(cidr = %ban.cidr, error = %e, "ban in force here only: it reaches the other gateways when Redis is back");
        }
        ban
    }

    /// Lifts the ban on exactly `cidr` (here, in `cache.path` and in the cluster); true
    /// when there was one here.
    pub async fn unban(&self, cidr: ipnet::IpNet) -> bool {
        let cidr = crate::config::normalize_net(cidr);
        let found = self.inner.bans.remove(cidr);
        let key = crate::ban_sync::record_key(cidr);
        if let Some(cache) = self.inner.live.load().cache() {
            self.stored_bans().remove(&key);
            cache.delete_record(key);
        }
        if let Some(tier) = &self.inner.tier
            && let Err(e) = crate::ban_sync::withdraw(tier, cidr).await
        {
            tracing::warn!(cidr = %cidr, error = %e, "ban lifted here only: Redis is down");
        }
        found
    }

    fn stored_bans(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .stored_bans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the cluster's bans in `cache.path` (a restart without Redis keeps them).
    fn keep_bans(&self, live: &[Ban]) {
        let Some(cache) = self.inner.live.load().cache().cloned() else {
            return;
        };
        let mut stored = self.stored_bans();
        let mut now = std::collections::HashSet::new();
        for ban in live {
            if let Some((key, value)) = crate::ban_sync::record(ban) {
                now.insert(key.clone());
                cache.put_record(key, value);
            }
        }
        for gone in stored.difference(&now) {
            cache.delete_record(gone.clone());
        }
        *stored = now;
    }

    /// `redis: up` / `redis: down` when the shared tier is configured: reported by
    /// `/readyz` without making the gateway unready (an outage of Redis must not take
    /// every gateway out of the load balancer).
    pub fn shared_tier_state(&self) -> Option<&'static str> {
        self.inner.tier.as_ref().map(|t| {
            if t.is_up() {
                "redis: up"
            } else {
                "redis: down"
            }
        })
    }

    /// The last decisions and the counts of the last minutes, as the layer records
    /// them (for a status page; kept across reloads).
    pub fn activity(&self) -> &crate::status::Activity {
        &self.inner.activity
    }

    /// Resolves the client IP of a request from its peer and headers, then decides.
    /// The whole decision is made on the configuration in force when it starts.
    ///
    /// The decision is made in this call as far as it can go without waiting: lists,
    /// bans, feeds and a fresh cached reputation. The future returned is then ready at
    /// once, or it waits for the provider look-up a rule needs (bounded by
    /// `lookup.timeout`). It borrows nothing: `headers` are read before this returns.
    pub fn decide_request(
        &self,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> impl Future<Output = Decision> + Send + 'static {
        // Most decisions never wait: they read the snapshot without taking a reference
        // to it (no shared count touched); one that waits keeps it.
        let live = self.inner.live.load();
        let step = live.decide_request_now(peer, headers);
        Self::finish(live, step)
    }

    /// Decides for a client IP: made in this call up to the first wait, as
    /// [`Self::decide_request`].
    pub fn decide(&self, ip: IpAddr) -> impl Future<Output = Decision> + Send + 'static {
        let live = self.inner.live.load();
        let step = live.decide_ip_now(ip);
        Self::finish(live, step)
    }

    /// The decision of a step made on `live`: ready, or, for a step that needs a
    /// look-up, a boxed future that waits on that same snapshot. The future handed to
    /// the caller is a decision and a tag (it is moved on every poll of the decisions
    /// that never wait).
    fn finish(
        live: arc_swap::Guard<Arc<Snapshot>>,
        step: Step,
    ) -> Either<Ready<Decision>, BoxFuture<'static, Decision>> {
        match step {
            Step::Done(d) => Either::Left(std::future::ready(d)),
            Step::Lookup { .. } => {
                let live = arc_swap::Guard::into_inner(live);
                Either::Right(Box::pin(async move { live.finish_step(step).await }))
            }
        }
    }

    /// Decides for `ip` and says why, step by step. Providers are asked only when
    /// `allow_lookup` (the cache and the local `file` provider answer either way).
    pub async fn explain(&self, ip: IpAddr, allow_lookup: bool) -> Explanation {
        self.snapshot().explain(ip, allow_lookup).await
    }

    /// Reasons the gate is not ready (empty when ready).
    pub fn readiness_problems(&self) -> Vec<String> {
        self.inner.live.load().readiness_problems()
    }

    /// The feeds in force (status, refresh).
    pub fn feeds(&self) -> Feeds {
        self.inner.live.load().feeds().clone()
    }

    /// Forgets what the cache holds for `ip`; true when something was removed.
    pub async fn evict(&self, ip: IpAddr) -> bool {
        let live = self.snapshot();
        live.source().evict(ip.to_canonical()).await
    }
}

/// What changed between `old` and `new` that a reload cannot apply (the listeners are
/// bound once, at start).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push(format!("listen {:?} -> {:?}", old.listen, new.listen));
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| a.listen.0);
    if admin(old) != admin(new) {
        changed.push(format!("admin.listen {:?} -> {:?}", admin(old), admin(new)));
    }
    if old.tls.is_some() != new.tls.is_some() {
        changed.push("tls turned on or off".to_string());
    }
    let redis = |c: &Config| {
        (
            c.cache.redis.as_ref().map(|u| u.0.clone()),
            c.cache.redis_prefix.0.clone(),
            c.cache.redis_timeout.0,
        )
    };
    if redis(old) != redis(new) {
        changed.push("cache.redis, cache.redis_prefix or cache.redis_timeout".to_string());
    }
    changed
}

/// Builds the state for `config`. With `previous` (a reload), the cache's entries,
/// store and quota counters carry over.
async fn build_snapshot(
    config: Config,
    previous: Option<&Snapshot>,
    custom_source: Option<Arc<dyn ReputationSource>>,
    bans: Bans,
    clock: &SharedClock,
    tier: Option<&SharedTier>,
) -> Result<Snapshot, GateError> {
    let block_page = BlockPage::from_config(&config.block_response)?;
    let upstream = config
        .upstream
        .as_ref()
        .map(|u| Upstream::parse(&u.0))
        .transpose()?;
    #[cfg(feature = "gateway")]
    let upstream = match (upstream, &config.upstream_ca) {
        (Some(u), Some(ca)) => Some(u.with_ca(&ca.0, previous.and_then(|p| p.upstream()))?),
        (u, _) => u,
    };
    #[cfg(feature = "gateway")]
    let tls = config
        .tls
        .as_ref()
        .map(|t| crate::tls::tls_acceptor(&t.cert.0, &t.key.0))
        .transpose()?;
    // A cache is kept when there is anything to cache or keep: providers, a store (it
    // also keeps bans and cool-downs) or the shared tier.
    let has_provider = config.providers.iocscout.is_some()
        || config.providers.ipswamp.is_some()
        || config.providers.file.is_some()
        || config.cache.path.as_ref().is_some_and(|p| !p.0.is_empty())
        || tier.is_some();
    let (source, cache): (Arc<dyn ReputationSource>, Option<ReputationCache>) = match custom_source
    {
        Some(s) => (s, None),
        None if !has_provider => (Arc::new(NoReputation), None),
        None => {
            let client = crate::providers::http_client()?;
            let providers = crate::providers::build(&config.providers, client, clock.clone())?;
            let cache = ReputationCache::new(
                &config,
                providers,
                previous.and_then(|p| p.cache()),
                clock.clone(),
                tier.cloned(),
            )?;
            (Arc::new(cache.clone()), Some(cache))
        }
    };
    let feeds = if config.lists.feeds.is_empty() {
        Feeds::empty()
    } else {
        let client = crate::providers::http_client()?;
        let dir = feed_store_dir(&config);
        match previous {
            Some(p) => Feeds::reloaded(p.feeds(), &config.lists.feeds, dir, client).await,
            None => Feeds::start(&config.lists.feeds, dir, client).await,
        }
    };
    Ok(Snapshot::new(Parts {
        config,
        source,
        cache,
        feeds,
        block_page,
        upstream,
        #[cfg(feature = "gateway")]
        tls,
        bans,
    }))
}

/// Where the last good copy of each feed is kept: beside `cache.path`
/// (`ipgate-cache.redb` → `ipgate-cache.feeds/`), or nowhere without it.
fn feed_store_dir(config: &Config) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(&config.cache.path.as_ref()?.0);
    if path.as_os_str().is_empty() {
        return None;
    }
    Some(path.with_extension("feeds"))
}
