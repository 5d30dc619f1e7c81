//! Reputation providers (docs/configuration.md, "Providers" and "Provider answers"): the IOCScout and IPSwamp HTTP
//! clients and the offline `file` provider, each answering with a normalized
//! [`Reputation`].
//!
//! A provider only looks up; caching, the daily quota counter and metrics belong to the
//! caller. What a provider does keep is its [`Availability`]: after a 401/403 it is
//! disabled until the configuration is reloaded (that is, until [`build`] runs again),
//! and after a 429 or a spent quota it cools down until the next UTC midnight (or the
//! `Retry-After` it was given). While not [`Availability::Ready`], [`Provider::lookup`]
//! answers at once with [`ProviderError::Disabled`] / [`ProviderError::CoolingDown`]
//! and makes no network call.
//!
//! Secrets: no error message, `Debug` output or log line of this module contains an API
//! key. reqwest errors are stripped of their URL and every message that could come from
//! outside (reqwest, the provider's error body) goes through [`Secret::redact`].

pub mod file;
mod http;
pub mod iocscout;
pub mod ipswamp;
mod lenient;
mod redact;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::reputation::{ProviderId, Reputation};

pub use file::FileProvider;
pub use iocscout::Iocscout;
pub use ipswamp::Ipswamp;
pub use redact::Secret;

/// Largest response body read from a provider; a bigger one is a decode error.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A source of reputation for single IPs. `Debug` output never shows an API key.
pub trait Provider: Send + Sync + std::fmt::Debug + 'static {
    /// Which provider this is.
    fn id(&self) -> ProviderId;

    /// Looks `ip` up (IPv4-mapped IPv6 is looked up as IPv4). Never retries; while the
    /// provider is disabled or cooling down, fails at once without a network call.
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Result<Reputation, ProviderError>>;

    /// Whether `lookup` would try the network now.
    fn availability(&self) -> Availability;

    /// The configured `daily_quota` (look-ups per UTC day), for providers that have one.
    /// The provider does not count: the caller (cache/quota layer) does.
    fn daily_quota(&self) -> Option<u32> {
        None
    }

    /// A stable, non-reversible fingerprint of the API key (0 without one): a refused key
    /// is remembered by it, so a new key is tried at once and the same key is not.
    fn key_fingerprint(&self) -> u64 {
        0
    }
}

/// Whether a provider can be asked now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Look-ups go to the provider.
    Ready,
    /// The provider refused the key (401/403): no look-up until the configuration is
    /// reloaded. The reason never contains the key.
    Disabled(String),
    /// A 429 or a spent quota: no look-up before `until` (next UTC midnight, or what
    /// `Retry-After` said).
    CoolingDown {
        /// When look-ups may resume.
        until: SystemTime,
    },
}

impl Availability {
    /// True for [`Availability::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Availability::Ready)
    }
}

/// Why a look-up gave no answer. Messages never contain an API key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 400: the provider rejected the request (the IP should not be asked again soon).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401/403: the key was refused; the provider is now disabled until reload.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 429, or IPSwamp's 403 "Usage limit exceeded": the provider cools down.
    /// `retry_after` is the provider's `Retry-After`, when it sent one.
    #[error("quota exhausted{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    QuotaExhausted {
        /// The `Retry-After` the provider sent, if any.
        retry_after: Option<Duration>,
    },
    /// Not asked: the provider is cooling down after a 429 or a spent quota.
    #[error("cooling down after a spent quota")]
    CoolingDown,
    /// Not asked: the provider refused the key earlier and is disabled until reload.
    #[error("disabled until reload (the API key was refused)")]
    Disabled,
    /// No complete answer within the provider's `timeout`.
    #[error("timed out")]
    Timeout,
    /// 5xx, or any other status the provider does not document (3xx, 404, ...).
    #[error("HTTP {0}: {1}")]
    Server(u16, String),
    /// The answer was not JSON, not an object, too big, or not a reputation.
    #[error("undecodable answer: {0}")]
    Decode(String),
    /// The connection failed (refused, reset, closed without an answer, TLS, DNS).
    #[error("transport: {0}")]
    Transport(String),
}

