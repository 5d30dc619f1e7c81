//! The `Gate`: the live state (swapped atomically on reload) and `decide(ip)`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use metrics::{Counter, Histogram};
use serde::Serialize;

use crate::bans::Bans;
use crate::block_page::{BlockBody, BlockPage, BlockPageError};
use crate::cache::ReputationCache;
use crate::client_ip::ClientIpResolver;
use crate::config::{Action, Config, ConfigError, Mode};
use crate::feeds::Feeds;
use crate::lists::IpSet;
use crate::policy::{LocalFacts, Outcome, Policy, TraceStep};
use crate::reputation::{Lookup, NoReputation, ReputationSource};

/// What the gate decided for one request, and why. Put into request extensions by the
/// layer so handlers can read it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The client IP the decision is about (canonical: IPv4-mapped IPv6 is IPv4).
    pub client_ip: IpAddr,
    /// What is enforced: in `dry_run` mode always `Allow`.
    pub action: Action,
    /// What the policy said.
    pub verdict: Action,
    /// The rule that decided: a rule name, or `ban`, `allow-list`, `block-list`,
    /// `invalid-client-ip`, `lookup-error`, `default`.
    pub rule: Arc<str>,
    /// Human-readable reason.
    pub reason: Arc<str>,
    /// The reputation consulted, if a rule needed it.
    pub reputation: Option<Arc<Lookup>>,
}

impl Decision {
    /// True when the request is to be refused.
    pub fn is_blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// The highest score any provider gave.
    pub fn score(&self) -> Option<u8> {
        self.reputation
            .as_ref()?
            .answers
            .iter()
            .filter_map(|r| r.score)
            .max()
    }

    /// The first country any provider gave.
    pub fn country(&self) -> Option<&str> {
        self.reputation
            .as_ref()?
            .answers
            .iter()
            .find_map(|r| r.country.as_deref())
    }
}

/// A decision with the steps that led to it (for `ipgate check` and the admin API).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub ip: IpAddr,
    pub decision: &'static str,
    pub verdict: &'static str,
    pub rule: String,
    pub reason: String,
    /// Lists that contain the IP: `ban`, `allow`, `block`, feed names.
    pub lists: Vec<String>,
    pub trace: Vec<TraceStep>,
    pub reputation: serde_json::Map<String, serde_json::Value>,
    pub reputation_errors: Vec<(String, String)>,
    pub cached: bool,
}

/// Why a gate could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    BlockPage(#[from] BlockPageError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("{0}")]
    Setup(String),
}

/// Decision counters, registered once per configuration so the hot path only increments.
struct Counters {
    /// Per rule: [allow, block, dry_run_block].
    rules: Vec<[Counter; 3]>,
    fixed: Vec<(Arc<str>, [Counter; 3])>,
    lookup_failures: Counter,
    seconds: Histogram,
}

fn triple(rule: &Arc<str>) -> [Counter; 3] {
    let c = |d: &'static str| metrics::counter!(crate::metrics::REQUESTS, "decision" => d, "rule" => rule.to_string());
    [c("allow"), c("block"), c("dry_run_block")]
}

const BAN: &str = "ban";
const ALLOW_LIST: &str = "allow-list";
const BLOCK_LIST: &str = "block-list";
const INVALID: &str = "invalid-client-ip";
const DEFAULT: &str = "default";
const LOOKUP_ERROR: &str = "lookup-error";
const LOOKUP_PENDING: &str = "lookup-pending";

/// Everything a decision reads, swapped as a whole on reload.
pub(crate) struct Live {
    pub(crate) config: Arc<Config>,
    pub(crate) resolver: ClientIpResolver,
    allow: IpSet,
    block: IpSet,
    policy: Policy,
    pub(crate) feeds: Feeds,
    source: Arc<dyn ReputationSource>,
    pub(crate) block_page: BlockPage,
    pub(crate) upstream: Option<crate::proxy::Upstream>,
    cache: Option<ReputationCache>,
    counters: Counters,
    names: [Arc<str>; 7],
    rule_reasons: Vec<Arc<str>>,
}

