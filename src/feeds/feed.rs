//! One feed's life: its first load (source, else the stored copy), each refresh
//! (conditional, bounded, parsed), the list swap, the stored copy, the status and the
//! metrics, and the background loop that refreshes it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::fetch::{self, Fetched, FileStamp, Limits, Source, Validators};
use super::store::Store;
use super::{AGE_TICK, FeedError, FeedOptions, FeedStatus, RefreshOutcome, parse, parse_local};
use crate::config::{FeedConfig, FeedFormat, FeedTag};
use crate::lists::IpSet;
use crate::metrics::{
    FEED_AGE as FEED_AGE_SECONDS, FEED_ENTRIES, FEED_REFRESH as FEED_REFRESH_TOTAL,
};

/// A poisoned lock only means a panic elsewhere; the data is still consistent enough
/// for counters and timestamps.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct Feed {
    pub(super) name: String,
    /// The configured source text (the store key).
    pub(super) source_text: String,
    pub(super) source: Result<Source, String>,
    pub(super) format: FeedFormat,
    pub(super) refresh_every: Duration,
    pub(super) tag: Option<FeedTag>,
    pub(super) set: ArcSwap<IpSet>,
    pub(super) state: Mutex<State>,
    /// One refresh at a time per feed (background loop and `refresh_now`).
    pub(super) refreshing: tokio::sync::Mutex<()>,
    pub(super) client: reqwest::Client,
    pub(super) store: Option<Store>,
    pub(super) options: FeedOptions,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) loaded: bool,
    pub(super) from_store: bool,
    pub(super) entries: usize,
    pub(super) last_ok: Option<SystemTime>,
    pub(super) last_attempt: Option<SystemTime>,
    pub(super) last_error: Option<String>,
    /// Validators of the list in use (HTTP).
    pub(super) validators: Option<Validators>,
    /// Stamp of the file the list in use was read from.
    pub(super) stamp: Option<FileStamp>,
    pub(super) ok: u64,
    pub(super) not_modified: u64,
    pub(super) errors: u64,
}

/// A parsed body ready to be installed.
pub(super) struct NewList {
    set: IpSet,
    validators: Option<Validators>,
    stamp: Option<FileStamp>,
    from_store: bool,
    confirmed_at: Option<SystemTime>,
}

