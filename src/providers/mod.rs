//! Reputation providers (SPEC §2 `providers:`, §2.3): the IOCScout and IPSwamp HTTP
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
//! outside (reqwest, the provider's error body) goes through [`redact`].

pub mod file;
pub mod iocscout;
pub mod ipswamp;
mod lenient;
mod redact;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use crate::reputation::{ProviderId, Reputation};

pub use file::FileProvider;
pub use iocscout::Iocscout;
pub use ipswamp::Ipswamp;
pub use lenient::parse_timestamp;
pub use redact::{Secret, redact};

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
        provider: &'static str,
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
        provider: &'static str,
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
) -> Result<Vec<Arc<dyn Provider>>, ProviderBuildError> {
    let mut out: Vec<Arc<dyn Provider>> = Vec::new();
    if let Some(c) = &cfg.iocscout {
        if c.api_key.0.trim().is_empty() {
            tracing::warn!(provider = "iocscout", "api_key is empty: provider skipped");
        } else {
            out.push(Arc::new(Iocscout::new(c, client.clone())?));
        }
    }
    if let Some(c) = &cfg.ipswamp {
        if c.api_key.0.trim().is_empty() {
            tracing::warn!(provider = "ipswamp", "api_key is empty: provider skipped");
        } else {
            out.push(Arc::new(Ipswamp::new(c, client.clone())?));
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

/// The availability state shared by the HTTP providers.
#[derive(Debug, Default)]
pub(crate) struct Gatekeeper {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    disabled: Option<String>,
    cooling_until: Option<SystemTime>,
}

impl Gatekeeper {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn availability(&self) -> Availability {
        let mut st = self.lock();
        if let Some(reason) = &st.disabled {
            return Availability::Disabled(reason.clone());
        }
        match st.cooling_until {
            Some(until) if SystemTime::now() < until => Availability::CoolingDown { until },
            Some(_) => {
                st.cooling_until = None;
                Availability::Ready
            }
            None => Availability::Ready,
        }
    }

    /// `Err` when the provider must not be asked now.
    pub(crate) fn check(&self) -> Result<(), ProviderError> {
        match self.availability() {
            Availability::Ready => Ok(()),
            Availability::Disabled(_) => Err(ProviderError::Disabled),
            Availability::CoolingDown { .. } => Err(ProviderError::CoolingDown),
        }
    }

    pub(crate) fn disable(&self, reason: String) {
        self.lock().disabled = Some(reason);
    }

    pub(crate) fn cool_down(&self, until: SystemTime) {
        let mut st = self.lock();
        // Keep the later of two cool-downs.
        st.cooling_until = Some(st.cooling_until.map_or(until, |u| u.max(until)));
    }
}

/// A provider's answer, read (bounded) but not yet interpreted.
pub(crate) struct RawAnswer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Sends `req` (its timeout already set) and reads the body, at most
/// [`MAX_BODY_BYTES`]. Transport errors are stripped of URLs and redacted.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    secret: &Secret,
) -> Result<RawAnswer, ProviderError> {
    let mut resp = req.send().await.map_err(|e| map_reqwest(e, secret))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| map_reqwest(e, secret))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ProviderError::Decode(format!(
                "answer larger than {MAX_BODY_BYTES} bytes (HTTP {status})"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawAnswer {
        status,
        retry_after,
        body,
    })
}

/// The longest `Retry-After` honoured (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// `Retry-After`: delta-seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// A reqwest error as a [`ProviderError`], without URL and redacted.
pub(crate) fn map_reqwest(e: reqwest::Error, secret: &Secret) -> ProviderError {
    let e = e.without_url();
    if e.is_timeout() {
        return ProviderError::Timeout;
    }
    let msg = secret.redact(&error_chain(&e));
    if e.is_decode() {
        ProviderError::Decode(msg)
    } else {
        ProviderError::Transport(msg)
    }
}

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

/// The human message of an error body: `message`, else `error` (when a string), else the
/// start of the text. Control characters are replaced; at most 200 characters.
pub(crate) fn error_message(body: &[u8]) -> String {
    error_message_redacted(body, |s| s.to_string())
}

/// [`error_message`] with `redact` applied to the whole text before it is cut, so a
/// secret that crosses the cut cannot leave a prefix behind.
pub(crate) fn error_message_redacted(body: &[u8], redact: impl Fn(&str) -> String) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error", "detail"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
        });
    let text = redact(&from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()));
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if out.is_empty() {
        out.push_str("(empty body)");
    }
    out
}

