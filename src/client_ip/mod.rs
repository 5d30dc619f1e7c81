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

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};

use crate::config::HeaderSource;
use crate::lists::IpSet;

mod grammar;

use grammar::{
    excerpt, forwarded_for, is_blank, parse_bare_ip, split_unquoted, trim_ows, unparsable,
};

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
            HeaderSource::XForwardedFor => self.walk_xff(peer, headers, None),
            HeaderSource::Forwarded => self.walk_forwarded(peer, headers, None),
            HeaderSource::XRealIp => single(peer, headers, &X_REAL_IP, "x-real-ip"),
            HeaderSource::CfConnectingIp => {
                single(peer, headers, &CF_CONNECTING_IP, "cf-connecting-ip")
            }
        }
    }

    /// The addresses the decision rests on, client first: the client, the trusted
    /// proxies between it and the peer (as the forwarding header names them), the peer.
    /// An untrusted peer's chain is the peer alone. Entries left of the client are not
    /// part of it.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn chain(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Vec<IpAddr>, ClientIpError> {
        let peer = peer.to_canonical();
        let mut hops = Vec::new();
        if self.trusted.contains(peer) {
            match self.header {
                HeaderSource::None => {}
                HeaderSource::XForwardedFor => {
                    self.walk_xff(peer, headers, Some(&mut hops))?;
                }
                HeaderSource::Forwarded => {
                    self.walk_forwarded(peer, headers, Some(&mut hops))?;
                }
                HeaderSource::XRealIp | HeaderSource::CfConnectingIp => {
                    let client = self.resolve(peer, headers)?;
                    if client != peer {
                        hops.push(client);
                    }
                }
            }
        }
        hops.reverse();
        hops.push(peer);
        Ok(hops)
    }

    /// X-Forwarded-For: bare addresses (IPv6 optionally in brackets), comma-separated.
    /// `hops` gets every address walked, right to left.
    fn walk_xff(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        mut hops: Option<&mut Vec<IpAddr>>,
    ) -> Result<IpAddr, ClientIpError> {
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
                if let Some(client) = self.hop(ip, hops.as_deref_mut(), &mut leftmost) {
                    return Ok(client);
                }
            }
        }
        Ok(leftmost)
    }

    /// One step of a right-to-left walk: records `ip` in `hops`; the client when it is
    /// not a trusted proxy, else it becomes the leftmost trusted address seen.
    #[inline]
    fn hop(
        &self,
        ip: IpAddr,
        hops: Option<&mut Vec<IpAddr>>,
        leftmost: &mut IpAddr,
    ) -> Option<IpAddr> {
        if let Some(h) = hops {
            h.push(ip);
        }
        if !self.trusted.contains(ip) {
            return Some(ip);
        }
        *leftmost = ip;
        None
    }

    /// Forwarded (RFC 7239): the `for=` node of each element. `hops` as for
    /// [`Self::walk_xff`].
    fn walk_forwarded(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        mut hops: Option<&mut Vec<IpAddr>>,
    ) -> Result<IpAddr, ClientIpError> {
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
                if let Some(client) = self.hop(ip, hops.as_deref_mut(), &mut leftmost) {
                    return Ok(client);
                }
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
mod tests;
