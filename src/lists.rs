//! Sets of IP networks with lookups in O(prefix length), not O(list length).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

/// A set of IPv4 and IPv6 networks (single addresses are /32 and /128 networks).
#[derive(Clone, Default)]
pub struct IpSet {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
}

impl std::fmt::Debug for IpSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpSet")
            .field("entries", &self.len())
            .finish()
    }
}

impl IpSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a network (host bits are cleared; `::ffff:0:0/96`-mapped networks become IPv4).
    pub fn insert(&mut self, net: IpNet) {
        match crate::config::normalize_net(net) {
            IpNet::V4(n) => {
                self.v4.insert(n);
            }
            IpNet::V6(n) => {
                self.v6.insert(n);
            }
        }
    }

    /// Whether any network of the set contains `ip` (IPv4-mapped IPv6 is matched as IPv4).
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.matching(ip).is_some()
    }

    /// The most specific network of the set that contains `ip`.
    pub fn matching(&self, ip: IpAddr) -> Option<IpNet> {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                if self.v4.is_empty() {
                    return None;
                }
                self.v4.get_lpm(&Ipv4Net::from(a)).copied().map(IpNet::V4)
            }
            IpAddr::V6(a) => {
                if self.v6.is_empty() {
                    return None;
                }
                self.v6.get_lpm(&Ipv6Net::from(a)).copied().map(IpNet::V6)
            }
        }
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the set has no network.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Every network, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }
}

impl FromIterator<IpNet> for IpSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        let mut set = IpSet::new();
        for net in iter {
            set.insert(net);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> IpSet {
        items
            .iter()
            .map(|s| crate::config::parse_cidr(s).unwrap().0)
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_v4_v6_and_single_hosts() {
        let s = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        assert_eq!(s.len(), 4);
        assert!(s.contains(ip("10.255.1.2")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8:1::5")));
        assert!(!s.contains(ip("2001:db9::1")));
        assert!(s.contains(ip("::1")));
        assert!(!s.contains(ip("::2")));
    }

    #[test]
    fn mapped_v6_matches_v4_networks() {
        let s = set(&["127.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:127.0.0.1")));
        assert!(!s.contains(ip("::1")), "::1 is not 0.0.0.1 nor 127/8");
        let s = set(&["::ffff:203.0.113.0/120"]);
        assert!(s.contains(ip("203.0.113.9")));
    }

    #[test]
    fn most_specific_match_is_reported() {
        let s = set(&["10.0.0.0/8", "10.1.0.0/16"]);
        assert_eq!(
            s.matching(ip("10.1.2.3")).unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            s.matching(ip("10.2.2.3")).unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(set(&[]).matching(ip("10.0.0.1")).is_none());
    }

    #[test]
    fn default_route_matches_everything() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains(ip("1.2.3.4")));
        assert!(!s.contains(ip("2001:db8::1")));
    }
}
