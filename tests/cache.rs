//! The reputation cache through the real Gate and binary: single flight, quotas,
//! error_ttl, IPv6 prefixes, background mode, eviction, persistence across restarts,
//! and a crash mid-write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::emulator::*;
use common::{Running, client, eventually, spawn_run, upstream};
use ipgate::{Config, Gate};

const KEY: &str = "cache-test-key";
const KEYS: EmuKeys = EmuKeys {
    iocscout: KEY,
    ipswamp: KEY,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn providers(emu: &Emulator, quota: u32) -> String {
    format!(
        "providers:
  iocscout: {{ api_key: {KEY}, base_url: '{}', daily_quota: {quota} }}
  ipswamp: {{ api_key: {KEY}, base_url: '{}', daily_quota: {quota} }}
rules:
  - {{ name: block-threats, when: {{ status: threat }}, action: block }}
",
        emu.iocscout_url(),
        emu.ipswamp_url()
    )
}

async fn gate(yaml: &str) -> Gate {
    Gate::from_config(Config::from_yaml(yaml, "test").unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_cost_one_call_per_provider() {
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(300)),
    );
    emu.set_fault(
        Api::Ipswamp,
        Scope::All,
        Fault::Delay(Duration::from_millis(300)),
    );
    emu.set_iocscout(
        ip("198.51.100.1"),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    let g = gate(&format!(
        "{}lookup: {{ timeout: 5s }}\n",
        providers(&emu, 100)
    ))
    .await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move { g.decide(ip("198.51.100.1")).await })
        })
        .collect();
    for t in tasks {
        let d = t.await.unwrap();
        assert_eq!(d.rule(), "block-threats");
    }
    assert_eq!(emu.calls(Api::Iocscout), 1);
    assert_eq!(emu.calls(Api::Ipswamp), 1);
}

