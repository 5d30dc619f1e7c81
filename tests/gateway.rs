//! End-to-end tests of the gateway over real sockets (loopback only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestGateway, client, closed_by_server, get_raw, read_raw, upstream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASE: &str = "listen: 127.0.0.1:0\nupstream: {upstream}\n";

#[tokio::test]
async fn allowed_request_reaches_upstream_intact() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let body: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let resp = client()
        .put(gw.url("/some/path?q=1&x=a%20b"))
        .header("x-custom", "value-1")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert!(
        !resp.headers().contains_key("keep-alive"),
        "hop-by-hop header leaked to the client"
    );
    let echoed = resp.bytes().await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "response body altered");
    let seen = up.seen.last();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/some/path?q=1&x=a%20b");
    assert_eq!(seen.headers["x-custom"], "value-1");
    assert_eq!(seen.headers["content-type"], "application/octet-stream");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["host"],
        gw.addr.to_string(),
        "preserve_host defaults to true"
    );
    assert_eq!(seen.headers["x-forwarded-host"], gw.addr.to_string());
    assert!(seen.body == body, "request body altered");
    gw.shutdown().await;
}

#[tokio::test]
async fn blocked_gets_403_and_upstream_sees_nothing() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}lists: {{ block: [127.0.0.0/8] }}\n"),
        &up.url(),
    )
    .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("127.0.0.1"), "{text}");
    let resp = client()
        .post(gw.url("/x"))
        .header("accept", "application/json")
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["rule"], "block-list");
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(up.seen.count(), 0, "a blocked request reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn allow_list_beats_block_list_and_rules() {
    let up = upstream::start().await;
    let yaml = format!(
        "{BASE}lists: {{ allow: [127.0.0.1], block: [127.0.0.0/8] }}\nrules:\n  - {{ name: all, action: block }}\n"
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn untrusted_forwarded_for_is_ignored() {
    let up = upstream::start().await;
    // Nobody is trusted: the peer (127.0.0.1) is the client whatever the headers say.
    let yaml = format!(
        "{BASE}lists: {{ block: [203.0.113.0/24], allow: [198.51.100.0/24] }}\nrules: [{{ name: rest, when: {{ not: {{ in_list: [] }} }}, action: allow }}]\n"
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    let resp = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "an untrusted X-Forwarded-For decided the client"
    );
    let seen = up.seen.last();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "spoofed X-Forwarded-For passed on"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn trusted_forwarded_for_is_read_rightmost_first() {
    let up = upstream::start().await;
    let yaml = format!(
        "{BASE}client_ip: {{ trusted_proxies: [127.0.0.1/32, 10.0.0.0/8] }}\nlists: {{ block: [203.0.113.0/24] }}\nupstream_headers: true\n"
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    let c = client();
    // The client prepended a fake address: the rightmost untrusted entry decides.
    let r = c
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.1, 10.1.1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen.last().headers["x-ipgate-client-ip"], "198.51.100.1");
    let r = c
        .get(gw.url("/"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Several header lines count, joined in order.
    let r = c
        .get(gw.url("/"))
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "203.0.113.8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Junk fails closed.
    let r = c
        .get(gw.url("/"))
        .header("x-forwarded-for", "198.51.100.1, unknown")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rule"], "invalid-client-ip");
    gw.shutdown().await;
}

#[tokio::test]
async fn dual_stack_listener_matches_ipv4_lists() {
    let up = upstream::start().await;
    let yaml = "listen: '[::]:0'
upstream: {upstream}
lists: { block: [127.0.0.0/8] }
"
    .to_string();
    let cfg = ipgate::Config::from_yaml(&yaml.replace("{upstream}", &up.url()), "t").unwrap();
    let gate = ipgate::Gate::from_config(cfg).await.unwrap();
    let listeners = match ipgate::server::bind(&gate).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("!!! SKIPPED dual_stack_listener_matches_ipv4_lists: no IPv6 here ({e})");
            return;
        }
    };
    let port = listeners[0].local_addr().unwrap().port();
    let g = gate.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        ipgate::server::serve(g, listeners, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    // Connect over IPv4 to the [::] listener: the peer is ::ffff:127.0.0.1.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "::ffff:127.0.0.1 did not match 127.0.0.0/8"
    );
    assert_eq!(up.seen.count(), 0);
    let _ = tx.send(());
    let _ = task.await;
}

#[tokio::test]
async fn websocket_is_tunnelled() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "hi {i}"
        )))
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("echo: hi {i}"));
    }
    ws.close(None).await.unwrap();
    // An open tunnel is waited for on shutdown (up to shutdown_grace): close it first.
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_from_blocked_client_is_refused() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}lists: {{ block: [127.0.0.1] }}\n"),
        &up.url(),
    )
    .await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected an HTTP 403, got {other}"),
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_request_is_proxied() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(gw.url("/h2?x=1"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "over h2");
    let seen = up.seen.last();
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.headers["host"],
        gw.addr.to_string(),
        "Host derived from :authority"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_down_gives_502_and_slow_gives_504() {
    let dead = upstream::dead_addr().await;
    let gw = TestGateway::start(BASE, &format!("http://{dead}")).await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    gw.shutdown().await;

    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ upstream_timeout: 300ms }}\n"),
        &up.url(),
    )
    .await;
    let r = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_holds_for_each_request_of_a_keep_alive_connection() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ upstream_timeout: 300ms }}\n"),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        let fast = get_raw(&mut s, "/", Duration::from_secs(5)).await.unwrap();
        assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
    }
    // The same connection's next request waits on an upstream that answers after 1.5 s.
    let slow = get_raw(&mut s, "/slow", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(slow.starts_with("HTTP/1.1 504"), "{slow}");
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_and_gateway_headers_are_stripped() {
    let up = upstream::start().await;
    let gw = TestGateway::start(&format!("{BASE}upstream_headers: true\n"), &up.url()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = "GET /h HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Forwarded-For, X-Forwarded-Host, x-private\r\n\
               x-private: secret\r\nx-ipgate-decision: allow-me\r\nX-Ipgate-Client-Ip: 1.2.3.4\r\nKeep-Alive: timeout=5\r\n\
               Proxy-Authorization: Basic abc\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let seen = up.seen.last();
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    assert_eq!(seen.headers["x-ipgate-decision"], "allow");
    assert_eq!(seen.headers["x-ipgate-client-ip"], "127.0.0.1");
    assert_eq!(seen.headers.get_all("x-ipgate-decision").iter().count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn preserve_host_false_sends_the_upstream_authority() {
    let up = upstream::start().await;
    let gw = TestGateway::start(&format!("{BASE}preserve_host: false\n"), &up.url()).await;
    client()
        .get(gw.url("/"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(up.seen.last().headers["host"], up.addr.to_string());
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ header_read_timeout: 300ms }}\n"),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The server closes (possibly after a 408) well before this bound.
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)).await,
        "a client that never finished its headers was not cut off"
    );
    assert_eq!(up.seen.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ idle_timeout: 300ms }}\n"),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert!(get_raw(&mut s, "/", Duration::from_secs(5)).await.is_some());
    assert!(
        closed_by_server(&mut s, Duration::from_secs(5)).await,
        "idle keep-alive connection stayed open"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_headers_after_a_keep_alive_request_are_cut_off() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ header_read_timeout: 300ms, idle_timeout: 30s }}\n"),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert!(get_raw(&mut s, "/", Duration::from_secs(5)).await.is_some());
    // The second request's head never ends (a byte now and then, as slowloris does).
    let started = std::time::Instant::now();
    s.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for _ in 0..40 {
        if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cut || closed_by_server(&mut s, Duration::from_secs(5)).await,
        "a client that never finished its second request's headers was not cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.seen.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_body_longer_than_the_idle_timeout_is_not_cut() {
    // The body takes 1.2 s; the connection is idle (no request started or finished)
    // for 200 ms several times over while it streams, and a graceful close would be
    // forced after header_read_timeout.
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ idle_timeout: 200ms, header_read_timeout: 200ms }}\n"),
        &up.url(),
    )
    .await;
    let resp = client().get(gw.url("/drip")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("the body was cut");
    let want: String = (0..12).map(|i| format!("{i:02}\n")).collect();
    assert_eq!(body, want);
    gw.shutdown().await;
}

