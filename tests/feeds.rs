//! Feeds over loopback: a feed server started here on 127.0.0.1:0 serves lists, garbage,
//! 304s, oversized and slow bodies; `ipgate::feeds::Feeds` loads and refreshes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipgate::config::{Dur, FeedConfig, FeedFormat, FeedTag, Text};
use ipgate::feeds::{FeedError, FeedOptions, Feeds, RefreshOutcome};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What the feed server answers, and what it was asked.
#[derive(Default)]
struct Served {
    body: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
    chunked: bool,
    status: Option<u16>,
    delay: Option<Duration>,
    requests: Vec<Seen>,
}

/// The conditional headers of one request.
#[derive(Debug, Clone)]
struct Seen {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

struct FeedServer {
    addr: SocketAddr,
    state: Arc<Mutex<Served>>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedServer {
    async fn start(body: &str, etag: Option<&str>) -> FeedServer {
        FeedServer::start_at("127.0.0.1:0", body, etag).await
    }

    async fn start_at(addr: &str, body: &str, etag: Option<&str>) -> FeedServer {
        let state = Arc::new(Mutex::new(Served {
            body: body.as_bytes().to_vec(),
            etag: etag.map(str::to_string),
            last_modified: Some("Tue, 02 Apr 2024 10:00:00 GMT".to_string()),
            ..Served::default()
        }));
        let app = Router::new()
            .route("/feed", get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FeedServer { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/feed", self.addr)
    }

    fn set(&self, body: &str, etag: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.body = body.as_bytes().to_vec();
        s.etag = etag.map(str::to_string);
    }

    fn with<R>(&self, f: impl FnOnce(&mut Served) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(state): State<Arc<Mutex<Served>>>, headers: HeaderMap) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = Seen {
        if_none_match: header(IF_NONE_MATCH),
        if_modified_since: header(IF_MODIFIED_SINCE),
    };
    let (body, etag, last_modified, chunked, status, delay) = {
        let mut s = state.lock().unwrap();
        s.requests.push(seen.clone());
        (
            s.body.clone(),
            s.etag.clone(),
            s.last_modified.clone(),
            s.chunked,
            s.status,
            s.delay,
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = status {
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    if etag.is_some() && seen.if_none_match == etag {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(
            ETAG,
            HeaderValue::from_str(etag.as_deref().unwrap()).unwrap(),
        );
        return resp;
    }
    let mut resp = if chunked {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(16).map(|c| Ok(c.to_vec())).collect();
        Body::from_stream(futures_util::stream::iter(chunks)).into_response()
    } else {
        Body::from(body).into_response()
    };
    if let Some(e) = etag {
        resp.headers_mut()
            .insert(ETAG, HeaderValue::from_str(&e).unwrap());
    }
    if let Some(lm) = last_modified {
        resp.headers_mut()
            .insert(LAST_MODIFIED, HeaderValue::from_str(&lm).unwrap());
    }
    resp
}

fn feed(name: &str, source: &str, format: FeedFormat, tag: Option<FeedTag>) -> FeedConfig {
    FeedConfig {
        name: Text(name.to_string()),
        pos: Default::default(),
        source: Text(source.to_string()),
        format,
        refresh: Dur(Duration::from_secs(3600)),
        tag,
    }
}

fn plain(name: &str, source: &str) -> FeedConfig {
    feed(name, source, FeedFormat::Plain, None)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One Prometheus recorder for the whole test binary (feed names differ per test).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of `metric` with label `feed="<feed>"` (and `extra`, e.g. `result="error"`).
fn metric(metric: &str, feed: &str, extra: &str) -> Option<f64> {
    let text = recorder().render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| l.contains(&format!("feed=\"{feed}\"")) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn served_feed_loads_and_changes_on_refresh() {
    recorder();
    let server = FeedServer::start("# tor\n185.220.101.4\n185.220.101.5\n", Some("\"v1\"")).await;
    let feeds = Feeds::start(&[plain("srv-change", &server.url())], None, client()).await;
    let i = feeds.index_of("srv-change").unwrap();
    assert!(feeds.contains(i, ip("185.220.101.4")));
    assert!(!feeds.contains(i, ip("198.51.100.7")));
    assert_eq!(metric("ipgate_feed_entries", "srv-change", ""), Some(2.0));

    server.set("198.51.100.0/24\n2001:db8::/32\n", Some("\"v2\""));
    let outcome = feeds.refresh_now(i).await.unwrap();
    assert_eq!(outcome, RefreshOutcome::Updated { entries: 2 });
    assert!(!feeds.contains(i, ip("185.220.101.4")));
    assert!(feeds.contains(i, ip("198.51.100.7")));
    assert!(feeds.contains(i, ip("2001:db8:5::1")));
    assert_eq!(feeds.names_containing(ip("198.51.100.7")), ["srv-change"]);
    let st = &feeds.status()[i];
    assert!(st.loaded && !st.from_store && st.last_ok.is_some() && st.last_error.is_none());
    assert_eq!(st.refreshes_ok, 2);
    assert_eq!(
        metric("ipgate_feed_refresh_total", "srv-change", "result=\"ok\""),
        Some(2.0)
    );
    assert!(metric("ipgate_feed_age_seconds", "srv-change", "").is_some_and(|a| a < 60.0));
    feeds.stop();
}

#[tokio::test]
async fn garbage_keeps_the_old_list_and_is_counted() {
    recorder();
    let server = FeedServer::start("192.0.2.1\n192.0.2.2\n", Some("\"good\"")).await;
    let feeds = Feeds::start(&[plain("srv-garbage", &server.url())], None, client()).await;
    assert!(feeds.contains(0, ip("192.0.2.2")));

    server.set("192.0.2.9\n<html>502 Bad Gateway</html>\n", Some("\"bad\""));
    let err = feeds.refresh_now(0).await.unwrap_err();
    assert!(matches!(err, FeedError::Parse(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "line 2: `<html>502 Bad Gateway</html>`: not an IP address or CIDR"
    );
    assert!(feeds.contains(0, ip("192.0.2.2")), "the old list is kept");
    assert!(
        !feeds.contains(0, ip("192.0.2.9")),
        "nothing of the bad body is used"
    );

    server.set("", Some("\"empty\""));
    let err = feeds.refresh_now(0).await.unwrap_err();
    assert_eq!(err.to_string(), "feed is empty");
    server.with(|s| s.status = Some(503));
    let err = feeds.refresh_now(0).await.unwrap_err();
    assert!(matches!(err, FeedError::Status(503)), "{err:?}");
    assert!(feeds.contains(0, ip("192.0.2.2")));

    let st = &feeds.status()[0];
    assert!(st.loaded);
    assert_eq!(st.entries, 2);
    assert_eq!(st.refreshes_error, 3);
    assert_eq!(st.last_error.as_deref(), Some("HTTP status 503"));
    assert_eq!(
        metric(
            "ipgate_feed_refresh_total",
            "srv-garbage",
            "result=\"error\""
        ),
        Some(3.0)
    );
    assert_eq!(metric("ipgate_feed_entries", "srv-garbage", ""), Some(2.0));

    // The validators of the bad bodies were not adopted: the next request still names
    // the good copy.
    server.with(|s| s.status = None);
    server.set("192.0.2.1\n192.0.2.2\n", Some("\"good\""));
    assert_eq!(
        feeds.refresh_now(0).await.unwrap(),
        RefreshOutcome::NotModified
    );
    assert_eq!(
        server.requests().last().unwrap().if_none_match.as_deref(),
        Some("\"good\"")
    );
    feeds.stop();
}

#[tokio::test]
async fn not_modified_when_the_etag_matches() {
    recorder();
    let server = FeedServer::start("192.0.2.1\n", Some("\"abc\"")).await;
    let feeds = Feeds::start(&[plain("srv-304", &server.url())], None, client()).await;
    let first = server.requests();
    assert_eq!(first.len(), 1);
    assert!(first[0].if_none_match.is_none() && first[0].if_modified_since.is_none());

    assert_eq!(
        feeds.refresh_now(0).await.unwrap(),
        RefreshOutcome::NotModified
    );
    let seen = server.requests().last().cloned().unwrap();
    assert_eq!(seen.if_none_match.as_deref(), Some("\"abc\""));
    assert_eq!(
        seen.if_modified_since.as_deref(),
        Some("Tue, 02 Apr 2024 10:00:00 GMT")
    );
    assert!(feeds.contains(0, ip("192.0.2.1")));
    let st = &feeds.status()[0];
    assert_eq!((st.refreshes_ok, st.refreshes_not_modified), (1, 1));
    assert_eq!(
        metric(
            "ipgate_feed_refresh_total",
            "srv-304",
            "result=\"not_modified\""
        ),
        Some(1.0)
    );

    server.set("192.0.2.2\n", Some("\"def\""));
    assert_eq!(
        feeds.refresh_now(0).await.unwrap(),
        RefreshOutcome::Updated { entries: 1 }
    );
    assert!(feeds.contains(0, ip("192.0.2.2")) && !feeds.contains(0, ip("192.0.2.1")));
    feeds.stop();
}

#[tokio::test]
async fn oversized_bodies_are_rejected() {
    recorder();
    let options = FeedOptions {
        max_body: 64,
        ..FeedOptions::default()
    };
    let server = FeedServer::start("192.0.2.1\n", Some("\"1\"")).await;
    let big: String = (1..=20).map(|i| format!("198.51.100.{i}\n")).collect();
    assert!(big.len() > 64);
    let too_big = FeedServer::start(&big, None).await;
    let feeds = Feeds::start_with(
        &[
            plain("srv-big", &server.url()),
            plain("srv-big-at-start", &too_big.url()),
        ],
        None,
        client(),
        options,
    )
    .await;
    assert!(feeds.contains(0, ip("192.0.2.1")));
    let st = &feeds.status()[1];
    assert!(!st.loaded);
    assert_eq!(
        st.last_error.as_deref(),
        Some("body larger than the limit of 64 bytes")
    );

    // With a Content-Length, and streamed without one.
    for chunked in [false, true] {
        server.set(&big, Some(&format!("\"{chunked}\"")));
        server.with(|s| s.chunked = chunked);
        let err = feeds.refresh_now(0).await.unwrap_err();
        assert!(matches!(err, FeedError::TooLarge { limit: 64 }), "{err:?}");
        assert!(feeds.contains(0, ip("192.0.2.1")) && !feeds.contains(0, ip("198.51.100.1")));
    }
    // Exactly at the limit is fine.
    let exact = "192.0.2.3\n".repeat(6) + "#pad";
    assert_eq!(exact.len(), 64);
    server.set(&exact, Some("\"exact\""));
    assert!(feeds.refresh_now(0).await.is_ok());
    feeds.stop();
}

#[tokio::test]
async fn slow_sources_time_out() {
    recorder();
    let server = FeedServer::start("192.0.2.1\n", None).await;
    let options = FeedOptions {
        timeout: Duration::from_millis(300),
        ..FeedOptions::default()
    };
    let feeds =
        Feeds::start_with(&[plain("srv-slow", &server.url())], None, client(), options).await;
    assert!(feeds.contains(0, ip("192.0.2.1")));
    server.with(|s| s.delay = Some(Duration::from_secs(5)));
    let started = std::time::Instant::now();
    let err = feeds.refresh_now(0).await.unwrap_err();
    assert!(matches!(err, FeedError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(feeds.contains(0, ip("192.0.2.1")));
    feeds.stop();
}

#[tokio::test]
async fn restart_without_network_uses_the_stored_copy() {
    recorder();
    let store = tempfile::tempdir().unwrap();
    let server = FeedServer::start(
        "{\"cidr\":\"1.10.16.0/20\",\"sblid\":\"SBL256894\",\"rir\":\"apnic\"}\n\
         {\"type\":\"metadata\",\"timestamp\":1712345678,\"records\":1}\n",
        Some("\"drop-1\""),
    )
    .await;
    let cfgs = [feed(
        "srv-store/../drop",
        &server.url(),
        FeedFormat::SpamhausDropJson,
        Some(FeedTag::Vpn),
    )];
    let feeds = Feeds::start(&cfgs, Some(store.path().to_path_buf()), client()).await;
    assert!(feeds.has_tag(FeedTag::Vpn, ip("1.10.16.1")));
    feeds.stop();
    drop(feeds);
    let (url, addr) = (server.url(), server.addr);
    drop(server);
    // The name was escaped into the store directory, nothing was written outside it.
    let mut files: Vec<String> = std::fs::read_dir(store.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "srv-store%2F%2E%2E%2Fdrop.body",
            "srv-store%2F%2E%2E%2Fdrop.meta.json"
        ]
    );

    // A new start (new client, no pooled connection) with the server gone.
    let feeds = Feeds::start(&cfgs, Some(store.path().to_path_buf()), client()).await;
    assert!(feeds.has_tag(FeedTag::Vpn, ip("1.10.16.1")));
    assert!(feeds.contains(0, ip("1.10.31.255")));
    let st = &feeds.status()[0];
    assert!(st.loaded && st.from_store, "{st:?}");
    assert_eq!(st.entries, 1);
    assert!(st.last_ok.is_some(), "the stored copy's save time");
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .starts_with("request failed"),
        "{st:?}"
    );
    assert!(feeds.not_loaded().is_empty());
    assert!(
        !st.last_error.as_deref().unwrap().contains(&url),
        "no URL in errors"
    );
    // Refreshing keeps failing and keeps the stored copy.
    assert!(feeds.refresh_now(0).await.is_err());
    assert!(feeds.contains(0, ip("1.10.16.1")));

    // Without the store, the same start has nothing.
    let bare = Feeds::start(&cfgs, None, client()).await;
    assert!(!bare.contains(0, ip("1.10.16.1")));
    assert!(!bare.status()[0].loaded);
    bare.stop();

    // The source is back, unchanged: the stored copy's ETag earns a 304.
    let server = FeedServer::start_at(&addr.to_string(), "", Some("\"drop-1\"")).await;
    assert_eq!(
        feeds.refresh_now(0).await.unwrap(),
        RefreshOutcome::NotModified
    );
    assert_eq!(
        server.requests()[0].if_none_match.as_deref(),
        Some("\"drop-1\"")
    );
    let st = &feeds.status()[0];
    assert!(
        st.loaded && !st.from_store && st.last_error.is_none(),
        "{st:?}"
    );
    assert!(feeds.contains(0, ip("1.10.16.1")));
    feeds.stop();
}

#[tokio::test]
async fn a_feed_never_loaded_is_reported() {
    recorder();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let failing = FeedServer::start("", None).await;
    failing.with(|s| s.status = Some(500));
    let ok = FeedServer::start("203.0.113.0/24\n", None).await;
    let cfgs = [
        plain("srv-never", &format!("http://{closed}/list.txt")),
        plain("srv-500", &failing.url()),
        plain("srv-fine", &ok.url()),
    ];
    let feeds = Feeds::start(&cfgs, None, client()).await;
    let status = feeds.status();
    assert!(!status[0].loaded && !status[1].loaded && status[2].loaded);
    assert_eq!(status[0].entries, 0);
    assert!(status[0].last_ok.is_none());
    assert!(status[0].last_error.is_some());
    assert_eq!(status[1].last_error.as_deref(), Some("HTTP status 500"));
    assert_eq!(feeds.not_loaded(), ["srv-never", "srv-500"]);
    assert!(!feeds.contains(0, ip("203.0.113.1")) && feeds.contains(2, ip("203.0.113.1")));
    assert_eq!(metric("ipgate_feed_entries", "srv-never", ""), Some(0.0));
    assert_eq!(metric("ipgate_feed_age_seconds", "srv-never", ""), None);
    assert_eq!(
        metric("ipgate_feed_refresh_total", "srv-500", "result=\"error\""),
        Some(1.0)
    );

    // It loads as soon as the source answers.
    failing.with(|s| s.status = None);
    failing.set("198.51.100.0/24\n", None);
    assert!(feeds.refresh_now(1).await.is_ok());
    assert!(feeds.status()[1].loaded);
    assert_eq!(feeds.not_loaded(), ["srv-never"]);
    feeds.stop();
}

#[tokio::test]
async fn refresh_tasks_run_in_the_background_and_stop() {
    recorder();
    let server = FeedServer::start("192.0.2.1\n", Some("\"t\"")).await;
    let mut cfg = plain("srv-loop", &server.url());
    cfg.refresh = Dur(Duration::from_secs(1));
    let feeds = Feeds::start(&[cfg.clone()], None, client()).await;
    server.set("192.0.2.2\n", Some("\"t2\""));
    // The background task picks the change up after about a second (±10%).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while !feeds.contains(0, ip("192.0.2.2")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!feeds.contains(0, ip("192.0.2.1")));

    // stop() ends the task.
    feeds.stop();
    let before = server.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.requests().len(), before, "refreshed after stop()");
    assert!(
        feeds.contains(0, ip("192.0.2.2")),
        "the list stays after stop()"
    );

    // Dropping the last handle ends it too.
    let clone = Feeds::start(&[cfg], None, client()).await;
    let copy = clone.clone();
    drop(clone);
    drop(copy);
    let before = server.requests().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.requests().len(), before, "refreshed after drop");
}

/// A file feed that points (through a symlink) at a file that is not a feed: the error
/// names the file and the line, never the line's content. The same body from a URL may
/// be quoted, short and escaped.
#[tokio::test]
async fn a_local_file_is_never_quoted_in_errors() {
    recorder();
    const BODY: &str = "192.0.2.1\nroot:$6$secretHASH:19000:0:99999:7:::\n";
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("shadow");
    std::fs::write(&secret, BODY).unwrap();
    let link = dir.path().join("list.txt");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let source = link.to_str().unwrap();
    let feeds = Feeds::start(&[plain("file-secret", source)], None, client()).await;
    let st = &feeds.status()[0];
    assert!(!st.loaded);
    let err = st.last_error.clone().unwrap();
    assert_eq!(err, format!("{source}: line 2: not an IP address or CIDR"));
    let err = feeds.refresh_now(0).await.unwrap_err();
    assert!(matches!(err, FeedError::LocalParse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("line 2") && !format!("{err} {err:?}").contains("secretHASH"),
        "{err:?}"
    );
    feeds.stop();

    // The same in the spamhaus-drop-json format, whose decoder's messages quote input.
    std::fs::write(
        &secret,
        "{\"cidr\":\"192.0.2.0/24\"}\n{\"cidr\": [\"secretHASH\"]}\n",
    )
    .unwrap();
    let feeds = Feeds::start(
        &[feed(
            "file-secret-json",
            source,
            FeedFormat::SpamhausDropJson,
            None,
        )],
        None,
        client(),
    )
    .await;
    let err = feeds.status()[0].last_error.clone().unwrap();
    assert!(
        err.starts_with(&format!("{source}: line 2: ")) && !err.contains("secretHASH"),
        "{err}"
    );
    feeds.stop();

    // Over HTTP the line is quoted.
    let server = FeedServer::start(BODY, None).await;
    let feeds = Feeds::start(&[plain("url-secret", &server.url())], None, client()).await;
    let err = feeds.status()[0].last_error.clone().unwrap();
    assert_eq!(
        err,
        "line 2: `root:$6$secretHASH:19000:0:99999:7:::`: not an IP address or CIDR"
    );
    feeds.stop();
}
