//! Feed parsing and look-ups: parse 1,000,000 lines; look up in a 1,000- vs a
//! 1,000,000-entry set (the trie makes a look-up cost O(prefix length), not O(entries));
//! `Feeds::contains` (ArcSwap load + look-up) on a 1,000,000-entry feed.
//!
//! `cargo bench --bench feeds`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipgate::IpSet;
use ipgate::config::{Dur, FeedConfig, FeedFormat, Text};
use ipgate::feeds::{Feeds, parse};

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` lines like a large blocklist: mostly IPv4 hosts, some /24s and IPv6 /48s.
fn feed_body(n: usize, seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(n * 16 + 64);
    out.push_str("# synthetic feed\n");
    for i in 0..n {
        let r = rng.next();
        match i % 10 {
            0 => {
                let a = Ipv4Addr::from((r as u32) & 0xffff_ff00);
                out.push_str(&format!("{a}/24\n"));
            }
            1 => {
                let a = Ipv6Addr::from(
                    ((0x2001_0db8_u128 << 96) | (u128::from(r) << 32)) & !((1u128 << 80) - 1),
                );
                out.push_str(&format!("{a}/48\n"));
            }
            _ => {
                let a = Ipv4Addr::from(r as u32);
                out.push_str(&format!("{a}\n"));
            }
        }
    }
    out
}

/// Probe addresses: half taken from the set's own hosts, half random.
fn probes(body: &str, seed: u64) -> Vec<IpAddr> {
    let hosts: Vec<IpAddr> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('/'))
        .take(512)
        .map(|l| l.parse().unwrap())
        .collect();
    let mut rng = Rng(seed);
    let mut out = hosts;
    while out.len() < 1024 {
        out.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    let body = feed_body(1_000_000, 0x9e37_79b9_7f4a_7c15);
    let mut g = c.benchmark_group("parse");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("plain_1m_lines", |b| {
        b.iter(|| parse(black_box(body.as_bytes()), FeedFormat::Plain).unwrap())
    });
    let json: String = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{{\"cidr\":\"{l}\",\"sblid\":\"SBL1\",\"rir\":\"ripencc\"}}\n"))
        .collect::<String>()
        + "{\"type\":\"metadata\",\"timestamp\":1712345678}\n";
    g.bench_function("spamhaus_json_1m_lines", |b| {
        b.iter(|| parse(black_box(json.as_bytes()), FeedFormat::SpamhausDropJson).unwrap())
    });
    g.finish();
}

fn bench_lookup_and_load(c: &mut Criterion) {
    // A 1,000,000-line feed file, loaded through `Feeds` (the gate's view).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.netset");
    let big = feed_body(1_000_000, 42);
    std::fs::write(&path, &big).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = FeedConfig {
        name: Text("big".to_string()),
        pos: Default::default(),
        source: Text(path.display().to_string()),
        format: FeedFormat::Plain,
        refresh: Dur(Duration::from_secs(3600)),
        tag: None,
    };
    let start = || {
        rt.block_on(Feeds::start(
            std::slice::from_ref(&cfg),
            None,
            reqwest::Client::new(),
        ))
    };

    let mut g = c.benchmark_group("lookup");
    for n in [1_000usize, 1_000_000] {
        let body = feed_body(n, 42);
        let set: IpSet = parse(body.as_bytes(), FeedFormat::Plain).unwrap();
        let probes = probes(&body, 7);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("ipset_contains", n), &set, |b, set| {
            b.iter(|| {
                i = (i + 1) & 1023;
                set.contains(black_box(probes[i]))
            })
        });
    }
    // The gate's hot path: one ArcSwap load and the trie look-up.
    let feeds = start();
    let probes = probes(&big, 7);
    let mut i = 0usize;
    g.bench_function(BenchmarkId::new("feeds_contains", 1_000_000), |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            feeds.contains(0, black_box(probes[i]))
        })
    });
    g.finish();
    feeds.stop();

    // Start to usable: read the file, parse, build the set, swap it in.
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("feeds_start_1m_line_file", |b| {
        b.iter(|| {
            let feeds = start();
            assert!(feeds.status()[0].loaded);
            feeds.stop();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_lookup_and_load);
criterion_main!(benches);
