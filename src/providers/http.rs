//! The client skeleton shared by the HTTP providers: the request with the provider's
//! timeout, the bounded read, the status mapping (docs/configuration.md, "Provider answers"), `Retry-After`, the
//! availability state and the redaction of the key. A provider adds only its request
//! shape, its status quirks and its decoder ([`HttpApi`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::{
    Availability, MAX_BODY_BYTES, MAX_RETRY_AFTER, Provider, ProviderBuildError, ProviderError,
    Secret, error_chain, next_utc_midnight,
};
use crate::clock::SharedClock;
use crate::reputation::{ProviderId, Reputation};

/// What an HTTP provider adds to [`Http`]; every `HttpApi` is a [`Provider`].
pub(crate) trait HttpApi: Send + Sync + fmt::Debug + 'static {
    /// The shared client.
    fn http(&self) -> &Http;

    /// `req` (a GET of the endpoint) with the query and credentials for `ip`.
    fn request(&self, req: reqwest::RequestBuilder, ip: &str) -> reqwest::RequestBuilder;

    /// Decodes a 2xx body.
    fn decode_ok(body: &[u8]) -> Result<Decoded, ProviderError>;

    /// True when a refusal says the quota is spent rather than that the key is bad.
    fn quota_spent(_ans: &RawAnswer) -> bool {
        false
    }
}

impl<A: HttpApi> Provider for A {
    fn id(&self) -> ProviderId {
        self.http().id
    }

    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Result<Reputation, ProviderError>> {
        Box::pin(self.http().lookup(self, ip))
    }

    fn availability(&self) -> Availability {
        self.http().gate.availability()
    }

    fn daily_quota(&self) -> Option<u32> {
        Some(self.http().daily_quota)
    }

    fn key_fingerprint(&self) -> u64 {
        self.http().key.fingerprint()
    }
}

/// What a 2xx body turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A reputation.
    Reputation(Reputation),
    /// An error body (`{"error": true, "statusCode": N, "message": ...}`) sent with a 2xx,
    /// read as that status.
    ErrorBody {
        /// Its `statusCode`.
        status: u16,
    },
}

/// The state every HTTP provider keeps: endpoint, key, limits and availability.
pub(crate) struct Http {
    id: ProviderId,
    url: reqwest::Url,
    pub(crate) key: Secret,
    timeout: Duration,
    daily_quota: u32,
    client: reqwest::Client,
    gate: Gatekeeper,
}

impl Http {
    /// Reads time from `clock` (cool-downs, `Retry-After` dates) instead of the system.
    pub(crate) fn set_clock(&mut self, clock: SharedClock) {
        self.gate.clock = clock;
    }

    /// `endpoint` (made from `base_url`, which error messages name) for the provider
    /// `id`, with the trimmed `api_key`.
    pub(crate) fn new(
        id: ProviderId,
        api_key: &str,
        base_url: &str,
        endpoint: &str,
        timeout: Duration,
        daily_quota: u32,
        client: reqwest::Client,
    ) -> Result<Self, ProviderBuildError> {
        let key = Secret::new(api_key.trim());
        let url = reqwest::Url::parse(endpoint).map_err(|e| ProviderBuildError::BaseUrl {
            provider: id,
            message: key.redact(&format!("`{base_url}`: {e}")),
        })?;
        Ok(Http {
            id,
            url,
            key,
            timeout,
            daily_quota,
            client,
            gate: Gatekeeper::default(),
        })
    }

    /// A provider's `Debug`: the redacted endpoint as `url_field`, `***` for the key,
    /// `extra`, then the timeout, the quota and the availability.
    pub(crate) fn fmt_debug(
        &self,
        f: &mut fmt::Formatter<'_>,
        type_name: &str,
        url_field: &str,
        extra: &[(&str, &dyn fmt::Debug)],
    ) -> fmt::Result {
        let mut d = f.debug_struct(type_name);
        d.field(url_field, &self.key.redact(self.url.as_str()))
            .field("api_key", &self.key);
        for (name, value) in extra {
            d.field(name, value);
        }
        d.field("timeout", &self.timeout)
            .field("daily_quota", &self.daily_quota)
            .field("availability", &self.gate.availability())
            .finish()
    }

