//! The normalized reputation of one IP, as every provider's answer is mapped to it
//! (docs/configuration.md, "Provider answers"), and the source the gate asks for it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Normalized status of an IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A recognized legitimate scanner or service.
    Safe,
    /// Needs a closer look.
    Suspicious,
    /// Malicious.
    Threat,
    /// Nothing known.
    Unknown,
}

impl Status {
    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Safe => "safe",
            Status::Suspicious => "suspicious",
            Status::Threat => "threat",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "safe" => Ok(Status::Safe),
            "suspicious" => Ok(Status::Suspicious),
            "threat" => Ok(Status::Threat),
            "unknown" => Ok(Status::Unknown),
            other => Err(format!(
                "unknown status `{other}` (expected safe, suspicious, threat or unknown)"
            )),
        }
    }
}

/// A reputation provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ProviderId {
    /// IOCScout (remote, scarce quota).
    Iocscout,
    /// IPSwamp (remote).
    Ipswamp,
    /// The offline `file` provider (local, spends nothing).
    File,
}

impl ProviderId {
    /// Every provider, in a fixed order ([`ProviderId::index`]).
    pub const ALL: [ProviderId; 3] = [ProviderId::Iocscout, ProviderId::Ipswamp, ProviderId::File];

    /// The name used in config, output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Iocscout => "iocscout",
            ProviderId::Ipswamp => "ipswamp",
            ProviderId::File => "file",
        }
    }

    /// Position in [`ProviderId::ALL`], for per-provider arrays.
    pub fn index(self) -> usize {
        match self {
            ProviderId::Iocscout => 0,
            ProviderId::Ipswamp => 1,
            ProviderId::File => 2,
        }
    }

    /// True for providers asked over the network (they spend quota; `skip_private`
    /// applies to them).
    pub fn is_remote(self) -> bool {
        self != ProviderId::File
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderId::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown provider `{s}` (expected iocscout, ipswamp or file)"))
    }
}

/// Who could not answer in a [`Lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorSource {
    /// A provider failed (down, timeout, quota, refused key, bad answer).
    Provider(ProviderId),
    /// The whole look-up took longer than `lookup.timeout`.
    Timeout,
    /// The look-up task ended without an answer.
    Failed,
    /// Only the cache was asked and it holds nothing for the IP.
    NotCached,
    /// No provider is configured.
    NoProvider,
}

