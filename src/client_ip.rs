//! Which address is the client: the TCP peer, or — when the peer is a trusted proxy — the
//! address that proxy reports in the one configured forwarding header (docs/configuration.md, "Client IP").
//!
//! Rules, in order:
//! - Every address is canonicalized with [`IpAddr::to_canonical`] (`::ffff:a.b.c.d` is the
//!   IPv4 address `a.b.c.d`; `::1` stays `::1`).
//! - A peer outside the trusted proxies is the client; its headers are not read at all.
//! - A trusted peer's request is resolved from the configured header only
//!   ([`HeaderSource`]); other forwarding headers are ignored. With `HeaderSource::None`
//!   the peer is the client.
//! - `X-Forwarded-For` and `Forwarded`: every line of the header counts (joined in order),
//!   the list is walked from the right, trusted proxies are skipped and the first untrusted
//!   address is the client. If every entry is trusted, the leftmost entry is the client. If
//!   the header is absent, or all its lines are blank, the trusted peer itself is the client.
//! - `X-Real-IP` and `CF-Connecting-IP`: exactly one line holding exactly one address, taken
//!   as is (no trusted-proxy skipping). Absent → the trusted peer itself.
//! - Any entry reached by the walk that is not a plain IP address (junk, `unknown`,
//!   an obfuscated `_id`, a zone id, leading zeros, an empty list element, a port in
//!   `X-Forwarded-For`, bytes that are not visible ASCII) ends the walk with an error: the
//!   caller fails closed, it never decides on a guess.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderSource;
use crate::lists::IpSet;

/// Longest excerpt of a bad entry quoted in an error message (in bytes, at a char boundary).
const MAX_ENTRY_LEN: usize = 64;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");

/// Why no client IP could be resolved from a trusted proxy's forwarding header.
///
/// Every variant names the header (lower case) and, where there is one, the offending entry
/// (cut to 64 bytes). The request must be refused (rule `invalid-client-ip`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    /// An entry that is not an IP address (junk, zone id, leading zeros, a port where none
    /// is allowed, a malformed `Forwarded` element or node).
    #[error("{header}: `{entry}` is not an IP address")]
    Unparsable {
        /// The header's name.
        header: &'static str,
        /// The offending entry (truncated).
        entry: String,
    },
    /// An entry that hides the address: `unknown` or an obfuscated identifier (`_id`).
    #[error("{header}: `{entry}` hides the client address (unknown or obfuscated node)")]
    Hidden {
        /// The header's name.
        header: &'static str,
        /// The offending entry (truncated).
        entry: String,
    },
    /// An empty element in the comma-separated list (`a,,b`, a trailing comma, a blank line
    /// joined to non-blank ones, or a blank single-address header).
    #[error("{header}: empty list element")]
    Empty {
        /// The header's name.
        header: &'static str,
    },
    /// A header value with bytes that are not visible ASCII.
    #[error("{header}: value is not visible ASCII")]
    InvalidBytes {
        /// The header's name.
        header: &'static str,
    },
    /// A single-address header (`X-Real-IP`, `CF-Connecting-IP`) sent on several lines.
    #[error("{header}: sent on several lines, exactly one is allowed")]
    Repeated {
        /// The header's name.
        header: &'static str,
    },
    /// A single-address header (`X-Real-IP`, `CF-Connecting-IP`) holding a list.
    #[error("{header}: `{entry}` is a list, exactly one address is allowed")]
    List {
        /// The header's name.
        header: &'static str,
        /// The offending value (truncated).
        entry: String,
    },
    /// A `Forwarded` element without a `for=` parameter.
    #[error("{header}: element `{entry}` has no for= parameter")]
    MissingFor {
        /// The header's name.
        header: &'static str,
        /// The offending element (truncated).
        entry: String,
    },
    /// A `Forwarded` element with more than one `for=` parameter.
    #[error("{header}: element `{entry}` has more than one for= parameter")]
    DuplicateFor {
        /// The header's name.
        header: &'static str,
        /// The offending element (truncated).
        entry: String,
    },
}

/// Cuts `s` to at most [`MAX_ENTRY_LEN`] bytes at a char boundary, marking the cut with `…`.
fn excerpt(s: &str) -> String {
    if s.len() <= MAX_ENTRY_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ENTRY_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(&s[..end]);
    out.push('…');
    out
}

fn unparsable(header: &'static str, entry: &str) -> ClientIpError {
    ClientIpError::Unparsable {
        header,
        entry: excerpt(entry),
    }
}

