//! The shared tier: a decision that misses the local tier and hits Redis, beside a local
//! hit measured in the same run (the ratio is the figure to read). Also prints Redis's
//! memory per 100 k cached IPs. Starts its own redis-server on a free loopback port;
//! without one it says so and measures nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipgate::{Config, Gate};

const IPS: u32 = 100_000;

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + i))
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_redis(dir: &std::path::Path) -> Option<Redis> {
    for attempt in 0..20u16 {
        let port = 30_000 + (std::process::id() as u16 % 10_000) + attempt * 331;
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", dir.to_str()?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if redis_cli(port, &["INFO", "server"])
                .lines()
                .any(|l| l.trim() == format!("process_id:{}", child.id()))
            {
                return Some(Redis(child, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    None
}

fn used_memory(port: u16) -> u64 {
    redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = start_redis(dir.path()) else {
        eprintln!("*** redis-server is not installed: the shared-tier bench measures nothing ***");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(&rep, "11.0.0.0/8: { status: suspicious, score: 10 }\n").unwrap();
    let yaml = |max_entries: u32| {
        format!(
            "providers: {{ file: {{ path: '{}' }} }}\ncache: {{ redis: 'redis://127.0.0.1:{}', max_entries: {max_entries} }}\nrules:\n  - {{ name: block-score, when: {{ score_above: 70 }}, action: block }}\n",
            rep.display(),
            redis.1
        )
    };
    // Gateway A fills Redis with 100 k answers; the memory they take is measured.
    let before = used_memory(redis.1);
    let a = rt
        .block_on(Gate::from_config(
            Config::from_yaml(&yaml(1_000_000), "a").unwrap(),
        ))
        .unwrap();
    rt.block_on(async {
        for i in 0..IPS {
            a.decide(client(i)).await;
        }
    });
    let after = used_memory(redis.1);
    let keys = redis_cli(redis.1, &["DBSIZE"]);
    eprintln!(
        "Redis: {} keys; used_memory {} -> {} bytes: {:.1} MiB per 100k cached IPs ({} bytes per IP)",
        keys.trim(),
        before,
        after,
        (after - before) as f64 / (1 << 20) as f64 * 100_000.0 / f64::from(IPS),
        (after - before) / u64::from(IPS)
    );

    // Gateway B keeps one entry locally: each new IP misses locally and hits Redis.
    let b = rt
        .block_on(Gate::from_config(Config::from_yaml(&yaml(1), "b").unwrap()))
        .unwrap();
    let mut g = c.benchmark_group("shared_tier");
    let mut i = 0u32;
    g.bench_function("local_miss_redis_hit", |bch| {
        bch.to_async(&rt).iter(|| {
            i = (i + 7919) % IPS;
            let b = &b;
            async move { black_box(b.decide(client(i)).await) }
        })
    });
    // Baseline in the same run: a local hit on gateway A (1 M local entries).
    let mut j = 0u32;
    g.bench_function("baseline_local_hit", |bch| {
        bch.to_async(&rt).iter(|| {
            j = (j + 7919) % IPS;
            let a = &a;
            async move { black_box(a.decide(client(j)).await) }
        })
    });
    g.finish();
    drop(redis);
}

criterion_group!(benches, bench);
criterion_main!(benches);
