//! What the gate decided for one request, and what decided it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Action;
use crate::reputation::Lookup;

/// What decided a request, in the order of decision (see docs/configuration.md,
/// "Order of decision").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecidedBy {
    /// A temporary ban (admin API).
    Ban,
    /// `lists.allow`.
    AllowList,
    /// `lists.block`.
    BlockList,
    /// The client address could not be resolved (bad forwarding header, no peer).
    InvalidClientIp,
    /// A rule of the policy: its position in `rules` and its name.
    Rule {
        /// Position in `rules` (0-based).
        index: usize,
        /// The rule's `name`.
        name: Arc<str>,
    },
    /// No rule applied: `default`.
    Default,
    /// A rule needed reputation, none was available, and no later rule applied:
    /// `lookup.on_error`.
    LookupError,
    /// Background look-up started; `lookup.on_miss` decided meanwhile.
    LookupPending,
}

impl DecidedBy {
    /// The kinds that are not rules, in counter order.
    pub(crate) const FIXED: [DecidedBy; 7] = [
        DecidedBy::Ban,
        DecidedBy::AllowList,
        DecidedBy::BlockList,
        DecidedBy::InvalidClientIp,
        DecidedBy::Default,
        DecidedBy::LookupError,
        DecidedBy::LookupPending,
    ];

    /// The `rule` name reported in logs, metrics, block pages and the admin API.
    pub fn name(&self) -> &str {
        match self {
            DecidedBy::Rule { name, .. } => name,
            fixed => fixed.fixed_name().unwrap_or_default(),
        }
    }

    /// The name of a kind that is not a rule, as fixed text (None for a rule).
    pub(crate) fn fixed_name(&self) -> Option<&'static str> {
        Some(match self {
            DecidedBy::Ban => "ban",
            DecidedBy::AllowList => "allow-list",
            DecidedBy::BlockList => "block-list",
            DecidedBy::InvalidClientIp => "invalid-client-ip",
            DecidedBy::Rule { .. } => return None,
            DecidedBy::Default => "default",
            DecidedBy::LookupError => "lookup-error",
            DecidedBy::LookupPending => "lookup-pending",
        })
    }

    /// A dense index: the fixed kinds first, then rule `i` at `FIXED.len() + i`.
    pub(crate) fn slot(&self) -> usize {
        match self {
            DecidedBy::Ban => 0,
            DecidedBy::AllowList => 1,
            DecidedBy::BlockList => 2,
            DecidedBy::InvalidClientIp => 3,
            DecidedBy::Default => 4,
            DecidedBy::LookupError => 5,
            DecidedBy::LookupPending => 6,
            DecidedBy::Rule { index, .. } => Self::FIXED.len() + index,
        }
    }

    /// The verdicts this kind can give (no metric series for impossible pairs).
    pub(crate) fn can(&self, verdict: Action) -> bool {
        match self {
            DecidedBy::Ban | DecidedBy::BlockList | DecidedBy::InvalidClientIp => {
                verdict == Action::Block
            }
            DecidedBy::AllowList => verdict == Action::Allow,
            _ => true,
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a decision was made, as text (it reads as a `str`). The kinds whose reason is
/// their name (`default`, `allow-list`, ...) hold it as fixed text, so a decision copies
/// it instead of counting a reference shared by every thread; a rule's reason is shared
/// with the configuration that made it; a ban's or an error's is the decision's own.
#[derive(Clone)]
pub struct Reason(ReasonText);

#[derive(Clone)]
enum ReasonText {
    Fixed(&'static str),
    Shared(Arc<str>),
}

impl Reason {
    /// A reason that is fixed text.
    pub const fn fixed(text: &'static str) -> Reason {
        Reason(ReasonText::Fixed(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            ReasonText::Fixed(s) => s,
            ReasonText::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Reason {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Reason {}

impl std::hash::Hash for Reason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<Arc<str>> for Reason {
    fn from(s: Arc<str>) -> Reason {
        Reason(ReasonText::Shared(s))
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Reason {
        Reason(ReasonText::Shared(Arc::from(s)))
    }
}

impl From<&'static str> for Reason {
    fn from(s: &'static str) -> Reason {
        Reason::fixed(s)
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the gate decided for one request, and why. The layer puts it into the request
/// extensions; handlers read it as an extractor (`ipgate::Decision`) or with
/// `Extension<Decision>`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Decision {
    /// The client IP the decision is about (canonical: IPv4-mapped IPv6 is IPv4).
    pub client_ip: IpAddr,
    /// What is enforced: in `dry_run` mode always `Allow`.
    pub action: Action,
    /// What the policy said.
    pub verdict: Action,
    /// What decided.
    pub by: DecidedBy,
    /// Human-readable reason (for operators: logs and the admin API).
    pub reason: Reason,
    /// The reputation consulted, if a rule needed it.
    pub reputation: Option<Arc<Lookup>>,
}

impl Decision {
    /// True when the request is to be refused.
    pub fn is_blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// The rule name: a rule's `name`, or `ban`, `allow-list`, `block-list`,
    /// `invalid-client-ip`, `default`, `lookup-error`, `lookup-pending`.
    pub fn rule(&self) -> &str {
        self.by.name()
    }

    /// `allow`, `block`, or `dry_run_block` (the policy said block; dry_run let it pass).
    pub fn outcome(&self) -> &'static str {
        match (self.action, self.verdict) {
            (Action::Allow, Action::Block) => "dry_run_block",
            (a, _) => a.as_str(),
        }
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

    /// The reason a blocked client may be shown: provider errors and operator notes
    /// (a ban's reason) stay in logs and the admin API.
    pub fn public_reason(&self) -> &str {
        match self.by {
            DecidedBy::Ban => "banned",
            DecidedBy::LookupError => "reputation unavailable",
            _ => &self.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_names_stable() {
        for (i, k) in DecidedBy::FIXED.iter().enumerate() {
            assert_eq!(k.slot(), i);
        }
        let r = DecidedBy::Rule {
            index: 2,
            name: Arc::from("block-tor"),
        };
        assert_eq!(r.slot(), DecidedBy::FIXED.len() + 2);
        assert_eq!(r.to_string(), "block-tor");
        let names: Vec<&str> = DecidedBy::FIXED.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "ban",
                "allow-list",
                "block-list",
                "invalid-client-ip",
                "default",
                "lookup-error",
                "lookup-pending"
            ]
        );
    }

    #[test]
    fn clients_never_see_a_ban_reason() {
        let d = Decision {
            client_ip: "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            action: Action::Block,
            verdict: Action::Block,
            by: DecidedBy::Ban,
            reason: Reason::from(String::from("ticket 4711: scraping, reported by ACME")),
            reputation: None,
        };
        assert_eq!(d.public_reason(), "banned");
        assert_eq!(&*d.reason, "ticket 4711: scraping, reported by ACME");
    }

    #[test]
    fn impossible_pairs() {
        assert!(!DecidedBy::AllowList.can(Action::Block));
        assert!(!DecidedBy::BlockList.can(Action::Allow));
        assert!(DecidedBy::Default.can(Action::Block));
    }
}