impl Feed {
    pub(super) fn new(
        cfg: &FeedConfig,
        store: Option<Store>,
        client: reqwest::Client,
        options: FeedOptions,
    ) -> Feed {
        Feed {
            name: cfg.name.0.clone(),
            source_text: cfg.source.0.clone(),
            source: Source::parse(&cfg.source.0).map_err(|e| e.to_string()),
            format: cfg.format,
            refresh_every: cfg.refresh.0.max(Duration::from_secs(1)),
            tag: cfg.tag,
            set: ArcSwap::from_pointee(IpSet::new()),
            state: Mutex::new(State::default()),
            refreshing: tokio::sync::Mutex::new(()),
            client,
            store,
            options,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) fn status(&self) -> FeedStatus {
        let st = self.state();
        FeedStatus {
            name: self.name.clone(),
            source: match &self.source {
                Ok(s) => s.display(),
                Err(_) => fetch::redact(&self.source_text),
            },
            tag: self.tag,
            entries: st.entries,
            loaded: st.loaded,
            from_store: st.from_store,
            last_ok: st.last_ok,
            last_attempt: st.last_attempt,
            last_error: st.last_error.clone(),
            refreshes_ok: st.ok,
            refreshes_not_modified: st.not_modified,
            refreshes_error: st.errors,
        }
    }

    /// Takes over the list in use (and what identifies it) of the same feed in the
    /// configuration being replaced, when it reads the same source in the same format.
    /// True when it did.
    pub(super) fn carry_from(&self, old: &Feed) -> bool {
        if old.source_text != self.source_text || old.format != self.format {
            return false;
        }
        let old_state = old.state();
        if !old_state.loaded {
            return false;
        }
        self.set.store(old.set.load_full());
        let mut st = self.state();
        st.loaded = true;
        st.from_store = old_state.from_store;
        st.entries = old_state.entries;
        st.last_ok = old_state.last_ok;
        st.validators = old_state.validators.clone();
        st.stamp = old_state.stamp;
        true
    }

    /// The load at start: the source, else the stored copy. After a reload that
    /// carried the list over, a failing source keeps that list.
    pub(super) async fn initial_load(&self) {
        if self.refresh().await.is_ok() {
            self.publish_age();
            return;
        }
        if self.state().loaded {
            tracing::warn!(
                feed = %self.name,
                entries = self.state().entries,
                "source failed at reload; keeping the list in use"
            );
            self.publish_age();
            return;
        }
        match self.load_stored().await {
            Ok(Some(entries)) => tracing::warn!(
                feed = %self.name,
                entries,
                "source failed at start; using the stored copy"
            ),
            Ok(None) => tracing::warn!(
                feed = %self.name,
                "source failed at start and there is no stored copy; the feed matches nothing until it loads"
            ),
            Err(e) => tracing::warn!(
                feed = %self.name,
                error = %e,
                "source failed at start and the stored copy is unusable; the feed matches nothing until it loads"
            ),
        }
        metrics::gauge!(FEED_ENTRIES, "feed" => self.name.clone()).set(self.state().entries as f64);
        self.publish_age();
    }

    /// Installs the stored copy; `Ok(None)` when there is none for this source.
    pub(super) async fn load_stored(&self) -> Result<Option<usize>, FeedError> {
        let Some(store) = self.store.clone() else {
            return Ok(None);
        };
        let (name, source, format) = (self.name.clone(), self.source_text.clone(), self.format);
        let loaded = tokio::task::spawn_blocking(move || {
            let Some(stored) = store.load(&name, &source).map_err(|e| FeedError::Io {
                path: store.dir().display().to_string(),
                source: e,
            })?
            else {
                return Ok(None);
            };
            let set = parse_local(&stored.body, format).map_err(|error| FeedError::LocalParse {
                path: store.body_path(&name).display().to_string(),
                error,
            })?;
            Ok::<_, FeedError>(Some((set, stored.validators, stored.saved_at)))
        })
        .await
        .map_err(|e| FeedError::Task(e.to_string()))??;
        let Some((set, validators, saved_at)) = loaded else {
            return Ok(None);
        };
        let entries = set.len();
        self.install(NewList {
            set,
            validators: (!validators.is_empty()).then_some(validators),
            stamp: None,
            from_store: true,
            confirmed_at: saved_at,
        });
        Ok(Some(entries))
    }

    /// Fetches, parses and installs; records the result in the state, the metrics and
    /// the log.
    pub(super) async fn refresh(&self) -> Result<RefreshOutcome, FeedError> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.state().last_attempt = Some(SystemTime::now());
        let result = self.fetch_and_install().await;
        let label = match &result {
            Ok(RefreshOutcome::Updated { .. }) => "ok",
            Ok(RefreshOutcome::NotModified) => "not_modified",
            Err(_) => "error",
        };
        metrics::counter!(FEED_REFRESH_TOTAL, "feed" => self.name.clone(), "result" => label)
            .increment(1);
        let mut st = self.state();
        match &result {
            Ok(outcome) => {
                st.last_error = None;
                st.last_ok = Some(SystemTime::now());
                match outcome {
                    RefreshOutcome::Updated { entries } => {
                        st.ok += 1;
                        tracing::info!(feed = %self.name, entries, "feed loaded");
                    }
                    RefreshOutcome::NotModified => {
                        st.not_modified += 1;
                        tracing::debug!(feed = %self.name, "feed not modified");
                    }
                }
            }
            Err(e) => {
                st.errors += 1;
                st.last_error = Some(e.to_string());
                if st.loaded {
                    tracing::warn!(feed = %self.name, error = %e, entries = st.entries,
                        "feed refresh failed; keeping the list in use");
                } else {
                    tracing::warn!(feed = %self.name, error = %e, "feed refresh failed; the feed is not loaded");
                }
            }
        }
        result
    }

