//! Several `ipgate run` processes, one provider emulator and one real Redis: the
//! gateways behave as one (single flight, one daily quota, bans everywhere within a
//! second, restarts, Redis outages), and cool-downs and bans survive reloads and
//! restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::emulator::*;
use common::redis::Redis;
use common::{Running, client, eventually, kill, metric, spawn_run, upstream};

/// A policy for one gateway of the cluster (all share `redis`).
fn policy(upstream: &str, emu: &Emulator, redis: Option<&str>, quota: u32, extra: &str) -> String {
    let redis = redis.map_or(String::new(), |r| format!("  redis: {r}\n"));
    format!(
        "listen: 127.0.0.1:0
upstream: {upstream}
client_ip: {{ trusted_proxies: [127.0.0.1/32] }}
admin: {{ listen: 127.0.0.1:0 }}
providers:
  iocscout: {{ api_key: {KEY}, base_url: '{}', daily_quota: {quota} }}
lookup: {{ timeout: 2s, on_error: allow }}
cache:
  error_ttl: 1h
{redis}{extra}rules:
  - {{ name: block-threats, when: {{ status: threat }}, action: block }}
",
        emu.iocscout_url()
    )
}

const KEY: &str = "cluster-key";
const KEYS: EmuKeys = EmuKeys {
    iocscout: KEY,
    ipswamp: "unused",
};

struct Cluster {
    gateways: Vec<Running>,
    files: Vec<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize, yaml: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut gateways = Vec::new();
        let mut files = Vec::new();
        for i in 0..n {
            let f = dir.path().join(format!("gw{i}.yaml"));
            std::fs::write(&f, yaml).unwrap();
            gateways.push(spawn_run(&f).await);
            files.push(f);
        }
        Cluster {
            gateways,
            files,
            _dir: dir,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.gateways[i].gateway[0]
    }

    fn admin(&self, i: usize) -> String {
        format!("http://{}", self.gateways[i].admin.unwrap())
    }

    async fn restart(&mut self, i: usize) {
        kill("-TERM", self.gateways[i].pid());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.gateways[i].child.wait()).await;
        self.gateways[i] = spawn_run(&self.files[i]).await;
    }
}