impl ProviderError {
    /// The `outcome` label of `ipgate_provider_requests_total` (`ok` is success):
    /// `timeout`, `error`, `quota_exhausted`, `unauthorized` or `bad_request`.
    /// [`ProviderError::CoolingDown`] and [`ProviderError::Disabled`] made no request;
    /// they map to `quota_exhausted` / `unauthorized` should the caller count them
    /// (see [`ProviderError::reached_provider`]).
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::BadRequest(_) => "bad_request",
            ProviderError::Unauthorized(_) | ProviderError::Disabled => "unauthorized",
            ProviderError::QuotaExhausted { .. } | ProviderError::CoolingDown => "quota_exhausted",
            ProviderError::Timeout => "timeout",
            ProviderError::Server(..) | ProviderError::Decode(_) | ProviderError::Transport(_) => {
                "error"
            }
        }
    }

    /// False for the errors given without asking the provider (disabled, cooling down).
    pub fn reached_provider(&self) -> bool {
        !matches!(self, ProviderError::CoolingDown | ProviderError::Disabled)
    }
}

/// Why the providers could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderBuildError {
    /// The reputation file could not be read or has errors.
    #[error("reputation file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// A provider's `base_url` is unusable.
    #[error("providers.{provider}.base_url: {message}")]
    BaseUrl {
        /// `iocscout` or `ipswamp`.
        provider: ProviderId,
        /// What is wrong.
        message: String,
    },
    /// A provider's `api_key` cannot be sent in an HTTP header (control characters).
    /// The key itself is never shown.
    #[error(
        "providers.{provider}.api_key contains characters that cannot be sent in an HTTP header"
    )]
    ApiKey {
        /// The provider.
        provider: ProviderId,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Builds the configured providers, in the order iocscout, ipswamp, file. A provider
/// whose `api_key` is empty (or blank) is skipped with one warning. The `file`
/// provider reads its file now.
///
/// `client` should come from [`http_client`] (no redirects: a redirect would carry
/// IOCScout's key, which travels in the URL, to another URL and into reqwest's logs).
pub fn build(
    cfg: &crate::config::Providers,
    client: reqwest::Client,
    clock: crate::clock::SharedClock,
) -> Result<Vec<Arc<dyn Provider>>, ProviderBuildError> {
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();
    if let Some(c) = &cfg.iocscout {
        if c.api_key.0.trim().is_empty() {
            tracing::warn!(provider = "iocscout", "api_key is empty: provider skipped");
        } else {
            out.push(Arc::new(
                Iocscout::new(c, client.clone())?.with_clock(clock.clone()),
            ));
        }
    }
    if let Some(c) = &cfg.ipswamp {
        if c.api_key.0.trim().is_empty() {
            tracing::warn!(provider = "ipswamp", "api_key is empty: provider skipped");
        } else {
            out.push(Arc::new(
                Ipswamp::new(c, client.clone())?.with_clock(clock.clone()),
            ));
        }
    }
    if let Some(c) = &cfg.file {
        out.push(Arc::new(FileProvider::load(&c.path.0)?));
    }
    Ok(out)
}

/// The HTTP client the providers should use: rustls, no redirects, a 5 s connect
/// timeout, `User-Agent: ipgate/VERSION`. (Per-request timeouts come from each
/// provider's `timeout`.)
pub fn http_client() -> Result<reqwest::Client, ProviderBuildError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("ipgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderBuildError::Client(error_chain(&e.without_url())))
}

/// The next UTC midnight after `now`.
pub fn next_utc_midnight(now: SystemTime) -> SystemTime {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs((secs / 86_400 + 1) * 86_400)
}

/// The longest `Retry-After` honoured (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// `err: source: source...`, each level once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_msg = s.to_string();
        if !out.contains(&s_msg) {
            out.push_str(": ");
            out.push_str(&s_msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn midnight_is_next_utc_day() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 5);
        assert_eq!(
            next_utc_midnight(t),
            UNIX_EPOCH + Duration::from_secs(86_400 * 4)
        );
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 4);
        assert_eq!(
            next_utc_midnight(t),
            UNIX_EPOCH + Duration::from_secs(86_400 * 5)
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(ProviderError::Timeout.outcome(), "timeout");
        assert_eq!(
            ProviderError::BadRequest(String::new()).outcome(),
            "bad_request"
        );
        assert_eq!(
            ProviderError::Unauthorized(String::new()).outcome(),
            "unauthorized"
        );
        assert_eq!(
            ProviderError::QuotaExhausted { retry_after: None }.outcome(),
            "quota_exhausted"
        );
        assert_eq!(ProviderError::Server(500, String::new()).outcome(), "error");
        assert_eq!(ProviderError::Decode(String::new()).outcome(), "error");
        assert_eq!(ProviderError::Transport(String::new()).outcome(), "error");
        assert!(!ProviderError::CoolingDown.reached_provider());
        assert!(!ProviderError::Disabled.reached_provider());
        assert!(ProviderError::Timeout.reached_provider());
    }
}
