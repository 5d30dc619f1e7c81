//! Entry points of the fuzz targets (`fuzz/`, run with `cargo +nightly fuzz`) and of the
//! stable test that replays their corpus and every crash found. Each takes arbitrary
//! bytes and checks what must hold whatever they are; none may panic. Not a stable API.

use std::net::IpAddr;
#[cfg(feature = "gateway")]
use std::sync::OnceLock;
#[cfg(feature = "gateway")]
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::client_ip::ClientIpResolver;
use crate::config::{FeedFormat, HeaderSource};

/// The forwarding-header parsers (X-Forwarded-For, Forwarded, X-Real-IP,
/// CF-Connecting-IP), through the resolver: the first byte picks the header, the rest
/// are its lines (split at `\n`). A resolved address is always canonical.
pub fn forwarded_headers(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (source, name) = match pick % 4 {
        0 => (HeaderSource::XForwardedFor, "x-forwarded-for"),
        1 => (HeaderSource::Forwarded, "forwarded"),
        2 => (HeaderSource::XRealIp, "x-real-ip"),
        _ => (HeaderSource::CfConnectingIp, "cf-connecting-ip"),
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let peer = IpAddr::from([127, 0, 0, 1]);
    let nets =
        |s: &[&str]| -> Vec<ipnet::IpNet> { s.iter().filter_map(|n| n.parse().ok()).collect() };
    for trusted in [
        nets(&["0.0.0.0/0", "::/0"]),
        nets(&["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"]),
    ] {
        let resolver = ClientIpResolver::new(trusted, source);
        if let Ok(ip) = resolver.resolve(peer, &headers) {
            assert_eq!(ip, ip.to_canonical(), "a resolved address is canonical");
        }
    }
}

/// The PROXY protocol v1/v2 reader over the bytes as a stream: it never reads past the
/// header it accepts.
#[cfg(feature = "gateway")]
pub fn proxy_protocol(data: &[u8]) {
    let rt = runtime();
    let mut stream: &[u8] = data;
    let result = rt.block_on(crate::proxy_protocol::read_header(
        &mut stream,
        Duration::from_secs(1),
    ));
    if let Ok(Some(addr)) = result {
        assert_eq!(addr.ip(), addr.ip().to_canonical());
        // The header ends with CRLF (v1) or its stated length (v2); what follows is
        // untouched.
        assert!(stream.len() < data.len());
    }
}

/// The configuration loader, `${VAR}` expansion included.
pub fn config_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::Config::from_yaml(text, "fuzz");
    }
}

/// IOCScout's answer decoder.
pub fn iocscout_decode(data: &[u8]) {
    if let Ok(rep) = crate::providers::iocscout::decode(data) {
        assert!(rep.score.is_none_or(|s| s <= 100));
    }
}

/// IPSwamp's (lenient) answer decoder.
pub fn ipswamp_decode(data: &[u8]) {
    let _ = crate::providers::ipswamp::decode(data);
}

/// Both feed formats, as a URL feed and as a local file.
pub fn feeds(data: &[u8]) {
    for format in [FeedFormat::Plain, FeedFormat::SpamhausDropJson] {
        let _ = crate::feeds::parse(data, format);
        if let Err(e) = crate::feeds::parse_local(data, format) {
            // A local file's content is never quoted. (Only checked for text holding a
            // character no error message uses: a file that reads "not an IP address or
            // CIDR" is "quoted" by the message that names its problem.)
            let msg = e.to_string();
            if let Ok(text) = std::str::from_utf8(data)
                && text.trim().len() > 12
                && !text.contains(char::is_control)
                && text.contains(['$', '@', '%', '!', '~', '^', '*', '=', '|'])
            {
                assert!(!msg.contains(text.trim()), "{msg}");
            }
        }
    }
}

/// The upstream's answer as the gateway reads it (`upstream_h1`): the first byte picks
/// the request's method (`GET` or `HEAD`) and the size of the pieces the answer arrives
/// in; the rest is the answer. A body read to its end has exactly its stated length.
#[cfg(feature = "gateway")]
pub fn upstream_response(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let method = if pick & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    };
    let piece = usize::from(pick >> 1).max(1);
    runtime().block_on(crate::upstream_h1::read_answer(rest, piece, method));
}

#[cfg(feature = "gateway")]
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the fuzz targets: {e}"))
    })
}

#[cfg(test)]
mod tests {
    //! Replays `fuzz/corpus/TARGET/*` and `fuzz/regressions/TARGET/*` on stable.

    type Target = fn(&[u8]);

    fn targets() -> Vec<(&'static str, Target)> {
        #[cfg_attr(not(feature = "gateway"), allow(unused_mut))]
        let mut t: Vec<(&'static str, Target)> = vec![
            ("forwarded_headers", super::forwarded_headers),
            ("config_yaml", super::config_yaml),
            ("iocscout_decode", super::iocscout_decode),
            ("ipswamp_decode", super::ipswamp_decode),
            ("feeds", super::feeds),
        ];
        #[cfg(feature = "gateway")]
        t.push(("proxy_protocol", super::proxy_protocol));
        #[cfg(feature = "gateway")]
        t.push(("upstream_response", super::upstream_response));
        t
    }

    #[test]
    fn the_fuzz_corpus_and_every_crash_found_replay_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (name, target) in targets() {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if let Ok(bytes) = std::fs::read(entry.path()) {
                        target(&bytes);
                        replayed += 1;
                    }
                }
            }
        }
        assert!(replayed > 0, "no corpus under {}", root.display());
    }
}
