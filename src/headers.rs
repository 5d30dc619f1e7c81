//! Header hygiene at the trust boundary, as small pure functions: hop-by-hop removal
//! (RFC 9110 §7.6.1), the gateway's own `x-ipgate-*` headers, and forwarding metadata.
//!
//! Every request passes through here, so names are static [`HeaderName`]s (never parsed
//! from strings at run time), the headers are classified in one pass over the names the
//! request has, and nothing is allocated when there is nothing to remove.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Names this module sets or tests that `http` has no constant for.
pub(crate) mod names {
    use http::header::HeaderName;

    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub const X_IPGATE_CLIENT_IP: HeaderName = HeaderName::from_static("x-ipgate-client-ip");
    pub const X_IPGATE_DECISION: HeaderName = HeaderName::from_static("x-ipgate-decision");
    pub const X_IPGATE_SCORE: HeaderName = HeaderName::from_static("x-ipgate-score");
    pub const X_IPGATE_COUNTRY: HeaderName = HeaderName::from_static("x-ipgate-country");
}
use names::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy ones proxies drop.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Whether `name` (lower case) is one of the fixed hop-by-hop headers ([`HOP_BY_HOP`]);
/// those a `Connection` header names are not known from the name alone.
pub(crate) fn is_hop_by_hop_name(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Forwarding and client-address headers a client may send that only trusted proxies
/// may vouch for: from anyone else they are removed, so an application behind the
/// gateway that reads one of them cannot be fooled. They are never hop-by-hop.
pub(crate) const FORWARDING: [&str; 13] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded",
    "forwarded",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
];

/// Whether `name` is a header the gateway removes or sets.
fn is_managed(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
        || FORWARDING.contains(&name)
        || name.starts_with("x-ipgate-")
        || matches!(name, "host" | "content-length")
}

/// Whether `name` (lower case, as every [`HeaderName`] is) with `_` read as `-` is a
/// header the gateway removes or sets (`X_Forwarded_For`, `Transfer_Encoding`, ...):
/// CGI and WSGI map `_` and `-` to the same variable, so such a header would pass for
/// the real one at the application.
fn is_underscore_variant(name: &str) -> bool {
    name.contains('_') && is_managed(&name.replace('_', "-"))
}

/// The tokens of the `Connection` headers, as written (compared case-insensitively).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The names `Connection` makes hop-by-hop beyond [`HOP_BY_HOP`], read once per message
/// (not once per header): a response's `Connection: keep-alive` names nothing more, so
/// its headers are then checked against the fixed list alone.
struct ConnectionNamed<'h> {
    /// The first few such names, as written (compared case-insensitively).
    first: [&'h str; 4],
    len: usize,
    /// More than `first` holds: the `Connection` headers are read again per name.
    more: bool,
}

impl<'h> ConnectionNamed<'h> {
    fn of(headers: &'h HeaderMap) -> Self {
        let mut named = ConnectionNamed {
            first: [""; 4],
            len: 0,
            more: false,
        };
        // Forwarding headers are never hop-by-hop; the fixed list is checked anyway.
        for t in connection_tokens(headers).filter(|t| {
            !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h))
                && !FORWARDING.iter().any(|f| t.eq_ignore_ascii_case(f))
        }) {
            match named.first.get_mut(named.len) {
                Some(slot) => {
                    *slot = t;
                    named.len += 1;
                }
                None => {
                    named.more = true;
                    break;
                }
            }
        }
        named
    }

    /// Whether `name` is hop-by-hop: listed in RFC 9110, or named by `Connection`
    /// (unless it is a forwarding header: those are never hop-by-hop, whatever
    /// `Connection` names, so a client cannot strip the chain a trusted proxy vouched
    /// for and the gate decided on, as Traefik did for CVE-2024-45410).
    fn is_hop_by_hop(&self, headers: &HeaderMap, name: &str) -> bool {
        HOP_BY_HOP.contains(&name)
            || self.first[..self.len]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
            || (self.more
                && !FORWARDING.contains(&name)
                && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name)))
    }
}

/// Removes every header `doomed` picks, in one pass over the names; allocates only when
/// one is picked.
#[cfg(test)]
fn remove_where(headers: &mut HeaderMap, doomed: impl FnMut(&HeaderMap, &str) -> bool) {
    for name in &doomed_names(headers, doomed) {
        headers.remove(name);
    }
}

/// The names `doomed` picks, in one pass; allocates only when one is picked.
fn doomed_names(
    headers: &HeaderMap,
    mut doomed: impl FnMut(&HeaderMap, &str) -> bool,
) -> Vec<HeaderName> {
    let mut gone: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if doomed(headers, name.as_str()) {
            gone.push(name.clone());
        }
    }
    gone
}

