//! Explaining a decision step by step (`ipgate check`, `GET /v1/decision`).
//! Explaining is not a request: nothing here is counted.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::policy::{Evaluation, TraceStep};
use crate::reputation::{Answer, ErrorSource, Lookup, ProviderId};
use crate::snapshot::Snapshot;

/// A decision with the steps that led to it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    pub ip: IpAddr,
    /// `allow` or `block`: what is enforced.
    pub decision: &'static str,
    /// What the policy said (differs from `decision` in dry_run mode).
    pub verdict: &'static str,
    pub rule: String,
    pub reason: String,
    /// Lists that contain the IP: `ban`, `allow`, `block`, feed names.
    pub lists: Vec<String>,
    pub trace: Vec<TraceStep>,
    /// Each provider's answer, every field kept.
    pub reputation: std::collections::BTreeMap<ProviderId, serde_json::Value>,
    /// Who could not answer, and why.
    pub reputation_errors: Vec<(ErrorSource, String)>,
    pub cached: bool,
}

impl Snapshot {
    /// Decides for `ip` and says why. Providers are asked only when `allow_lookup`;
    /// otherwise the cache and the local `file` provider answer.
    pub(crate) async fn explain(&self, ip: IpAddr, allow_lookup: bool) -> Explanation {
        let ip = ip.to_canonical();
        let lists = self.lists_containing(ip);
        let mut trace = Vec::new();
        let (by, reason, rep) = match self.list_step(ip) {
            Some((by, reason)) => (by, reason, None),
            None => match self.evaluate_local(ip, &mut trace) {
                Evaluation::Decided(outcome) => {
                    let (by, reason) = self.local_outcome(&outcome);
                    (by, reason, None)
                }
                Evaluation::NeedsReputation { from } => {
                    let answer = if allow_lookup {
                        self.lookup(ip).await
                    } else {
                        match self.source().lookup(ip, false).await {
                            Answer::Known(l) if l.answers.is_empty() && l.errors.is_empty() => {
                                Answer::Known(Arc::new(Lookup::failure(
                                    ErrorSource::NotCached,
                                    "not cached (use --lookup to ask the providers)",
                                )))
                            }
                            other => other,
                        }
                    };
                    self.after_answer(ip, from, answer, Some(&mut trace))
                }
            },
        };
        let d = self.build(ip, by, reason, rep);
        let mut reputation = std::collections::BTreeMap::new();
        let (mut errors, mut cached) = (Vec::new(), false);
        if let Some(l) = &d.reputation {
            for a in &l.answers {
                reputation.insert(a.provider, serde_json::to_value(a).unwrap_or_default());
            }
            errors = l.errors.clone();
            cached = l.cached;
        }
        Explanation {
            ip,
            decision: d.action.as_str(),
            verdict: d.verdict.as_str(),
            rule: d.rule().to_string(),
            reason: d.reason.to_string(),
            lists,
            trace,
            reputation,
            reputation_errors: errors,
            cached,
        }
    }
}
