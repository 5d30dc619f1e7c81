//! Connection-level hardening over real sockets (loopback only): deadlines for graceful
//! close and the first request, HTTP/2 stream and upstream connection bounds, the
//! open-files limit, idle upstream reaping, protocol strictness and bans cutting
//! tunnels. (Header-name variants and forwarding headers: tests/gateway.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestGateway, client, closed_by_server, eventually, read_raw, upstream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASE: &str = "listen: 127.0.0.1:0\nupstream: {upstream}\n";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// HEADERS on stream 1 (END_STREAM | END_HEADERS): GET / over http, authority `x`.
fn get_headers_frame() -> Vec<u8> {
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    let mut f = vec![0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1];
    f.extend_from_slice(&block);
    f
}

/// Frames (type, flags, stream, payload) in `bytes`, as far as they are complete.
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let (ty, flags) = (bytes[at + 3], bytes[at + 4]);
        let stream = u32::from_be_bytes([
            bytes[at + 5] & 0x7f,
            bytes[at + 6],
            bytes[at + 7],
            bytes[at + 8],
        ]);
        if bytes.len() < at + 9 + len {
            break;
        }
        out.push((ty, flags, stream, bytes[at + 9..at + 9 + len].to_vec()));
        at += 9 + len;
    }
    out
}

/// Everything the server sends until it closes (at most `within`).
async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// Reads until the server closes `s`; true when it did within `within`.
async fn closed<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

fn has_goaway_protocol_error(bytes: &[u8]) -> bool {
    frames(bytes)
        .iter()
        .any(|(ty, _, _, p)| *ty == 0x7 && p.len() >= 8 && p[4..8] == [0, 0, 0, 1])
}

/// A self-signed certificate for `localhost`, written to `dir`; (cert PEM, policy line).
fn tls_files(dir: &std::path::Path) -> (rcgen::CertifiedKey<rcgen::KeyPair>, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let line = format!(
        "tls: {{ cert: '{}', key: '{}' }}\n",
        c.display(),
        k.display()
    );
    (cert, line)
}

/// A TLS connection to the gateway offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(alpn));
    s
}

/// An upstream that counts its open connections (and the most open at once); each
/// request is answered `ok` after `delay`, keep-alive.
struct CountingUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
}

impl CountingUpstream {
    async fn start(delay: Duration) -> CountingUpstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let (o, m) = (open.clone(), max_open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            addr,
            open,
            max_open,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

// 1 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn an_h2_connection_that_never_acks_the_goaway_ping_is_dropped() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ idle_timeout: 300ms, header_read_timeout: 500ms }}\n"),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&EMPTY_SETTINGS).await.unwrap();
    s.write_all(&get_headers_frame()).await.unwrap();
    // The response (END_STREAM on stream 1, on HEADERS or DATA), then silence: no
    // SETTINGS ack, no PING ack, ever.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !frames(&got)
            .iter()
            .any(|(ty, flags, stream, _)| *stream == 1 && *ty <= 1 && flags & 1 == 1)
        {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no response on stream 1");
    assert_eq!(up.seen.count(), 1);
    // idle 300ms → GOAWAY + PING; the close deadline (header_read_timeout) then drops it.
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)).await,
        "a connection that never acknowledged the GOAWAY's PING was kept open"
    );
    gw.shutdown().await;
}

// 2 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn a_connection_without_a_request_is_closed_at_header_read_timeout() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, tls_line) = tls_files(dir.path());
    let limits = "limits: { header_read_timeout: 300ms, idle_timeout: 30s }\n";
    let gw = TestGateway::start(&format!("{BASE}{limits}"), &up.url()).await;
    let within = Duration::from_secs(3);

    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        closed_by_server(&mut silent, within).await,
        "a silent connection was kept"
    );
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(&PREFACE[..16]).await.unwrap();
    assert!(
        closed_by_server(&mut half, within).await,
        "a half HTTP/2 preface was kept"
    );
    let mut no_headers = TcpStream::connect(gw.addr).await.unwrap();
    no_headers.write_all(PREFACE).await.unwrap();
    no_headers.write_all(&EMPTY_SETTINGS).await.unwrap();
    assert!(
        closed_by_server(&mut no_headers, within).await,
        "an HTTP/2 connection that never sent HEADERS was kept"
    );
    // A request in time is served as before.
    let r = client().get(gw.url("/in-time")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.shutdown().await;

    let gw = TestGateway::start(&format!("{BASE}{limits}{tls_line}"), &up.url()).await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut s = tls_connect(gw.addr, &cert, alpn).await;
        assert!(
            closed(&mut s, within).await,
            "a silent TLS connection ({}) was kept",
            String::from_utf8_lossy(alpn)
        );
    }
    gw.shutdown().await;
}

// 3 ─────────────────────────────────────────────────────────────────────────────────

/// The server's first SETTINGS frame, as (identifier, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&EMPTY_SETTINGS).await.unwrap();
    s.write_all(&get_headers_frame()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some((_, _, _, p)) = frames(&got)
                .into_iter()
                .find(|(ty, flags, _, _)| *ty == 0x4 && flags & 1 == 0)
            {
                return p
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before SETTINGS");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no SETTINGS from the server")
}

