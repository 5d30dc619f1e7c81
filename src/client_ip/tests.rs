#![allow(clippy::unwrap_used)]
use super::*;
use http::header::HeaderValue;

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