impl Live {
    fn build(
        config: Config,
        source: Arc<dyn ReputationSource>,
        feeds: Feeds,
    ) -> Result<Live, GateError> {
        let block_page = BlockPage::from_config(&config.block_response)?;
        let upstream = match &config.upstream {
            Some(u) => Some(crate::proxy::Upstream::parse(&u.0).map_err(GateError::Setup)?),
            None => None,
        };
        let resolver = ClientIpResolver::new(
            config.client_ip.trusted_proxies.iter().map(|c| c.0),
            config.client_ip.header,
        );
        let allow = config.lists.allow.iter().map(|c| c.0).collect();
        let block = config.lists.block.iter().map(|c| c.0).collect();
        let policy = Policy::compile(&config, &|name| feeds.index_of(name));
        let names = [
            BAN,
            ALLOW_LIST,
            BLOCK_LIST,
            INVALID,
            DEFAULT,
            LOOKUP_ERROR,
            LOOKUP_PENDING,
        ]
        .map(Arc::<str>::from);
        let counters = Counters {
            rules: policy.rules().iter().map(|r| triple(&r.name)).collect(),
            fixed: names.iter().map(|n| (n.clone(), triple(n))).collect(),
            lookup_failures: metrics::counter!(crate::metrics::LOOKUP_FAILURES),
            seconds: metrics::histogram!(crate::metrics::DECISION_SECONDS),
        };
        let rule_reasons = policy
            .rules()
            .iter()
            .map(|r| Arc::from(format!("matched rule `{}`", r.name)))
            .collect();
        Ok(Live {
            config: Arc::new(config),
            resolver,
            allow,
            block,
            policy,
            feeds,
            source,
            block_page,
            upstream,
            cache: None,
            counters,
            names,
            rule_reasons,
        })
    }

    fn count(&self, rule_index: Option<usize>, rule: &Arc<str>, verdict: Action, dry_run: bool) {
        let slot = match (verdict, dry_run) {
            (Action::Allow, _) => 0,
            (Action::Block, false) => 1,
            (Action::Block, true) => 2,
        };
        let counters = match rule_index {
            Some(i) => self.counters.rules.get(i),
            None => self
                .counters
                .fixed
                .iter()
                .find(|(n, _)| Arc::ptr_eq(n, rule))
                .map(|(_, c)| c),
        };
        if let Some(c) = counters {
            c[slot].increment(1);
        }
    }
}

struct Inner {
    live: ArcSwap<Live>,
    bans: Bans,
    /// A source given by the embedding application (kept across reloads).
    custom_source: Option<Arc<dyn ReputationSource>>,
    /// Serializes reloads.
    reloading: tokio::sync::Mutex<()>,
}

