//! One configuration's worth of state, and the decision made on it.
//!
//! A [`Snapshot`] is everything a request reads: the configuration, the client-IP
//! resolver, the lists, the compiled policy, the feeds, the reputation source, the
//! block page and the upstream. The gate swaps whole snapshots on reload; a request
//! takes one at its start and keeps it to its end (the gateway hands it to the proxy with
//! the decision), so a reload in the middle of a look-up never mixes two policies, and
//! the request is forwarded with the settings it was decided under.
//!
//! Deciding has two steps: [`Snapshot::decide_now`] does everything that needs no
//! waiting (bans, lists, local facts, a fresh cached answer); only when a rule needs
//! reputation that is not cached does [`Snapshot::decide_after_lookup`] wait for it.

use crate::clock::Moment;
use std::net::IpAddr;
use std::sync::Arc;

use metrics::{Counter, Histogram};

use crate::bans::Bans;
use crate::block_page::BlockPage;
use crate::cache::ReputationCache;
use crate::client_ip::ClientIpResolver;
use crate::config::{Action, Config, Mode};
use crate::decision::{DecidedBy, Decision, Reason};
use crate::feeds::Feeds;
use crate::lists::IpSet;
use crate::policy::{Evaluation, LocalFacts, Outcome, Policy, TraceStep};
use crate::reputation::{Answer, ErrorSource, Lookup, ReputationSource};
use crate::upstream::Upstream;

/// Decision counters, registered once per configuration so the hot path only
/// increments. Indexed by [`DecidedBy::slot`], then allow / block / dry_run_block;
/// impossible pairs have no series.
struct Counters {
    slots: Vec<[Option<Counter>; 3]>,
    lookup_failures: Counter,
    seconds: Histogram,
}

impl Counters {
    /// One series per kind that can decide under this configuration, with the one
    /// decision it gives: every kind has a single verdict (a rule its action, `default`
    /// the default, `lookup-error` `lookup.on_error`, ...), and a blocking verdict is
    /// `block` or `dry_run_block` by mode.
    fn new(
        kinds: &[DecidedBy],
        dry_run: bool,
        verdict: impl Fn(&DecidedBy) -> Action,
        possible: impl Fn(&DecidedBy) -> bool,
    ) -> Counters {
        let slots = kinds
            .iter()
            .map(|by| {
                let v = verdict(by);
                // Registering a counter creates its series: decide first, then register.
                let c = |column: Action, label: &'static str, in_mode: bool| {
                    (in_mode && possible(by) && by.can(column) && v == column).then(|| {
                        metrics::counter!(crate::metrics::REQUESTS, "decision" => label, "rule" => by.name().to_string())
                    })
                };
                [
                    c(Action::Allow, "allow", true),
                    c(Action::Block, "block", !dry_run),
                    c(Action::Block, "dry_run_block", dry_run),
                ]
            })
            .collect();
        Counters {
            slots,
            lookup_failures: metrics::counter!(crate::metrics::LOOKUP_FAILURES),
            seconds: metrics::histogram!(crate::metrics::DECISION_SECONDS),
        }
    }

    fn count(&self, by: &DecidedBy, verdict: Action, dry_run: bool) {
        let column = match (verdict, dry_run) {
            (Action::Allow, _) => 0,
            (Action::Block, false) => 1,
            (Action::Block, true) => 2,
        };
        if let Some(Some(c)) = self.slots.get(by.slot()).map(|s| &s[column]) {
            c.increment(1);
        }
    }
}

/// What the synchronous step leaves to do.
pub(crate) enum Step {
    /// Decided without waiting.
    Done(Decision),
    /// Rule `from` needs reputation that must be waited for.
    Lookup {
        ip: IpAddr,
        from: usize,
        started: Option<Moment>,
    },
}

/// Everything a decision reads, swapped as a whole on reload.
pub(crate) struct Snapshot {
    config: Arc<Config>,
    resolver: ClientIpResolver,
    allow: IpSet,
    block: IpSet,
    policy: Policy,
    feeds: Feeds,
    source: Arc<dyn ReputationSource>,
    cache: Option<ReputationCache>,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    block_page: BlockPage,
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    upstream: Option<Upstream>,
    /// The certificate and key of `tls`, read when this snapshot was built.
    #[cfg(feature = "gateway")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    bans: Bans,
    counters: Counters,
    /// `DecidedBy::Rule` of each rule, and the reason it gives (shared, not rebuilt).
    rules: Vec<(DecidedBy, Reason)>,
    dry_run: bool,
}

