//! Temporary bans (admin API): CIDRs that are blocked until they expire.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::lists::IpSet;

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub cidr: IpNet,
    /// Unix seconds when the ban ends.
    pub expires: u64,
    pub reason: String,
}

#[derive(Default)]
struct Table {
    set: IpSet,
    bans: Vec<Ban>,
}

/// The live set of bans. Reads are lock-free; writes copy the (small) table.
#[derive(Clone, Default)]
pub struct Bans {
    table: Arc<ArcSwap<Table>>,
    write: Arc<std::sync::Mutex<()>>,
    /// Whether the table holds any ban: with none (the usual case) a decision reads
    /// this flag, not the table.
    any: Arc<AtomicBool>,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("count", &self.table.load().bans.len())
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Bans {
    /// The ban that covers `ip` now, if any.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<Ban> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let t = self.table.load();
        let ip = ip.to_canonical();
        if t.set.is_empty() || !t.set.contains(ip) {
            return None;
        }
        let now = now_secs();
        t.bans
            .iter()
            .filter(|b| b.cidr.contains(&ip) && b.expires > now)
            .max_by_key(|b| b.cidr.prefix_len())
            .cloned()
    }

    /// Adds (or replaces) a ban for `ttl`.
    pub fn add(&self, cidr: IpNet, ttl: Duration, reason: String) -> Ban {
        let cidr = crate::config::normalize_net(cidr);
        let ban = Ban {
            cidr,
            expires: now_secs().saturating_add(ttl.as_secs().max(1)),
            reason,
        };
        self.update(|bans| {
            bans.retain(|b| b.cidr != cidr);
            bans.push(ban.clone());
        });
        ban
    }

    /// Removes the ban on exactly `cidr`; true when there was one.
    pub fn remove(&self, cidr: IpNet) -> bool {
        let cidr = crate::config::normalize_net(cidr);
        let mut found = false;
        self.update(|bans| {
            let before = bans.len();
            bans.retain(|b| b.cidr != cidr);
            found = bans.len() != before;
        });
        found
    }

    /// Bans in force, expired ones dropped.
    pub fn list(&self) -> Vec<Ban> {
        let now = now_secs();
        self.table
            .load()
            .bans
            .iter()
            .filter(|b| b.expires > now)
            .cloned()
            .collect()
    }

    /// Puts `ban` in force as it is (same expiry and reason), replacing a ban on the
    /// same network: a ban read back from a store or another gateway.
    pub fn restore(&self, ban: Ban) {
        if ban.expires <= now_secs() {
            return;
        }
        self.update(|bans| {
            bans.retain(|b| b.cidr != ban.cidr);
            bans.push(ban);
        });
    }

    /// Replaces every ban with `bans` (expired ones dropped): the cluster's list.
    pub fn replace_all(&self, bans: Vec<Ban>) {
        let now = now_secs();
        self.update(|current| {
            *current = bans.into_iter().filter(|b| b.expires > now).collect();
        });
    }

    /// Drops expired bans.
    pub fn purge(&self) {
        let now = now_secs();
        if self.table.load().bans.iter().any(|b| b.expires <= now) {
            self.update(|bans| bans.retain(|b| b.expires > now));
        }
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Ban>)) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut bans = self.table.load().bans.clone();
        f(&mut bans);
        let set = bans.iter().map(|b| b.cidr).collect();
        metrics::gauge!(crate::metrics::BANS).set(bans.len() as f64);
        let any = !bans.is_empty();
        self.table.store(Arc::new(Table { set, bans }));
        self.any.store(any, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn add_find_remove() {
        let b = Bans::default();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(b.find(ip).is_none());
        b.add(
            "198.51.100.0/24".parse().unwrap(),
            Duration::from_secs(60),
            "abuse".into(),
        );
        assert_eq!(b.find(ip).unwrap().reason, "abuse");
        assert!(b.find("::ffff:198.51.100.9".parse().unwrap()).is_some());
        assert!(b.find("198.51.101.1".parse().unwrap()).is_none());
        assert_eq!(b.list().len(), 1);
        assert!(b.remove("198.51.100.0/24".parse().unwrap()));
        assert!(!b.remove("198.51.100.0/24".parse().unwrap()));
        assert!(b.find(ip).is_none());
    }

    #[test]
    fn expired_bans_do_not_block() {
        let b = Bans::default();
        b.update(|v| {
            v.push(Ban {
                cidr: "10.0.0.0/8".parse().unwrap(),
                expires: now_secs() - 1,
                reason: String::new(),
            })
        });
        assert!(b.find("10.1.1.1".parse().unwrap()).is_none());
        assert!(b.list().is_empty());
        b.purge();
        assert!(b.table.load().set.is_empty());
    }
}