    pub(super) async fn fetch_and_install(&self) -> Result<RefreshOutcome, FeedError> {
        let source = self.source.clone().map_err(FeedError::BadSource)?;
        let limits = Limits {
            max_body: self.options.max_body,
            timeout: self.options.timeout,
        };
        let fetched = match &source {
            Source::Http(url) => {
                let validators = {
                    let st = self.state();
                    if st.loaded {
                        st.validators.clone()
                    } else {
                        None
                    }
                };
                fetch::fetch_http(&self.client, url, validators.as_ref(), limits).await?
            }
            Source::File(path) => {
                let stamp = {
                    let st = self.state();
                    if st.loaded { st.stamp } else { None }
                };
                fetch::fetch_file(path, stamp, limits.max_body).await?
            }
        };
        let (body, validators, stamp) = match fetched {
            Fetched::NotModified => {
                self.state().from_store = false;
                return Ok(RefreshOutcome::NotModified);
            }
            Fetched::Body {
                body,
                validators,
                stamp,
            } => (body, validators, stamp),
        };
        let format = self.format;
        let parse_body = body.clone();
        // A local file's content is never quoted in an error (a feed path may point at
        // any file the process can read); a URL's body may be, short and escaped.
        let local = match &source {
            Source::File(path) => Some(path.display().to_string()),
            Source::Http(_) => None,
        };
        let set = tokio::task::spawn_blocking(move || match local {
            Some(path) => parse_local(&parse_body, format)
                .map_err(|error| FeedError::LocalParse { path, error }),
            None => parse(&parse_body, format).map_err(FeedError::from),
        })
        .await
        .map_err(|e| FeedError::Task(e.to_string()))??;
        let entries = set.len();
        if entries == 0 {
            tracing::warn!(feed = %self.name, "feed lists no entry (comments only)");
        }
        let is_http = matches!(source, Source::Http(_));
        self.install(NewList {
            set,
            validators: is_http.then(|| validators.clone()),
            stamp,
            from_store: false,
            confirmed_at: Some(SystemTime::now()),
        });
        if is_http && let Some(store) = self.store.clone() {
            let (name, src) = (self.name.clone(), self.source_text.clone());
            let saved =
                tokio::task::spawn_blocking(move || store.save(&name, &src, &body, &validators))
                    .await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(feed = %self.name, error = %e, "cannot save the feed to the store")
                }
                Err(e) => {
                    tracing::warn!(feed = %self.name, error = %e, "cannot save the feed to the store")
                }
            }
        }
        Ok(RefreshOutcome::Updated { entries })
    }

    /// Swaps the new list in and records what identifies it.
    pub(super) fn install(&self, new: NewList) {
        let entries = new.set.len();
        let old = self.set.swap(Arc::new(new.set));
        {
            let mut st = self.state();
            st.loaded = true;
            st.from_store = new.from_store;
            st.entries = entries;
            st.validators = new.validators;
            st.stamp = new.stamp;
            if new.from_store {
                st.last_ok = new.confirmed_at;
            }
        }
        metrics::gauge!(FEED_ENTRIES, "feed" => self.name.clone()).set(entries as f64);
        // A large trie takes a while to free: not on a runtime worker (a request still
        // holding the old list frees it when it lets go).
        if old.len() > 10_000 {
            drop(tokio::task::spawn_blocking(move || drop(old)));
        }
    }

    /// Sets `ipgate_feed_age_seconds` (left unset while the feed never loaded).
    pub(super) fn publish_age(&self) {
        let last_ok = {
            let st = self.state();
            if !st.loaded {
                return;
            }
            st.last_ok
        };
        let age = last_ok
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(FEED_AGE_SECONDS, "feed" => self.name.clone()).set(age);
    }

    /// Delay before the next refresh: `refresh` after a success; after `n` failures in a
    /// row `retry_min * 2^(n-1)`, at most `refresh`.
    pub(super) fn next_delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.refresh_every;
        }
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.options
            .retry_min
            .saturating_mul(factor)
            .min(self.refresh_every)
    }
}

/// The background task of one feed: refresh every `refresh` ±10%, sooner after failures;
/// the age gauge is updated at least every minute.
pub(super) async fn refresh_loop(feed: Arc<Feed>) {
    let mut failures: u32 = if feed.state().last_error.is_some() {
        1
    } else {
        0
    };
    let mut next = tokio::time::Instant::now() + jitter(feed.next_delay(failures), &feed.name);
    loop {
        let now = tokio::time::Instant::now();
        if now < next {
            tokio::time::sleep((next - now).min(AGE_TICK)).await;
            feed.publish_age();
            continue;
        }
        failures = match feed.refresh().await {
            Ok(_) => 0,
            Err(_) => failures.saturating_add(1),
        };
        feed.publish_age();
        next = tokio::time::Instant::now() + jitter(feed.next_delay(failures), &feed.name);
    }
}

/// `d` scaled by a random factor in [0.9, 1.1], so feeds (and gateways) sharing an
/// interval do not all fetch at once.
pub(super) fn jitter(d: Duration, salt: &str) -> Duration {
    use std::hash::BuildHasher;
    // RandomState is seeded from the OS once per thread and then varies per instance.
    let r = std::collections::hash_map::RandomState::new().hash_one(salt);
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.9 + 0.2 * unit)
}