/// Sends `GET path` on `s` and reads the whole answer (head and a `Content-Length`
/// body); None when it did not come within `within`.
async fn exchange(s: &mut TcpStream, path: &str, within: Duration) -> Option<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return Some(text);
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?
}

#[tokio::test]
async fn connection_limit_makes_extra_clients_wait() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ max_connections: 2 }}\n"),
        &up.url(),
    )
    .await;
    let ok = |answer: &Option<String>| {
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
    };
    // Two keep-alive connections, each served once, hold both slots.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let answer = exchange(&mut s, &format!("/held{i}"), Duration::from_secs(5)).await;
        assert!(ok(&answer), "{answer:?}");
        held.push(s);
    }
    // A third connection is accepted by the kernel but not served while they are open.
    let mut waiting = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        get_raw(&mut waiting, "/waiting", Duration::from_millis(500))
            .await
            .is_none(),
        "the third connection was served beyond max_connections: 2"
    );
    // The gateway is not merely slow: the connections it holds are served meanwhile,
    // and the request sent before theirs still gets nothing.
    for (i, s) in held.iter_mut().enumerate() {
        let answer = exchange(s, &format!("/again{i}"), Duration::from_secs(5)).await;
        assert!(ok(&answer), "{answer:?}");
    }
    assert!(
        read_raw(&mut waiting, Duration::from_millis(300))
            .await
            .is_none(),
        "the third connection was served beyond max_connections: 2"
    );
    let reached = |path: &str| up.seen.all().iter().any(|r| r.uri == path);
    assert!(
        !reached("/waiting"),
        "the third connection's request was proxied"
    );
    // Closing one frees its slot: the waiting connection is served.
    drop(held.pop());
    let answer = read_raw(&mut waiting, Duration::from_secs(5)).await;
    assert!(ok(&answer), "{answer:?}");
    assert!(reached("/waiting"));
    drop(held);
    drop(waiting);
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let up = upstream::start().await;
    let gw = TestGateway::start(&format!("{BASE}shutdown_grace: 5s\n"), &up.url()).await;
    let url = gw.url("/slow");
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    // Let the request reach the upstream, then stop the gateway.
    for _ in 0..100 {
        if up.seen.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.seen.count(), 1);
    gw.shutdown().await;
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slow done");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// Threads of this test process named `name`.
fn threads_named_here(name: &str) -> usize {
    common::thread_names(std::process::id())
        .iter()
        .filter(|n| *n == name)
        .count()
}

