//! PROXY protocol v1/v2 header reader (HAProxy's `proxy-protocol.txt`), for connections
//! from trusted proxies when `client_ip.proxy_protocol` is enabled. Never sniffed: when it
//! is expected, a connection that does not start with a PROXY header is refused.
//!
//! The header is read incrementally, never past its last byte, so the request that follows
//! stays unread in the stream. Parsing is done by the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (spec §2.1).
const V1_MAX_LEN: usize = 107;
/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
/// Fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED_LEN: usize = 16;
/// Largest v2 address+TLV block accepted (the format allows 65535 bytes).
pub const V2_MAX_PAYLOAD: usize = 4096;
/// Bytes read before deciding between v1 and v2: the v2 signature's length, shorter than
/// any valid header of either version.
const SIGNATURE_LEN: usize = 12;
const V2_SIGNATURE: &[u8; SIGNATURE_LEN] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// Why a PROXY protocol header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// No complete header arrived within the timeout.
    #[error("no complete PROXY protocol header within the timeout")]
    Timeout,
    /// The connection closed before the header was complete.
    #[error(
        "connection closed after {received} bytes, before the PROXY protocol header was complete"
    )]
    Truncated {
        /// Bytes of the header received.
        received: usize,
    },
    /// Reading from the connection failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid PROXY protocol v1 or v2 header.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads a PROXY protocol v1 or v2 header from the start of `stream` (exactly the header bytes,
/// nothing more: the HTTP request that follows must stay unread in the stream), within `timeout`.
/// Returns the source address it carries, canonical (`::ffff:a.b.c.d` → `a.b.c.d`); `None` for
/// v1 `UNKNOWN`, v2 `LOCAL` and v2 `PROXY` with an unspecified address family (then the caller
/// uses the peer). A v2 `AF_UNIX` source carries no IP address and is refused as `Invalid`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    match tokio::time::timeout(timeout, read(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut start = [0u8; SIGNATURE_LEN];
    fill(stream, &mut start, 0).await?;
    if &start == V2_SIGNATURE {
        read_v2(stream, &start).await
    } else if start.starts_with(V1_PREFIX) {
        read_v1(stream, &start).await
    } else {
        Err(ProxyProtocolError::Invalid(format!(
            "expected a PROXY protocol v1 or v2 signature, got \"{}\"",
            start.escape_ascii()
        )))
    }
}

/// Fills `buf` completely; `already` is the number of header bytes received before.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    already: usize,
) -> Result<(), ProxyProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]).await {
            Ok(0) => {
                return Err(ProxyProtocolError::Truncated {
                    received: already + got,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProxyProtocolError::Io(e)),
        }
    }
    Ok(())
}

/// The fewest bytes a valid v1 header starting with `buf` still needs (0: complete).
///
/// Reading exactly this many never consumes a byte past a valid header, yet avoids a
/// one-byte read per character for the common TCP4/TCP6 forms.
fn v1_min_remaining(buf: &[u8]) -> usize {
    match buf.last() {
        Some(b'\n') => return 0,
        Some(b'\r') => return 1,
        _ => {}
    }
    // At least the CRLF is missing.
    let mut need = 2;
    if buf.starts_with(b"PROXY TCP4 ") || buf.starts_with(b"PROXY TCP6 ") {
        // `PROXY TCPx src dst sport dport\r\n`: five spaces, each followed by a non-empty field.
        let spaces = buf.iter().filter(|b| **b == b' ').count().min(5);
        need += 2 * (5 - spaces);
        if buf.last() == Some(&b' ') {
            need += 1;
        }
    }
    need.max(V1_MIN_LEN.saturating_sub(buf.len()))
}