#[tokio::test]
async fn waiters_that_give_up_do_not_cause_a_second_call() {
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(600)),
    );
    emu.set_fault(
        Api::Ipswamp,
        Scope::All,
        Fault::Delay(Duration::from_millis(600)),
    );
    let g = gate(&format!(
        "{}lookup: {{ timeout: 100ms }}\n",
        providers(&emu, 100)
    ))
    .await;
    for _ in 0..5 {
        let d = g.decide(ip("198.51.100.2")).await;
        assert_eq!(d.rule(), "lookup-error");
    }
    // The flight goes on without its waiters and fills the cache.
    let cache = g.reputation_cache().unwrap();
    eventually(
        "the abandoned flight filling the cache",
        Duration::from_secs(5),
        || std::future::ready(cache.peek(ip("198.51.100.2")).is_some()),
    )
    .await;
    assert_eq!((emu.calls(Api::Iocscout), emu.calls(Api::Ipswamp)), (1, 1));
    // The flight finished in the background and filled the cache.
    assert_eq!(g.decide(ip("198.51.100.2")).await.rule(), "default");
    assert_eq!((emu.calls(Api::Iocscout), emu.calls(Api::Ipswamp)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_of_three_allows_exactly_three_calls() {
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(100)),
    );
    let yaml = format!(
        "providers:\n  iocscout: {{ api_key: {KEY}, base_url: '{}', daily_quota: 3 }}\nrules:\n  - {{ name: t, when: {{ status: threat }}, action: block }}\nlookup: {{ on_error: block }}\n",
        emu.iocscout_url()
    );
    let g = gate(&yaml).await;
    let tasks: Vec<_> = (1..=10)
        .map(|i| {
            let g = g.clone();
            tokio::spawn(async move { g.decide(ip(&format!("198.51.100.{i}"))).await })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        let d = t.await.unwrap();
        if d.rule() == "lookup-error" {
            refused += 1;
            assert!(d.reason.contains("daily quota of 3 spent"), "{}", d.reason);
        }
    }
    assert_eq!(emu.calls(Api::Iocscout), 3);
    assert_eq!(refused, 7);
    let cache = g.reputation_cache().unwrap();
    assert_eq!(
        cache.quota_remaining(),
        vec![(ipgate::ProviderId::Iocscout, 0)]
    );
}

#[tokio::test]
async fn failures_are_remembered_for_error_ttl() {
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(Api::Iocscout, Scope::All, Fault::Status(500, None));
    let yaml = format!(
        "providers:\n  iocscout: {{ api_key: {KEY}, base_url: '{}', daily_quota: 100 }}\nrules:\n  - {{ name: t, when: {{ status: threat }}, action: block }}\ncache: {{ error_ttl: 400ms }}\n",
        emu.iocscout_url()
    );
    let clock = ipgate::clock::ManualClock::starting_now();
    let g = Gate::builder(Config::from_yaml(&yaml, "test").unwrap())
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(g.decide(ip("198.51.100.3")).await.rule(), "lookup-error");
    }
    assert_eq!(
        emu.calls(Api::Iocscout),
        1,
        "an outage became a retry storm"
    );
    // Still remembered just before error_ttl is up; asked again after.
    clock.advance(Duration::from_millis(390));
    assert_eq!(g.decide(ip("198.51.100.3")).await.rule(), "lookup-error");
    assert_eq!(emu.calls(Api::Iocscout), 1);
    clock.advance(Duration::from_millis(20));
    emu.clear_faults();
    emu.set_iocscout(
        ip("198.51.100.3"),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    assert_eq!(g.decide(ip("198.51.100.3")).await.rule(), "t");
    assert_eq!(emu.calls(Api::Iocscout), 2);
}

#[tokio::test]
async fn an_ipv6_client_is_looked_up_once_per_prefix() {
    let emu = Emulator::start(KEYS).await;
    let g = gate(&providers(&emu, 100)).await;
    for a in [
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff::7",
        "2001:db8:1:2:1:2:3:4",
    ] {
        g.decide(ip(a)).await;
    }
    assert_eq!(emu.calls(Api::Iocscout), 1);
    g.decide(ip("2001:db8:1:3::1")).await;
    assert_eq!(emu.calls(Api::Iocscout), 2);
    // Per address with ipv6_prefix: 128.
    let g = gate(&format!(
        "{}cache: {{ ipv6_prefix: 128 }}\n",
        providers(&emu, 100)
    ))
    .await;
    emu.reset_counts();
    for a in ["2001:db8:9::1", "2001:db8:9::2"] {
        g.decide(ip(a)).await;
    }
    assert_eq!(emu.calls(Api::Iocscout), 2);
}

#[tokio::test]
async fn background_mode_decides_on_miss_now_and_uses_the_answer_next_time() {
    let emu = Emulator::start(KEYS).await;
    emu.set_iocscout(
        ip("198.51.100.4"),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(200)),
    );
    let g = gate(&format!(
        "{}lookup: {{ mode: background, on_miss: allow }}\n",
        providers(&emu, 100)
    ))
    .await;
    let d = g.decide(ip("198.51.100.4")).await;
    assert_eq!((d.rule(), d.is_blocked()), ("lookup-pending", false));
    // Explaining a new client in background mode says what a request would get.
    let e = g.explain(ip("198.51.100.44"), true).await;
    assert_eq!((e.rule.as_str(), e.decision), ("lookup-pending", "allow"));
    let cache = g.reputation_cache().unwrap();
    eventually(
        "the background look-up filling the cache",
        Duration::from_secs(5),
        || std::future::ready(cache.peek(ip("198.51.100.4")).is_some()),
    )
    .await;
    let d = g.decide(ip("198.51.100.4")).await;
    assert_eq!((d.rule(), d.is_blocked()), ("block-threats", true));
    assert_eq!(emu.calls_for(Api::Iocscout, ip("198.51.100.4")), 1);
}

#[tokio::test]
async fn entries_can_be_read_evicted_and_flushed() {
    let emu = Emulator::start(KEYS).await;
    let g = gate(&providers(&emu, 100)).await;
    g.decide(ip("198.51.100.5")).await;
    g.decide(ip("198.51.100.6")).await;
    let cache = g.reputation_cache().unwrap();
    assert_eq!(cache.len(), 2);
    assert!(cache.peek(ip("198.51.100.5")).is_some());
    assert!(g.evict(ip("198.51.100.5")).await);
    assert!(!g.evict(ip("198.51.100.5")).await);
    g.decide(ip("198.51.100.5")).await;
    assert_eq!(
        emu.calls(Api::Iocscout),
        3,
        "an evicted IP was not looked up again"
    );
    cache.flush();
    assert!(cache.is_empty());
}

