//! The grammar of the forwarding headers: bare addresses (`X-Forwarded-For`,
//! `X-Real-IP`, `CF-Connecting-IP`) and RFC 7239 `Forwarded` elements and nodes, with
//! the quoted strings, obfuscated identifiers and ports they may hold. Every function
//! fails with a [`ClientIpError`] naming the header and a short excerpt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::HeaderValue;

use super::{ClientIpError, MAX_ENTRY_LEN};

/// Cuts `s` to at most [`MAX_ENTRY_LEN`] bytes at a char boundary, marking the cut with `…`.
pub(super) fn excerpt(s: &str) -> String {
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

pub(super) fn unparsable(header: &'static str, entry: &str) -> ClientIpError {
    ClientIpError::Unparsable {
        header,
        entry: excerpt(entry),
    }
}

pub(super) fn hidden(header: &'static str, entry: &str) -> ClientIpError {
    ClientIpError::Hidden {
        header,
        entry: excerpt(entry),
    }
}

/// Optional whitespace (RFC 9110 OWS).
pub(super) fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

pub(super) fn is_blank(v: &HeaderValue) -> bool {
    v.as_bytes().iter().all(|b| *b == b' ' || *b == b'\t')
}

/// `unknown` (any case) or an obfuscated identifier (`_…`): a node that hides the address.
pub(super) fn is_hidden_node(s: &str) -> bool {
    s.eq_ignore_ascii_case("unknown") || s.starts_with('_')
}

/// A bare address: `1.2.3.4`, `2001:db8::1` or `[2001:db8::1]`. No port, no zone id; the
/// standard parsers reject leading zeros in IPv4 octets.
pub(super) fn parse_bare_ip(header: &'static str, entry: &str) -> Result<IpAddr, ClientIpError> {
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
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The index of the first `sep` at or after `from` that is not inside a quoted string
/// (quoted pairs honoured), or `s.len()`. Fails on an unterminated quoted string.
pub(super) fn next_unquoted(s: &str, from: usize, sep: u8) -> Result<usize, ()> {
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
pub(super) fn split_unquoted(s: &str, sep: u8, out: &mut Vec<(usize, usize)>) -> Result<(), ()> {
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
pub(super) fn forwarded_for(header: &'static str, element: &str) -> Result<IpAddr, ClientIpError> {
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
pub(super) fn parse_forwarded_node(
    header: &'static str,
    value: &str,
) -> Result<IpAddr, ClientIpError> {
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
pub(super) fn check_node_port(
    header: &'static str,
    value: &str,
    port: &str,
) -> Result<(), ClientIpError> {
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