async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    start: &[u8; SIGNATURE_LEN],
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut buf = [0u8; V1_MAX_LEN];
    buf[..SIGNATURE_LEN].copy_from_slice(start);
    let mut len = SIGNATURE_LEN;
    loop {
        let have = &buf[..len];
        // A CR or LF anywhere but at the end of a valid header: stop before reading more.
        let body = have
            .strip_suffix(b"\r\n")
            .or_else(|| have.strip_suffix(b"\r"))
            .unwrap_or(have);
        if body.iter().any(|b| *b == b'\r' || *b == b'\n') || !body.is_ascii() {
            return Err(ProxyProtocolError::Invalid(format!(
                "malformed v1 header \"{}\"",
                have.escape_ascii()
            )));
        }
        let need = v1_min_remaining(have);
        if need == 0 {
            break;
        }
        if len + need > V1_MAX_LEN {
            return Err(ProxyProtocolError::Invalid(format!(
                "v1 header longer than {V1_MAX_LEN} bytes without CRLF"
            )));
        }
        fill(stream, &mut buf[len..len + need], len).await?;
        len += need;
    }
    let header = ppp::v1::Header::try_from(&buf[..len]).map_err(|e| {
        ProxyProtocolError::Invalid(format!("v1 \"{}\": {e}", buf[..len].escape_ascii()))
    })?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(canonical(IpAddr::V4(a.source_address), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(canonical(IpAddr::V6(a.source_address), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    })
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    start: &[u8; SIGNATURE_LEN],
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut fixed = [0u8; V2_FIXED_LEN];
    fixed[..SIGNATURE_LEN].copy_from_slice(start);
    fill(stream, &mut fixed[SIGNATURE_LEN..], SIGNATURE_LEN).await?;
    let declared = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if declared > V2_MAX_PAYLOAD {
        return Err(ProxyProtocolError::Invalid(format!(
            "v2 header declares {declared} bytes of addresses and TLVs, more than the {V2_MAX_PAYLOAD} accepted"
        )));
    }
    // Check version, command and family before waiting for the payload.
    if let Err(e) = ppp::v2::Header::try_from(&fixed[..])
        && !matches!(e, ppp::v2::ParseError::Partial(..))
    {
        return Err(ProxyProtocolError::Invalid(format!("v2: {e}")));
    }
    let mut header = Vec::with_capacity(V2_FIXED_LEN + declared);
    header.extend_from_slice(&fixed);
    header.resize(V2_FIXED_LEN + declared, 0);
    fill(stream, &mut header[V2_FIXED_LEN..], V2_FIXED_LEN).await?;
    let parsed = ppp::v2::Header::try_from(&header[..])
        .map_err(|e| ProxyProtocolError::Invalid(format!("v2: {e}")))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Ok(Some(canonical(IpAddr::V4(a.source_address), a.source_port)))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Ok(Some(canonical(IpAddr::V6(a.source_address), a.source_port)))
        }
        ppp::v2::Addresses::Unspecified => Ok(None),
        ppp::v2::Addresses::Unix(_) => Err(ProxyProtocolError::Invalid(
            "v2 PROXY with an AF_UNIX source carries no IP address".to_owned(),
        )),
    }
}

