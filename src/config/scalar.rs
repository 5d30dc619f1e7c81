//! Leaf values of the configuration. Each is read as a located string, `${VAR}`-expanded,
//! then parsed; a bad value is recorded with its line and column and parsing goes on, so
//! `ipgate validate` reports every bad value at once, not just the first.

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::duration::parse_duration;
use super::env;

/// A value that failed to parse, where it stands in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafIssue {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

thread_local! {
    static ISSUES: RefCell<Vec<LeafIssue>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn clear_issues() {
    ISSUES.with(|i| i.borrow_mut().clear());
}

pub(crate) fn take_issues() -> Vec<LeafIssue> {
    ISSUES.with(|i| std::mem::take(&mut *i.borrow_mut()))
}

fn record(line: u64, column: u64, message: String) {
    ISSUES.with(|i| {
        i.borrow_mut().push(LeafIssue {
            line,
            column,
            message,
        })
    });
}

/// Where a value stood in the configuration file (0 when built in code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

/// Reads a located scalar, expands `${VAR}`, parses it with `parse`; on failure records
/// the issue and yields `T::default()`.
fn leaf<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<(T, Pos), D::Error>
where
    D: Deserializer<'de>,
    T: Default,
{
    let s: Spanned<String> = Spanned::deserialize(d)?;
    let pos = Pos {
        line: s.referenced.line(),
        column: s.referenced.column(),
    };
    let result = env::expand(&s.value)
        .map_err(|e| e.to_string())
        .and_then(|v| parse(&v));
    match result {
        Ok(v) => Ok((v, pos)),
        Err(message) => {
            record(pos.line, pos.column, message);
            Ok((T::default(), pos))
        }
    }
}

macro_rules! leaf_type {
    ($(#[$m:meta])* $name:ident($inner:ty), $parse:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let parse = $parse;
                leaf(d, |s: &str| parse(s).map($name)).map(|(v, _)| v)
            }
        }
    };
}

leaf_type!(
    /// A string with `${VAR}` expanded.
    #[derive(Default)]
    Text(String),
    |s: &str| Ok(s.to_string())
);
leaf_type!(
    /// A duration: `250ms`, `2s`, `5m`, `24h`, `7d`.
    #[derive(Default, Copy, PartialOrd, Ord)]
    Dur(Duration),
    parse_duration
);
leaf_type!(
    /// A socket address: `127.0.0.1:8080`, `[::]:8080`.
    #[derive(Copy)]
    Addr(SocketAddr),
    |s: &str| s
        .parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not a socket address (e.g. 127.0.0.1:8080 or [::]:8080)"))
);
leaf_type!(
    /// An http or https URL with a host.
    #[derive(Default)]
    Url(String),
    parse_url
);

/// A secret string (API key, token) with `${VAR}` expanded; `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(pub String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        leaf(d, |s: &str| Ok(SecretText(s.to_string()))).map(|(v, _)| v)
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for Addr {
    fn default() -> Self {
        Addr(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// A CIDR or a single address (normalized: host bits cleared, IPv4-mapped IPv6 made IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl Default for Cidr {
    fn default() -> Self {
        // Only used as a placeholder next to a recorded error.
        Cidr(IpNet::V4(ipnet::Ipv4Net::default()))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        leaf(d, parse_cidr).map(|(v, _)| v)
    }
}

/// A name that refers to something else in the file (a feed, a provider), kept with its
/// position so a dangling reference can be reported where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Reference {
    pub name: String,
    pub pos: Pos,
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        leaf(d, |s: &str| Ok(s.to_string())).map(|(name, pos)| Reference { name, pos })
    }
}

/// Parses an IP or CIDR, rejecting what the std parser rejects (leading zeros, junk).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let bad = || {
        format!("`{s}` is not a valid IP address or CIDR (e.g. 203.0.113.0/24 or 2001:db8::/32)")
    };
    // The std parser is strict (no leading zeros, no zone ids); ipnet's is not, so the
    // address and the prefix length are parsed separately.
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let net = match prefix {
        None => IpNet::from(ip),
        Some(p) => {
            let strict = !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'));
            let len: u8 = p.parse().ok().filter(|_| strict).ok_or_else(bad)?;
            IpNet::new(ip, len)
                .map_err(|_| format!("`{s}`: prefix /{len} is too long for the address"))?
        }
    };
    Ok(Cidr(normalize_net(net)))
}

/// Clears host bits and maps `::ffff:a.b.c.d/N` (N >= 96) to the IPv4 network.
pub fn normalize_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// Checks an http(s) URL with a host; returns it without a trailing slash.
pub fn parse_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("`{s}` is not a URL (e.g. http://127.0.0.1:3000)"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_normalize() {
        assert_eq!(
            parse_cidr("10.1.2.3/8").unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("192.0.2.7").unwrap().0.to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap().0.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("2001:db8::1/32").unwrap().0.to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn cidrs_reject_junk() {
        for bad in [
            "",
            "10.0.0.0/33",
            "010.0.0.1",
            "1.2.3",
            "10.0.0.0/",
            "fe80::1%eth0",
            "x",
            "010.0.0.0/8",
            "192.000.2.1/32",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "2001:db8::/129",
            "fe80::1%eth0/64",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn urls_need_http_and_host() {
        assert_eq!(
            parse_url("http://127.0.0.1:3000/").unwrap(),
            "http://127.0.0.1:3000"
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("127.0.0.1:3000").is_err());
    }
}
