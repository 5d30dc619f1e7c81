//! `Gate::decide` on a cache hit with 1 M CIDRs in the block list and 1 M cached IPs,
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! beside baselines measured in the same run: an allow-listed IP (no reputation needed)
//! and a bare prefix-trie lookup.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use ipgate::config::Cidr;
use ipgate::{Config, Gate};

const N: u32 = 1_000_000;

/// 1 M distinct /32s spread over 10.0.0.0/8 .. (never matching the 100.x test clients).
fn cidrs() -> Vec<Cidr> {
    (0..N)
        .map(|i| {
            Cidr(ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000u32 + i * 7,
            ))))
        })
        .collect()
}

fn client(i: u32) -> IpAddr {
    // 1 M clients in 11.0.0.0/8 (not private, not in the block list).
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + i))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(&rep, "11.0.0.0/8: { status: suspicious, score: 10 }\n").unwrap();
    let yaml = format!(
        "providers: {{ file: {{ path: '{}' }} }}\nlists: {{ allow: [192.0.2.0/24] }}\ncache: {{ max_entries: 2000000 }}\nrules:\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n  - {{ name: block-score, when: {{ score_above: 70 }}, action: block }}\n",
        rep.display()
    );
    let mut cfg = Config::from_yaml(&yaml, "bench").unwrap();
    cfg.lists.block = cidrs();
    let gate = rt.block_on(Gate::from_config(cfg)).unwrap();
    // Warm the cache with 1 M clients.
    let cache = gate.reputation_cache().unwrap();
    rt.block_on(async {
        for i in 0..N {
            cache.get(client(i), true).await;
        }
    });
    assert!(
        cache.len() >= N as usize - 1000,
        "cache holds {}",
        cache.len()
    );
    let set: ipgate::IpSet = cidrs().into_iter().map(|c| c.0).collect();

    let mut g = c.benchmark_group("decide");
    let mut i = 0u32;
    g.bench_function("cache_hit_1M_cidrs_1M_cached", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % N;
            let gate = &gate;
            async move { black_box(gate.decide(client(i)).await) }
        })
    });
    // Real traffic is skewed: the same decision with 1,024 hot clients among the 1 M
    // cached (the cache and lists are just as large; the working set fits the CPU caches).
    let mut h = 0u32;
    g.bench_function("cache_hit_1M_cidrs_1M_cached_hot_1k", |b| {
        b.to_async(&rt).iter(|| {
            h = (h + 7919) % 1024;
            let gate = &gate;
            async move { black_box(gate.decide(client(h * 977)).await) }
        })
    });
    // A list decision and a cache hit never wait: poll once, without an executor, to
    // measure the decision itself rather than the benchmark's runtime.
    let _guard = rt.enter();
    let mut u = 0u32;
    g.bench_function("sync_cache_hit_1M_cidrs_1M_cached", |b| {
        b.iter(|| {
            u = (u + 7919) % N;
            black_box(
                gate.decide(client(u))
                    .now_or_never()
                    .expect("a hit never waits"),
            )
        })
    });
    let mut v = 0u32;
    g.bench_function("sync_cache_hit_1M_cidrs_1M_cached_hot_1k", |b| {
        b.iter(|| {
            v = (v + 7919) % 1024;
            black_box(
                gate.decide(client(v * 977))
                    .now_or_never()
                    .expect("a hit never waits"),
            )
        })
    });
    // The same hit with 64 hot clients and with one: how much of the hit is the working
    // set (cache lines and pages) rather than the work.
    let mut v2 = 0u32;
    g.bench_function("sync_cache_hit_1M_cidrs_1M_cached_hot_64", |b| {
        b.iter(|| {
            v2 = (v2 + 7919) % 64;
            black_box(
                gate.decide(client(v2 * 977))
                    .now_or_never()
                    .expect("a hit never waits"),
            )
        })
    });
    g.bench_function("sync_cache_hit_1M_cidrs_1M_cached_hot_1", |b| {
        b.iter(|| {
            black_box(
                gate.decide(client(977))
                    .now_or_never()
                    .expect("a hit never waits"),
            )
        })
    });
    g.bench_function("sync_baseline_allow_list_hit", |b| {
        b.iter(|| {
            black_box(
                gate.decide(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
                    .now_or_never()
                    .expect("never waits"),
            )
        })
    });
    g.bench_function("baseline_allow_list_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(gate.decide(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))).await)
        })
    });
    let mut k = 0u32;
    g.bench_function("component_cache_cached_1M", |b| {
        b.iter(|| {
            k = (k + 7919) % N;
            black_box(cache.cached(client(k)))
        })
    });
    // Where the uniform hit's time goes (docs/benchmarks.md, "Sixth round"): the same
    // probe with the time given (no clock read of its own), the bare main-cache probe,
    // the same structure built fresh, and the one-line layout, all over the same answers.
    let m0 = ipgate::clock::Moment::now();
    let mut pa = 0u32;
    g.bench_function("component_cache_cached_at_1M", |b| {
        b.iter(|| {
            pa = (pa + 7919) % N;
            black_box(cache.cached_at(client(pa), m0))
        })
    });
    let mut pk = 0u32;
    g.bench_function("component_cache_peek_1M", |b| {
        b.iter(|| {
            pk = (pk + 7919) % N;
            black_box(cache.peek(client(pk)))
        })
    });
    // The cache's answers, to fill the structures below with the same ones.
    let answers: Vec<(u32, std::sync::Arc<ipgate::reputation::Lookup>)> = (0..N)
        .filter_map(|x| cache.cached(client(x)).map(|l| (x, l)))
        .collect();
    // The cache's key and value shapes (an IP key, three expiries, the answer) in a
    // fresh quick_cache holding the same answers.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    enum Key {
        V4(u32),
        #[allow(dead_code)]
        V6([u8; 16], u8),
    }
    type Val = ([u64; 3], std::sync::Arc<ipgate::reputation::Lookup>);
    let same: quick_cache::sync::Cache<Key, Val> = quick_cache::sync::Cache::new(2_000_000);
    for (x, l) in &answers {
        same.insert(Key::V4(0x0b00_0000u32 + x), ([u64::MAX; 3], l.clone()));
    }
    let mut sq = 0u32;
    g.bench_function("baseline_quick_cache_same_shapes_1M", |b| {
        b.iter(|| {
            sq = (sq + 7919) % N;
            black_box(same.get(&Key::V4(0x0b00_0000u32 + sq)).map(|(_, l)| l))
        })
    });
    drop(same);
    // Each entry (key, expiry, answer) in one cache line found from the key's hash.
    let table = one_line::Table::new(2 * N as usize);
    for (x, l) in answers {
        table.insert(x, u64::MAX, l);
    }
    let held = (0..N).filter(|&x| table.get(x, 1).is_some()).count();
    eprintln!("one-line table: {held} of {N} keys held in its first or second line");
    let mut t = 0u32;
    g.bench_function("baseline_one_line_table_1M", |b| {
        b.iter(|| {
            t = (t + 7919) % N;
            black_box(table.get(t, 1))
        })
    });
    // The same with a clock read per probe, as `cached` makes.
    let mut tc = 0u32;
    g.bench_function("baseline_one_line_table_1M_clock_read", |b| {
        b.iter(|| {
            tc = (tc + 7919) % N;
            black_box(ipgate::clock::Moment::now());
            black_box(table.get(tc, 1))
        })
    });
    drop(table);
    let plain: quick_cache::sync::Cache<u32, u64> = quick_cache::sync::Cache::new(2_000_000);
    for x in 0..N {
        plain.insert(x, u64::from(x));
    }
    let mut m = 0u32;
    g.bench_function("baseline_quick_cache_u32_1M", |b| {
        b.iter(|| {
            m = (m + 7919) % N;
            black_box(plain.get(&m))
        })
    });
    let mut j = 0u32;
    g.bench_function("baseline_trie_lookup_1M", |b| {
        b.iter(|| {
            j = (j + 7919) % N;
            black_box(set.contains(client(j)))
        })
    });
    g.finish();
}

