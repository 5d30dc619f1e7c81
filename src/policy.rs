//! Rules (docs/configuration.md, "Conditions") compiled for evaluation, and the evaluation itself.
//!
//! Conditions evaluate in three states: true, false, or "needs reputation". Local facts
//! (`in_list`, feed tags) are decided first, so a rule whose local part already fails, or
//! a `tor: true` already proven by a tagged feed, never causes a look-up.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{self, Action, FeedTag};
use crate::reputation::{Lookup, ProviderId, Reputation, Status, ThreatClass};

/// Local facts about an IP that rules may ask for without a look-up.
pub trait LocalFacts {
    /// Whether the named list at `index` contains `ip`.
    fn in_list(&self, index: usize, ip: IpAddr) -> bool;
    /// Whether any feed tagged `tag` contains `ip`.
    fn tagged(&self, tag: FeedTag, ip: IpAddr) -> bool;
}

/// A compiled condition.
#[derive(Debug, Clone, Default)]
struct Cond {
    /// Bit per [`Status`]; 0 = no condition.
    status: u8,
    score_above: Option<u8>,
    /// Bit per [`ThreatClass`]; 0 = no condition.
    class: u8,
    tor: Option<bool>,
    vpn: Option<bool>,
    scanner: Option<bool>,
    /// Lower-case ISO codes or names.
    country: Vec<String>,
    asn: Vec<u32>,
    /// Indices of named lists (any of them).
    in_list: Vec<usize>,
    provider: Option<ProviderId>,
    not: Option<Box<Cond>>,
}

fn status_bit(s: Status) -> u8 {
    match s {
        Status::Safe => 1,
        Status::Suspicious => 2,
        Status::Threat => 4,
        Status::Unknown => 8,
    }
}

fn class_bit(c: ThreatClass) -> u8 {
    match c {
        ThreatClass::Attack => 1,
        ThreatClass::C2 => 2,
        ThreatClass::Malware => 4,
        ThreatClass::Phishing => 8,
        ThreatClass::Spam => 16,
        ThreatClass::Suspicious => 32,
    }
}

impl Cond {
    fn compile(
        c: &config::Condition,
        list_index: &dyn Fn(&str) -> Option<usize>,
        inherited_provider: Option<ProviderId>,
    ) -> Cond {
        // Names were checked by config validation.
        let provider = c
            .provider
            .as_deref()
            .and_then(|p| p.parse().ok())
            .or(inherited_provider);
        Cond {
            status: c.status.iter().fold(0, |m, s| m | status_bit(*s)),
            score_above: c.score_above,
            class: c.class.iter().fold(0, |m, s| m | class_bit(*s)),
            tor: c.tor,
            vpn: c.vpn,
            scanner: c.scanner,
            country: c
                .country
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            asn: c.asn.clone(),
            // Names were checked by config validation; an unknown one never matches.
            in_list: c
                .in_list
                .iter()
                .map(|n| list_index(n).unwrap_or(usize::MAX))
                .collect(),
            provider,
            // `provider` restricts every other condition of the `when`, `not` included.
            not: c
                .not
                .as_ref()
                .map(|n| Box::new(Cond::compile(n, list_index, provider))),
        }
    }

    /// Some(true/false) when decided; None when reputation is needed and not yet known.
    fn eval(&self, ip: IpAddr, facts: &dyn LocalFacts, rep: Option<&Lookup>) -> Option<bool> {
        // Local facts first: a false here ends it without any look-up.
        if !self.in_list.is_empty() && !self.in_list.iter().any(|&i| facts.in_list(i, ip)) {
            return Some(false);
        }
        let mut unknown = false;
        let mut all = |v: Option<bool>| -> bool {
            match v {
                Some(false) => false,
                Some(true) => true,
                None => {
                    unknown = true;
                    true
                }
            }
        };
        if let Some(want) = self.tor
            && !all(self.flag(ip, facts, rep, Some(FeedTag::Tor), want, |r| {
                r.tor == Some(true)
            }))
        {
            return Some(false);
        }
        if let Some(want) = self.vpn
            && !all(self.flag(ip, facts, rep, Some(FeedTag::Vpn), want, |r| {
                r.vpn == Some(true)
            }))
        {
            return Some(false);
        }
        if let Some(want) = self.scanner
            && !all(self.flag(ip, facts, rep, None, want, |r| r.scanner))
        {
            return Some(false);
        }
        if self.status != 0 && !all(self.any(rep, |r| status_bit(r.status) & self.status != 0)) {
            return Some(false);
        }
        if let Some(n) = self.score_above
            && !all(self.any(rep, |r| r.score.is_some_and(|s| s > n)))
        {
            return Some(false);
        }
        if self.class != 0
            && !all(self.any(rep, |r| {
                r.classes.iter().any(|c| class_bit(*c) & self.class != 0)
            }))
        {
            return Some(false);
        }
        if !self.country.is_empty()
            && !all(self.any(rep, |r| {
                r.country.as_deref().is_some_and(|c| {
                    self.country
                        .iter()
                        .any(|w| w.eq_ignore_ascii_case(c.trim()))
                })
            }))
        {
            return Some(false);
        }
        if !self.asn.is_empty()
            && !all(self.any(rep, |r| r.asn.is_some_and(|a| self.asn.contains(&a))))
        {
            return Some(false);
        }
        if let Some(not) = &self.not {
            match not.eval(ip, facts, rep) {
                Some(true) => return Some(false),
                Some(false) => {}
                None => unknown = true,
            }
        }
        if unknown { None } else { Some(true) }
    }

