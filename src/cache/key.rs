//! Cache keys: an IPv4 address, or an IPv6 address cut to `cache.ipv6_prefix` bits, so a
//! client rotating through its /64 is one key (one look-up), not 2^64.

use std::net::IpAddr;

/// A normalized cache key: 20 bytes aligned to 4 (a `u128` would make it 32 aligned to 16),
/// so a cache entry, key and value, fits one 64-byte cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4(u32),
    /// Address bits above the prefix (big-endian octets), and the prefix length.
    V6([u8; 16], u8),
}

impl IpKey {
    /// The key of `ip` (canonicalized: IPv4-mapped IPv6 is IPv4).
    #[inline]
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => IpKey::V4(u32::from(a)),
            IpAddr::V6(a) => {
                let p = ipv6_prefix.clamp(1, 128);
                let mask = if p == 128 {
                    u128::MAX
                } else {
                    !(u128::MAX >> p)
                };
                IpKey::V6((u128::from(a) & mask).to_be_bytes(), p)
            }
        }
    }

    /// A stable byte form for the persistent store.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            IpKey::V4(a) => {
                let mut v = vec![4];
                v.extend_from_slice(&a.to_be_bytes());
                v
            }
            IpKey::V6(a, p) => {
                let mut v = vec![6, p];
                v.extend_from_slice(&a);
                v
            }
        }
    }

    /// The inverse of [`IpKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<IpKey> {
        match b {
            [4, rest @ ..] => Some(IpKey::V4(u32::from_be_bytes(rest.try_into().ok()?))),
            [6, p, rest @ ..] => Some(IpKey::V6(rest.try_into().ok()?, *p)),
            _ => None,
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            IpKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(a)),
            IpKey::V6(a, p) => write!(f, "{}/{p}", std::net::Ipv6Addr::from(a)),
        }
    }
}

/// Addresses never sent to a remote provider with `lookup.skip_private`: loopback,
/// RFC 1918, link-local, CGNAT (100.64/10), unspecified, broadcast, multicast, ULA.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_keys_by_prefix() {
        let a = IpKey::new(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = IpKey::new(ip("2001:db8:1:2:ffff:1:2:3"), 64);
        let c = IpKey::new(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            IpKey::new(ip("2001:db8::1"), 128),
            IpKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_key_is_small_and_byte_aligned() {
        assert!(std::mem::size_of::<IpKey>() <= 20);
        assert_eq!(std::mem::align_of::<IpKey>(), 4);
    }

    #[test]
    fn mapped_ipv6_is_the_ipv4_key() {
        assert_eq!(
            IpKey::new(ip("::ffff:198.51.100.1"), 64),
            IpKey::new(ip("198.51.100.1"), 64)
        );
    }

    #[test]
    fn bytes_round_trip() {
        for k in [
            IpKey::new(ip("198.51.100.1"), 64),
            IpKey::new(ip("2001:db8::1"), 48),
        ] {
            assert_eq!(IpKey::from_bytes(&k.to_bytes()), Some(k));
        }
        assert_eq!(IpKey::from_bytes(&[9, 1]), None);
    }

    #[test]
    fn private_ranges() {
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in [
            "8.8.8.8",
            "100.128.0.1",
            "203.0.113.1",
            "198.51.100.1",
            "2001:db8::1",
            "2a00::1",
        ] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }
}