impl ErrorSource {
    /// The provider's name, or `timeout`, `lookup`, `cache`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Provider(p) => p.as_str(),
            ErrorSource::Timeout => "timeout",
            ErrorSource::Failed => "lookup",
            ErrorSource::NotCached => "cache",
            ErrorSource::NoProvider => "none",
        }
    }
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Threat classes (IOCScout `threat.class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreatClass {
    Attack,
    C2,
    Malware,
    Phishing,
    Spam,
    Suspicious,
}

impl ThreatClass {
    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreatClass::Attack => "attack",
            ThreatClass::C2 => "c2",
            ThreatClass::Malware => "malware",
            ThreatClass::Phishing => "phishing",
            ThreatClass::Spam => "spam",
            ThreatClass::Suspicious => "suspicious",
        }
    }
}

impl FromStr for ThreatClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "attack" => Ok(ThreatClass::Attack),
            "c2" => Ok(ThreatClass::C2),
            "malware" => Ok(ThreatClass::Malware),
            "phishing" => Ok(ThreatClass::Phishing),
            "spam" => Ok(ThreatClass::Spam),
            "suspicious" => Ok(ThreatClass::Suspicious),
            other => Err(format!(
                "unknown class `{other}` (expected attack, c2, malware, phishing, spam or suspicious)"
            )),
        }
    }
}

/// One provider's answer about one IP, normalized (docs/configuration.md, "Provider answers").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    /// The provider that answered.
    pub provider: ProviderId,
    pub status: Status,
    /// 0–100, when the provider gives one.
    pub score: Option<u8>,
    #[serde(default)]
    pub classes: Vec<ThreatClass>,
    pub tor: Option<bool>,
    pub vpn: Option<bool>,
    /// A known legitimate scanner (or whitelisted service).
    #[serde(default)]
    pub scanner: bool,
    /// Country as the provider gives it (ISO code or name).
    pub country: Option<String>,
    pub asn: Option<u32>,
    /// Last malicious activity, unix seconds.
    pub last_seen: Option<i64>,
    /// The provider's full answer, every field kept (as compact JSON text).
    #[serde(default)]
    pub raw: RawJson,
}

impl Reputation {
    /// An answer with nothing known, for `provider`.
    pub fn unknown(provider: ProviderId) -> Self {
        Reputation {
            provider,
            status: Status::Unknown,
            score: None,
            classes: Vec::new(),
            tor: None,
            vpn: None,
            scanner: false,
            country: None,
            asn: None,
            last_seen: None,
            raw: RawJson::default(),
        }
    }
}

/// A provider's answer kept as compact JSON text. It serializes inline (as the JSON it
/// holds); a parsed `serde_json::Value` tree would cost several times the memory in a
/// cache of a million answers.
#[derive(Clone)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON of `value`.
    pub fn from_value(value: &serde_json::Value) -> RawJson {
        serde_json::value::to_raw_value(value)
            .map(RawJson)
            .unwrap_or_default()
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a value tree.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson(serde_json::value::RawValue::NULL.to_owned())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl PartialEq<serde_json::Value> for RawJson {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any self-describing format: read a value, keep its compact text.
        let v = serde_json::Value::deserialize(d)?;
        Ok(RawJson::from_value(&v))
    }
}

/// What the reputation sources could say about one IP.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Lookup {
    /// Answers, one per provider that answered.
    pub answers: Vec<Reputation>,
    /// Who could not answer, with the reason (never containing a secret).
    pub errors: Vec<(ErrorSource, String)>,
    /// Whether every answer came from the cache.
    pub cached: bool,
}

impl Lookup {
    /// A look-up that failed for one reason.
    pub fn failure(source: ErrorSource, message: impl Into<String>) -> Lookup {
        Lookup {
            errors: vec![(source, message.into())],
            ..Lookup::default()
        }
    }

    /// True when no provider answered.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// True when `provider` was asked and could not answer.
    pub fn failed_for(&self, provider: ProviderId) -> bool {
        !self.answers.iter().any(|r| r.provider == provider)
            && self
                .errors
                .iter()
                .any(|(e, _)| *e == ErrorSource::Provider(provider))
    }

    /// True when a look-up was needed and no provider could answer
    /// (`lookup.on_error` decides). A skipped look-up (private address) is not a failure.
    pub fn failed(&self) -> bool {
        self.answers.is_empty() && !self.errors.is_empty()
    }
}

/// What a source gives for one IP.
#[derive(Debug, Clone)]
pub enum Answer {
    /// What is known (answers and errors).
    Known(std::sync::Arc<Lookup>),
    /// Background mode: the look-up has started and nothing is known yet
    /// (`lookup.on_miss` decides this request).
    Pending,
}

/// Where the gate gets reputation from. The providers and the cache implement it;
/// [`NoReputation`] answers nothing, so `lookup.on_error` decides.
pub trait ReputationSource: Send + Sync + 'static {
    /// A fresh cached answer, without waiting (the hot path).
    fn cached(&self, _ip: IpAddr) -> Option<std::sync::Arc<Lookup>> {
        None
    }

    /// [`Self::cached`] for a decision that started at `at` (read a moment ago): a
    /// source that compares expiries may derive its time from it instead of reading
    /// the clock again.
    fn cached_at(&self, ip: IpAddr, _at: crate::clock::Moment) -> Option<std::sync::Arc<Lookup>> {
        self.cached(ip)
    }

    /// Reputation for `ip`, looking it up when `allow_remote` (cache only otherwise).
    fn lookup(&self, ip: IpAddr, allow_remote: bool)
    -> futures_util::future::BoxFuture<'_, Answer>;

    /// Reasons this source is not ready (a provider disabled, ...); empty when ready.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// Forgets what is cached for `ip`; true when something was removed.
    fn evict(&self, _ip: IpAddr) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(std::future::ready(false))
    }
}

/// A source with nothing to say.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReputation;

impl ReputationSource for NoReputation {
    fn lookup(
        &self,
        _ip: IpAddr,
        _allow_remote: bool,
    ) -> futures_util::future::BoxFuture<'_, Answer> {
        Box::pin(std::future::ready(Answer::Known(std::sync::Arc::new(
            Lookup::failure(ErrorSource::NoProvider, "no reputation provider configured"),
        ))))
    }
}