    /// Whether any (or the named provider's) answer satisfies `pred`.
    fn any(&self, rep: Option<&Lookup>, pred: impl Fn(&Reputation) -> bool) -> Option<bool> {
        let rep = rep?;
        Some(
            rep.answers
                .iter()
                .filter(|r| self.provider.is_none_or(|p| r.provider == p))
                .any(pred),
        )
    }

    /// A boolean fact (tor, vpn, scanner) that a tagged feed may prove locally.
    fn flag(
        &self,
        ip: IpAddr,
        facts: &dyn LocalFacts,
        rep: Option<&Lookup>,
        tag: Option<FeedTag>,
        want: bool,
        pred: impl Fn(&Reputation) -> bool,
    ) -> Option<bool> {
        let local = self.provider.is_none() && tag.is_some_and(|t| facts.tagged(t, ip));
        if local {
            return Some(want);
        }
        self.any(rep, pred).map(|is| is == want)
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule's name.
    pub name: Arc<str>,
    cond: Cond,
    /// What the rule does when it matches.
    pub action: Action,
}

/// The ordered rules and the default.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<CompiledRule>,
    default: Action,
    on_error: Action,
}

/// Where evaluation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A rule matched.
    Rule { index: usize, action: Action },
    /// No rule matched.
    Default(Action),
    /// A rule needed reputation and no provider could answer: `lookup.on_error`.
    LookupFailed { index: usize, action: Action },
}

/// The result of evaluating the rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// The rules decided.
    Decided(Outcome),
    /// Rule `from` needs reputation that was not given: look it up, then evaluate
    /// again from `from`.
    NeedsReputation { from: usize },
}

/// One step of an evaluation, for `explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceStep {
    pub rule: String,
    /// matched, not matched, needs reputation, skipped: reputation unavailable
    pub result: &'static str,
}

impl Policy {
    /// Compiles the rules of `cfg`; `list_index` maps a list name to its index.
    pub fn compile(cfg: &config::Config, list_index: &dyn Fn(&str) -> Option<usize>) -> Policy {
        let rules = cfg
            .rules
            .iter()
            .map(|r| {
                let cond = Cond::compile(&r.value.when, list_index, None);
                CompiledRule {
                    name: Arc::from(r.value.name.0.as_str()),
                    cond,
                    action: r.value.action,
                }
            })
            .collect();
        Policy {
            rules,
            default: cfg.default,
            on_error: cfg.lookup.on_error,
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Evaluates the rules from `start`. Without `rep`, stops at the first rule that
    /// needs reputation ([`Evaluation::NeedsReputation`]): the caller looks up and
    /// calls again from there.
    pub fn evaluate(
        &self,
        ip: IpAddr,
        facts: &dyn LocalFacts,
        rep: Option<&Lookup>,
        start: usize,
        mut trace: Option<&mut Vec<TraceStep>>,
    ) -> Evaluation {
        // The first rule skipped because it could not be decided without reputation.
        let mut skipped = None;
        for (index, rule) in self.rules.iter().enumerate().skip(start) {
            // Without reputation, local facts alone decide or ask for a look-up. With it,
            // one evaluation does (local facts are checked first inside it). When the
            // look-up failed, local facts alone decide; a rule they cannot decide is
            // skipped, and on_error decides only when no later rule applies.
            let result = match rep {
                None => match rule.cond.eval(ip, facts, None) {
                    Some(decided) => decided,
                    None => {
                        step(&mut trace, rule, "needs reputation");
                        return Evaluation::NeedsReputation { from: index };
                    }
                },
                // Nobody answered; or the rule reads one named provider and that
                // provider could not answer: never a guess from the others.
                Some(l) if l.failed() || rule.cond.provider.is_some_and(|p| l.failed_for(p)) => {
                    match rule.cond.eval(ip, facts, None) {
                        Some(decided) => decided,
                        None => {
                            step(&mut trace, rule, "skipped: reputation unavailable");
                            skipped.get_or_insert(index);
                            continue;
                        }
                    }
                }
                Some(l) => rule.cond.eval(ip, facts, Some(l)).unwrap_or(false),
            };
            step(
                &mut trace,
                rule,
                if result { "matched" } else { "not matched" },
            );
            if result {
                return Evaluation::Decided(Outcome::Rule {
                    index,
                    action: rule.action,
                });
            }
        }
        Evaluation::Decided(match skipped {
            Some(index) => Outcome::LookupFailed {
                index,
                action: self.on_error,
            },
            None => Outcome::Default(self.default),
        })
    }
}

/// Records one step of an evaluation, when tracing.
fn step(trace: &mut Option<&mut Vec<TraceStep>>, rule: &CompiledRule, result: &'static str) {
    if let Some(t) = trace.as_deref_mut() {
        t.push(TraceStep {
            rule: rule.name.to_string(),
            result,
        });
    }
}

#[cfg(test)]
mod tests;
