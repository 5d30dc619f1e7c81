//! Named IP lists loaded from URLs or files (`lists.feeds`) and kept fresh in the
//! background.
//!
//! * [`parse`](mod@parse) turns a body into an [`IpSet`] (all or nothing).
//! * `fetch` gets a body: HTTP with `If-None-Match`/`If-Modified-Since`, a size limit and
//!   a timeout, or a file re-read only when its modification time or size changed.
//! * `store` keeps the last good copy of each HTTP feed on disk when a store directory
//!   is given, for restarts without network.
//!
//! Each feed's set sits behind an [`ArcSwap`]: a refresh builds a complete new set and
//! swaps it in, so a request sees the old list or the new one, never half of one. A
//! refresh that fails (network, status, size, timeout, parse) keeps the list in use, is
//! logged with the feed name and counted in `ipgate_feed_refresh_total{result="error"}`.

pub mod parse;

mod feed;
mod fetch;
mod store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::config::{FeedConfig, FeedTag};

pub use parse::{ParseError, parse, parse_local};

use feed::{Feed, lock, refresh_loop};
use store::Store;

/// The age gauge is refreshed at least this often, whatever the refresh interval.
const AGE_TICK: Duration = Duration::from_secs(60);

/// Why a refresh failed. The list in use is kept.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// `refresh_now` was given an index no feed has.
    #[error("no feed at index {0}")]
    NoSuchFeed(usize),
    /// The source is neither an http(s) URL nor a file path.
    #[error("unsupported source `{0}` (use an http:// or https:// URL or a file path)")]
    BadSource(String),
    /// The request (body included) took longer than the timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// Connection, TLS or protocol failure (the URL is never part of the message).
    #[error("request failed: {0}")]
    Transport(String),
    /// An HTTP status other than 200 (or 304 to a conditional request).
    #[error("HTTP status {0}")]
    Status(u16),
    /// 304 to a request that had no validators.
    #[error("HTTP 304 Not Modified to an unconditional request")]
    UnexpectedNotModified,
    /// The body is larger than the limit; reading stopped there.
    #[error("body larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A file source could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The body is not a valid feed in the configured format.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A local file (a file source, or the stored copy of a URL feed) is not a valid
    /// feed. The message names the file, the line and the problem, never the file's
    /// content: a feed path may point at any file the process can read.
    #[error("{path}: {error}")]
    LocalParse {
        /// The file.
        path: String,
        /// What is wrong, without any of the file's content.
        error: ParseError,
    },
    /// A background step panicked or was cancelled.
    #[error("feed task failed: {0}")]
    Task(String),
}

/// What a successful refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new list was parsed and swapped in.
    Updated {
        /// Networks in the new list.
        entries: usize,
    },
    /// The source says the list in use is current (HTTP 304, or an unchanged file).
    NotModified,
}

/// One feed as `/readyz`, `ipgate check` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// The configured name.
    pub name: String,
    /// The source, without credentials or query string.
    pub source: String,
    /// The configured tag.
    pub tag: Option<FeedTag>,
    /// Networks in the list in use.
    pub entries: usize,
    /// Whether a list was ever installed (from the source or the store). A feed that
    /// never loaded matches nothing and makes `/readyz` answer 503.
    pub loaded: bool,
    /// Whether the list in use is the stored copy (the source has not answered since start).
    pub from_store: bool,
    /// When the list in use was last confirmed by its source (200, 304, unchanged file),
    /// or when the stored copy in use was saved.
    pub last_ok: Option<SystemTime>,
    /// When the last refresh was attempted.
    pub last_attempt: Option<SystemTime>,
    /// The error of the last refresh, `None` after a success.
    pub last_error: Option<String>,
    /// Refreshes that installed a new list.
    pub refreshes_ok: u64,
    /// Refreshes answered "not modified".
    pub refreshes_not_modified: u64,
    /// Refreshes that failed.
    pub refreshes_error: u64,
}

/// Tunables of feed loading; [`Feeds::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Largest body accepted, in bytes (default 64 MiB). Reading stops beyond it.
    pub max_body: u64,
    /// Time limit of one HTTP request, body included (default 30 s).
    pub timeout: Duration,
    /// First retry delay after a failed refresh (default 30 s); it doubles with each
    /// failure in a row, up to the feed's `refresh`.
    pub retry_min: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            max_body: 64 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            retry_min: Duration::from_secs(30),
        }
    }
}

/// The configured feeds, loaded and refreshed in the background. Clone is cheap; the
/// refresh tasks stop when the last clone is dropped or [`Feeds::stop`] is called.
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    feeds: Vec<Arc<Feed>>,
    tor: Vec<usize>,
    vpn: Vec<usize>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.inner.feeds.iter().map(|feed| &feed.name))
            .finish()
    }
}

impl Default for Feeds {
    fn default() -> Self {
        Feeds::empty()
    }
}