/// Served on two threads (the caller's runtime and one accept thread of its own): every
/// connection is answered, requests in flight on either thread finish on shutdown, and
/// the extra thread ends with the server.
#[tokio::test]
async fn serving_on_two_threads_answers_drains_and_ends_its_thread() {
    let up = upstream::start().await;
    let gw = TestGateway::start_threads(&format!("{BASE}shutdown_grace: 5s\n"), &up.url(), 2).await;
    common::eventually(
        "the accept thread starts",
        Duration::from_secs(5),
        || async { threads_named_here("ipgate-serve-1") == 1 },
    )
    .await;
    // Twenty clients, each on its own connection, three requests each.
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let url = gw.url(&format!("/c{i}"));
        async move {
            let c = client();
            let mut ok = 0;
            for _ in 0..3 {
                if c.get(&url).send().await.unwrap().status() == 200 {
                    ok += 1;
                }
            }
            ok
        }
    }))
    .await;
    assert_eq!(answers.iter().sum::<i32>(), 60, "{answers:?}");
    // Eight slow requests on eight connections, then stop: all of them finish.
    let before = up.seen.count();
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/slow");
            tokio::spawn(async move { client().get(url).send().await })
        })
        .collect();
    for _ in 0..100 {
        if up.seen.count() == before + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.seen.count(), before + 8);
    gw.shutdown().await;
    for r in slow {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "slow done");
    }
    assert_eq!(
        threads_named_here("ipgate-serve-1"),
        0,
        "the accept thread outlived the server"
    );
}

#[tokio::test]
async fn dry_run_decides_but_never_blocks() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}mode: dry_run\nupstream_headers: true\nlists: {{ block: [127.0.0.1] }}\n"),
        &up.url(),
    )
    .await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen.last().headers["x-ipgate-decision"], "dry_run_block");
    gw.shutdown().await;
}

