//! The gateway's HTTP/1.1 to the upstream, byte for byte: a scripted upstream on a raw
//! socket answers with the framings RFC 9112 allows (and some it does not), behind the
//! real gateway, over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestGateway, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BASE: &str = "listen: 127.0.0.1:0\nupstream: {upstream}\n";
const WITHIN: Duration = Duration::from_secs(5);

/// A request as the upstream read it: the head, and the body with its framing undone.
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// Reads one request from `s` (`buf` keeps what was read past it); `None` at the end.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                fill(s, buf).await?;
            };
            let size_line = String::from_utf8(buf.drain(..line_end + 2).collect()).unwrap();
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(at) = lower.find("content-length: ") {
        let n: usize = lower[at + 16..]
            .split("\r\n")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        while buf.len() < n {
            fill(s, buf).await?;
        }
        body.extend(buf.drain(..n));
    }
    Some(Seen { head, body })
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.ok()?;
    (n > 0).then(|| buf.extend_from_slice(&chunk[..n]))
}

/// An upstream running `script` on each connection it accepts (with the connection's
/// number, from 1), counting them.
async fn scripted<F, Fut>(script: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(script(s, n));
        }
    });
    (url, accepted)
}

/// Reads from `s` until `needle` has been seen; everything read so far.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(WITHIN, async {
        while !String::from_utf8_lossy(&got).contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {needle:?} within {WITHIN:?}: {}",
            String::from_utf8_lossy(&got)
        )
    });
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_chunked_answer_streams_through_with_its_trailers() {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go = Arc::new(tokio::sync::Mutex::new(Some(go_rx)));
    let (url, _) = scripted(move |mut s, _| {
        let go = go.clone();
        async move {
            let mut buf = Vec::new();
            let seen = read_request(&mut s, &mut buf).await.unwrap();
            assert!(seen.head.to_ascii_lowercase().contains("te: trailers"));
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n6;note=first\r\nhello \r\n")
                .await
                .unwrap();
            // The rest only once the client has the first chunk: the body is streamed.
            let rx = go.lock().await.take().unwrap();
            rx.await.unwrap();
            s.write_all(b"5\r\nworld\r\n0\r\nx-sum: 11\r\n\r\n").await.unwrap();
            let _ = read_request(&mut s, &mut buf).await;
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut c, "hello ").await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(!first.contains("world"));
    go_tx.send(()).unwrap();
    let rest = read_until(&mut c, "\r\n\r\n").await;
    let rest = if rest.contains("x-sum") {
        rest
    } else {
        format!("{rest}{}", read_until(&mut c, "x-sum").await)
    };
    assert!(rest.contains("world"), "{rest}");
    assert!(rest.contains("x-sum: 11"), "the trailer was lost: {rest}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_upstream_whole() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (url, _) = scripted(move |mut s, _| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(seen) = read_request(&mut s, &mut buf).await {
                let _ = seen_tx.send((seen.head, seen.body));
                s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"3\r\nefg\r\n0\r\n\r\n").await.unwrap();
    let answer = read_until(&mut c, "ok").await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (head, body) = seen_rx.recv().await.unwrap();
    assert_eq!(body, b"abcdefg");
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("post /up http/1.1\r\n"), "{head}");
    assert_eq!(lower.matches("transfer-encoding").count(), 1, "{head}");
    assert!(!lower.contains("content-length"), "{head}");
    gw.shutdown().await;
}

#[tokio::test]
async fn answers_without_a_body_and_interim_answers_keep_the_connection() {
    let (url, accepted) = scripted(|mut s, _| async move {
        let mut buf = Vec::new();
        while let Some(seen) = read_request(&mut s, &mut buf).await {
            let answer: &[u8] = if seen.head.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            } else if seen.head.starts_with("GET /204") {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
            } else if seen.head.starts_with("GET /304") {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello"
            };
            s.write_all(answer).await.unwrap();
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let c = client();
    let head = c.head(gw.url("/h")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "5");
    let r = c.get(gw.url("/204")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.get(gw.url("/304")).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    let r = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !r.headers().contains_key("keep-alive"),
        "a hop-by-hop header leaked"
    );
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection served all four"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_body_until_close_arrives_whole_and_its_connection_is_not_reused() {
    let (url, accepted) = scripted(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..100 {
                s.write_all(&[b'x'; 1000]).await.unwrap();
            }
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let c = client();
    for _ in 0..2 {
        let r = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn answers_that_cannot_be_framed_are_502_and_a_cut_body_is_cut_for_the_client() {
    let (url, _) = scripted(|mut s, _| async move {
        let mut buf = Vec::new();
        let Some(seen) = read_request(&mut s, &mut buf).await else {
            return;
        };
        let answer: &[u8] = if seen.head.starts_with("GET /conflict") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        } else if seen.head.starts_with("GET /garbage") {
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
        } else if seen.head.starts_with("GET /bad-chunk") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        };
        s.write_all(answer).await.unwrap();
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let c = client();
    for path in ["/conflict", "/garbage"] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
    }
    for path in ["/cut", "/bad-chunk"] {
        // The head may or may not have left before the body broke off; either way the
        // client must not get what looks like a whole answer.
        let whole = match c.get(gw.url(path)).send().await {
            Ok(r) => r.bytes().await.is_ok(),
            Err(_) => false,
        };
        assert!(
            !whole,
            "{path}: a body the upstream broke off reached the client as if whole"
        );
    }
    // The gateway is fine afterwards.
    let r = c.get(gw.url("/conflict")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_for_every_method() {
    // One answer per connection, announced as keep-alive, then the upstream closes.
    let (url, accepted) = scripted(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let c = client();
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::PATCH,
    ] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c.request(method.clone(), gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(r.text().await.unwrap(), "once");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn bytes_the_upstream_sends_with_its_101_reach_the_client_first() {
    let (url, _) = scripted(|mut s, _| async move {
        let mut buf = Vec::new();
        let seen = read_request(&mut s, &mut buf).await.unwrap();
        assert!(seen.head.to_ascii_lowercase().contains("upgrade: x-echo"));
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-echo\r\nConnection: upgrade\r\n\r\nEARLY")
            .await
            .unwrap();
        let mut b = [0u8; 64];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 || s.write_all(&b[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = TestGateway::start(BASE, &url).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: x-echo\r\nConnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, "EARLY").await;
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    c.write_all(b"ping").await.unwrap();
    read_until(&mut c, "ping").await;
    drop(c);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_request_target_goes_as_sent_or_under_the_upstreams_path_prefix() {
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (url, _) = scripted(move |mut s, _| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(seen) = read_request(&mut s, &mut buf).await {
                let line = seen.head.lines().next().unwrap_or_default().to_string();
                let _ = seen_tx.send(line);
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let c = client();
    for (upstream, path, want) in [
        (url.clone(), "/x/y?q=1&r=%20", "GET /x/y?q=1&r=%20 HTTP/1.1"),
        (format!("{url}/app/"), "/x?y=1", "GET /app/x?y=1 HTTP/1.1"),
        (format!("{url}/app"), "/", "GET /app/ HTTP/1.1"),
    ] {
        let gw = TestGateway::start(BASE, &upstream).await;
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(seen_rx.recv().await.unwrap(), want, "upstream {upstream}");
        gw.shutdown().await;
    }
}
