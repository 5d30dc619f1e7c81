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