/// The parts a snapshot is built from.
pub(crate) struct Parts {
    pub config: Config,
    pub source: Arc<dyn ReputationSource>,
    pub cache: Option<ReputationCache>,
    pub feeds: Feeds,
    pub block_page: BlockPage,
    pub upstream: Option<Upstream>,
    #[cfg(feature = "gateway")]
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub bans: Bans,
}

impl Snapshot {
    pub(crate) fn new(p: Parts) -> Snapshot {
        let config = p.config;
        let resolver = ClientIpResolver::new(
            config.client_ip.trusted_proxies.iter().map(|c| c.0),
            config.client_ip.header,
        );
        let policy = Policy::compile(&config, &|name| p.feeds.index_of(name));
        let rules: Vec<(DecidedBy, Reason)> = policy
            .rules()
            .iter()
            .enumerate()
            .map(|(index, r)| {
                (
                    DecidedBy::Rule {
                        index,
                        name: r.name.clone(),
                    },
                    Reason::from(format!("matched rule `{}`", r.name)),
                )
            })
            .collect();
        let dry_run = config.mode == Mode::DryRun;
        let kinds: Vec<DecidedBy> = DecidedBy::FIXED
            .iter()
            .cloned()
            .chain(rules.iter().map(|(by, _)| by.clone()))
            .collect();
        let has_rules = !policy.rules().is_empty();
        let background = config.lookup.mode == crate::config::LookupMode::Background;
        let counters = Counters::new(
            &kinds,
            dry_run,
            |by| verdict_of(by, &policy, &config),
            |by| match by {
                // Only a rule can ask for reputation; only background mode decides
                // while a look-up is pending.
                DecidedBy::LookupError => has_rules,
                DecidedBy::LookupPending => has_rules && background,
                _ => true,
            },
        );
        Snapshot {
            counters,
            allow: config.lists.allow.iter().map(|c| c.0).collect(),
            block: config.lists.block.iter().map(|c| c.0).collect(),
            config: Arc::new(config),
            resolver,
            policy,
            feeds: p.feeds,
            source: p.source,
            cache: p.cache,
            block_page: p.block_page,
            upstream: p.upstream,
            #[cfg(feature = "gateway")]
            tls: p.tls,
            bans: p.bans,
            rules,
            dry_run,
        }
    }

    pub(crate) fn config(&self) -> &Arc<Config> {
        &self.config
    }

    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn resolver(&self) -> &ClientIpResolver {
        &self.resolver
    }

    pub(crate) fn feeds(&self) -> &Feeds {
        &self.feeds
    }

    pub(crate) fn source(&self) -> &Arc<dyn ReputationSource> {
        &self.source
    }