fn canonical(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(2);
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    fn v2(command: u8, family_protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family_protocol);
        h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(&[192, 0, 2, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&[0x04, 0x00, 0x01, 0x2a]); // a NOOP TLV
        v2(0x1, 0x11, &p)
    }

    /// Reads the header from `input` followed by a request, then checks the request is intact.
    async fn read_then_rest(input: &[u8]) -> Result<Option<SocketAddr>, ProxyProtocolError> {
        let mut bytes = input.to_vec();
        bytes.extend_from_slice(REQUEST);
        let mut reader: &[u8] = &bytes;
        let got = read_header(&mut reader, T).await?;
        assert_eq!(reader, REQUEST, "the bytes after the header stay unread");
        Ok(got)
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_tcp4() {
        let got = read_then_rest(b"PROXY TCP4 198.51.100.7 192.0.2.1 56324 443\r\n")
            .await
            .unwrap();
        assert_eq!(got, sa("198.51.100.7:56324"));
    }

    #[tokio::test]
    async fn v1_tcp4_shortest() {
        let got = read_then_rest(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
            .await
            .unwrap();
        assert_eq!(got, sa("1.2.3.4:1"));
    }

    #[tokio::test]
    async fn v1_tcp6_and_mapped() {
        let got = read_then_rest(b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n")
            .await
            .unwrap();
        assert_eq!(got, sa("[2001:db8::7]:4711"));
        let got = read_then_rest(b"PROXY TCP6 ::ffff:198.51.100.7 ::1 4711 443\r\n")
            .await
            .unwrap();
        assert_eq!(got, sa("198.51.100.7:4711"));
        let got = read_then_rest(b"PROXY TCP6 :: :: 0 0\r\n").await.unwrap();
        assert_eq!(got, sa("[::]:0"));
    }

    #[tokio::test]
    async fn v1_unknown() {
        assert_eq!(read_then_rest(b"PROXY UNKNOWN\r\n").await.unwrap(), None);
        let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(long.len(), V1_MAX_LEN);
        assert_eq!(read_then_rest(long).await.unwrap(), None);
    }

    #[tokio::test]
    async fn v1_invalid() {
        for bad in [
            &b"PROXY TCP4 198.51.100.7 192.0.2.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 010.1.2.3 192.0.2.1 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 192.0.2.1 1 2\n",
            b"PROXY TCP4 1.2.3.4 192.0.2.1 1 2\r\r\n",
        ] {
            let input = [bad, REQUEST].concat();
            let mut reader: &[u8] = &input;
            let e = read_header(&mut reader, T).await.unwrap_err();
            assert!(
                matches!(e, ProxyProtocolError::Invalid(_)),
                "{}: {e:?}",
                bad.escape_ascii()
            );
        }
        let too_long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 120], b"\r\n"].concat();
        let mut reader: &[u8] = &too_long;
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(e.to_string().contains("longer than 107"), "{e}");
    }

    #[tokio::test]
    async fn v2_ipv4() {
        let got = read_then_rest(&v2_tcp4([198, 51, 100, 7], 56324))
            .await
            .unwrap();
        assert_eq!(got, sa("198.51.100.7:56324"));
    }

    #[tokio::test]
    async fn v2_ipv6_and_mapped() {
        let mut p = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        p.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        p.extend_from_slice(&4711u16.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        let got = read_then_rest(&v2(0x1, 0x21, &p)).await.unwrap();
        assert_eq!(got, sa("[2001:db8::7]:4711"));

        p[..16].copy_from_slice(
            &"::ffff:198.51.100.7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let got = read_then_rest(&v2(0x1, 0x21, &p)).await.unwrap();
        assert_eq!(got, sa("198.51.100.7:4711"));
    }

    #[tokio::test]
    async fn v2_local_and_unspec() {
        assert_eq!(read_then_rest(&v2(0x0, 0x00, &[])).await.unwrap(), None);
        // LOCAL may still carry addresses; they are ignored.
        let mut local = v2_tcp4([198, 51, 100, 7], 1);
        local[12] = 0x20;
        assert_eq!(read_then_rest(&local).await.unwrap(), None);
        assert_eq!(
            read_then_rest(&v2(0x1, 0x00, &[1, 2, 3])).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn v2_invalid() {
        let mut bad_version = v2_tcp4([1, 2, 3, 4], 1);
        bad_version[12] = 0x11;
        let mut bad_command = v2_tcp4([1, 2, 3, 4], 1);
        bad_command[12] = 0x2f;
        let short_addresses = v2(0x1, 0x11, &[1, 2, 3, 4]);
        let unix = v2(0x1, 0x31, &[0; 216]);
        for bad in [bad_version, bad_command, short_addresses, unix] {
            let mut reader: &[u8] = &bad;
            let e = read_header(&mut reader, T).await.unwrap_err();
            assert!(matches!(e, ProxyProtocolError::Invalid(_)), "{e:?}");
        }
        // A declared length above the cap is refused without reading the payload.
        let mut huge = v2(0x1, 0x11, &[]);
        huge[14..16].copy_from_slice(&65535u16.to_be_bytes());
        huge.extend_from_slice(REQUEST);
        let mut reader: &[u8] = &huge;
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(e.to_string().contains("65535"), "{e}");
        assert_eq!(reader, REQUEST);
    }

    #[tokio::test]
    async fn garbage_is_refused_not_sniffed() {
        let mut reader: &[u8] = REQUEST;
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(matches!(e, ProxyProtocolError::Invalid(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "invalid PROXY protocol header: expected a PROXY protocol v1 or v2 signature, got \"GET / HTTP/1\""
        );
        let mut reader: &[u8] = b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c";
        assert!(matches!(
            read_header(&mut reader, T).await,
            Err(ProxyProtocolError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn truncated_then_closed() {
        let mut reader: &[u8] = b"PROXY TCP4 198.51.100.7 ";
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(
            matches!(e, ProxyProtocolError::Truncated { received: 24 }),
            "{e:?}"
        );
        let full = v2_tcp4([1, 2, 3, 4], 1);
        let mut reader: &[u8] = &full[..20];
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(
            matches!(e, ProxyProtocolError::Truncated { received: 20 }),
            "{e:?}"
        );
        let mut reader: &[u8] = b"";
        let e = read_header(&mut reader, T).await.unwrap_err();
        assert!(
            matches!(e, ProxyProtocolError::Truncated { received: 0 }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn truncated_then_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"PROXY TCP4 198.51.100.7 192.0.2.1 5")
            .await
            .unwrap();
        let e = read_header(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyProtocolError::Timeout), "{e:?}");
        drop(client);
    }

    #[tokio::test]
    async fn slow_writer_over_duplex_leaves_request_unread() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            let mut all = v2_tcp4([198, 51, 100, 7], 80);
            all.extend_from_slice(REQUEST);
            for chunk in all.chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let got = read_header(&mut server, T).await.unwrap();
        assert_eq!(got, sa("198.51.100.7:80"));
        let _client = writer.await.unwrap();
        let mut rest = vec![0u8; REQUEST.len()];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, REQUEST);

        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut all = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n".to_vec();
        all.extend_from_slice(REQUEST);
        client.write_all(&all).await.unwrap();
        let got = read_header(&mut server, T).await.unwrap();
        assert_eq!(got, sa("[2001:db8::7]:4711"));
        let mut rest = vec![0u8; REQUEST.len()];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, REQUEST);
    }
}
