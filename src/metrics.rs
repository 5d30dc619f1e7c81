//! Metric names (docs/metrics.md) and their descriptions. The library records through the
//! `metrics` facade; the binary installs a Prometheus exporter, and an application that
//! embeds the layer keeps its own.

/// `ipgate_requests_total{decision,rule}`
pub const REQUESTS: &str = "ipgate_requests_total";
/// `ipgate_decision_seconds` histogram
pub const DECISION_SECONDS: &str = "ipgate_decision_seconds";
/// `ipgate_provider_requests_total{provider,outcome}`
pub const PROVIDER_REQUESTS: &str = "ipgate_provider_requests_total";
/// `ipgate_provider_quota_remaining{provider}`
pub const PROVIDER_QUOTA_REMAINING: &str = "ipgate_provider_quota_remaining";
/// `ipgate_cache_lookups_total{result}`
pub const CACHE_LOOKUPS: &str = "ipgate_cache_lookups_total";
/// `ipgate_cache_entries`
pub const CACHE_ENTRIES: &str = "ipgate_cache_entries";
/// `ipgate_feed_entries{feed}`
pub const FEED_ENTRIES: &str = "ipgate_feed_entries";
/// `ipgate_feed_refresh_total{feed,result}` (ok, not_modified, error)
pub const FEED_REFRESH: &str = "ipgate_feed_refresh_total";
/// `ipgate_feed_age_seconds{feed}`: seconds since the last good load
pub const FEED_AGE: &str = "ipgate_feed_age_seconds";
/// `ipgate_config_reloads_total{result}`
pub const CONFIG_RELOADS: &str = "ipgate_config_reloads_total";
/// `ipgate_upstream_seconds` histogram
pub const UPSTREAM_SECONDS: &str = "ipgate_upstream_seconds";
/// `ipgate_lookup_failures_total`: decisions made by `lookup.on_error` (a rule needed
/// reputation and none was available).
pub const LOOKUP_FAILURES: &str = "ipgate_lookup_failures_total";

/// `ipgate_redis_up`: 1 while the shared tier (Redis) answers, 0 while it does not.
pub const REDIS_UP: &str = "ipgate_redis_up";
/// `ipgate_bans`: bans in force.
pub const BANS: &str = "ipgate_bans";

/// `ipgate_connections_open`: client connections the gateway is serving.
pub const CONNECTIONS_OPEN: &str = "ipgate_connections_open";
/// `ipgate_upstream_errors_total{kind}`: requests answered 502 or 504 by the gateway.
pub const UPSTREAM_ERRORS: &str = "ipgate_upstream_errors_total";
/// `ipgate_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "ipgate_build_info";

/// The `kind` values of [`UPSTREAM_ERRORS`]: `timeout` (504: `limits.upstream_timeout`
/// passed), `connect` (502: the upstream could not be reached), `request` (502: the
/// request failed after connecting), `bad_upgrade` (502: the upstream switched protocols
/// without a matching upgrade request), `no_upstream` (502: none configured).
pub const UPSTREAM_ERROR_KINDS: [&str; 5] = [
    "timeout",
    "connect",
    "request",
    "bad_upgrade",
    "no_upstream",
];

