//! What the status page shows that no other part keeps: the last decisions and the
//! counts of the last minutes (docs/admin-api.md, `GET /v1/status`).
//!
//! Every decided request passes through [`Activity::record`] once (the layer calls it),
//! so it is kept cheap: one short critical section under a mutex, no allocation except
//! the first time a rule is seen in a minute. Memory is bounded: [`RECENT`] decisions,
//! [`RECENT`] blocked ones, and [`WINDOW_MINUTES`] minutes of counts by rule.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Action;
use crate::decision::Decision;

/// How many decisions each ring keeps.
pub const RECENT: usize = 100;
/// How many minutes of counts are kept.
pub const WINDOW_MINUTES: u64 = 15;

/// One decision as the status page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentDecision {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The client IP the decision is about.
    pub client: IpAddr,
    /// `allow`, `block` or `dry_run_block`.
    pub decision: &'static str,
    /// The deciding rule (a rule's name, `ban`, `block-list`, ...).
    #[serde(serialize_with = "as_str")]
    pub rule: Arc<str>,
    /// Why, for operators.
    pub reason: crate::Reason,
}

fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// Decisions of one rule in a time span.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub allow: u64,
    pub block: u64,
    pub dry_run_block: u64,
}

impl Counts {
    fn add(&mut self, column: usize, n: u64) {
        match column {
            0 => self.allow += n,
            1 => self.block += n,
            _ => self.dry_run_block += n,
        }
    }

    fn add_all(&mut self, o: &Counts) {
        self.allow += o.allow;
        self.block += o.block;
        self.dry_run_block += o.dry_run_block;
    }
}

struct Minute {
    /// Unix minute.
    at: u64,
    /// By rule name; few rules, so a linear search beats hashing.
    by_rule: Vec<(Arc<str>, [u64; 3])>,
}

#[derive(Default)]
struct State {
    recent: VecDeque<RecentDecision>,
    blocked: VecDeque<RecentDecision>,
    minutes: VecDeque<Minute>,
}

/// The last decisions and per-minute counts of a gate (kept across reloads).
#[derive(Default)]
pub struct Activity {
    state: Mutex<State>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity").finish_non_exhaustive()
    }
}

/// What [`Activity::window`] returns: counts over the last minutes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// How many minutes the counts cover (the current one included).
    pub minutes: u64,
    /// By decision, over all rules.
    pub by_decision: Counts,
    /// By rule, most decisions first.
    pub by_rule: Vec<(String, Counts)>,
    /// Per minute, oldest first: `[unix minute, allow, block, dry_run_block]`.
    pub per_minute: Vec<[u64; 4]>,
}

fn column(d: &Decision) -> usize {
    match (d.verdict, d.action) {
        (Action::Allow, _) => 0,
        (Action::Block, Action::Block) => 1,
        (Action::Block, Action::Allow) => 2,
    }
}

const COLUMNS: [&str; 3] = ["allow", "block", "dry_run_block"];

/// The fixed kinds' names, made once: recording a decision by `default` (most of them)
/// must not allocate.
static FIXED_NAMES: std::sync::LazyLock<Vec<Arc<str>>> = std::sync::LazyLock::new(|| {
    crate::DecidedBy::FIXED
        .iter()
        .map(|k| Arc::from(k.name()))
        .collect()
});

impl Activity {
    /// An empty record.
    pub fn new() -> Activity {
        Activity::default()
    }

