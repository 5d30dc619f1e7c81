//! The shared tier (`cache.redis`): what several gateways behind one load balancer keep
//! in one Redis (or Valkey) so they behave as one: reputations and failed look-ups with
//! their TTLs, one look-up lock per IP, each provider's daily quota, provider cool-downs
//! and bans (see docs/configuration.md, "Shared tier").
//!
//! Every call is bounded by `cache.redis_timeout`. A failed or slow call marks Redis
//! down: from then on calls fail at once (the gateway serves from its local tier), a
//! health task pings with backoff, and when Redis answers again it is marked up and
//! every subscriber of [`SharedTier::ups`] resynchronises (bans are republished). The
//! state change is logged once and exported as `ipgate_redis_up`.
//!
//! Key layout (prefix `cache.redis_prefix`, default `ipgate:`); each script touches one
//! key, so every operation works on Redis Cluster as is:
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `PREFIX rep:KEY` | string | a cached entry (expiry + every provider's part, JSON) | the entry's last part expiry |
//! | `PREFIX lock:KEY` | string | the gateway asking the providers for KEY | the look-up bound |
//! | `PREFIX quota:PROVIDER:DAY` | string | look-ups spent by the cluster on that UTC day | 2 days |
//! | `PREFIX cooldown:PROVIDER` | string | a provider's cool-down (429, spent quota, 401) | its end |
//! | `PREFIX bans` | hash | CIDR → ban (expiry, reason) | none (expired bans are dropped on read) |
//! | `PREFIX bans:kept` | string | set once the bans are in Redis (absent: Redis lost them) | none |
//!
//! Channel `PREFIX bans` carries "the bans changed".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

/// Why a shared-tier call gave no answer. The gateway goes on with its local tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// Redis is marked down; nothing was sent.
    #[error("Redis is down")]
    Down,
    /// No answer within `cache.redis_timeout`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis call failed")]
    Redis(#[source] redis::RedisError),
}

/// Why the shared tier cannot be set up (a bad URL: refused by validation first).
#[derive(Debug, thiserror::Error)]
#[error("cache.redis: cannot use the URL")]
pub struct TierSetupError(#[source] redis::RedisError);

/// The keys of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn rep(&self, key: impl std::fmt::Display) -> String {
        format!("{}rep:{key}", self.prefix)
    }
    pub(crate) fn lock(&self, key: impl std::fmt::Display) -> String {
        format!("{}lock:{key}", self.prefix)
    }
    pub(crate) fn quota(&self, provider: &str, day: u32) -> String {
        format!("{}quota:{provider}:{day}", self.prefix)
    }
    pub(crate) fn cooldown(&self, provider: &str) -> String {
        format!("{}cooldown:{provider}", self.prefix)
    }
    pub(crate) fn bans(&self) -> String {
        format!("{}bans", self.prefix)
    }
    pub(crate) fn bans_kept(&self) -> String {
        format!("{}bans:kept", self.prefix)
    }
}

/// Reserves one look-up of the day: `-1` when `ARGV[1]` are spent, else the count.
const RESERVE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return -1 end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
";

/// Marks the day's quota spent (never lowers a count).
const EXHAUST: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
";

/// Releases a lock only when this gateway still holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Quota counters live two days: long enough for any gateway's idea of "today".
const QUOTA_KEY_SECS: u64 = 2 * 86_400;

struct Inner {
    manager: ConnectionManager,
    client: redis::Client,
    keys: Keys,
    timeout: Duration,
    /// Identifies this process's locks.
    owner: String,
    up: AtomicBool,
    up_gauge: metrics::Gauge,
    /// Counts the times Redis came (back) up; subscribers resynchronise on a change.
    ups: tokio::sync::watch::Sender<u64>,
    /// Wakes the health task when a call marks Redis down.
    wake: tokio::sync::Notify,
    reserve: redis::Script,
    exhaust: redis::Script,
    unlock: redis::Script,
}