    pub(crate) fn cache(&self) -> Option<&ReputationCache> {
        self.cache.as_ref()
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn block_page(&self) -> &BlockPage {
        &self.block_page
    }

    #[cfg(feature = "gateway")]
    pub(crate) fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// Resolves the client IP of a request, then decides on this snapshot alone.
    pub(crate) async fn decide_request(&self, peer: IpAddr, headers: &http::HeaderMap) -> Decision {
        self.finish_step(self.decide_request_now(peer, headers))
            .await
    }

    /// [`Self::decide_request`] up to the first wait.
    pub(crate) fn decide_request_now(&self, peer: IpAddr, headers: &http::HeaderMap) -> Step {
        let started = Some(Moment::now());
        let ip = match self.resolver.resolve(peer, headers) {
            Ok(ip) => ip.to_canonical(),
            Err(e) => {
                // The layer logs the refusal with the request (rule invalid-client-ip).
                tracing::debug!(peer = %peer, error = %e, "invalid client IP");
                return Step::Done(
                    self.refuse_invalid(peer.to_canonical(), Reason::from(e.to_string())),
                );
            }
        };
        self.decide_now(ip, started)
    }

    /// Decides for a client IP up to the first wait.
    pub(crate) fn decide_ip_now(&self, ip: IpAddr) -> Step {
        self.decide_now(ip.to_canonical(), Some(Moment::now()))
    }

    /// The decision of a step: made, or made after waiting for the look-up.
    pub(crate) async fn finish_step(&self, step: Step) -> Decision {
        match step {
            Step::Done(d) => d,
            Step::Lookup { ip, from, started } => self.decide_after_lookup(ip, from, started).await,
        }
    }

    /// Everything that needs no waiting: bans, lists, local facts and a fresh cached
    /// reputation.
    pub(crate) fn decide_now(&self, ip: IpAddr, started: Option<Moment>) -> Step {
        if let Some((by, reason)) = self.list_step(ip) {
            return Step::Done(self.finish(ip, by, reason, None, started));
        }
        match self.policy.evaluate(ip, &self.feeds, None, 0, None) {
            Evaluation::Decided(outcome) => {
                let (by, reason) = self.outcome(&outcome, None);
                Step::Done(self.finish(ip, by, reason, None, started))
            }
            Evaluation::NeedsReputation { from } => match started.map_or_else(
                || self.source.cached(ip),
                |at| self.source.cached_at(ip, at),
            ) {
                Some(l) => Step::Done(self.with_answer(ip, from, Answer::Known(l), started)),
                None => Step::Lookup { ip, from, started },
            },
        }
    }

    /// Waits for the look-up (bounded by `lookup.timeout`), then decides from rule `from`.
    pub(crate) async fn decide_after_lookup(
        &self,
        ip: IpAddr,
        from: usize,
        started: Option<Moment>,
    ) -> Decision {
        let answer = self.lookup(ip).await;
        self.with_answer(ip, from, answer, started)
    }

    fn with_answer(
        &self,
        ip: IpAddr,
        from: usize,
        answer: Answer,
        started: Option<Moment>,
    ) -> Decision {
        let (by, reason, rep) = self.after_answer(ip, from, answer, None);
        self.finish(ip, by, reason, rep, started)
    }

    /// What rules `from..` say given the answer (a pending answer leaves it to
    /// `lookup.on_miss`).
    pub(crate) fn after_answer(
        &self,
        ip: IpAddr,
        from: usize,
        answer: Answer,
        trace: Option<&mut Vec<TraceStep>>,
    ) -> (DecidedBy, Reason, Option<Arc<Lookup>>) {
        match answer {
            Answer::Pending => {
                let by = DecidedBy::LookupPending;
                let reason = fixed_reason(&by);
                (by, reason, None)
            }
            Answer::Known(l) => {
                let outcome = match self.policy.evaluate(ip, &self.feeds, Some(&l), from, trace) {
                    Evaluation::Decided(o) => o,
                    // Evaluation with reputation at hand always decides.
                    Evaluation::NeedsReputation { .. } => Outcome::Default(self.config.default),
                };
                let (by, reason) = self.outcome(&outcome, Some(&l));
                (by, reason, Some(l))
            }
        }
    }

    /// Bans, `lists.allow`, `lists.block`, in that order.
    pub(crate) fn list_step(&self, ip: IpAddr) -> Option<(DecidedBy, Reason)> {
        if let Some(ban) = self.bans.find(ip) {
            let reason = if ban.reason.is_empty() {
                format!("banned ({})", ban.cidr)
            } else {
                ban.reason
            };
            return Some((DecidedBy::Ban, Reason::from(reason)));
        }
        let fixed = |by: DecidedBy| {
            let reason = fixed_reason(&by);
            Some((by, reason))
        };
        if self.allow.contains(ip) {
            return fixed(DecidedBy::AllowList);
        }
        if self.block.contains(ip) {
            return fixed(DecidedBy::BlockList);
        }
        None
    }

    /// The verdict, what decided and why, for an outcome of the rules.
    fn outcome(&self, outcome: &Outcome, rep: Option<&Lookup>) -> (DecidedBy, Reason) {
        match *outcome {
            Outcome::Rule { index, .. } => match self.rules.get(index) {
                Some((by, reason)) => (by.clone(), reason.clone()),
                None => (DecidedBy::Default, fixed_reason(&DecidedBy::Default)),
            },
            Outcome::Default(_) => (DecidedBy::Default, fixed_reason(&DecidedBy::Default)),
            Outcome::LookupFailed { index, action } => {
                self.counters.lookup_failures.increment(1);
                let why = rep
                    .map(|l| {
                        l.errors
                            .iter()
                            .map(|(p, e)| format!("{p}: {e}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                let rule_name = self.rules.get(index).map_or("", |(by, _)| by.name());
                tracing::info!(rule = %rule_name, errors = %why, action = action.as_str(), "no reputation available; lookup.on_error decides");
                (
                    DecidedBy::LookupError,
                    Reason::from(format!(
                        "rule `{rule_name}` needs reputation and none is available ({why})"
                    )),
                )
            }
        }
    }

    /// The verdict each kind of decision gives.
    fn verdict(&self, by: &DecidedBy) -> Action {
        verdict_of(by, &self.policy, &self.config)
    }

    /// Counts, times and builds the decision.
    fn finish(
        &self,
        ip: IpAddr,
        by: DecidedBy,
        reason: Reason,
        reputation: Option<Arc<Lookup>>,
        started: Option<Moment>,
    ) -> Decision {
        let d = self.build(ip, by, reason, reputation);
        self.counters.count(&d.by, d.verdict, self.dry_run);
        if let Some(started) = started {
            self.counters
                .seconds
                .record(started.elapsed().as_secs_f64());
        }
        d
    }

    /// The decision, uncounted: in dry_run mode nothing is blocked.
    pub(crate) fn build(
        &self,
        ip: IpAddr,
        by: DecidedBy,
        reason: Reason,
        reputation: Option<Arc<Lookup>>,
    ) -> Decision {
        let verdict = self.verdict(&by);
        Decision {
            client_ip: ip,
            action: if self.dry_run { Action::Allow } else { verdict },
            verdict,
            by,
            reason,
            reputation,
        }
    }

    /// The `invalid-client-ip` decision: refused (fail closed), counted; never blocks
    /// in dry_run mode.
    pub(crate) fn refuse_invalid(&self, client_ip: IpAddr, reason: Reason) -> Decision {
        self.finish(client_ip, DecidedBy::InvalidClientIp, reason, None, None)
    }

    /// Asks the reputation source, bounded by `lookup.timeout`.
    pub(crate) async fn lookup(&self, ip: IpAddr) -> Answer {
        let timeout = self.config.lookup.timeout.0;
        match tokio::time::timeout(timeout, self.source.lookup(ip, true)).await {
            Ok(a) => a,
            Err(_) => Answer::Known(Arc::new(Lookup::failure(
                ErrorSource::Timeout,
                format!(
                    "timed out after {}",
                    crate::config::format_duration(timeout)
                ),
            ))),
        }
    }

    /// Reasons this snapshot is not ready (empty when ready).
    pub(crate) fn readiness_problems(&self) -> Vec<String> {
        let mut problems = self.source.problems();
        problems.extend(
            self.feeds
                .not_loaded()
                .into_iter()
                .map(|f| format!("feed {f} never loaded")),
        );
        problems
    }

    /// Lists that contain `ip`: `ban`, `allow`, `block`, then feed names.
    pub(crate) fn lists_containing(&self, ip: IpAddr) -> Vec<String> {
        let mut lists = Vec::new();
        if self.bans.find(ip).is_some() {
            lists.push("ban".to_string());
        }
        if self.allow.contains(ip) {
            lists.push("allow".to_string());
        }
        if self.block.contains(ip) {
            lists.push("block".to_string());
        }
        lists.extend(self.feeds.names_containing(ip));
        lists
    }

    /// Evaluates the rules for `ip` without reputation (for explaining).
    pub(crate) fn evaluate_local(&self, ip: IpAddr, trace: &mut Vec<TraceStep>) -> Evaluation {
        self.policy.evaluate(ip, &self.feeds, None, 0, Some(trace))
    }

    /// The verdict and reason of an outcome decided on local facts (for explaining).
    pub(crate) fn local_outcome(&self, outcome: &Outcome) -> (DecidedBy, Reason) {
        self.outcome(outcome, None)
    }
}

/// The reason of a kind that is not a rule: its name, as fixed text.
fn fixed_reason(by: &DecidedBy) -> Reason {
    Reason::fixed(by.fixed_name().unwrap_or_default())
}

/// The verdict each kind of decision gives: one per kind.
fn verdict_of(by: &DecidedBy, policy: &Policy, config: &Config) -> Action {
    match by {
        DecidedBy::Ban | DecidedBy::BlockList | DecidedBy::InvalidClientIp => Action::Block,
        DecidedBy::AllowList => Action::Allow,
        DecidedBy::Rule { index, .. } => policy
            .rules()
            .get(*index)
            .map_or(config.default, |r| r.action),
        DecidedBy::Default => config.default,
        DecidedBy::LookupError => config.lookup.on_error,
        DecidedBy::LookupPending => config.lookup.on_miss,
    }
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot of the default configuration, with no provider and no feed.
    pub(crate) fn for_tests() -> Arc<Snapshot> {
        let config = Config::default();
        Arc::new(Snapshot::new(Parts {
            block_page: BlockPage::from_config(&config.block_response)
                .unwrap_or_else(|e| panic!("default block page: {e}")),
            config,
            source: Arc::new(crate::reputation::NoReputation),
            cache: None,
            feeds: Feeds::empty(),
            upstream: None,
            #[cfg(feature = "gateway")]
            tls: None,
            bans: Bans::default(),
        }))
    }
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
