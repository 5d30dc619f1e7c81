//! The normalized reputation of one IP, as every provider's answer is mapped to it
//! (SPEC §2.3), and the source the gate asks for it.

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

/// One provider's answer about one IP, normalized (SPEC §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    /// Provider name: `iocscout`, `ipswamp` or `file`.
    pub provider: String,
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
    pub fn unknown(provider: impl Into<String>) -> Self {
        Reputation {
            provider: provider.into(),
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
    /// Providers that could not answer, with the reason (never containing a secret).
    pub errors: Vec<(String, String)>,
    /// Whether every answer came from the cache.
    pub cached: bool,
    /// Background mode: the look-up has started and nothing is known yet
    /// (`lookup.on_miss` decides this request).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl Lookup {
    /// True when no provider answered.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// True when a look-up was needed and no provider could answer
    /// (`lookup.on_error` decides). A skipped look-up (private address) is not a failure.
    pub fn failed(&self) -> bool {
        self.answers.is_empty() && !self.errors.is_empty()
    }
}

/// Where the gate gets reputation from. The providers and the cache implement it;
/// [`NoReputation`] answers nothing, so `lookup.on_error` decides.
pub trait ReputationSource: Send + Sync + 'static {
    /// A fresh cached answer, without waiting (the hot path).
    fn cached(&self, _ip: IpAddr) -> Option<std::sync::Arc<Lookup>> {
        None
    }

    /// Reputation for `ip`, looking it up when `allow_remote` (cache only otherwise).
    fn lookup(
        &self,
        ip: IpAddr,
        allow_remote: bool,
    ) -> futures_util::future::BoxFuture<'_, std::sync::Arc<Lookup>>;

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
    ) -> futures_util::future::BoxFuture<'_, std::sync::Arc<Lookup>> {
        Box::pin(std::future::ready(std::sync::Arc::new(Lookup {
            errors: vec![(
                "none".to_string(),
                "no reputation provider configured".to_string(),
            )],
            ..Lookup::default()
        })))
    }
}