#[tokio::test]
async fn memory_stays_bounded_under_a_flood_of_ipv6_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(&rep, "2001:db8::/32: { status: suspicious, score: 10 }\n").unwrap();
    let yaml = format!(
        "providers: {{ file: {{ path: '{}' }} }}\nrules:\n  - {{ name: t, when: {{ status: threat }}, action: block }}\ncache: {{ max_entries: 1000 }}\n",
        rep.display()
    );
    let g = gate(&yaml).await;
    let cache = g.reputation_cache().unwrap();
    for i in 0u32..1_000_000 {
        let a = std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
        cache.get(IpAddr::V6(a), true).await;
    }
    assert!(
        cache.len() <= 1000,
        "{} entries kept with max_entries 1000",
        cache.len()
    );
    assert!(
        cache.len() >= 500,
        "the cache kept almost nothing: {}",
        cache.len()
    );
}

/// The value of the first metric line starting with `line_start`, if there is one.
async fn metric_value(run: &Running, line_start: &str) -> (Option<f64>, String) {
    let text = client()
        .get(run.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = text
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok());
    (value, text)
}

async fn metric(run: &Running, line_start: &str) -> f64 {
    let (value, text) = metric_value(run, line_start).await;
    value.unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
}

#[tokio::test]
async fn a_restart_reuses_cached_answers_and_keeps_the_quota() {
    let emu = Emulator::start(KEYS).await;
    emu.set_iocscout(
        ip("198.51.100.7"),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nadmin: {{ listen: '127.0.0.1:0' }}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32] }}\ncache: {{ path: cache.redb }}\nproviders:\n  iocscout: {{ api_key: {KEY}, base_url: '{}', daily_quota: 3 }}\nrules:\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n",
            up.url(),
            emu.iocscout_url()
        ),
    )
    .unwrap();
    let visit = |run: &Running, a: &'static str| {
        let url = run.url("/");
        async move {
            client()
                .get(url)
                .header("x-forwarded-for", a)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut run = spawn_run(&f).await;
    assert_eq!(visit(&run, "198.51.100.7").await, 403);
    assert_eq!(visit(&run, "198.51.100.8").await, 200);
    assert_eq!(emu.calls(Api::Iocscout), 2);
    assert_eq!(
        metric(
            &run,
            "ipgate_provider_quota_remaining{provider=\"iocscout\"}"
        )
        .await,
        1.0
    );
    common::kill("-TERM", run.pid());
    assert_eq!(run.child.wait().await.unwrap().code(), Some(0));

    let mut run = spawn_run(&f).await;
    assert_eq!(
        visit(&run, "198.51.100.7").await,
        403,
        "the cached threat was forgotten"
    );
    assert_eq!(visit(&run, "198.51.100.8").await, 200);
    assert_eq!(
        emu.calls(Api::Iocscout),
        2,
        "a cached IP was looked up again after a restart"
    );
    assert_eq!(
        metric(
            &run,
            "ipgate_provider_quota_remaining{provider=\"iocscout\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&run, "ipgate_cache_lookups_total{result=\"hit\"}").await,
        2.0
    );
    // One look-up is left today: the next new IP gets it, the one after does not.
    visit(&run, "198.51.100.9").await;
    visit(&run, "198.51.100.10").await;
    assert_eq!(
        emu.calls(Api::Iocscout),
        3,
        "the quota was reset by the restart"
    );
    common::kill("-TERM", run.pid());
    run.child.wait().await.unwrap();
}

#[tokio::test]
async fn a_crash_mid_write_leaves_a_usable_store() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(&rep, "198.51.0.0/16: { status: suspicious, score: 10 }\n").unwrap();
    let up = upstream::start().await;
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nadmin: {{ listen: '127.0.0.1:0' }}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32] }}\ncache: {{ path: cache.redb }}\nproviders: {{ file: {{ path: '{}' }} }}\nrules:\n  - {{ name: t, when: {{ status: threat }}, action: block }}\n",
            up.url(),
            rep.display()
        ),
    )
    .unwrap();
    let mut run = spawn_run(&f).await;
    let c = Arc::new(client());
    let url = run.url("/");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for i in 0..2000u32 {
                    let a = format!("198.51.{}.{}", (w * 50) + i / 250, i % 250);
                    if c.get(&url)
                        .header("x-forwarded-for", a)
                        .send()
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    // Kill it while the writers are still going, once a good number of entries exist.
    eventually(
        "300 cache entries before the crash",
        Duration::from_secs(20),
        || metric_at_least(&run, "ipgate_cache_entries", 300.0),
    )
    .await;
    common::kill("-KILL", run.pid());
    run.child.wait().await.unwrap();
    for w in writers {
        let _ = w.await;
    }
    let store = dir.path().join("cache.redb");
    assert!(store.exists());
    let mut run = spawn_run(&f).await;
    let entries = metric(&run, "ipgate_cache_entries").await;
    assert!(entries > 0.0, "nothing survived the crash");
    assert_eq!(
        client()
            .get(run.url("/"))
            .header("x-forwarded-for", "198.51.0.1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    common::kill("-TERM", run.pid());
    run.child.wait().await.unwrap();
}

async fn metric_at_least(run: &Running, line_start: &str, min: f64) -> bool {
    metric_value(run, line_start)
        .await
        .0
        .is_some_and(|v| v >= min)
}

#[tokio::test]
async fn a_foreign_cache_file_is_a_clear_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cache.redb");
    std::fs::write(&bad, b"not a cache").unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, "upstream: http://127.0.0.1:9\ncache: { path: cache.redb }\nproviders: { file: { path: rep.yaml } }\n").unwrap();
    std::fs::write(dir.path().join("rep.yaml"), "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
        .args(["run", "-c", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache.redb"), "{err}");
    assert_eq!(std::fs::read(&bad).unwrap(), b"not a cache");
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A measurement, not a check: `cargo test --release --test cache -- --ignored --nocapture rss`.
#[tokio::test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn rss_after_two_million_distinct_ips_with_max_entries_100k() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(
        &rep,
        "0.0.0.0/1: { status: suspicious, score: 10 }\n128.0.0.0/1: { status: unknown }\n",
    )
    .unwrap();
    let yaml = format!(
        "providers: {{ file: {{ path: '{}' }} }}\nrules:\n  - {{ name: t, when: {{ status: threat }}, action: block }}\ncache: {{ max_entries: 100000 }}\nlookup: {{ skip_private: false }}\n",
        rep.display()
    );
    let before = rss_mib();
    let g = gate(&yaml).await;
    let cache = g.reputation_cache().unwrap();
    for i in 0u32..2_000_000 {
        cache
            .get(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), true)
            .await;
    }
    let after = rss_mib();
    println!(
        "RSS before {before:.1} MiB, after 2 M distinct IPs with max_entries 100000: {after:.1} MiB; entries kept: {}",
        cache.len()
    );
    assert!(cache.len() <= 100_000);
}

#[tokio::test]
async fn a_reload_that_resizes_the_cache_keeps_the_store_and_the_entries() {
    let emu = Emulator::start(KEYS).await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{}cache: {{ path: '{}', max_entries: 1000 }}\n",
        providers(&emu, 100),
        dir.path().join("c.redb").display()
    );
    let g = gate(&base).await;
    g.decide(ip("198.51.100.50")).await;
    g.close().await;
    let resized = base.replace("max_entries: 1000", "max_entries: 2000");
    g.reload(Config::from_yaml(&resized, "t").unwrap())
        .await
        .unwrap();
    g.decide(ip("198.51.100.50")).await;
    assert_eq!(emu.calls(Api::Iocscout), 1, "the entry was lost on reload");
    g.decide(ip("198.51.100.51")).await;
    g.close().await;
    assert_eq!(g.reputation_cache().unwrap().len(), 2);
}