/// Bucket bounds (seconds) of `ipgate_decision_seconds`: a decision from lists or the
/// cache takes microseconds; one that waits for a provider takes up to `lookup.timeout`
/// (1.5 s by default).
pub const DECISION_BUCKETS: [f64; 18] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bucket bounds (seconds) of `ipgate_upstream_seconds`: from a millisecond on the same
/// host to `limits.upstream_timeout` (30 s by default).
pub const UPSTREAM_BUCKETS: [f64; 15] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counts an answer the gateway gave for the upstream (`kind`: one of
/// [`UPSTREAM_ERROR_KINDS`]).
pub fn upstream_error(kind: &'static str) {
    metrics::counter!(UPSTREAM_ERRORS, "kind" => kind).increment(1);
}

/// Holds one open connection in `ipgate_connections_open` from creation to drop.
#[derive(Debug)]
pub struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    /// Counts a connection as open until the value is dropped.
    pub fn new() -> OpenConnection {
        let g = metrics::gauge!(CONNECTIONS_OPEN);
        g.increment(1.0);
        OpenConnection(g)
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Registers the gateway's own series so they read 0 (or their value) before the
/// first event: build info, open connections, each kind of upstream error.
pub fn register_gateway() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(CONNECTIONS_OPEN).set(0.0);
    for kind in UPSTREAM_ERROR_KINDS {
        metrics::counter!(UPSTREAM_ERRORS, "kind" => kind).absolute(0);
    }
}

/// The Prometheus recorder of `ipgate run` and `ipgate demo`, installed process-wide:
/// timings as histograms with [`DECISION_BUCKETS`] and [`UPSTREAM_BUCKETS`], the
/// descriptions, the gateway's series, and process metrics (`process_*`, refreshed by
/// [`Exporter::render`]).
#[cfg(feature = "gateway")]
pub fn install_exporter() -> Result<Exporter, metrics_exporter_prometheus::BuildError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECISION_SECONDS.into()), &DECISION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(UPSTREAM_SECONDS.into()), &UPSTREAM_BUCKETS)?
        .install_recorder()?;
    // Histogram samples wait in a buffer until they are folded into their buckets:
    // without a scrape to do it, the buffer would grow with every request. Fold them
    // four times a second whether or not anyone scrapes: at 100 k requests a second,
    // every 5 s let the buffers grow by 17 MiB and the fold stall the thread that ran it
    // (p99 1.05–1.37 ms against 0.99–1.25 ms, loaded RSS 33 MiB against 15.6 MiB). A task
    // of the runtime, not a thread: a process with one thread makes its system calls
    // without glibc's cancellation bookkeeping (about 0.1 µs a request on one CPU).
    let upkeep = handle.clone();
    const UPKEEP: std::time::Duration = std::time::Duration::from_millis(250);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + UPKEEP, UPKEEP);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
    } else {
        let spawned = std::thread::Builder::new()
            .name("ipgate-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep: histograms are folded only when /metrics is scraped");
        }
    }
    let process = metrics_process::Collector::default();
    process.describe();
    describe();
    register_gateway();
    Ok(Exporter { handle, process })
}

/// The installed exporter: renders `/metrics`.
#[cfg(feature = "gateway")]
#[derive(Clone)]
pub struct Exporter {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    process: metrics_process::Collector,
}

#[cfg(feature = "gateway")]
impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

#[cfg(feature = "gateway")]
impl Exporter {
    /// The metrics in Prometheus text format, with the process metrics read now.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }
}

/// Registers the descriptions with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests decided, by decision and rule.");
    describe_histogram!(
        DECISION_SECONDS,
        Unit::Seconds,
        "Time to decide one request."
    );
    describe_counter!(
        PROVIDER_REQUESTS,
        "Calls to reputation providers, by outcome."
    );
    describe_gauge!(
        PROVIDER_QUOTA_REMAINING,
        "Look-ups left today per provider."
    );
    describe_counter!(CACHE_LOOKUPS, "Reputation cache look-ups, by result.");
    describe_gauge!(CACHE_ENTRIES, "Entries in the reputation cache.");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result.");
    describe_histogram!(
        UPSTREAM_SECONDS,
        Unit::Seconds,
        "Time to the upstream's response head."
    );
    describe_counter!(LOOKUP_FAILURES, "Decisions made by lookup.on_error.");
    describe_gauge!(
        REDIS_UP,
        "1 while the shared tier (Redis) answers, 0 while it does not."
    );
    describe_gauge!(BANS, "Bans in force.");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections being served.");
    describe_counter!(
        UPSTREAM_ERRORS,
        "Requests the gateway answered 502 or 504 for the upstream, by kind."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version of ipgate in its label.");
    describe_gauge!(FEED_ENTRIES, "Networks in each feed.");
    describe_counter!(
        FEED_REFRESH,
        "Feed refreshes by result (ok, not_modified, error; the load at start included)."
    );
    describe_gauge!(
        FEED_AGE,
        Unit::Seconds,
        "Seconds since each feed was last confirmed by its source (absent while never loaded)."
    );
}