#[tokio::test]
async fn block_page_template_is_rendered_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("blocked.html");
    std::fs::write(&page, "<p>Denied: {ip} by {rule}</p>").unwrap();
    let up = upstream::start().await;
    let yaml = format!(
        "{BASE}block_response: {{ status: 451, html: '{}' }}\nlists: {{ block: [127.0.0.1] }}\n",
        page.display()
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 451);
    assert_eq!(
        r.text().await.unwrap(),
        "<p>Denied: 127.0.0.1 by block-list</p>"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_swaps_the_policy_and_a_bad_one_is_refused() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    let cfg = ipgate::Config::from_yaml(
        &format!("{BASE}lists: {{ block: [127.0.0.1] }}\n").replace("{upstream}", &up.url()),
        "t",
    )
    .unwrap();
    gw.gate.reload(cfg).await.unwrap();
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        403
    );
    let mut bad = ipgate::Config::from_yaml(&BASE.replace("{upstream}", &up.url()), "t").unwrap();
    bad.block_response.html = Some(ipgate::config::Text("/nonexistent/blocked.html".into()));
    let err = gw.gate.reload(bad).await.unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/blocked.html"),
        "{err}"
    );
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        403,
        "old config not kept"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn temporary_bans_block_until_removed() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    gw.gate.bans().add(
        "127.0.0.0/8".parse().unwrap(),
        Duration::from_secs(60),
        "test ban".into(),
    );
    let r = client()
        .get(gw.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["rule"].as_str(), v["reason"].as_str()),
        (Some("ban"), Some("banned")),
        "the client sees a generic reason, never the operator's note"
    );
    assert!(gw.gate.bans().remove("127.0.0.0/8".parse().unwrap()));
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_is_terminated_with_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let up = upstream::start().await;
    let yaml = format!(
        "{BASE}tls: {{ cert: '{}', key: '{}' }}\n",
        cert_path.display(),
        key_path.display()
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://localhost:{}/tls", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2, "ALPN did not pick h2");
    assert_eq!(up.seen.last().headers["x-forwarded-proto"], "https");
    // Plain HTTP on the TLS port is not served.
    assert!(client().get(gw.url("/")).send().await.is_err());
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_are_a_clear_error() {
    let err = ipgate::server::tls_acceptor("/nonexistent/cert.pem", "/nonexistent/key.pem")
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn an_open_websocket_counts_against_max_connections() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!("{BASE}limits: {{ max_connections: 1 }}\n"),
        &up.url(),
    )
    .await;
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
    // While the tunnel is open, a second client is not served.
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        get_raw(&mut b, "/b", Duration::from_millis(400))
            .await
            .is_none(),
        "a WebSocket tunnel did not count against max_connections"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let answer = read_raw(&mut b, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_never_sees_client_ip_headers_from_untrusted_peers() {
    let up = upstream::start().await;
    let gw = TestGateway::start(BASE, &up.url()).await;
    client()
        .get(gw.url("/"))
        .header("x-real-ip", "127.0.0.9")
        .header("cf-connecting-ip", "127.0.0.9")
        .header("true-client-ip", "127.0.0.9")
        .send()
        .await
        .unwrap();
    let seen = up.seen.last();
    for h in ["x-real-ip", "cf-connecting-ip", "true-client-ip"] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} from an untrusted client reached the upstream"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_cannot_strip_a_trusted_proxys_forwarded_for() {
    let up = upstream::start().await;
    let gw = TestGateway::start(
        &format!(
            "{BASE}client_ip: {{ trusted_proxies: [127.0.0.1/32] }}\nupstream_headers: true\n"
        ),
        &up.url(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = "GET /chain HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Forwarded-For\r\n\
               X-Forwarded-For: 198.51.100.9\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen.last();
    assert_eq!(
        seen.headers["x-ipgate-client-ip"], "198.51.100.9",
        "the gate decided on another client"
    );
    assert_eq!(
        seen.headers.get_all("x-forwarded-for").iter().count(),
        1,
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.headers["x-forwarded-for"], "198.51.100.9, 127.0.0.1",
        "the upstream did not see the chain the decision used"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_ban_reason_is_for_operators_not_for_the_banned_client() {
    const NOTE: &str = "ticket-4711 scraping reported by ACME";
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("blocked.html");
    std::fs::write(&page, "<p>blocked by {rule}: {reason}</p>").unwrap();
    let gw = TestGateway::start(
        &format!("{BASE}block_response: {{ html: '{}' }}\n", page.display()),
        &up.url(),
    )
    .await;
    gw.gate.bans().add(
        "127.0.0.1/32".parse().unwrap(),
        Duration::from_secs(3600),
        NOTE.to_string(),
    );
    let c = client();
    let html = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(html.status(), 403);
    let html = html.text().await.unwrap();
    assert_eq!(html, "<p>blocked by ban: banned</p>");
    assert!(
        !html.contains("ticket-4711"),
        "the ban reason reached the client: {html}"
    );
    let json: serde_json::Value = c
        .get(gw.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["rule"], "ban");
    assert_eq!(json["reason"], "banned");
    assert!(
        !json.to_string().contains("ticket-4711"),
        "the ban reason reached the client: {json}"
    );
    // The operator still sees it.
    assert_eq!(gw.gate.bans().list()[0].reason, NOTE);
    assert_eq!(up.seen.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn underscore_variants_and_extra_client_address_headers_never_reach_the_upstream() {
    let up = upstream::start().await;
    let gw = TestGateway::start(&format!("{BASE}upstream_headers: true\n"), &up.url()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = "POST /u HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
               X_Forwarded_For: 127.0.0.9\r\nX_Real_IP: 127.0.0.9\r\n\
               X_Ipgate_Client_Ip: 127.0.0.9\r\nX_Ipgate_Decision: allow\r\n\
               Transfer_Encoding: chunked\r\nContent_Length: 0\r\nX_Forwarded_Proto: https\r\n\
               X-Forwarded-Port: 443\r\nX-Forwarded: for=127.0.0.9\r\n\
               X-Cluster-Client-IP: 127.0.0.9\r\nFastly-Client-IP: 127.0.0.9\r\n\
               X-Originating-IP: 127.0.0.9\r\nX_Custom: kept\r\n\r\nhello";
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen.last();
    assert_eq!(seen.body, "hello");
    assert_eq!(seen.headers["x_custom"], "kept");
    for (name, value) in &seen.headers {
        let n = name.as_str();
        assert!(
            !n.contains('_') || n == "x_custom",
            "{n} reached the upstream"
        );
        assert!(
            !value.as_bytes().windows(9).any(|w| w == b"127.0.0.9"),
            "{n}: {value:?} reached the upstream"
        );
    }
    for gone in [
        "x-forwarded-port",
        "x-forwarded",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-originating-ip",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-ipgate-client-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-ipgate-decision"], "allow");
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_describe_the_client_the_decision_used() {
    let up = upstream::start().await;
    for (header, sent) in [
        ("forwarded", "Forwarded: for=198.51.100.1\r\n"),
        ("x-real-ip", "X-Real-IP: 198.51.100.1\r\n"),
    ] {
        let gw = TestGateway::start(
            &format!(
                "{BASE}client_ip: {{ trusted_proxies: [127.0.0.1/32], header: {header} }}\n\
                 lists: {{ block: [203.0.113.7] }}\nupstream_headers: true\n"
            ),
            &up.url(),
        )
        .await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "GET /{header} HTTP/1.1\r\nHost: app.test\r\n{sent}X-Forwarded-For: 203.0.113.7\r\n\
             True-Client-IP: 203.0.113.7\r\nX-Forwarded: for=203.0.113.7\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = read_raw(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{header}: {answer}");
        let seen = up.seen.last();
        assert_eq!(seen.uri, format!("/{header}"));
        assert_eq!(seen.headers["x-ipgate-client-ip"], "198.51.100.1");
        assert_eq!(
            seen.headers["x-forwarded-for"], "198.51.100.1, 127.0.0.1",
            "{header}"
        );
        for (name, value) in &seen.headers {
            assert!(
                !value.as_bytes().windows(11).any(|w| w == b"203.0.113.7"),
                "with header: {header}, {name}: {value:?} (a blocked address) reached the upstream"
            );
        }
        if header == "forwarded" {
            assert_eq!(seen.headers["forwarded"], "for=198.51.100.1, for=127.0.0.1");
        } else {
            assert_eq!(seen.headers["x-real-ip"], "198.51.100.1");
        }
        assert_eq!(seen.headers["true-client-ip"], "198.51.100.1");
        gw.shutdown().await;
    }
}