impl Feeds {
    /// Loads every feed once (source first, stored copy as fallback), then spawns refresh
    /// tasks. Never fails for an unreachable source: that feed starts empty and is
    /// reported not loaded. Must be called within a tokio runtime.
    pub async fn start(
        cfgs: &[FeedConfig],
        store_dir: Option<PathBuf>,
        client: reqwest::Client,
    ) -> Feeds {
        Feeds::start_with(cfgs, store_dir, client, FeedOptions::default()).await
    }

    /// [`Feeds::start`] with explicit limits.
    pub async fn start_with(
        cfgs: &[FeedConfig],
        store_dir: Option<PathBuf>,
        client: reqwest::Client,
        options: FeedOptions,
    ) -> Feeds {
        Feeds::start_after(None, cfgs, store_dir, client, options).await
    }

    /// [`Feeds::start`] for a reload: a feed that reads the same source in the same
    /// format as one of `previous` starts with that feed's list (a conditional refresh
    /// follows), so a source that is down at reload time loses nothing.
    pub async fn reloaded(
        previous: &Feeds,
        cfgs: &[FeedConfig],
        store_dir: Option<PathBuf>,
        client: reqwest::Client,
    ) -> Feeds {
        Feeds::start_after(
            Some(previous),
            cfgs,
            store_dir,
            client,
            FeedOptions::default(),
        )
        .await
    }

