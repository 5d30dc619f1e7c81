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
pub(crate) const FORWARDING: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
];

/// Sets X-Forwarded-For/-Proto/-Host. From a trusted peer the incoming values are kept
/// and the peer appended to X-Forwarded-For; from an untrusted one they are replaced.
/// Runs after [`remove_hop_by_hop`], which never removes them, so
/// `Connection: X-Forwarded-For` can strip neither the incoming chain nor what is set here.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if !peer_trusted {
        for n in FORWARDING {
            headers.remove(n);
        }
    }
    let peer = peer.to_canonical().to_string();
    let mut xff = String::new();
    for v in headers.get_all("x-forwarded-for").iter() {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                if !xff.is_empty() {
                    xff.push_str(", ");
                }
                xff.push_str(s);
            }
        }
    }
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
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
            "203.0.113.9".parse().unwrap(),
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
            "::ffff:198.51.100.1".parse().unwrap(),
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
        set_forwarding(&mut h, "10.0.0.1".parse().unwrap(), true, "http", None);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
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
