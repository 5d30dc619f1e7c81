//! Header hygiene at the trust boundary, as small pure functions: hop-by-hop removal
//! (RFC 9110 §7.6.1), the gateway's own `x-ipgate-*` headers, and forwarding metadata.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Removes hop-by-hop headers, including every header named by `Connection`, except
/// the forwarding headers ([`FORWARDING`]): those are never hop-by-hop, whatever
/// `Connection` names, so a client cannot strip the chain a trusted proxy vouched for
/// and the gate decided on (as Traefik did for CVE-2024-45410).
/// `TE: trailers` is kept (it is end-to-end in meaning for gRPC and friends).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Read Connection's list before deleting it.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !FORWARDING.contains(&n.as_str()))
        .collect();
    let keep_te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every `x-ipgate-*` header: a client can never set them.
pub fn remove_gateway_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-ipgate-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
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

/// Headers naming one client address: from a trusted peer, each one present is set to
/// the client the decision used.
const SINGLE_ADDRESS: [&str; 7] = [
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

/// Removes every header with an underscore whose name, with `_` read as `-`, is one the
/// gateway removes or sets (`X_Forwarded_For`, `X_Real_IP`, `X_Ipgate_Decision`,
/// `Transfer_Encoding`, `Content_Length`, ...): CGI and WSGI map `_` and `-` to the same
/// variable, so such a header would pass for the real one at the application.
pub fn remove_underscore_variants(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_') && is_managed(&n.as_str().replace('_', "-")))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

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
pub fn set_forwarding(
    headers: &mut HeaderMap,
    chain: &[IpAddr],
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if !peer_trusted {
        for n in FORWARDING {
            headers.remove(n);
        }
    }
    headers.remove("x-forwarded");
    let chain: Vec<IpAddr> = chain.iter().map(|ip| ip.to_canonical()).collect();
    let xff = chain
        .iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    } else {
        headers.remove("x-forwarded-for");
    }
    if headers.contains_key("forwarded") {
        let fwd = chain
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => format!("for={v4}"),
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            })
            .collect::<Vec<_>>()
            .join(", ");
        match HeaderValue::from_str(&fwd) {
            Ok(v) => {
                headers.insert("forwarded", v);
            }
            Err(_) => {
                headers.remove("forwarded");
            }
        }
    }
    if let Some(client) = chain.first() {
        for n in SINGLE_ADDRESS {
            if headers.contains_key(n) {
                match HeaderValue::from_str(&client.to_string()) {
                    Ok(v) => {
                        headers.insert(n, v);
                    }
                    Err(_) => {
                        headers.remove(n);
                    }
                }
            }
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !headers.contains_key("x-forwarded-host")
        && let Some(h) = host
    {
        headers.insert("x-forwarded-host", h.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