/// The gate: cheap to clone, reloadable, shared by the server and the tower layer.
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
        Self::build(config, None).await
    }

    /// Builds a gate that asks `source` for reputation instead of the configured
    /// providers and cache (for embedding and tests).
    pub async fn with_source(
        config: Config,
        source: Arc<dyn ReputationSource>,
    ) -> Result<Gate, GateError> {
        Self::build(config, Some(source)).await
    }

    async fn build(
        config: Config,
        custom_source: Option<Arc<dyn ReputationSource>>,
    ) -> Result<Gate, GateError> {
        let live = build_live(config, None, custom_source.clone()).await?;
        Ok(Gate {
            inner: Arc::new(Inner {
                live: ArcSwap::from_pointee(live),
                bans: Bans::default(),
                custom_source,
                reloading: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The reputation cache, when the gate uses the configured providers: read, evict
    /// and flush entries (the admin API uses it).
    pub fn reputation_cache(&self) -> Option<ReputationCache> {
        self.inner.live.load().cache.clone()
    }

    /// Finishes background work before exit: waits until the cache store has committed
    /// every write.
    pub async fn close(&self) {
        if let Some(cache) = self.reputation_cache() {
            cache.sync().await;
        }
    }

    /// Replaces the configuration; on error the old one stays in force.
    pub async fn reload(&self, config: Config) -> Result<(), GateError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let previous = self.inner.live.load_full();
        match build_live(config, Some(&previous), self.inner.custom_source.clone()).await {
            Ok(live) => {
                let old = self.inner.live.swap(Arc::new(live));
                old.feeds.stop();
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "ok").increment(1);
                tracing::info!("configuration reloaded");
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
        self.inner.live.load().config.clone()
    }

    /// Temporary bans.
    pub fn bans(&self) -> &Bans {
        &self.inner.bans
    }

    /// A tower layer that guards a service with this gate.
    pub fn layer(&self) -> crate::layer::GateLayer {
        crate::layer::GateLayer::new(self.clone())
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        self.inner.live.load_full()
    }

    /// Resolves the client IP of a request from its peer and headers, then decides.
    pub async fn decide_request(&self, peer: IpAddr, headers: &http::HeaderMap) -> Decision {
        let started = sample_timing().then(Instant::now);
        let (ip, from) = {
            // Borrowed, not reference-counted: no shared counter is touched per request.
            let live = self.inner.live.load();
            let ip = match live.resolver.resolve(peer, headers) {
                Ok(ip) => ip.to_canonical(),
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "request refused: invalid client IP");
                    return refuse_invalid(&live, peer.to_canonical(), Arc::from(e.to_string()));
                }
            };
            match self.decide_now(&live, ip, started) {
                Ok(d) => return d,
                Err(from) => (ip, from),
            }
        };
        self.decide_after_lookup(&self.live(), ip, from, started)
            .await
    }

    /// The decision for a request whose peer address is unknown: refused (fail closed).
    pub fn decide_without_peer(&self) -> Decision {
        tracing::warn!(
            "request without a peer address: serve with into_make_service_with_connect_info::<SocketAddr>() or insert ipgate::ClientIp"
        );
        refuse_invalid(
            &self.live(),
            IpAddr::from([0, 0, 0, 0]),
            Arc::from("no peer address for the request"),
        )
    }

    /// Decides for a client IP.
    pub async fn decide(&self, ip: IpAddr) -> Decision {
        let started = sample_timing().then(Instant::now);
        let ip = ip.to_canonical();
        let from = {
            let live = self.inner.live.load();
            match self.decide_now(&live, ip, started) {
                Ok(d) => return d,
                Err(from) => from,
            }
        };
        self.decide_after_lookup(&self.live(), ip, from, started)
            .await
    }

    /// Everything that needs no waiting: bans, lists, local facts and a fresh cached
    /// reputation. `Err(rule index)` when a look-up must be waited for.
    fn decide_now(
        &self,
        live: &Live,
        ip: IpAddr,
        started: Option<Instant>,
    ) -> Result<Decision, usize> {
        if let Some(parts) = self.list_parts(live, ip) {
            return Ok(self.finish(live, ip, parts, None, started));
        }
        match live.policy.evaluate(ip, &live.feeds, None, 0, None) {
            Ok(outcome) => {
                let parts = self.outcome_parts(live, &outcome, None);
                Ok(self.finish(live, ip, parts, None, started))
            }
            Err(from) => match live.source.cached(ip) {
                Some(l) => Ok(self.with_reputation(live, ip, from, l, started)),
                None => Err(from),
            },
        }
    }

    /// Bans, `lists.allow`, `lists.block`, in that order (SPEC §2.2).
    fn list_parts(&self, live: &Live, ip: IpAddr) -> Option<Parts> {
        if let Some(ban) = self.inner.bans.find(ip) {
            let reason = if ban.reason.is_empty() {
                format!("banned ({})", ban.cidr)
            } else {
                ban.reason
            };
            return Some((
                Action::Block,
                live.names[0].clone(),
                Arc::from(reason),
                None,
            ));
        }
        if live.allow.contains(ip) {
            return Some((
                Action::Allow,
                live.names[1].clone(),
                live.names[1].clone(),
                None,
            ));
        }
        if live.block.contains(ip) {
            return Some((
                Action::Block,
                live.names[2].clone(),
                live.names[2].clone(),
                None,
            ));
        }
        None
    }

    /// Waits for the look-up, then decides from rule `from`.
    async fn decide_after_lookup(
        &self,
        live: &Live,
        ip: IpAddr,
        from: usize,
        started: Option<Instant>,
    ) -> Decision {
        let l = lookup(live, ip).await;
        self.with_reputation(live, ip, from, l, started)
    }

    fn with_reputation(
        &self,
        live: &Live,
        ip: IpAddr,
        from: usize,
        l: Arc<Lookup>,
        started: Option<Instant>,
    ) -> Decision {
        let outcome = outcome_with(live, ip, from, &l, None);
        let parts = self.outcome_parts(live, &outcome, Some(&l));
        self.finish(live, ip, parts, Some(l), started)
    }

    /// Counts, times and builds the decision.
    fn finish(
        &self,
        live: &Live,
        ip: IpAddr,
        (verdict, rule, reason, index): (Action, Arc<str>, Arc<str>, Option<usize>),
        reputation: Option<Arc<Lookup>>,
        started: Option<Instant>,
    ) -> Decision {
        let dry_run = live.config.mode == Mode::DryRun;
        live.count(index, &rule, verdict, dry_run);
        if let Some(started) = started {
            live.counters
                .seconds
                .record(started.elapsed().as_secs_f64());
        }
        if verdict == Action::Block {
            tracing::debug!(ip = %ip, rule = %rule, dry_run, "blocked");
        }
        build_decision(live, ip, (verdict, rule, reason, index), reputation)
    }

    fn outcome_parts(
        &self,
        live: &Live,
        outcome: &Outcome,
        rep: Option<&Lookup>,
    ) -> (Action, Arc<str>, Arc<str>, Option<usize>) {
        match *outcome {
            Outcome::Rule { index, action } => (
                action,
                live.policy.rule_name(outcome).clone(),
                live.rule_reasons
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| live.names[4].clone()),
                Some(index),
            ),
            Outcome::Default(action) => {
                (action, live.names[4].clone(), live.names[4].clone(), None)
            }
            Outcome::Pending(action) => {
                (action, live.names[6].clone(), live.names[6].clone(), None)
            }
            Outcome::LookupFailed { index, action } => {
                live.counters.lookup_failures.increment(1);
                let why = rep
                    .map(|l| {
                        l.errors
                            .iter()
                            .map(|(p, e)| format!("{p}: {e}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                let rule_name = live
                    .policy
                    .rules()
                    .get(index)
                    .map(|r| r.name.to_string())
                    .unwrap_or_default();
                tracing::info!(rule = %rule_name, errors = %why, action = action.as_str(), "no reputation available; lookup.on_error decides");
                (
                    action,
                    live.names[5].clone(),
                    Arc::from(format!(
                        "rule `{rule_name}` needs reputation and none is available ({why})"
                    )),
                    None,
                )
            }
        }
    }

    /// Decides for `ip` and says why, step by step. Providers are asked only when
    /// `allow_lookup` (the cache is used either way).
    pub async fn explain(&self, ip: IpAddr, allow_lookup: bool) -> Explanation {
        let live = self.live();
        let ip = ip.to_canonical();
        let mut lists = Vec::new();
        let ban = self.inner.bans.find(ip);
        if ban.is_some() {
            lists.push("ban".to_string());
        }
        if live.allow.contains(ip) {
            lists.push("allow".to_string());
        }
        if live.block.contains(ip) {
            lists.push("block".to_string());
        }
        lists.extend(crate::gate::facts_names(&live, ip));
        let mut trace = Vec::new();
        let mut rep: Option<Arc<Lookup>> = None;
        let d = self
            .decide_with_lookup_mode(&live, ip, allow_lookup, &mut trace, &mut rep)
            .await;
        let mut reputation = serde_json::Map::new();
        let (mut errors, mut cached) = (Vec::new(), false);
        if let Some(l) = &rep {
            for a in &l.answers {
                reputation.insert(
                    a.provider.clone(),
                    serde_json::to_value(a).unwrap_or_default(),
                );
            }
            errors = l.errors.clone();
            cached = l.cached;
        }
        Explanation {
            ip,
            decision: d.action.as_str(),
            verdict: d.verdict.as_str(),
            rule: d.rule.to_string(),
            reason: d.reason.to_string(),
            lists,
            trace,
            reputation,
            reputation_errors: errors,
            cached,
        }
    }

    async fn decide_with_lookup_mode(
        &self,
        live: &Live,
        ip: IpAddr,
        allow_lookup: bool,
        trace: &mut Vec<TraceStep>,
        rep: &mut Option<Arc<Lookup>>,
    ) -> Decision {
        // Explaining is not a request: nothing here is counted.
        if let Some(parts) = self.list_parts(live, ip) {
            return build_decision(live, ip, parts, None);
        }
        let outcome = match live.policy.evaluate(ip, &live.feeds, None, 0, Some(trace)) {
            Ok(o) => o,
            Err(from) => {
                let l = if allow_lookup {
                    lookup(live, ip).await
                } else {
                    let l = live.source.lookup(ip, false).await;
                    if l.answers.is_empty() && l.errors.is_empty() {
                        Arc::new(Lookup {
                            errors: vec![(
                                "cache".into(),
                                "not cached (use --lookup to ask the providers)".into(),
                            )],
                            ..Lookup::default()
                        })
                    } else {
                        l
                    }
                };
                let o = outcome_with(live, ip, from, &l, Some(trace));
                *rep = Some(l);
                o
            }
        };
        let parts = self.outcome_parts(live, &outcome, rep.as_deref());
        build_decision(live, ip, parts, rep.clone())
    }

    /// Reasons the gate is not ready (empty when ready).
    pub fn readiness_problems(&self) -> Vec<String> {
        let live = self.live();
        let mut problems = live.source.problems();
        problems.extend(
            live.feeds
                .not_loaded()
                .into_iter()
                .map(|f| format!("feed {f} never loaded")),
        );
        problems
    }

    /// The feeds in force (status, refresh).
    pub fn feeds(&self) -> Feeds {
        self.live().feeds.clone()
    }

    /// Forgets what the cache holds for `ip`; true when something was removed.
    pub async fn evict(&self, ip: IpAddr) -> bool {
        self.live().source.evict(ip.to_canonical()).await
    }

    /// Renders the block response for a decision.
    pub fn block_response(
        &self,
        decision: &Decision,
        accept: Option<&http::HeaderValue>,
    ) -> BlockBody {
        self.live().block_page.render(decision, accept)
    }
}

/// What a decision is made of: verdict, rule, reason, and the rule's index.
type Parts = (Action, Arc<str>, Arc<str>, Option<usize>);

/// The decision for `parts`: in dry_run mode nothing is blocked.
fn build_decision(
    live: &Live,
    ip: IpAddr,
    (verdict, rule, reason, _): Parts,
    reputation: Option<Arc<Lookup>>,
) -> Decision {
    let dry_run = live.config.mode == Mode::DryRun;
    Decision {
        client_ip: ip,
        action: if dry_run { Action::Allow } else { verdict },
        verdict,
        rule,
        reason,
        reputation,
    }
}

/// The outcome once reputation is known: a pending background look-up leaves it to
/// `lookup.on_miss`; otherwise the rules from `from` (evaluation always ends).
fn outcome_with(
    live: &Live,
    ip: IpAddr,
    from: usize,
    l: &Lookup,
    trace: Option<&mut Vec<TraceStep>>,
) -> Outcome {
    if l.pending {
        return Outcome::Pending(live.config.lookup.on_miss);
    }
    live.policy
        .evaluate(ip, &live.feeds, Some(l), from, trace)
        .unwrap_or(Outcome::Default(live.config.default))
}

/// One decision in this many is timed for `ipgate_decision_seconds`.
pub const TIMING_SAMPLE: u32 = 16;

thread_local! {
    static DECISIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// True for one call in [`TIMING_SAMPLE`] on each thread.
#[inline]
fn sample_timing() -> bool {
    DECISIONS.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        v % TIMING_SAMPLE == 0
    })
}

/// The `invalid-client-ip` decision: refused (fail closed), counted; never blocks in
/// dry_run mode.
fn refuse_invalid(live: &Live, client_ip: IpAddr, reason: Arc<str>) -> Decision {
    let rule = live.names[3].clone();
    let dry_run = live.config.mode == Mode::DryRun;
    live.count(None, &rule, Action::Block, dry_run);
    Decision {
        client_ip,
        action: if dry_run {
            Action::Allow
        } else {
            Action::Block
        },
        verdict: Action::Block,
        rule,
        reason,
        reputation: None,
    }
}

/// Asks the reputation source, bounded by `lookup.timeout`.
async fn lookup(live: &Live, ip: IpAddr) -> Arc<Lookup> {
    let timeout = live.config.lookup.timeout.0;
    match tokio::time::timeout(timeout, live.source.lookup(ip, true)).await {
        Ok(l) => l,
        Err(_) => Arc::new(Lookup {
            errors: vec![(
                "lookup".into(),
                format!(
                    "timed out after {}",
                    crate::config::format_duration(timeout)
                ),
            )],
            ..Lookup::default()
        }),
    }
}

async fn build_live(
    config: Config,
    previous: Option<&Live>,
    custom_source: Option<Arc<dyn ReputationSource>>,
) -> Result<Live, GateError> {
    let (source, cache): (Arc<dyn ReputationSource>, Option<ReputationCache>) = match custom_source
    {
        Some(s) => (s, None),
        None if config.providers.iocscout.is_none()
            && config.providers.ipswamp.is_none()
            && config.providers.file.is_none() =>
        {
            (Arc::new(NoReputation), None)
        }
        None => {
            let client =
                crate::providers::http_client().map_err(|e| GateError::Setup(e.to_string()))?;
            let providers = crate::providers::build(&config.providers, client)
                .map_err(|e| GateError::Setup(e.to_string()))?;
            let cache =
                ReputationCache::new(&config, providers, previous.and_then(|p| p.cache.as_ref()))?;
            (Arc::new(cache.clone()), Some(cache))
        }
    };
    let feeds = if config.lists.feeds.is_empty() {
        Feeds::empty()
    } else {
        let client =
            crate::providers::http_client().map_err(|e| GateError::Setup(e.to_string()))?;
        Feeds::start(&config.lists.feeds, feed_store_dir(&config), client).await
    };
    let mut live = Live::build(config, source, feeds)?;
    live.cache = cache;
    Ok(live)
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

impl LocalFacts for Feeds {
    #[inline]
    fn in_list(&self, index: usize, ip: IpAddr) -> bool {
        self.contains(index, ip)
    }
    #[inline]
    fn tagged(&self, tag: crate::config::FeedTag, ip: IpAddr) -> bool {
        self.has_tag(tag, ip)
    }
}

fn facts_names(live: &Live, ip: IpAddr) -> Vec<String> {
    live.feeds.names_containing(ip)
}