/// A handle on the shared tier. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SharedTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("SharedTier")
            .field("prefix", &self.inner.keys.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl SharedTier {
    /// Connects to `url` (waiting at most about a second); an unreachable Redis is not
    /// an error: the tier starts down and the health task keeps trying.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<SharedTier, TierSetupError> {
        let client = redis::Client::open(url).map_err(TierSetupError)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(TierSetupError)?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            crate::clock::unix_ms(std::time::SystemTime::now())
        );
        let tier = SharedTier {
            inner: Arc::new(Inner {
                manager,
                client,
                keys: Keys {
                    prefix: prefix.to_string(),
                },
                timeout,
                owner,
                up: AtomicBool::new(false),
                up_gauge: metrics::gauge!(crate::metrics::REDIS_UP),
                ups: tokio::sync::watch::channel(0).0,
                wake: tokio::sync::Notify::new(),
                reserve: redis::Script::new(RESERVE),
                exhaust: redis::Script::new(EXHAUST),
                unlock: redis::Script::new(UNLOCK),
            }),
        };
        tier.inner.up_gauge.set(0.0);
        // The first connection may take longer than one call's bound.
        if tier.ping(Duration::from_secs(1)).await {
            tier.mark_up();
        } else {
            tracing::warn!(
                "shared tier: Redis is unreachable at start; serving from the local tier until it answers"
            );
        }
        tokio::spawn(health(Arc::downgrade(&tier.inner)));
        Ok(tier)
    }

    /// The key names of this deployment.
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Whether Redis answered the last call.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Changes each time Redis comes (back) up.
    pub(crate) fn ups(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.ups.subscribe()
    }

    fn mark_up(&self) {
        if !self.inner.up.swap(true, Ordering::AcqRel) {
            self.inner.up_gauge.set(1.0);
            tracing::info!("shared tier: Redis is up");
            self.inner.ups.send_modify(|n| *n += 1);
        }
    }

    fn mark_down(&self, why: &TierError) {
        if self.inner.up.swap(false, Ordering::AcqRel) {
            self.inner.up_gauge.set(0.0);
            tracing::warn!(error = %why, cause = ?std::error::Error::source(why).map(ToString::to_string), "shared tier: Redis is down; serving from the local tier");
            self.inner.wake.notify_one();
        }
    }

    async fn ping(&self, within: Duration) -> bool {
        let mut conn = self.inner.manager.clone();
        matches!(
            tokio::time::timeout(within, redis::cmd("PING").query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }

    /// Runs one call, bounded by `cache.redis_timeout`; a failure marks Redis down.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, TierError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(TierError::Down);
        }
        let err =
            match tokio::time::timeout(self.inner.timeout, f(self.inner.manager.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => TierError::Redis(e),
                Err(_) => TierError::Timeout(self.inner.timeout),
            };
        self.mark_down(&err);
        Err(err)
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TierError> {
        self.call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    /// `SET key value PX ttl`.
    pub(crate) async fn set_px(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), TierError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Takes the look-up lock of `key` for `ttl`; false when another gateway holds it.
    pub(crate) async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, TierError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let owner = self.inner.owner.as_str();
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// `SET key 1 NX` (no expiry): true for the one gateway that set it.
    pub(crate) async fn claim(&self, key: &str) -> Result<bool, TierError> {
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// `DEL key`.
    pub(crate) async fn del(&self, key: &str) -> Result<(), TierError> {
        self.call(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
            .await
    }

    /// Releases the look-up lock of `key` when this gateway holds it.
    pub(crate) async fn unlock(&self, key: &str) -> Result<(), TierError> {
        let script = &self.inner.unlock;
        let owner = self.inner.owner.as_str();
        self.call(
            |mut c| async move { script.key(key).arg(owner).invoke_async::<i64>(&mut c).await },
        )
        .await
        .map(|_| ())
    }

    /// Reserves one of `limit` look-ups of `provider` on `day` for the whole cluster:
    /// the count after it, or None when the day's quota is spent.
    pub(crate) async fn reserve(
        &self,
        provider: &str,
        day: u32,
        limit: u32,
    ) -> Result<Option<u32>, TierError> {
        let key = self.inner.keys.quota(provider, day);
        let script = &self.inner.reserve;
        let n: i64 = self
            .call(|mut c| async move {
                script
                    .key(&key)
                    .arg(limit)
                    .arg(QUOTA_KEY_SECS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(u32::try_from(n).ok())
    }

    /// Marks the day's quota of `provider` spent for the whole cluster.
    pub(crate) async fn exhaust(
        &self,
        provider: &str,
        day: u32,
        limit: u32,
    ) -> Result<(), TierError> {
        let key = self.inner.keys.quota(provider, day);
        let script = &self.inner.exhaust;
        self.call(|mut c| async move {
            script
                .key(&key)
                .arg(limit)
                .arg(QUOTA_KEY_SECS)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Every field of a hash.
    pub(crate) async fn hgetall(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, TierError> {
        self.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await
    }

    /// Sets fields of a hash (none: nothing sent).
    pub(crate) async fn hset(
        &self,
        key: &str,
        fields: &[(String, Vec<u8>)],
    ) -> Result<(), TierError> {
        if fields.is_empty() {
            return Ok(());
        }
        self.call(|mut c| async move {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(key);
            for (f, v) in fields {
                cmd.arg(f).arg(v.as_slice());
            }
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Removes fields of a hash.
    pub(crate) async fn hdel(&self, key: &str, fields: &[String]) -> Result<(), TierError> {
        if fields.is_empty() {
            return Ok(());
        }
        self.call(|mut c| async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(fields)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Tells every gateway that `channel` changed.
    pub(crate) async fn publish(&self, channel: &str) -> Result<(), TierError> {
        self.call(|mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg("changed")
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Calls `on_message` for each message on `channel`, reconnecting with backoff,
    /// until the tier is dropped.
    pub(crate) fn subscribe(&self, channel: String, on_message: impl Fn() + Send + Sync + 'static) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let client = inner.client.clone();
                drop(inner);
                let connected = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(ps)
                })
                .await;
                match connected {
                    Ok(Ok(ps)) => {
                        backoff = Duration::from_millis(100);
                        let mut messages = ps.into_on_message();
                        loop {
                            tokio::select! {
                                m = messages.next() => match m {
                                    Some(_) => on_message(),
                                    None => break,
                                },
                                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            }
                            if weak.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                    _ => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

/// Pings Redis: every second while up (so an idle gateway notices an outage), with
/// backoff (100 ms doubling to 5 s) while down; marks it up again when it answers.
async fn health(weak: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tier = SharedTier { inner };
        if tier.is_up() {
            backoff = Duration::from_millis(100);
            let wake = tier.inner.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !tier.ping(tier.inner.timeout.max(Duration::from_millis(200))).await {
                        tier.mark_down(&TierError::Timeout(tier.inner.timeout));
                    }
                }
                _ = wake => {}
            }
        } else {
            drop(tier);
            tokio::time::sleep(backoff).await;
            let Some(inner) = weak.upgrade() else { return };
            let tier = SharedTier { inner };
            if tier.ping(Duration::from_secs(1)).await {
                tier.mark_up();
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