/// Whether a `TE` header asks for trailers (`TE: trailers` is end-to-end in meaning for
/// gRPC and friends, so it is kept when the rest of `TE` goes).
fn wants_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Removes hop-by-hop headers, including every header named by `Connection`, except
/// the forwarding headers ([`FORWARDING`]). `TE: trailers` is kept.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, |_| false);
}

/// Removes the hop-by-hop headers and those `also` picks, in one pass; `TE: trailers`
/// is kept.
fn remove_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    let keep_te_trailers = headers.contains_key(header::TE) && wants_trailers(headers);
    let gone = {
        let named = ConnectionNamed::of(headers);
        doomed_names(headers, |h, name| {
            named.is_hop_by_hop(h, name) || also(name)
        })
    };
    for name in &gone {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every `x-ipgate-*` header: a client can never set them.
#[cfg(test)]
pub fn remove_gateway_headers(headers: &mut HeaderMap) {
    remove_where(headers, |_, name| name.starts_with("x-ipgate-"));
}

/// Removes every header with an underscore whose name, with `_` read as `-`, is one the
/// gateway removes or sets (`X_Forwarded_For`, `X_Real_IP`, `X_Ipgate_Decision`,
/// `Transfer_Encoding`, `Content_Length`, ...).
#[cfg(test)]
pub fn remove_underscore_variants(headers: &mut HeaderMap) {
    remove_where(headers, |_, name| is_underscore_variant(name));
}

/// Everything a request's headers need before they go upstream, with one pass over the
/// names: hop-by-hop headers ([`remove_hop_by_hop`]), `x-ipgate-*`
/// ([`remove_gateway_headers`]), underscore variants ([`remove_underscore_variants`]),
/// and the forwarding headers ([`set_forwarding`]).
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    chain: &[IpAddr],
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    remove_hop_by_hop_and(headers, |name| {
        name.starts_with("x-ipgate-")
            || is_underscore_variant(name)
            || (!peer_trusted && FORWARDING.contains(&name))
    });
    write_forwarding(headers, chain, peer_trusted, proto, host);
}

/// `chain`, canonical, each address written by `each`, joined by `, `. `None` only if
/// the text were not a valid header value (addresses and the fixed text around them
/// always are).
///
/// The text is written at the end of a block the thread keeps ([`BLOCK_SIZE`] bytes)
/// and the value shares that block, as hyper's parsed header values share its read
/// buffer: no allocation per header, one per block. A value that is still in use keeps
/// its block alive; a block is replaced when its free end is too short.
fn join_chain(
    chain: &[IpAddr],
    mut each: impl FnMut(&mut BytesMut, IpAddr),
) -> Option<HeaderValue> {
    // The longest form an address takes here: `for="[` + 45 + `]"` + `, `.
    let need = chain.len().saturating_mul(56);
    let mut write = |out: &mut BytesMut| {
        for (i, ip) in chain.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            each(out, ip.to_canonical());
        }
    };
    let shared = BLOCK
        .try_with(|block| {
            let mut block = block.try_borrow_mut().ok()?;
            if block.capacity() - block.len() < need {
                if need > BLOCK_SIZE / 4 {
                    // A long chain gets a buffer of its own.
                    return None;
                }
                *block = BytesMut::with_capacity(BLOCK_SIZE);
            }
            write(&mut block);
            Some(block.split().freeze())
        })
        .ok()
        .flatten();
    let bytes = match shared {
        Some(b) => b,
        None => {
            let mut own = BytesMut::with_capacity(need);
            write(&mut own);
            own.freeze()
        }
    };
    HeaderValue::from_maybe_shared(bytes).ok()
}

/// The size of the blocks [`join_chain`] writes into.
const BLOCK_SIZE: usize = 4096;