    /// Records one decided request.
    pub fn record(&self, d: &Decision) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let col = column(d);
        // The snapshot's own name for a rule, one shared name for each fixed kind: the
        // per-minute row is found by pointer, and nothing is allocated.
        let rule: Arc<str> = match &d.by {
            crate::DecidedBy::Rule { name, .. } => name.clone(),
            other => FIXED_NAMES
                .get(other.slot())
                .cloned()
                .unwrap_or_else(|| Arc::from(other.name())),
        };
        let entry = |rule: Arc<str>| RecentDecision {
            time_ms: now_ms,
            client: d.client_ip,
            decision: COLUMNS[col],
            rule,
            reason: d.reason.clone(),
        };
        let minute = now_ms / 60_000;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.minutes.back().is_none_or(|m| m.at != minute) {
            st.minutes.push_back(Minute {
                at: minute,
                by_rule: Vec::new(),
            });
            while st.minutes.len() as u64 > WINDOW_MINUTES {
                st.minutes.pop_front();
            }
        }
        if let Some(m) = st.minutes.back_mut() {
            match m
                .by_rule
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(r, &rule) || **r == *rule)
            {
                Some((_, c)) => c[col] += 1,
                None => {
                    let mut c = [0; 3];
                    c[col] = 1;
                    m.by_rule.push((rule.clone(), c));
                }
            }
        }
        if st.recent.len() == RECENT {
            st.recent.pop_front();
        }
        let e = entry(rule);
        if col != 0 {
            if st.blocked.len() == RECENT {
                st.blocked.pop_front();
            }
            st.blocked.push_back(e.clone());
        }
        st.recent.push_back(e);
    }

    /// The last decisions, newest first.
    pub fn recent(&self) -> Vec<RecentDecision> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.recent.iter().rev().cloned().collect()
    }

    /// The last blocked (or, in dry_run, would-be-blocked) decisions, newest first.
    pub fn recent_blocked(&self) -> Vec<RecentDecision> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.blocked.iter().rev().cloned().collect()
    }

    /// Counts over the last [`WINDOW_MINUTES`] minutes (the current one included).
    pub fn window(&self) -> Window {
        let now_min = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_secs() / 60);
        let oldest = now_min.saturating_sub(WINDOW_MINUTES - 1);
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = Window {
            minutes: WINDOW_MINUTES,
            ..Window::default()
        };
        let mut by_rule: Vec<(String, Counts)> = Vec::new();
        for m in st.minutes.iter().filter(|m| m.at >= oldest) {
            let mut total = Counts::default();
            for (rule, c) in &m.by_rule {
                let mut counts = Counts::default();
                for (i, n) in c.iter().enumerate() {
                    counts.add(i, *n);
                }
                total.add_all(&counts);
                match by_rule.iter_mut().find(|(r, _)| r == &**rule) {
                    Some((_, acc)) => acc.add_all(&counts),
                    None => by_rule.push((rule.to_string(), counts)),
                }
            }
            w.by_decision.add_all(&total);
            w.per_minute
                .push([m.at, total.allow, total.block, total.dry_run_block]);
        }
        by_rule.sort_by_key(|(r, c)| {
            (
                std::cmp::Reverse(c.allow + c.block + c.dry_run_block),
                r.clone(),
            )
        });
        w.by_rule = by_rule;
        w
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::decision::DecidedBy;

    fn decision(by: DecidedBy, verdict: Action, action: Action) -> Decision {
        Decision {
            client_ip: "192.0.2.1".parse().unwrap(),
            action,
            verdict,
            by,
            reason: crate::Reason::fixed("why"),
            reputation: None,
        }
    }

    #[test]
    fn rings_are_bounded_and_counts_add_up() {
        let a = Activity::new();
        for _ in 0..250 {
            a.record(&decision(DecidedBy::Default, Action::Allow, Action::Allow));
        }
        for _ in 0..130 {
            a.record(&decision(
                DecidedBy::BlockList,
                Action::Block,
                Action::Block,
            ));
        }
        a.record(&decision(
            DecidedBy::Rule {
                index: 0,
                name: Arc::from("block-tor"),
            },
            Action::Block,
            Action::Allow,
        ));
        assert_eq!(a.recent().len(), RECENT);
        assert_eq!(a.recent_blocked().len(), RECENT);
        assert_eq!(a.recent()[0].rule.as_ref(), "block-tor");
        assert_eq!(a.recent()[0].decision, "dry_run_block");
        let w = a.window();
        assert_eq!(w.by_decision.allow, 250);
        assert_eq!(w.by_decision.block, 130);
        assert_eq!(w.by_decision.dry_run_block, 1);
        assert_eq!(w.by_rule[0].0, "default");
        assert_eq!(w.by_rule[1].0, "block-list");
        assert_eq!(w.by_rule[1].1.block, 130);
    }
}