#[tokio::test]
async fn h2_concurrent_streams_per_connection_are_bounded() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let settings = server_settings(gw.addr).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 100)),
        "default: {settings:?}"
    );
    gw.shutdown().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ max_concurrent_streams: 7 }}\n"),
        &up.url(),
    )
    .await;
    let settings = server_settings(gw.addr).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "configured: {settings:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_bounded_and_requests_wait_for_one() {
    let up = CountingUpstream::start(Duration::from_millis(300)).await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ upstream_max_connections: 2, upstream_timeout: 10s }}\n"),
        &up.url(),
    )
    .await;
    // Six concurrent streams on one h2c connection.
    let c = h2c_client();
    let answers = futures_util::future::join_all(
        (0..6).map(|i| c.post(gw.url(&format!("/s{i}"))).body("x").send()),
    )
    .await;
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.status(), 200);
        assert_eq!(a.text().await.unwrap(), "ok");
    }
    let most = up.max_open.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} upstream connections at once with upstream_max_connections: 2"
    );
    gw.shutdown().await;

    // A request that cannot get a connection within upstream_timeout gets 504.
    let slow = CountingUpstream::start(Duration::from_secs(3)).await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ upstream_max_connections: 1, upstream_timeout: 500ms }}\n"),
        &slow.url(),
    )
    .await;
    let c = h2c_client();
    let (a, b) = tokio::join!(c.get(gw.url("/a")).send(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.get(gw.url("/b")).send().await
    });
    assert_eq!(a.unwrap().status(), 504);
    assert_eq!(b.unwrap().status(), 504);
    assert_eq!(slow.max_open.load(Ordering::SeqCst), 1);
}

/// The soft and hard open-files limits of process `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[tokio::test]
async fn the_open_files_limit_is_raised_and_descriptors_never_run_out() {
    let up = CountingUpstream::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nlimits: {{ header_read_timeout: 20s, upstream_max_connections: 8 }}\n",
            up.url()
        ),
    )
    .unwrap();
    // Soft limit 64, hard 256: the gateway raises the soft one to 256 and fits
    // max_connections (10000 by default) into it.
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        r#"ulimit -n 256 && ulimit -Sn 64 && exec "$0" run -c "$1""#,
        env!("CARGO_BIN_EXE_ipgate"),
        policy.to_str().unwrap(),
    ])
    .stderr(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let (gateway, _, _out) = common::read_listening(&mut child, 1, false).await;
    let pid = child.id().unwrap();
    assert_eq!(
        nofile(pid),
        ("256".to_string(), "256".to_string()),
        "the soft open-files limit was not raised to the hard one"
    );
    // One connection first (the gateway accepts in order), then a flood of idle ones,
    // more than the descriptors allow.
    let mut first = TcpStream::connect(gateway[0]).await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(gateway[0]).await.unwrap());
    }
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    eventually(
        "the gateway accepting the flood",
        Duration::from_secs(10),
        || {
            let n = fds();
            async move { n >= 150 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The first connection's request needs a new upstream connection: there is a
    // descriptor for it.
    let answer = exchange(&mut first, "/needs-an-upstream-socket").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(fds() <= 256);
    drop(flood);
    let _ = child.kill().await;
}

async fn exchange(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_raw(s, Duration::from_secs(5))
        .await
        .unwrap_or_default()
}

// 4 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_idle_timeout() {
    let up = CountingUpstream::start(Duration::from_millis(100)).await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ idle_timeout: 500ms }}\n"),
        &up.url(),
    )
    .await;
    let c = client();
    let answers =
        futures_util::future::join_all((0..5).map(|i| c.get(gw.url(&format!("/b{i}"))).send()))
            .await;
    for a in answers {
        assert_eq!(a.unwrap().status(), 200);
    }
    assert!(up.max_open.load(Ordering::SeqCst) >= 2, "no burst happened");
    eventually(
        "idle upstream connections closed",
        Duration::from_millis(500) + Duration::from_secs(4),
        || {
            let n = up.open.load(Ordering::SeqCst);
            async move { n == 0 }
        },
    )
    .await;
    gw.shutdown().await;
}

// 7 ─────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn an_invalid_h2_preface_gets_goaway_not_an_http1_answer() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(has_goaway_protocol_error(&got), "{got:?}");
    assert_eq!(up.seen.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn over_tls_the_protocol_alpn_chose_is_the_only_one_served() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, tls_line) = tls_files(dir.path());
    let gw = TestGateway::start(&format!("{BASE}{tls_line}"), &up.url()).await;
    let http1 = b"GET /h1 HTTP/1.1\r\nHost: localhost\r\n\r\n";

    // ALPN h2, then HTTP/1.1 bytes: GOAWAY, never an HTTP/1.1 answer.
    let mut s = tls_connect(gw.addr, &cert, b"h2").await;
    s.write_all(http1).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(has_goaway_protocol_error(&got), "{got:?}");

    // ALPN http/1.1, then the HTTP/2 preface: not served as HTTP/2.
    let mut s = tls_connect(gw.addr, &cert, b"http/1.1").await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&EMPTY_SETTINGS).await.unwrap();
    s.write_all(&get_headers_frame()).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        frames(&got).iter().all(|(ty, ..)| *ty != 0x4 && *ty != 0x1),
        "HTTP/2 served after ALPN http/1.1: {got:?}"
    );
    assert_eq!(up.seen.count(), 0);

    // What ALPN chose works.
    let mut s = tls_connect(gw.addr, &cert, b"http/1.1").await;
    s.write_all(http1).await.unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http11_request_without_host_gets_400() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /no-host HTTP/1.1\r\n\r\n").await.unwrap();
    let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // HTTP/1.0 may omit it.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ten HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert_eq!(up.seen.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_gets_400_not_502() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    for body in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = read_raw(&mut s, Duration::from_secs(5))
            .await
            .unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_ban_cuts_the_clients_open_websocket_tunnels() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), "echo: hi");
    gw.gate.bans().add(
        "127.0.0.1/32".parse().unwrap(),
        Duration::from_secs(60),
        "test".into(),
    );
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the banned client's tunnel stayed open");
    gw.shutdown().await;
}