/// How a status outside 200 is read, shared by the HTTP providers.
pub(crate) struct Refusal<'a> {
    pub provider: &'static str,
    pub gate: &'a Gatekeeper,
    pub secret: &'a Secret,
}

impl Refusal<'_> {
    /// Maps a non-200 status; disables or cools the provider down as SPEC §2.3 says.
    /// `quota_message` is true when the body says the quota is spent (IPSwamp's 403).
    pub(crate) fn classify(&self, ans: &RawAnswer, quota_message: bool) -> ProviderError {
        let msg = error_message_redacted(&ans.body, |s| self.secret.redact(s));
        let status = ans.status;
        let err = match status {
            400 => ProviderError::BadRequest(msg),
            429 => self.quota(ans, &msg),
            401 | 403 if quota_message => self.quota(ans, &msg),
            401 | 403 => {
                tracing::error!(
                    provider = self.provider,
                    status,
                    outcome = "unauthorized",
                    "API key refused: provider disabled until reload: {msg}"
                );
                self.gate.disable(format!(
                    "{} refused the API key (HTTP {status}: {msg})",
                    self.provider
                ));
                ProviderError::Unauthorized(msg)
            }
            _ => ProviderError::Server(status, msg),
        };
        if !matches!(
            err,
            ProviderError::Unauthorized(_) | ProviderError::QuotaExhausted { .. }
        ) {
            tracing::warn!(
                provider = self.provider,
                status,
                outcome = err.outcome(),
                "look-up failed: {err}"
            );
        }
        err
    }

    /// Cools the provider down until `Retry-After`, else the next UTC midnight.
    fn quota(&self, ans: &RawAnswer, msg: &str) -> ProviderError {
        let now = SystemTime::now();
        let until = ans
            .retry_after
            .and_then(|d| now.checked_add(d))
            .unwrap_or_else(|| next_utc_midnight(now));
        self.gate.cool_down(until);
        let wait = until.duration_since(now).map_or(0, |d| d.as_secs());
        tracing::warn!(
            provider = self.provider,
            status = ans.status,
            outcome = "quota_exhausted",
            cooldown_secs = wait,
            "quota exhausted: no look-up before the cool-down ends: {msg}"
        );
        ProviderError::QuotaExhausted {
            retry_after: ans.retry_after,
        }
    }
}

/// Logs a failure that happened before a status was read (timeout, transport, decode).
pub(crate) fn log_failure(provider: &'static str, err: &ProviderError) {
    tracing::warn!(provider, outcome = err.outcome(), "look-up failed: {err}");
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
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-5", now), None);
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

    #[test]
    fn error_messages_are_short_and_clean() {
        assert_eq!(
            error_message(br#"{"error":true,"statusCode":403,"message":"Invalid API key"}"#),
            "Invalid API key"
        );
        assert_eq!(error_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(b"line1\nline2"), "line1 line2");
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(error_message(&[b'x'; 1000]).len(), 200);
        // A key that crosses the 200-character cut leaves no prefix behind.
        let body = format!("{}KEY-sekrit-1234567890 trailing", "x".repeat(190));
        let msg = error_message_redacted(body.as_bytes(), |s| {
            s.replace("KEY-sekrit-1234567890", "***")
        });
        assert!(!msg.contains("KEY-se"), "{msg}");
    }

    #[test]
    fn gatekeeper_transitions() {
        let g = Gatekeeper::default();
        assert_eq!(g.availability(), Availability::Ready);
        g.cool_down(SystemTime::now() - Duration::from_secs(1));
        assert_eq!(
            g.availability(),
            Availability::Ready,
            "a past cool-down is over"
        );
        let until = SystemTime::now() + Duration::from_secs(60);
        g.cool_down(until);
        assert_eq!(g.availability(), Availability::CoolingDown { until });
        assert_eq!(g.check(), Err(ProviderError::CoolingDown));
        g.cool_down(SystemTime::now() + Duration::from_secs(1));
        assert_eq!(
            g.availability(),
            Availability::CoolingDown { until },
            "the later one wins"
        );
        g.disable("refused".into());
        assert_eq!(g.availability(), Availability::Disabled("refused".into()));
        assert_eq!(g.check(), Err(ProviderError::Disabled));
    }
}