fn hidden(header: &'static str, entry: &str) -> ClientIpError {
    ClientIpError::Hidden {
        header,
        entry: excerpt(entry),
    }
}

/// Optional whitespace (RFC 9110 OWS).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn is_blank(v: &HeaderValue) -> bool {
    v.as_bytes().iter().all(|b| *b == b' ' || *b == b'\t')
}

/// `unknown` (any case) or an obfuscated identifier (`_…`): a node that hides the address.
fn is_hidden_node(s: &str) -> bool {
    s.eq_ignore_ascii_case("unknown") || s.starts_with('_')
}

/// A bare address: `1.2.3.4`, `2001:db8::1` or `[2001:db8::1]`. No port, no zone id; the
/// standard parsers reject leading zeros in IPv4 octets.
fn parse_bare_ip(header: &'static str, entry: &str) -> Result<IpAddr, ClientIpError> {
    if entry.is_empty() {
        return Err(ClientIpError::Empty { header });
    }
    if let Some(inner) = entry.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|a| IpAddr::V6(a).to_canonical())
            .map_err(|_| unparsable(header, entry));
    }
    match entry.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_canonical()),
        Err(_) if is_hidden_node(entry) => Err(hidden(header, entry)),
        Err(_) => Err(unparsable(header, entry)),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The index of the first `sep` at or after `from` that is not inside a quoted string
/// (quoted pairs honoured), or `s.len()`. Fails on an unterminated quoted string.
fn next_unquoted(s: &str, from: usize, sep: u8) -> Result<usize, ()> {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = from;
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            match b {
                b'\\' => i += 1,
                b'"' => in_quotes = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == sep {
            return Ok(i);
        }
        i += 1;
    }
    if in_quotes { Err(()) } else { Ok(bytes.len()) }
}

/// Splits `s` at every `sep` outside quoted strings, pushing `(start, end)` ranges to `out`.
fn split_unquoted(s: &str, sep: u8, out: &mut Vec<(usize, usize)>) -> Result<(), ()> {
    let mut start = 0;
    loop {
        let end = next_unquoted(s, start, sep)?;
        out.push((start, end));
        if end >= s.len() {
            return Ok(());
        }
        start = end + 1;
    }
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §6).
fn forwarded_for(header: &'static str, element: &str) -> Result<IpAddr, ClientIpError> {
    let mut node = None;
    let mut start = 0;
    while start <= element.len() {
        let end = next_unquoted(element, start, b';').map_err(|()| unparsable(header, element))?;
        let pair = trim_ows(&element[start..end]);
        start = end + 1;
        if pair.is_empty() {
            continue; // `[ forwarded-pair ] *( ";" [ forwarded-pair ] )`
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Err(unparsable(header, element));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(unparsable(header, element));
        }
        if name.eq_ignore_ascii_case("for") {
            if node.is_some() {
                return Err(ClientIpError::DuplicateFor {
                    header,
                    entry: excerpt(element),
                });
            }
            node = Some(value);
        }
    }
    let Some(value) = node else {
        return Err(ClientIpError::MissingFor {
            header,
            entry: excerpt(element),
        });
    };
    parse_forwarded_node(header, value)
}

/// A `for=` value: a token (`1.2.3.4`, `unknown`, `_hidden`) or a quoted string holding
/// `node = nodename [ ":" node-port ]` with IPv6 in brackets.
fn parse_forwarded_node(header: &'static str, value: &str) -> Result<IpAddr, ClientIpError> {
    let node = match value.strip_prefix('"') {
        Some(rest) => match rest.strip_suffix('"') {
            // A node never needs a quoted pair; refuse them rather than unescape.
            Some(inner) if !inner.contains(['"', '\\']) => inner,
            _ => return Err(unparsable(header, value)),
        },
        None => {
            if value.is_empty() || !value.bytes().all(is_tchar) {
                return Err(unparsable(header, value));
            }
            value
        }
    };
    if let Some(rest) = node.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(unparsable(header, value));
        };
        if !after.is_empty() {
            let Some(port) = after.strip_prefix(':') else {
                return Err(unparsable(header, value));
            };
            check_node_port(header, value, port)?;
        }
        return addr
            .parse::<Ipv6Addr>()
            .map(|a| IpAddr::V6(a).to_canonical())
            .map_err(|_| unparsable(header, value));
    }
    let (name, port) = match node.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (node, None),
    };
    if is_hidden_node(name) {
        return Err(hidden(header, value));
    }
    if let Some(port) = port {
        check_node_port(header, value, port)?;
    }
    name.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| unparsable(header, value))
}