    async fn lookup<A: HttpApi>(&self, api: &A, ip: IpAddr) -> Result<Reputation, ProviderError> {
        self.gate.check()?;
        let ip = ip.to_canonical().to_string();
        let req = api
            .request(self.client.get(self.url.clone()), &ip)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        let mut ans = self.send(req).await.map_err(|e| self.failed(e))?;
        if (200..300).contains(&ans.status) {
            match A::decode_ok(&ans.body) {
                Ok(Decoded::Reputation(mut rep)) => {
                    // A key the provider echoes in its answer must not reach the cache,
                    // `check` or the admin API: redact it before anyone sees the answer.
                    rep.raw = self.key.redact_raw(std::mem::take(&mut rep.raw));
                    if let Some(country) = &mut rep.country {
                        *country = self.key.redact(country);
                    }
                    tracing::debug!(
                        provider = self.id.as_str(),
                        status = ans.status,
                        outcome = "ok",
                        "look-up answered"
                    );
                    return Ok(rep);
                }
                Ok(Decoded::ErrorBody { status }) => ans.status = status,
                Err(ProviderError::Decode(m)) => {
                    return Err(self.failed(ProviderError::Decode(self.key.redact(&m))));
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        Err(self.classify(&ans, A::quota_spent(&ans)))
    }

    /// Sends `req` (its timeout already set) and reads the body, at most
    /// [`MAX_BODY_BYTES`]. Transport errors are stripped of URLs and redacted.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<RawAnswer, ProviderError> {
        let mut resp = req.send().await.map_err(|e| self.map_reqwest(e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.gate.clock.now()));
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.map_reqwest(e))? {
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

    /// A reqwest error as a [`ProviderError`], without URL and redacted.
    fn map_reqwest(&self, e: reqwest::Error) -> ProviderError {
        let e = e.without_url();
        if e.is_timeout() {
            return ProviderError::Timeout;
        }
        let msg = self.key.redact(&error_chain(&e));
        if e.is_decode() {
            ProviderError::Decode(msg)
        } else {
            ProviderError::Transport(msg)
        }
    }

    /// Maps a non-2xx status; disables or cools the provider down as docs/configuration.md, "Provider answers" says.
    /// `quota_message` is true when the body says the quota is spent (IPSwamp's 403).
    fn classify(&self, ans: &RawAnswer, quota_message: bool) -> ProviderError {
        let msg = error_message_redacted(&ans.body, |s| self.key.redact(s));
        let status = ans.status;
        let err = match status {
            400 => ProviderError::BadRequest(msg),
            429 => return self.quota(ans, &msg),
            401 | 403 if quota_message => return self.quota(ans, &msg),
            401 | 403 => {
                tracing::error!(
                    provider = self.id.as_str(),
                    status,
                    outcome = "unauthorized",
                    "API key refused: provider disabled until reload: {msg}"
                );
                self.gate.disable(format!(
                    "{} refused the API key (HTTP {status}: {msg})",
                    self.id.as_str()
                ));
                return ProviderError::Unauthorized(msg);
            }
            _ => ProviderError::Server(status, msg),
        };
        tracing::warn!(
            provider = self.id.as_str(),
            status,
            outcome = err.outcome(),
            "look-up failed: {err}"
        );
        err
    }

    /// Cools the provider down until `Retry-After`, else the next UTC midnight.
    fn quota(&self, ans: &RawAnswer, msg: &str) -> ProviderError {
        let now = self.gate.clock.now();
        let until = ans
            .retry_after
            .and_then(|d| now.checked_add(d))
            .unwrap_or_else(|| next_utc_midnight(now));
        self.gate.cool_down(until);
        let wait = until.duration_since(now).map_or(0, |d| d.as_secs());
        tracing::warn!(
            provider = self.id.as_str(),
            status = ans.status,
            outcome = "quota_exhausted",
            cooldown_secs = wait,
            "quota exhausted: no look-up before the cool-down ends: {msg}"
        );
        ProviderError::QuotaExhausted {
            retry_after: ans.retry_after,
        }
    }

    /// Logs a failure that happened before a status was read (timeout, transport, decode).
    fn failed(&self, err: ProviderError) -> ProviderError {
        let provider = self.id.as_str();
        tracing::warn!(provider, outcome = err.outcome(), "look-up failed: {err}");
        err
    }
}

/// A provider's answer, read (bounded) but not yet interpreted.
pub(crate) struct RawAnswer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// `Retry-After`: delta-seconds or an HTTP date, at most [`MAX_RETRY_AFTER`]. A date in
/// the past, `0` or an unparsable value is None: the default cool-down (the next UTC
/// midnight) applies, never an immediate retry.
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(now).ok()?
        }
    };
    Some(d.min(MAX_RETRY_AFTER)).filter(|d| !d.is_zero())
}

/// The human message of an error body: `message`, else `error` (when a string), else the
/// start of the text. Control characters are replaced; at most 200 characters.
pub(crate) fn error_message(body: &[u8]) -> String {
    error_message_redacted(body, |s| s.to_string())
}

/// [`error_message`] with `redact` applied to the whole text before it is cut, so a
/// secret that crosses the cut cannot leave a prefix behind.
fn error_message_redacted(body: &[u8], redact: impl Fn(&str) -> String) -> String {
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

/// The availability state of an HTTP provider.
#[derive(Debug)]
struct Gatekeeper {
    state: Mutex<GateState>,
    clock: SharedClock,
}

impl Default for Gatekeeper {
    fn default() -> Self {
        Gatekeeper {
            state: Mutex::default(),
            clock: crate::clock::system(),
        }
    }
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

    fn availability(&self) -> Availability {
        let mut st = self.lock();
        if let Some(reason) = &st.disabled {
            return Availability::Disabled(reason.clone());
        }
        match st.cooling_until {
            Some(until) if self.clock.now() < until => Availability::CoolingDown { until },
            Some(_) => {
                st.cooling_until = None;
                Availability::Ready
            }
            None => Availability::Ready,
        }
    }

    /// `Err` when the provider must not be asked now.
    fn check(&self) -> Result<(), ProviderError> {
        match self.availability() {
            Availability::Ready => Ok(()),
            Availability::Disabled(_) => Err(ProviderError::Disabled),
            Availability::CoolingDown { .. } => Err(ProviderError::CoolingDown),
        }
    }

    fn disable(&self, reason: String) {
        self.lock().disabled = Some(reason);
    }

    fn cool_down(&self, until: SystemTime) {
        let mut st = self.lock();
        // Keep the later of two cool-downs.
        st.cooling_until = Some(st.cooling_until.map_or(until, |u| u.max(until)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // In the past, or zero: the default cool-down, not "retry now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("0", now), None);
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