thread_local! {
    /// The free end of the block [`join_chain`] writes into.
    static BLOCK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Appends `ip` in its usual text form; an IPv4 address (every request's
/// `X-Forwarded-For`) without the formatting machinery.
fn push_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                if octet >= 100 {
                    out.put_u8(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.put_u8(b'0' + octet / 10 % 10);
                }
                out.put_u8(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Sets `name` to `value`, or removes it when there is no value.
fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Headers naming one client address: from a trusted peer, each one present is set to
/// the client the decision used.
const SINGLE_ADDRESS_NAMES: [HeaderName; 7] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-originating-ip"),
];

/// `X-Forwarded`: no standard form, so never passed on.
const X_FORWARDED: HeaderName = HeaderName::from_static("x-forwarded");

/// Sets the forwarding headers from `chain`, the addresses the decision rests on
/// (client first, the peer last; see `ClientIpResolver::chain`), so they describe the
/// client the decision used:
///
/// - `X-Forwarded-For` is the chain.
/// - From a trusted peer, a `Forwarded` header is rebuilt from the chain (`for=` only),
///   and each single-address header present (`X-Real-IP`, `CF-Connecting-IP`, ...) is set
///   to the client; `X-Forwarded` (no standard form) is removed; `X-Forwarded-Proto`,
///   `-Host` and `-Port` are kept.
/// - From an untrusted peer every [`FORWARDING`] header is removed first.
///
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are set unless a trusted peer sent them.
/// Runs after [`remove_hop_by_hop`], which never removes them, so
/// `Connection: X-Forwarded-For` can strip neither the incoming chain nor what is set here.
#[cfg(test)]
pub fn set_forwarding(
    headers: &mut HeaderMap,
    chain: &[IpAddr],
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if !peer_trusted {
        remove_where(headers, |_, name| FORWARDING.contains(&name));
    }
    write_forwarding(headers, chain, peer_trusted, proto, host);
}

/// [`set_forwarding`] once an untrusted peer's forwarding headers are gone.
fn write_forwarding(
    headers: &mut HeaderMap,
    chain: &[IpAddr],
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if peer_trusted {
        headers.remove(X_FORWARDED);
        if headers.contains_key(header::FORWARDED) {
            let fwd = join_chain(chain, |out, ip| {
                let _ = match ip {
                    IpAddr::V4(v4) => write!(out, "for={v4}"),
                    IpAddr::V6(v6) => write!(out, "for=\"[{v6}]\""),
                };
            });
            set_or_remove(headers, header::FORWARDED, fwd);
        }
        if let Some(client) = chain.first() {
            let mut value: Option<Option<HeaderValue>> = None;
            for n in SINGLE_ADDRESS_NAMES {
                if headers.contains_key(&n) {
                    let v = value
                        .get_or_insert_with(|| join_chain(std::slice::from_ref(client), push_ip))
                        .clone();
                    set_or_remove(headers, n, v);
                }
            }
        }
    }
    let xff = join_chain(chain, push_ip);
    set_or_remove(headers, X_FORWARDED_FOR, xff);
    if !peer_trusted || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(h) = host
        && (!peer_trusted || !headers.contains_key(X_FORWARDED_HOST))
    {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chains_are_joined_whole_one_after_another_long_or_short() {
        let long: Vec<IpAddr> = (0..100u16)
            .map(|i| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]))
            .collect();
        let v = join_chain(&long, push_ip).unwrap();
        let text = v.to_str().unwrap();
        assert_eq!(text.split(", ").count(), 100);
        assert!(text.starts_with("2001:db8::, 2001:db8::1, "));
        assert!(text.ends_with(", 2001:db8::63"));
        // Short chains share the thread's block: each value is only itself, and stays
        // so while later ones are written after it, over more than one block.
        let short = [IpAddr::from([192, 0, 2, 1]), IpAddr::from([10, 0, 0, 1])];
        let first = join_chain(&short, push_ip).unwrap();
        let kept: Vec<HeaderValue> = (0..600)
            .map(|i| join_chain(&short[i % 2..], push_ip).unwrap())
            .collect();
        assert_eq!(first, "192.0.2.1, 10.0.0.1");
        for (i, v) in kept.iter().enumerate() {
            let want = if i % 2 == 0 {
                "192.0.2.1, 10.0.0.1"
            } else {
                "10.0.0.1"
            };
            assert_eq!(v, want);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers, deflate"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn ip_text_is_the_standard_form() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "192.0.2.255",
            "255.255.255.255",
            "2001:db8::1",
        ] {
            let mut out = BytesMut::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(&out[..], ip.as_bytes());
        }
    }

    #[test]
    fn every_header_connection_names_goes_however_many_it_names() {
        // More names than are kept inline, over two Connection headers, any case.
        let named = ["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"];
        let mut pairs = vec![
            ("connection", "A-1, a-2, close"),
            ("connection", "A-3,a-4 , A-5, a-6, X-Forwarded-For"),
            ("x-forwarded-for", "192.0.2.1"),
            ("close", "x"),
            ("accept", "*/*"),
        ];
        pairs.extend(named.iter().map(|n| (*n, "1")));
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "x-forwarded-for"]);
    }

    #[test]
    fn connection_never_makes_forwarding_headers_hop_by_hop() {
        let mut pairs = vec![(
            "connection",
            "X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, Forwarded, X-Real-IP, \
             CF-Connecting-IP, True-Client-IP, X-Client-IP, keep-alive, x-other",
        )];
        for n in FORWARDING {
            pairs.push((n, "198.51.100.9"));
        }
        pairs.push(("keep-alive", "timeout=5"));
        pairs.push(("x-other", "1"));
        let mut h = map(&pairs);
        remove_hop_by_hop(&mut h);
        for n in FORWARDING {
            assert_eq!(h[n], "198.51.100.9", "{n} was removed as hop-by-hop");
        }
        for gone in ["connection", "keep-alive", "x-other"] {
            assert!(!h.contains_key(gone), "{gone} was kept");
        }
    }

    #[test]
    fn connection_cannot_strip_what_the_gateway_sets() {
        let mut h = map(&[(
            "connection",
            "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
        )]);
        remove_hop_by_hop(&mut h);
        set_forwarding(
            &mut h,
            &["203.0.113.9".parse().unwrap()],
            false,
            "http",
            Some(&HeaderValue::from_static("app.example")),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }

    #[test]
    fn untrusted_forwarding_is_replaced_trusted_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "127.0.0.1"),
            ("cf-connecting-ip", "127.0.0.1"),
            ("true-client-ip", "127.0.0.1"),
            ("x-client-ip", "127.0.0.1"),
        ]);
        set_forwarding(
            &mut h,
            &["::ffff:198.51.100.1".parse().unwrap()],
            false,
            "http",
            None,
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded"));
        for smuggled in [
            "x-real-ip",
            "cf-connecting-ip",
            "true-client-ip",
            "x-client-ip",
        ] {
            assert!(
                !h.contains_key(smuggled),
                "{smuggled} from an untrusted peer passed on"
            );
        }

        let mut h = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        // The chain the decision used: 192.0.2.2 is the client, 192.0.2.1 (left of it)
        // is not vouched for by anyone trusted.
        let chain = ["192.0.2.2".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        set_forwarding(&mut h, &chain, true, "http", None);
        assert_eq!(h["x-forwarded-for"], "192.0.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_forwarding_headers_are_rebuilt_from_the_chain() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=198.51.100.1;proto=https"),
            ("x-real-ip", "203.0.113.7"),
            ("true-client-ip", "203.0.113.7"),
            ("x-forwarded", "for=203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let chain = [
            "198.51.100.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        set_forwarding(&mut h, &chain, true, "http", None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1, 10.0.0.1");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=\"[2001:db8::1]\", for=10.0.0.1"
        );
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        assert_eq!(h["true-client-ip"], "198.51.100.1");
        assert!(!h.contains_key("x-forwarded"));
        assert!(!h.contains_key("cf-connecting-ip"), "not added when absent");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn underscore_variants_of_managed_headers_are_removed() {
        let mut h = map(&[
            ("x_forwarded_for", "1.2.3.4"),
            ("X_Real_IP", "1.2.3.4"),
            ("x_ipgate_client_ip", "1.2.3.4"),
            ("X_Ipgate_Decision", "allow"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_forwarded_port", "443"),
            ("host_", "x"),
            ("x_custom_thing", "kept"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        remove_underscore_variants(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["host_", "x-forwarded-for", "x_custom_thing"]);
    }

    #[test]
    fn gateway_headers_are_removed() {
        let mut h = map(&[
            ("x-ipgate-decision", "allow"),
            ("X-Ipgate-Score", "0"),
            ("x-ipgatex", "keep"),
        ]);
        remove_gateway_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ipgatex"));
    }

    #[test]
    fn prepare_request_does_every_step_in_one_pass() {
        let pairs = [
            ("connection", "keep-alive, X-Secret, X-Forwarded-For"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers, deflate"),
            ("x-ipgate-decision", "allow"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded", "for=6.6.6.6"),
            ("accept", "*/*"),
        ];
        // Untrusted peer: every forwarding header it sent is gone, the chain is the peer.
        let mut h = map(&pairs);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let host = HeaderValue::from_static("app.example");
        prepare_request(&mut h, &[peer], false, "https", Some(&host));
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "accept",
                "te",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example");

        // Trusted peer: its chain stays (Connection cannot strip it), X-Real-IP is set to
        // the client, X-Forwarded goes, the rest as above.
        let mut h = map(&pairs);
        let chain = ["198.51.100.1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        prepare_request(&mut h, &chain, true, "http", None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.1");
        assert_eq!(h["x-real-ip"], "198.51.100.1");
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "x-ipgate-decision",
            "x_forwarded_for",
            "x-forwarded",
        ] {
            assert!(!h.contains_key(gone), "{gone} was kept");
        }
    }
}