#[tokio::test]
async fn a_damaged_cache_file_is_a_clear_error_and_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    std::fs::write(
        dir.path().join("rep.yaml"),
        "11.0.0.0/8: { status: unknown }\n",
    )
    .unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\ncache: { path: cache.redb }\nproviders: { file: { path: rep.yaml } }\nrules:\n  - { name: t, when: { status: threat }, action: block }\n",
    )
    .unwrap();
    // Fill the store through the gate: 20 000 cached answers span many pages.
    {
        let g = Gate::from_config(Config::from_file(&f).unwrap())
            .await
            .unwrap();
        for i in 0..20_000u32 {
            g.decide(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)))
                .await;
        }
        g.close().await;
    }
    common::eventually("the store is released", Duration::from_secs(5), || async {
        !matches!(
            redb::ReadOnlyDatabase::open(&store),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        )
    })
    .await;
    let whole = std::fs::read(&store).unwrap();
    assert!(whole.len() > 1 << 20, "{} bytes", whole.len());
    let half = whole[..whole.len() / 2].to_vec();
    let mut middle = whole.clone();
    let m = middle.len() / 2;
    for (i, b) in middle[m..m + 4096].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    for damaged in [half, middle] {
        std::fs::write(&store, &damaged).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
            .args(["run", "-c", f.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("cache.redb") && err.contains("damaged") && err.contains("Move it aside"),
            "{err}"
        );
        assert!(
            std::fs::read(&store).unwrap() == damaged,
            "the file was changed"
        );
    }
}