/// Status of a request to gateway `addr` as client `ip`.
async fn visit(addr: SocketAddr, ip: &str) -> u16 {
    client()
        .get(format!("http://{addr}/"))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn three_gateways_behave_as_one() {
    if !common::redis::available() {
        return;
    }
    let mut redis = Redis::start();
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let threat = "198.51.100.10";
    emu.set_iocscout(
        threat.parse().unwrap(),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    // Slow answers, so the 30 requests overlap.
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(300)),
    );
    let mut c = Cluster::start(3, &policy(&up.url(), &emu, Some(&redis.url()), 100, "")).await;

    // 30 concurrent requests for one new IP, spread over the three: one provider call.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = c.addr(i % 3);
        tasks.push(tokio::spawn(async move { visit(addr, threat).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    assert_eq!(
        emu.calls(Api::Iocscout),
        1,
        "single flight across the cluster"
    );
    emu.clear_faults();

    // A ban posted to gateway 1 blocks on gateways 2 and 3 within a second.
    let banned = "203.0.113.77";
    for i in 0..3 {
        assert_eq!(visit(c.addr(i), banned).await, 200);
    }
    let posted = Instant::now();
    let r = client()
        .post(format!("{}/v1/bans", c.admin(0)))
        .json(&serde_json::json!({ "cidr": "203.0.113.0/24", "ttl": "1h", "reason": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 1..3 {
        let addr = c.addr(i);
        eventually(
            "the ban reaches every gateway",
            Duration::from_secs(1),
            || async move { visit(addr, banned).await == 403 },
        )
        .await;
    }
    let spread = posted.elapsed();
    assert!(spread < Duration::from_secs(1), "{spread:?}");

    // Gateway 2 restarted: the ban and the cached reputations hold, no new call.
    let calls = emu.calls(Api::Iocscout);
    assert_eq!(
        calls, 2,
        "one call for the threat, one for the other address"
    );
    c.restart(1).await;
    assert_eq!(visit(c.addr(1), banned).await, 403);
    assert_eq!(visit(c.addr(1), threat).await, 403);
    assert_eq!(emu.calls(Api::Iocscout), calls);

    // Redis killed: every gateway keeps answering from its local tier; a new IP costs
    // nothing (fallback quota 0, on_error allow); ipgate_redis_up is 0.
    redis.kill();
    for i in 0..3 {
        let admin = c.admin(i);
        eventually("ipgate_redis_up drops to 0", Duration::from_secs(5), || {
            let admin = admin.clone();
            async move { metric(&admin, "ipgate_redis_up").await == 0.0 }
        })
        .await;
        assert_eq!(
            visit(c.addr(i), banned).await,
            403,
            "local copy of the bans"
        );
        assert_eq!(
            visit(c.addr(i), &format!("198.51.100.{}", 50 + i)).await,
            200
        );
        let ready = client()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        assert!(ready.text().await.unwrap().contains("redis: down"));
    }
    assert_eq!(
        emu.calls(Api::Iocscout),
        calls,
        "nothing beyond the fallback quota"
    );

    // Redis back (empty): ipgate_redis_up is 1 again and the bans are republished.
    redis.restart();
    for i in 0..3 {
        let admin = c.admin(i);
        eventually(
            "ipgate_redis_up is back to 1",
            Duration::from_secs(10),
            || {
                let admin = admin.clone();
                async move { metric(&admin, "ipgate_redis_up").await == 1.0 }
            },
        )
        .await;
    }
    let r = &redis;
    eventually(
        "the bans are republished",
        Duration::from_secs(10),
        || async move {
            r.cli(&["HGETALL", "ipgate:bans"])
                .contains("203.0.113.0/24")
        },
    )
    .await;
}

#[tokio::test]
async fn one_daily_quota_for_the_cluster() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start();
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let c = Cluster::start(3, &policy(&up.url(), &emu, Some(&redis.url()), 5, "")).await;
    // 8 new IPs, round-robin over the three gateways, all at once.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = c.addr(i % 3);
        tasks.push(tokio::spawn(async move {
            visit(addr, &format!("198.51.100.{}", 100 + i)).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(emu.calls(Api::Iocscout), 5, "the cluster's daily quota");
    assert_eq!(redis.cli(&["GET", &quota_key()]).trim(), "5");
}

/// `PREFIX quota:iocscout:DAY` of today.
fn quota_key() -> String {
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    format!("ipgate:quota:iocscout:{day}")
}

/// 429 with a Retry-After in the past (the default cool-down: next UTC midnight) and
/// with 7 days: neither a reload nor a restart asks the provider again, with Redis
/// (shared) and without it (cache.path).
#[tokio::test]
async fn cool_downs_survive_reloads_and_restarts() {
    let redis = common::redis::available().then(Redis::start);
    for (retry_after, shared) in [
        (
            Fault::StatusRetryAfter(429, "Wed, 21 Oct 2015 07:28:00 GMT"),
            false,
        ),
        (Fault::Status(429, Some(7 * 86_400)), false),
        (
            Fault::StatusRetryAfter(429, "Wed, 21 Oct 2015 07:28:00 GMT"),
            true,
        ),
        (Fault::Status(429, Some(7 * 86_400)), true),
    ] {
        if shared && redis.is_none() {
            continue;
        }
        let emu = Emulator::start(KEYS).await;
        emu.set_fault(Api::Iocscout, Scope::All, retry_after.clone());
        let up = upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = format!("  path: '{}'\n", dir.path().join("cache.redb").display());
        let redis_url = redis.as_ref().filter(|_| shared).map(|r| r.url());
        if let Some(r) = &redis {
            r.cli(&["FLUSHALL"]);
        }
        let yaml = policy(&up.url(), &emu, redis_url.as_deref(), 100, "").replace(
            "cache:\n",
            &format!("cache:\n{}", if shared { String::new() } else { store }),
        );
        let mut c = Cluster::start(1, &yaml).await;
        visit(c.addr(0), "198.51.100.1").await;
        assert_eq!(emu.calls(Api::Iocscout), 1, "{retry_after:?}");
        emu.clear_faults();

        // A reload (SIGHUP) rebuilds the providers: still no call.
        let admin = c.admin(0);
        let series = "ipgate_config_reloads_total{result=\"ok\"}";
        let before = metric(&admin, series).await;
        kill("-HUP", c.gateways[0].pid());
        eventually("the reload is done", Duration::from_secs(5), || {
            let admin = admin.clone();
            async move { metric(&admin, series).await > before }
        })
        .await;
        visit(c.addr(0), "198.51.100.2").await;
        assert_eq!(
            emu.calls(Api::Iocscout),
            1,
            "asked after a reload: {retry_after:?}"
        );

        // A restart: still no call.
        c.restart(0).await;
        visit(c.addr(0), "198.51.100.3").await;
        assert_eq!(
            emu.calls(Api::Iocscout),
            1,
            "asked after a restart: {retry_after:?} shared={shared}"
        );
    }
}

/// Without Redis, a ban survives a restart through cache.path; `ipgate check` asks the
/// running gateway, so it shows the ban.
#[tokio::test]
async fn without_redis_a_ban_survives_a_restart() {
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = policy(&up.url(), &emu, None, 100, "").replace(
        "cache:\n",
        &format!(
            "cache:\n  path: '{}'\n",
            dir.path().join("cache.redb").display()
        ),
    );
    let mut c = Cluster::start(1, &yaml).await;
    let r = client()
        .post(format!("{}/v1/bans", c.admin(0)))
        .json(&serde_json::json!({ "cidr": "203.0.113.9", "ttl": "1h" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(visit(c.addr(0), "203.0.113.9").await, 403);
    c.restart(0).await;
    assert_eq!(
        visit(c.addr(0), "203.0.113.9").await,
        403,
        "the ban was lost"
    );

    // `check` with the running gateway's admin address (the policy above lets the
    // system pick the port).
    let check = dir.path().join("check.yaml");
    std::fs::write(
        &check,
        yaml.replace(
            "127.0.0.1:0 }",
            &format!("{} }}", c.gateways[0].admin.unwrap()),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
        .args([
            "check",
            "-c",
            check.to_str().unwrap(),
            "203.0.113.9",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["rule"], "ban", "{v}");
}

/// A Redis that stops answering (DEBUG SLEEP) never holds a decision beyond
/// `lookup.timeout`: its calls are cut at `cache.redis_timeout` and it is marked down.
#[tokio::test]
async fn a_stalled_redis_does_not_stall_decisions() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start();
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let c = Cluster::start(1, &policy(&up.url(), &emu, Some(&redis.url()), 100, "")).await;
    assert_eq!(visit(c.addr(0), "198.51.100.1").await, 200);
    // Redis sleeps for 4 s; a new IP is decided meanwhile.
    let port = redis.port.to_string();
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "DEBUG", "SLEEP", "4"])
            .output()
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(visit(c.addr(0), "198.51.100.2").await, 200);
    let took = started.elapsed();
    // lookup.timeout is 2s in this policy; Redis would have held it 4 s.
    assert!(
        took < Duration::from_millis(3500),
        "a stalled Redis held the decision {took:?}"
    );
    let _ = sleeper.join();
}