/// `node-port = port / obfport`: 1–5 digits up to 65535, or `_` and `[A-Za-z0-9._-]+`.
fn check_node_port(header: &'static str, value: &str, port: &str) -> Result<(), ClientIpError> {
    let ok = if let Some(obf) = port.strip_prefix('_') {
        !obf.is_empty()
            && obf
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    } else {
        (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok()
    };
    if ok {
        Ok(())
    } else {
        Err(unparsable(header, value))
    }
}

/// Resolves the client IP of a request from its peer address and forwarding header.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: IpSet,
    header: HeaderSource,
}

impl ClientIpResolver {
    /// A resolver that trusts the given proxy networks and reads `header` from them.
    pub fn new(trusted: impl IntoIterator<Item = ipnet::IpNet>, header: HeaderSource) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            header,
        }
    }

    /// Whether `ip` (canonicalized first) is a trusted proxy.
    #[inline]
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip.to_canonical())
    }

    /// The client IP of a request, canonical (`::ffff:a.b.c.d` → `a.b.c.d`).
    ///
    /// `peer` is the TCP peer (or the PROXY-protocol source). An untrusted peer is the
    /// client and `headers` are ignored. A trusted peer is resolved from the configured
    /// header (see the module docs); when that header is absent (or, for
    /// `X-Forwarded-For`/`Forwarded`, blank) the trusted peer itself is the client.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, ClientIpError> {
        let peer = peer.to_canonical();
        if !self.trusted.contains(peer) {
            return Ok(peer);
        }
        match self.header {
            HeaderSource::None => Ok(peer),
            HeaderSource::XForwardedFor => self.walk_xff(peer, headers),
            HeaderSource::Forwarded => self.walk_forwarded(peer, headers),
            HeaderSource::XRealIp => single(peer, headers, &X_REAL_IP, "x-real-ip"),
            HeaderSource::CfConnectingIp => {
                single(peer, headers, &CF_CONNECTING_IP, "cf-connecting-ip")
            }
        }
    }

    /// X-Forwarded-For: bare addresses (IPv6 optionally in brackets), comma-separated.
    fn walk_xff(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, ClientIpError> {
        const NAME: &str = "x-forwarded-for";
        let lines = headers.get_all(&X_FORWARDED_FOR);
        if lines.iter().all(is_blank) {
            return Ok(peer);
        }
        let mut leftmost = peer;
        for line in lines.iter().rev() {
            let line = line
                .to_str()
                .map_err(|_| ClientIpError::InvalidBytes { header: NAME })?;
            for entry in line.rsplit(',') {
                let ip = parse_bare_ip(NAME, trim_ows(entry))?;
                if !self.trusted.contains(ip) {
                    return Ok(ip);
                }
                leftmost = ip;
            }
        }
        Ok(leftmost)
    }

    /// Forwarded (RFC 7239): the `for=` node of each element.
    fn walk_forwarded(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, ClientIpError> {
        const NAME: &str = "forwarded";
        let lines = headers.get_all(&FORWARDED);
        if lines.iter().all(is_blank) {
            return Ok(peer);
        }
        let mut leftmost = peer;
        let mut elements = Vec::new();
        for line in lines.iter().rev() {
            let line = line
                .to_str()
                .map_err(|_| ClientIpError::InvalidBytes { header: NAME })?;
            elements.clear();
            split_unquoted(line, b',', &mut elements).map_err(|()| unparsable(NAME, line))?;
            for &(start, end) in elements.iter().rev() {
                let element = trim_ows(&line[start..end]);
                if element.is_empty() {
                    return Err(ClientIpError::Empty { header: NAME });
                }
                let ip = forwarded_for(NAME, element)?.to_canonical();
                if !self.trusted.contains(ip) {
                    return Ok(ip);
                }
                leftmost = ip;
            }
        }
        Ok(leftmost)
    }
}

/// X-Real-IP / CF-Connecting-IP: one line, one address, taken as is.
fn single(
    peer: IpAddr,
    headers: &HeaderMap,
    name: &HeaderName,
    header: &'static str,
) -> Result<IpAddr, ClientIpError> {
    let mut lines = headers.get_all(name).iter();
    let Some(value) = lines.next() else {
        return Ok(peer);
    };
    if lines.next().is_some() {
        return Err(ClientIpError::Repeated { header });
    }
    let value = value
        .to_str()
        .map_err(|_| ClientIpError::InvalidBytes { header })?;
    let value = trim_ows(value);
    if value.contains(',') {
        return Err(ClientIpError::List {
            header,
            entry: excerpt(value),
        });
    }
    parse_bare_ip(header, value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const XFF: &str = "x-forwarded-for";
    const FWD: &str = "forwarded";
    const XRI: &str = "x-real-ip";
    const CF: &str = "cf-connecting-ip";

    use ClientIpError as E;
    use HeaderSource as H;

    struct Case {
        name: &'static str,
        peer: &'static str,
        trusted: &'static [&'static str],
        source: HeaderSource,
        lines: &'static [(&'static str, &'static [u8])],
        expect: Result<&'static str, ClientIpError>,
    }

    fn unp(header: &'static str, entry: &str) -> Result<&'static str, ClientIpError> {
        Err(E::Unparsable {
            header,
            entry: entry.to_owned(),
        })
    }

    fn hid(header: &'static str, entry: &str) -> Result<&'static str, ClientIpError> {
        Err(E::Hidden {
            header,
            entry: entry.to_owned(),
        })
    }

    fn resolver(trusted: &[&str], source: HeaderSource) -> ClientIpResolver {
        ClientIpResolver::new(
            trusted
                .iter()
                .map(|s| crate::config::parse_cidr(s).unwrap().0),
            source,
        )
    }

    fn headers(lines: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    const LB: &[&str] = &["10.0.0.0/8"];
    const LB6: &[&str] = &["10.0.0.0/8", "2001:db8:ffff::/48"];

    fn cases() -> Vec<Case> {
        vec![
            // --- peer not trusted: headers ignored entirely ---
            Case {
                name: "untrusted peer sending XFF is the client",
                peer: "203.0.113.9",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("203.0.113.9"),
            },
            Case {
                name: "untrusted peer sending junk XFF is not an error",
                peer: "203.0.113.9",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"junk, unknown, \xff")],
                expect: Ok("203.0.113.9"),
            },
            Case {
                name: "nothing is trusted by default, not even private ranges",
                peer: "192.168.1.1",
                trusted: &[],
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("192.168.1.1"),
            },
            Case {
                name: "untrusted mapped peer is canonicalized",
                peer: "::ffff:198.51.100.7",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "::1 peer does not match 0.0.0.0/8 (no to_ipv4 mistake)",
                peer: "::1",
                trusted: &["0.0.0.0/8"],
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("::1"),
            },
            Case {
                name: "::1 peer does not match 127.0.0.0/8",
                peer: "::1",
                trusted: &["127.0.0.0/8"],
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("::1"),
            },
            // --- trusted peer, X-Forwarded-For ---
            Case {
                name: "IPv4-mapped peer matches a 127.0.0.0/8 trusted range",
                peer: "::ffff:127.0.0.1",
                trusted: &["127.0.0.0/8"],
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "client-prepended fake entry is not the client",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1, 198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "trusted chain is skipped from the right",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1,198.51.100.7,10.0.0.3 , 10.0.0.2")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "multiple XFF lines are joined in order",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1"), (XFF, b"198.51.100.7, 10.0.0.3"), (XFF, b"10.0.0.2")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "a spoofed first line never beats the last line",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.1.1.1"), (XFF, b"198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "all entries trusted: leftmost entry",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"10.0.0.4, 10.0.0.3"), (XFF, b"10.0.0.2")],
                expect: Ok("10.0.0.4"),
            },
            Case {
                name: "absent XFF from a trusted proxy: the peer",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[],
                expect: Ok("10.0.0.1"),
            },
            Case {
                name: "empty XFF from a trusted proxy: the peer",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b""), (XFF, b"  ")],
                expect: Ok("10.0.0.1"),
            },
            Case {
                name: "other forwarding headers are ignored",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XRI, b"1.1.1.1"), (FWD, b"for=1.1.1.1"), (CF, b"1.1.1.1"), (XFF, b"198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "IPv6 client, bracketed, canonical mapped entries",
                peer: "2001:db8:ffff::1",
                trusted: LB6,
                source: H::XForwardedFor,
                lines: &[(XFF, b"[2001:db8::7], ::ffff:10.0.0.9")],
                expect: Ok("2001:db8::7"),
            },
            Case {
                name: "IPv4-mapped client entry is returned as IPv4",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"::ffff:198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "::1 entry stays ::1 (not 0.0.0.1)",
                peer: "10.0.0.1",
                trusted: &["10.0.0.0/8", "0.0.0.0/8"],
                source: H::XForwardedFor,
                lines: &[(XFF, b"::1")],
                expect: Ok("::1"),
            },
            Case {
                name: "junk entry reached ends the walk",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7, junk")],
                expect: unp(XFF, "junk"),
            },
            Case {
                name: "junk left of the client is never reached",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"junk, 198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "unknown entry fails closed",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7, unknown, 10.0.0.2")],
                expect: hid(XFF, "unknown"),
            },
            Case {
                name: "obfuscated entry fails closed",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"_hidden")],
                expect: hid(XFF, "_hidden"),
            },
            Case {
                name: "zone id is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"fe80::1%eth0")],
                expect: unp(XFF, "fe80::1%eth0"),
            },
            Case {
                name: "leading zeros are refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"010.1.2.3")],
                expect: unp(XFF, "010.1.2.3"),
            },
            Case {
                name: "port on an XFF IPv4 entry is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"1.2.3.4:80")],
                expect: unp(XFF, "1.2.3.4:80"),
            },
            Case {
                name: "port on a bracketed XFF IPv6 entry is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"[2001:db8::1]:80")],
                expect: unp(XFF, "[2001:db8::1]:80"),
            },
            Case {
                name: "empty element between commas",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7,, 10.0.0.2")],
                expect: Err(E::Empty { header: XFF }),
            },
            Case {
                name: "blank line joined to a non-blank one is an empty element",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7"), (XFF, b"")],
                expect: Err(E::Empty { header: XFF }),
            },
            Case {
                name: "non-ASCII bytes in a reached line",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(XFF, b"198.51.100.7, 10.0.0.\xc3\xa9")],
                expect: Err(E::InvalidBytes { header: XFF }),
            },
            Case {
                name: "long junk is cut in the error",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XForwardedFor,
                lines: &[(
                    XFF,
                    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                )],
                expect: unp(XFF, &format!("{}…", "a".repeat(64))),
            },
            // --- header: none ---
            Case {
                name: "header none: trusted peer is the client",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::None,
                lines: &[(XFF, b"1.1.1.1"), (XRI, b"1.1.1.1")],
                expect: Ok("10.0.0.1"),
            },
            // --- Forwarded ---
            Case {
                name: "Forwarded quoted IPv6 with port",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"[2001:db8:cafe::17]:4711\"")],
                expect: Ok("2001:db8:cafe::17"),
            },
            Case {
                name: "Forwarded mixed-case For= and other params",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"proto=https;For=198.51.100.7;by=10.0.0.1")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded chain from the right, spoofed element skipped, several lines",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[
                    (FWD, b"for=1.1.1.1"),
                    (FWD, b"for=198.51.100.7;proto=http, FOR=\"10.0.0.3:8080\""),
                    (FWD, b"for=10.0.0.2"),
                ],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded quoted string with comma and semicolon",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=198.51.100.7;host=\"a,b;c\";proto=https")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded quoted IPv4 with port, obfuscated port",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"198.51.100.7:_p1\", for=\"10.0.0.2:443\"")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded escaped quote in another param, empty pairs",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"by=\"x\\\",y\";;for=198.51.100.7;")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded quoted pair inside for= is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"198.51.100.\\7\"")],
                expect: unp(FWD, "\"198.51.100.\\7\""),
            },
            Case {
                name: "Forwarded for=unknown fails closed",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=198.51.100.7, for=unknown, for=10.0.0.2")],
                expect: hid(FWD, "unknown"),
            },
            Case {
                name: "Forwarded obfuscated node fails closed",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"_hidden:_port\"")],
                expect: hid(FWD, "\"_hidden:_port\""),
            },
            Case {
                name: "Forwarded unquoted IPv6 is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=2001:db8::1")],
                expect: unp(FWD, "2001:db8::1"),
            },
            Case {
                name: "Forwarded quoted IPv6 without brackets is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"2001:db8::1\"")],
                expect: unp(FWD, "\"2001:db8::1\""),
            },
            Case {
                name: "Forwarded zone id in brackets is refused",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"[fe80::1%eth0]\"")],
                expect: unp(FWD, "\"[fe80::1%eth0]\""),
            },
            Case {
                name: "Forwarded element without for=",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=198.51.100.7, proto=https")],
                expect: Err(E::MissingFor { header: FWD, entry: "proto=https".into() }),
            },
            Case {
                name: "Forwarded element with two for=",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=10.0.0.2;for=1.1.1.1")],
                expect: Err(E::DuplicateFor { header: FWD, entry: "for=10.0.0.2;for=1.1.1.1".into() }),
            },
            Case {
                name: "Forwarded unterminated quote",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"198.51.100.7")],
                expect: unp(FWD, "for=\"198.51.100.7"),
            },
            Case {
                name: "Forwarded empty element",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=198.51.100.7, ,for=10.0.0.2")],
                expect: Err(E::Empty { header: FWD }),
            },
            Case {
                name: "Forwarded empty header: the peer",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"")],
                expect: Ok("10.0.0.1"),
            },
            Case {
                name: "Forwarded quoted IPv4-mapped IPv6 is canonical",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(FWD, b"for=\"[::ffff:198.51.100.7]\"")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "Forwarded ignored when XFF is configured",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::Forwarded,
                lines: &[(XFF, b"1.1.1.1"), (FWD, b"for=198.51.100.7")],
                expect: Ok("198.51.100.7"),
            },
            // --- X-Real-IP / CF-Connecting-IP ---
            Case {
                name: "X-Real-IP single address",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XRI, b" 198.51.100.7 ")],
                expect: Ok("198.51.100.7"),
            },
            Case {
                name: "X-Real-IP is taken as is, even when trusted",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XRI, b"10.0.0.5")],
                expect: Ok("10.0.0.5"),
            },
            Case {
                name: "X-Real-IP on two lines",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XRI, b"1.1.1.1"), (XRI, b"198.51.100.7")],
                expect: Err(E::Repeated { header: XRI }),
            },
            Case {
                name: "X-Real-IP absent: the peer",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XFF, b"1.1.1.1")],
                expect: Ok("10.0.0.1"),
            },
            Case {
                name: "X-Real-IP blank is an error",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XRI, b"")],
                expect: Err(E::Empty { header: XRI }),
            },
            Case {
                name: "X-Real-IP from an untrusted peer is ignored",
                peer: "198.51.100.99",
                trusted: LB,
                source: H::XRealIp,
                lines: &[(XRI, b"1.1.1.1")],
                expect: Ok("198.51.100.99"),
            },
            Case {
                name: "CF-Connecting-IP IPv6",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::CfConnectingIp,
                lines: &[(CF, b"2001:DB8::A")],
                expect: Ok("2001:db8::a"),
            },
            Case {
                name: "CF-Connecting-IP with a list",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::CfConnectingIp,
                lines: &[(CF, b"1.1.1.1, 198.51.100.7")],
                expect: Err(E::List { header: CF, entry: "1.1.1.1, 198.51.100.7".into() }),
            },
            Case {
                name: "CF-Connecting-IP junk",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::CfConnectingIp,
                lines: &[(CF, b"unknown")],
                expect: hid(CF, "unknown"),
            },
            Case {
                name: "CF-Connecting-IP non-ASCII",
                peer: "10.0.0.1",
                trusted: LB,
                source: H::CfConnectingIp,
                lines: &[(CF, b"1.1.1.1\x80")],
                expect: Err(E::InvalidBytes { header: CF }),
            },
        ]
    }

    #[test]
    fn resolution_table() {
        let cases = cases();
        assert!(cases.len() >= 30);
        let mut failures = Vec::new();
        for case in &cases {
            let r = resolver(case.trusted, case.source);
            let got = r.resolve(case.peer.parse().unwrap(), &headers(case.lines));
            let want = case.expect.clone().map(|s| s.parse::<IpAddr>().unwrap());
            if got != want {
                failures.push(format!("{}: got {got:?}, want {want:?}", case.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn is_trusted_canonicalizes() {
        let r = resolver(&["127.0.0.0/8", "::ffff:192.0.2.0/120"], H::XForwardedFor);
        assert!(r.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
        assert!(r.is_trusted("192.0.2.9".parse().unwrap()));
        assert!(!r.is_trusted("::1".parse().unwrap()));
        assert!(!r.is_trusted("0.0.0.1".parse().unwrap()));
    }

    #[test]
    fn errors_name_header_and_entry() {
        let r = resolver(LB, H::XForwardedFor);
        let e = r
            .resolve(
                "10.0.0.1".parse().unwrap(),
                &headers(&[(XFF, b"1.2.3.4:80")]),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x-forwarded-for: `1.2.3.4:80` is not an IP address"
        );
        let r = resolver(LB, H::XRealIp);
        let e = r
            .resolve(
                "10.0.0.1".parse().unwrap(),
                &headers(&[(XRI, b"a"), (XRI, b"b")]),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x-real-ip: sent on several lines, exactly one is allowed"
        );
    }
}