/// A provider that echoes the caller's key inside a 200 answer: the key is redacted
/// before the answer is kept, so neither the admin API, `ipgate check --json` nor the
/// bytes of `cache.path` ever hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_echoed_in_an_answer_is_never_stored_or_shown() {
    const ECHO_KEY: &str = "echoKEY/7f3a9c+d";
    const ECHO_KEY_URL: &str = "echoKEY%2F7f3a9c%2Bd";
    let emu = Emulator::start(EmuKeys {
        iocscout: ECHO_KEY,
        ipswamp: ECHO_KEY,
    })
    .await;
    let mut answer = iocscout_threat(95, &["attack"]);
    answer["echo"] = serde_json::json!({
        "marker": "echo-marker",
        "apiKey": "{key}",
        "request": "/api?apiKey={key_urlencoded}&ip=198.51.100.66",
        "notes": ["your key is {key}"],
        "{key}": true
    });
    emu.set_iocscout(ip("198.51.100.66"), Answer::EchoKey(answer));
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nadmin: {{ listen: '127.0.0.1:0' }}\ncache: {{ path: cache.redb }}\nproviders:\n  iocscout: {{ api_key: '{ECHO_KEY}', base_url: '{}' }}\nrules:\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n",
            up.url(),
            emu.iocscout_url()
        ),
    )
    .unwrap();
    let leaks = |what: &str, text: &str| {
        for k in [ECHO_KEY, ECHO_KEY_URL, "echoKEY"] {
            assert!(!text.contains(k), "{what} shows the API key ({k}):\n{text}");
        }
    };

    let mut run = spawn_run(&f).await;
    let body = client()
        .get(run.admin_url("/v1/decision?ip=198.51.100.66&lookup=true"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(emu.calls(Api::Iocscout), 1, "{body}");
    assert!(
        body.contains("echo-marker") && body.contains("\"block\""),
        "the echoing answer was not used: {body}"
    );
    leaks("GET /v1/decision", &body);
    common::kill("-TERM", run.pid());
    assert_eq!(run.child.wait().await.unwrap().code(), Some(0));

    let stored = std::fs::read(dir.path().join("cache.redb")).unwrap();
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("echo-marker"),
        "the answer is not in cache.path as text: this test could not see a leak"
    );
    leaks("cache.path", &stored);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
        .args([
            "check",
            "-c",
            f.to_str().unwrap(),
            "198.51.100.66",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("echo-marker"), "{stdout}");
    leaks("ipgate check --json", &stdout);
    leaks(
        "ipgate check --json (stderr)",
        &String::from_utf8_lossy(&out.stderr),
    );
}

#[tokio::test]
async fn a_spent_daily_quota_comes_back_the_next_utc_day() {
    let emu = Emulator::start(KEYS).await;
    let clock = ipgate::clock::ManualClock::new(
        std::time::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3_600),
    );
    let g = Gate::builder(Config::from_yaml(&providers(&emu, 1), "test").unwrap())
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    g.decide(ip("198.51.100.60")).await;
    let d = g.decide(ip("198.51.100.61")).await;
    assert_eq!(d.rule(), "lookup-error");
    assert!(d.reason.contains("daily quota of 1 spent"), "{}", d.reason);
    assert_eq!(emu.calls(Api::Iocscout), 1);
    // 22:59 later: the same UTC day. Then midnight passes.
    clock.advance(Duration::from_secs(22 * 3_600 + 59 * 60));
    g.decide(ip("198.51.100.62")).await;
    assert_eq!(emu.calls(Api::Iocscout), 1);
    clock.advance(Duration::from_secs(60));
    g.decide(ip("198.51.100.63")).await;
    assert_eq!(emu.calls(Api::Iocscout), 2);
}