/// A table whose entries each fill one 64-byte line, for the measurement above: a key
/// has two candidate lines (two halves of its hash), each behind its own lock, and a
/// hit reads one line then the answer's reference count.
mod one_line {
    use std::sync::{Arc, Mutex};

    use ipgate::reputation::Lookup;

    #[derive(Default)]
    #[repr(align(64))]
    struct Line(Mutex<Option<(u32, u64, Arc<Lookup>)>>);

    pub struct Table {
        lines: Vec<Line>,
        mask: usize,
    }

    fn candidates(key: u32, mask: usize) -> [usize; 2] {
        let h = u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [(h >> 32) as usize & mask, h as usize & mask]
    }

    impl Table {
        pub fn new(lines: usize) -> Table {
            let n = lines.next_power_of_two();
            Table {
                lines: (0..n).map(|_| Line::default()).collect(),
                mask: n - 1,
            }
        }

        /// Stores in the first empty candidate, else replaces the second.
        pub fn insert(&self, key: u32, expires_ms: u64, lookup: Arc<Lookup>) {
            let [a, b] = candidates(key, self.mask);
            let mut first = self.lines[a].0.lock().unwrap();
            if first.is_none() || first.as_ref().is_some_and(|e| e.0 == key) {
                *first = Some((key, expires_ms, lookup));
                return;
            }
            drop(first);
            *self.lines[b].0.lock().unwrap() = Some((key, expires_ms, lookup));
        }

        pub fn get(&self, key: u32, now_ms: u64) -> Option<Arc<Lookup>> {
            for i in candidates(key, self.mask) {
                let line = self.lines[i].0.lock().unwrap();
                if let Some((k, expires, l)) = line.as_ref()
                    && *k == key
                {
                    return (*expires > now_ms).then(|| l.clone());
                }
            }
            None
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