    async fn start_after(
        previous: Option<&Feeds>,
        cfgs: &[FeedConfig],
        store_dir: Option<PathBuf>,
        client: reqwest::Client,
        options: FeedOptions,
    ) -> Feeds {
        let store = store_dir.map(Store::new);
        let feeds: Vec<Arc<Feed>> = cfgs
            .iter()
            .map(|cfg| {
                let feed = Feed::new(cfg, store.clone(), client.clone(), options.clone());
                if let Some(old) =
                    previous.and_then(|p| p.inner.feeds.iter().find(|f| f.name == feed.name))
                    && feed.carry_from(old)
                {
                    tracing::debug!(feed = %feed.name, "list carried over the reload");
                }
                Arc::new(feed)
            })
            .collect();
        futures_util::future::join_all(feeds.iter().map(|f| f.initial_load())).await;
        let tasks = feeds
            .iter()
            .map(|f| tokio::spawn(refresh_loop(f.clone())))
            .collect();
        let tagged = |tag| {
            feeds
                .iter()
                .enumerate()
                .filter(|(_, f)| f.tag == Some(tag))
                .map(|(i, _)| i)
                .collect()
        };
        Feeds {
            inner: Arc::new(Inner {
                tor: tagged(FeedTag::Tor),
                vpn: tagged(FeedTag::Vpn),
                feeds,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// No feeds: every membership test is false.
    pub fn empty() -> Feeds {
        Feeds {
            inner: Arc::new(Inner {
                feeds: Vec::new(),
                tor: Vec::new(),
                vpn: Vec::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The index of the feed called `name` (the first one, should names repeat).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.inner.feeds.iter().position(|f| f.name == name)
    }

    /// Number of feeds.
    pub fn len(&self) -> usize {
        self.inner.feeds.len()
    }

    /// True when there is no feed.
    pub fn is_empty(&self) -> bool {
        self.inner.feeds.is_empty()
    }

    /// Whether the feed at `index` lists `ip` (false for an unknown index). No allocation,
    /// no lock: one `ArcSwap` load and a prefix-trie look-up.
    #[inline]
    pub fn contains(&self, index: usize, ip: IpAddr) -> bool {
        self.inner
            .feeds
            .get(index)
            .is_some_and(|f| f.set.load().contains(ip))
    }

    /// Whether any feed tagged `tag` lists `ip`.
    pub fn has_tag(&self, tag: FeedTag, ip: IpAddr) -> bool {
        let indices = match tag {
            FeedTag::Tor => &self.inner.tor,
            FeedTag::Vpn => &self.inner.vpn,
        };
        indices.iter().any(|&i| self.contains(i, ip))
    }

    /// Names of the feeds that list `ip`, in configuration order.
    pub fn names_containing(&self, ip: IpAddr) -> Vec<String> {
        self.inner
            .feeds
            .iter()
            .filter(|f| f.set.load().contains(ip))
            .map(|f| f.name.clone())
            .collect()
    }

    /// The state of every feed, in configuration order.
    pub fn status(&self) -> Vec<FeedStatus> {
        self.inner.feeds.iter().map(|f| f.status()).collect()
    }

    /// Names of the feeds that never loaded (the reason `/readyz` answers 503).
    pub fn not_loaded(&self) -> Vec<String> {
        self.inner
            .feeds
            .iter()
            .filter(|f| !f.state().loaded)
            .map(|f| f.name.clone())
            .collect()
    }

    /// Refreshes the feed at `index` now (waits for a refresh already running). On error
    /// the list in use is kept.
    pub async fn refresh_now(&self, index: usize) -> Result<RefreshOutcome, FeedError> {
        let feed = self
            .inner
            .feeds
            .get(index)
            .ok_or(FeedError::NoSuchFeed(index))?;
        let result = feed.refresh().await;
        feed.publish_age();
        result
    }

    /// Stops the background refresh tasks (of every clone). Lists stay as they are.
    pub fn stop(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {

    use super::feed::jitter;
    use super::*;
    use crate::config::{Dur, FeedFormat, Text};

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let d = Duration::from_secs(3600);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let j = jitter(d, "tor");
            assert!(
                j >= Duration::from_secs(3240) && j <= Duration::from_secs(3960),
                "{j:?}"
            );
            seen.insert(j.as_millis());
        }
        assert!(seen.len() > 100, "jitter barely varies: {}", seen.len());
    }

    fn cfg(name: &str, source: &str, tag: Option<FeedTag>) -> FeedConfig {
        FeedConfig {
            name: Text(name.to_string()),
            pos: Default::default(),
            source: Text(source.to_string()),
            format: FeedFormat::Plain,
            refresh: Dur(Duration::from_secs(3600)),
            tag,
        }
    }

    #[test]
    fn retry_delays_back_off_up_to_refresh() {
        let feed = Feed::new(
            &cfg("x", "/nonexistent", None),
            None,
            reqwest::Client::new(),
            FeedOptions::default(),
        );
        let secs: Vec<u64> = (0..10).map(|n| feed.next_delay(n).as_secs()).collect();
        assert_eq!(secs, [3600, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(feed.next_delay(u32::MAX).as_secs(), 3600);
    }

    #[tokio::test]
    async fn empty_and_unknown_indices() {
        let feeds = Feeds::empty();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(feeds.is_empty());
        assert_eq!(feeds.index_of("tor"), None);
        assert!(!feeds.contains(0, ip));
        assert!(!feeds.contains(usize::MAX, ip));
        assert!(!feeds.has_tag(FeedTag::Tor, ip));
        assert!(feeds.names_containing(ip).is_empty());
        assert!(matches!(
            feeds.refresh_now(3).await,
            Err(FeedError::NoSuchFeed(3))
        ));
        feeds.stop();
    }

    #[tokio::test]
    async fn file_feeds_tags_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let tor = dir.path().join("tor.txt");
        let vpn = dir.path().join("vpn.txt");
        std::fs::write(&tor, "185.220.101.4\n").unwrap();
        std::fs::write(&vpn, "185.220.101.0/24\n198.51.100.0/24\n").unwrap();
        let cfgs = [
            cfg("tor", tor.to_str().unwrap(), Some(FeedTag::Tor)),
            cfg("vpn", vpn.to_str().unwrap(), Some(FeedTag::Vpn)),
            cfg("bad", "ftp://example.com/list?key=SECRET", None),
        ];
        let feeds = Feeds::start(&cfgs, None, reqwest::Client::new()).await;
        let a: IpAddr = "185.220.101.4".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(feeds.index_of("vpn"), Some(1));
        assert!(feeds.contains(0, a) && feeds.contains(1, a) && !feeds.contains(0, b));
        assert!(feeds.has_tag(FeedTag::Tor, a) && !feeds.has_tag(FeedTag::Tor, b));
        assert!(feeds.has_tag(FeedTag::Vpn, b));
        assert_eq!(feeds.names_containing(a), ["tor", "vpn"]);
        assert_eq!(feeds.not_loaded(), ["bad"]);
        let status = feeds.status();
        assert!(status[0].loaded && status[0].entries == 1 && status[0].last_error.is_none());
        assert!(!status[2].loaded);
        let err = status[2].last_error.clone().unwrap();
        assert!(
            err.contains("unsupported source") && !err.contains("SECRET"),
            "{err}"
        );
        assert!(!status[2].source.contains("SECRET"));

        // Unchanged file: not re-parsed.
        assert_eq!(
            feeds.refresh_now(0).await.unwrap(),
            RefreshOutcome::NotModified
        );
        std::fs::write(&tor, "# moved\n192.0.2.77\n").unwrap();
        assert_eq!(
            feeds.refresh_now(0).await.unwrap(),
            RefreshOutcome::Updated { entries: 1 }
        );
        assert!(!feeds.contains(0, a));
        assert!(feeds.contains(0, "192.0.2.77".parse().unwrap()));
        // A broken file keeps the list in use.
        std::fs::write(&tor, "192.0.2.77\n192.0.2.300\n").unwrap();
        let err = feeds.refresh_now(0).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: line 2: not an IP address or CIDR", tor.display())
        );
        assert!(feeds.contains(0, "192.0.2.77".parse().unwrap()));
        std::fs::remove_file(&tor).unwrap();
        assert!(matches!(
            feeds.refresh_now(0).await,
            Err(FeedError::Io { .. })
        ));
        assert!(feeds.contains(0, "192.0.2.77".parse().unwrap()));
        let st = &feeds.status()[0];
        assert_eq!(
            (
                st.refreshes_ok,
                st.refreshes_not_modified,
                st.refreshes_error
            ),
            (2, 1, 2)
        );
        feeds.stop();
    }
}
