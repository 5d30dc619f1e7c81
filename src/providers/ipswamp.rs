//! IPSwamp (<https://ipswamp.com/api/v1>): `GET {base_url}/checkIP?ip=IP[&detailed=true]`
//! with `Authorization: Bearer KEY` or `X-API-Key: KEY`.
//!
//! IPSwamp's published pages disagree with each other, so the decoder is lenient
//! (docs/configuration.md, "Provider answers"): see [`normalize`].

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::http::Decoded;
use super::http::{Http, HttpApi, RawAnswer, error_message};
use super::lenient;
use super::{ProviderBuildError, ProviderError};
use crate::config::{IpswampAuth, IpswampConfig};
use crate::reputation::{ProviderId, Reputation, Status};

/// The words of IPSwamp's 403 that mean "quota spent", not "bad key".
pub const USAGE_LIMIT_MESSAGE: &str = "Usage limit exceeded";

/// The IPSwamp client.
pub struct Ipswamp {
    http: Http,
    auth: IpswampAuth,
    auth_header: (HeaderName, HeaderValue),
    detailed: bool,
}

impl fmt::Debug for Ipswamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: [(&str, &dyn fmt::Debug); 2] =
            [("auth", &self.auth), ("detailed", &self.detailed)];
        self.http.fmt_debug(f, "Ipswamp", "url", &extra)
    }
}

impl Ipswamp {
    /// Reads time (cool-downs, `Retry-After` dates) from `clock` instead of the system.
    pub fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.http.set_clock(clock);
        self
    }

    /// A client for `cfg` (its `api_key` should be non-empty; see [`super::build`]).
    pub fn new(cfg: &IpswampConfig, client: reqwest::Client) -> Result<Self, ProviderBuildError> {
        let base = &cfg.base_url.0;
        let endpoint = format!("{}/checkIP", base.trim_end_matches('/'));
        let (timeout, quota) = (cfg.timeout.0, cfg.daily_quota);
        let http = Http::new(
            ProviderId::Ipswamp,
            &cfg.api_key.0,
            base,
            &endpoint,
            timeout,
            quota,
            client,
        )?;
        let key = http.key.expose();
        let (name, value) = match cfg.auth {
            IpswampAuth::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {key}")),
            IpswampAuth::Header => (HeaderName::from_static("x-api-key"), key.to_string()),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| ProviderBuildError::ApiKey {
            provider: ProviderId::Ipswamp,
        })?;
        value.set_sensitive(true);
        Ok(Ipswamp {
            http,
            auth: cfg.auth,
            auth_header: (name, value),
            detailed: cfg.detailed,
        })
    }
}

impl HttpApi for Ipswamp {
    fn http(&self) -> &Http {
        &self.http
    }

    fn request(&self, req: reqwest::RequestBuilder, ip: &str) -> reqwest::RequestBuilder {
        let mut query = vec![("ip", ip)];
        if self.detailed {
            query.push(("detailed", "true"));
        }
        let (name, value) = &self.auth_header;
        req.query(&query).header(name.clone(), value.clone())
    }

    fn decode_ok(body: &[u8]) -> Result<Decoded, ProviderError> {
        decode(body)
    }

    fn quota_spent(ans: &RawAnswer) -> bool {
        is_usage_limit(ans.status, &ans.body)
    }
}

/// IPSwamp's spent quota: a 401/403/429 whose message says "Usage limit exceeded".
fn is_usage_limit(status: u16, body: &[u8]) -> bool {
    matches!(status, 401 | 403 | 429)
        && error_message(body)
            .to_ascii_lowercase()
            .contains(&USAGE_LIMIT_MESSAGE.to_ascii_lowercase())
}

/// Decodes a 2xx body (lenient, docs/configuration.md, "Provider answers"). `raw` of the reputation is the whole JSON
/// as received.
pub fn decode(body: &[u8]) -> Result<Decoded, ProviderError> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Decode(format!("not JSON: {e}")))?;
    let Some(obj) = raw.as_object() else {
        return Err(ProviderError::Decode("not a JSON object".into()));
    };
    let resp = Response::deserialize(&raw)
        .map_err(|e| ProviderError::Decode(format!("unexpected shape: {e}")))?;
    if resp.error == Some(true) {
        return match resp.status_code.and_then(|c| u16::try_from(c).ok()) {
            Some(status) if (400..600).contains(&status) => Ok(Decoded::ErrorBody { status }),
            _ => Err(ProviderError::Decode(format!(
                "error answer: {}",
                resp.message.as_deref().unwrap_or("(no message)")
            ))),
        };
    }
    if !["details", "ipInfo", "message"]
        .iter()
        .any(|k| obj.contains_key(*k))
    {
        return Err(ProviderError::Decode(
            "no IPSwamp field (details, ipInfo, message) in the answer".into(),
        ));
    }
    let whitelisted = obj
        .get("details")
        .and_then(Value::as_object)
        .is_some_and(is_whitelisted)
        || is_whitelisted(obj);
    Ok(Decoded::Reputation(normalize(&resp, whitelisted, raw)))
}

/// Maps an answer to the normalized form (docs/configuration.md, "Provider answers"):
///
/// - status: safe when whitelisted; else `details.ip_rep`: malicious→threat,
///   suspicious→suspicious, clean→unknown. Free text is split into words and the most
///   severe known word wins (`"bot, crawler"` → unknown); `raw` keeps the text;
/// - score: `details.score`, integer or float, clamped to 0–100 and rounded;
/// - scanner: whitelisted;
/// - country: `ipInfo.country_code` (else `ipInfo.country`); asn: `ipInfo.asn` ("AS123"→123);
/// - last_seen: `details.last_attack` (null, `""`, RFC 3339, `+0000` offsets, unix seconds);
/// - classes, tor, vpn: not given by IPSwamp.
pub fn normalize(resp: &Response, whitelisted: bool, raw: Value) -> Reputation {
    let details = resp.details.as_ref();
    let info = resp.ip_info.as_ref();
    let status = if whitelisted {
        Status::Safe
    } else {
        rep_status(details.and_then(|d| d.ip_rep.as_deref()).unwrap_or(""))
    };
    let non_empty = |s: Option<&String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Reputation {
        provider: ProviderId::Ipswamp,
        status,
        score: lenient::score(details.and_then(|d| d.score)),
        classes: Vec::new(),
        tor: None,
        vpn: None,
        scanner: whitelisted,
        country: info.and_then(|i| {
            non_empty(i.country_code.as_ref()).or_else(|| non_empty(i.country.as_ref()))
        }),
        asn: info
            .and_then(|i| i.asn.as_ref())
            .and_then(|a| lenient::asn_of(&Value::String(a.clone()))),
        last_seen: details
            .and_then(|d| d.last_attack.as_ref())
            .and_then(|s| lenient::timestamp_of(&Value::String(s.clone()))),
        raw: crate::reputation::RawJson::from_value(&raw),
    }
}

/// `ip_rep` → status: the most severe known word; nothing known → unknown.
fn rep_status(rep: &str) -> Status {
    let mut best = Status::Unknown;
    for word in rep
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_ascii_lowercase)
    {
        match word.as_str() {
            "malicious" => return Status::Threat,
            "suspicious" => best = Status::Suspicious,
            _ => {}
        }
    }
    best
}

/// A whitelist: a `whitelist` that is not null, `false` or `""`, or any non-null,
/// non-empty flat `whitelist_*` field.
fn is_whitelisted(obj: &Map<String, Value>) -> bool {
    obj.iter().any(|(k, v)| {
        (k == "whitelist" || k.starts_with("whitelist_"))
            && !matches!(v, Value::Null | Value::Bool(false))
            && v.as_str().is_none_or(|s| !s.trim().is_empty())
    })
}

/// An IPSwamp answer, every documented field (and the error body's). Every field may be
/// missing or null, and a field of an unexpected type reads as missing; unknown fields
/// are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// "IP found in database".
    #[serde(deserialize_with = "lenient::string")]
    pub message: Option<String>,
    /// "This IP has been flagged as malicious".
    #[serde(deserialize_with = "lenient::string")]
    pub description: Option<String>,
    /// The verdict.
    #[serde(deserialize_with = "lenient::opt")]
    pub details: Option<Details>,
    /// Only with `detailed=true`.
    #[serde(rename = "ipInfo", deserialize_with = "lenient::opt")]
    pub ip_info: Option<IpInfo>,
    /// Error bodies: `true`.
    #[serde(deserialize_with = "lenient::boolean")]
    pub error: Option<bool>,
    /// Error bodies: the HTTP status.
    #[serde(rename = "statusCode", deserialize_with = "lenient::integer")]
    pub status_code: Option<i64>,
}

/// `details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Details {
    /// 0–100, integer or float.
    #[serde(deserialize_with = "lenient::number")]
    pub score: Option<f64>,
    /// The queried IP.
    #[serde(deserialize_with = "lenient::string")]
    pub ip: Option<String>,
    /// Last attack, as received (ISO 8601 in various forms, or empty).
    #[serde(deserialize_with = "lenient::string")]
    pub last_attack: Option<String>,
    /// malicious, suspicious, clean, or free text.
    #[serde(deserialize_with = "lenient::string")]
    pub ip_rep: Option<String>,
    /// Malicious hits recorded.
    #[serde(deserialize_with = "lenient::integer")]
    pub total_hits: Option<i64>,
    /// Whitelist information (object or string), null when not whitelisted.
    pub whitelist: Option<Value>,
    /// Flat whitelist field.
    pub whitelist_description: Option<Value>,
    /// Flat whitelist field.
    pub whitelist_note: Option<Value>,
    /// Flat whitelist field.
    pub whitelist_value: Option<Value>,
}

/// `ipInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpInfo {
    /// The IP.
    #[serde(deserialize_with = "lenient::string")]
    pub ip: Option<String>,
    /// "AS12345".
    #[serde(deserialize_with = "lenient::string")]
    pub asn: Option<String>,
    /// AS organization.
    #[serde(deserialize_with = "lenient::string")]
    pub as_name: Option<String>,
    /// AS domain.
    #[serde(deserialize_with = "lenient::string")]
    pub as_domain: Option<String>,
    /// ISO country code.
    #[serde(deserialize_with = "lenient::string")]
    pub country_code: Option<String>,
    /// Country name.
    #[serde(deserialize_with = "lenient::string")]
    pub country: Option<String>,
    /// Continent code.
    #[serde(deserialize_with = "lenient::string")]
    pub continent_code: Option<String>,
    /// Continent name.
    #[serde(deserialize_with = "lenient::string")]
    pub continent: Option<String>,
    /// ISP.
    #[serde(deserialize_with = "lenient::string")]
    pub isp: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    const DOC_BASIC: &str = include_str!("fixtures/ipswamp-doc-basic.json");
    const DOC_DETAILED: &str = include_str!("fixtures/ipswamp-doc-detailed.json");
    const T: i64 = 1_765_368_000; // 2025-12-10T12:00:00Z

    fn rep(v: Value) -> Reputation {
        match decode(v.to_string().as_bytes()).unwrap() {
            Decoded::Reputation(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn with_details(details: Value) -> Reputation {
        rep(json!({"message": "IP found in database", "details": details}))
    }

    #[test]
    fn documented_basic_example() {
        let raw: Value = serde_json::from_str(DOC_BASIC).unwrap();
        let resp = Response::deserialize(&raw).unwrap();
        assert_eq!(resp.message.as_deref(), Some("IP found in database"));
        assert_eq!(
            resp.description.as_deref(),
            Some("This IP has been flagged as malicious")
        );
        let d = resp.details.as_ref().unwrap();
        assert_eq!(d.score, Some(85.0));
        assert_eq!(d.ip.as_deref(), Some("192.168.1.1"));
        assert_eq!(d.last_attack.as_deref(), Some("2025-12-10T12:00:00Z"));
        assert_eq!(d.ip_rep.as_deref(), Some("malicious"));
        assert_eq!(d.total_hits, Some(42));
        assert_eq!(
            (
                &d.whitelist,
                &d.whitelist_description,
                &d.whitelist_note,
                &d.whitelist_value
            ),
            (&None, &None, &None, &None)
        );
        assert!(resp.ip_info.is_none());

        let r = rep(raw.clone());
        assert_eq!(r.provider, ProviderId::Ipswamp);
        assert_eq!(r.status, Status::Threat);
        assert_eq!(r.score, Some(85));
        assert_eq!(r.last_seen, Some(T));
        assert!(!r.scanner);
        assert_eq!((r.country, r.asn, r.tor, r.vpn), (None, None, None, None));
        assert!(r.classes.is_empty());
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn documented_detailed_example() {
        let raw: Value = serde_json::from_str(DOC_DETAILED).unwrap();
        let resp = Response::deserialize(&raw).unwrap();
        let i = resp.ip_info.as_ref().unwrap();
        assert_eq!(i.ip.as_deref(), Some("192.168.1.1"));
        assert_eq!(i.asn.as_deref(), Some("AS12345"));
        assert_eq!(i.as_name.as_deref(), Some("Example ISP"));
        assert_eq!(i.as_domain.as_deref(), Some("example.com"));
        assert_eq!(i.country_code.as_deref(), Some("US"));
        assert_eq!(i.country.as_deref(), Some("United States"));
        assert_eq!(i.continent_code.as_deref(), Some("NA"));
        assert_eq!(i.continent.as_deref(), Some("North America"));
        assert_eq!(i.isp.as_deref(), Some("Example Internet Services"));
        let r = rep(raw);
        assert_eq!(r.status, Status::Threat);
        assert_eq!(r.country.as_deref(), Some("US"));
        assert_eq!(r.asn, Some(12345));
    }

    #[test]
    fn score_int_or_float() {
        assert_eq!(with_details(json!({"score": 85})).score, Some(85));
        assert_eq!(with_details(json!({"score": 85.6})).score, Some(86));
        assert_eq!(with_details(json!({"score": 12.4})).score, Some(12));
        assert_eq!(with_details(json!({"score": "70"})).score, Some(70));
        assert_eq!(with_details(json!({"score": 140})).score, Some(100));
        assert_eq!(with_details(json!({"score": -5})).score, Some(0));
        assert_eq!(with_details(json!({"score": null})).score, None);
        assert_eq!(with_details(json!({"score": "n/a"})).score, None);
        assert_eq!(with_details(json!({})).score, None);
    }

    #[test]
    fn last_attack_forms() {
        for (v, want) in [
            (json!(null), None),
            (json!(""), None),
            (json!("2025-12-10T12:00:00Z"), Some(T)),
            (json!("2025-12-10T12:00:00.000Z"), Some(T)),
            (json!("2025-12-10T12:00:00+00:00"), Some(T)),
            (json!("2025-12-10T12:00:00+0000"), Some(T)),
            (json!("2025-12-10 12:00:00 +0000"), Some(T)),
            (json!("2025-12-10T14:00:00+0200"), Some(T)),
            (json!("last tuesday"), None),
            (json!(1_765_368_000), Some(T)),
        ] {
            assert_eq!(
                with_details(json!({ "last_attack": v })).last_seen,
                want,
                "{v}"
            );
        }
    }

    #[test]
    fn ip_rep_words() {
        for (v, want) in [
            ("malicious", Status::Threat),
            ("Malicious", Status::Threat),
            ("suspicious", Status::Suspicious),
            ("clean", Status::Unknown),
            ("bot, crawler", Status::Unknown),
            ("suspicious, bot", Status::Suspicious),
            ("bot; malicious", Status::Threat),
            ("", Status::Unknown),
        ] {
            let r = with_details(json!({ "ip_rep": v }));
            assert_eq!(r.status, want, "{v}");
            assert_eq!(
                r.raw.to_value()["details"]["ip_rep"],
                json!(v),
                "raw keeps the text"
            );
        }
        assert_eq!(
            with_details(json!({ "ip_rep": null })).status,
            Status::Unknown
        );
        assert_eq!(with_details(json!({ "ip_rep": 3 })).status, Status::Unknown);
    }

    #[test]
    fn whitelist_in_any_form_is_safe_scanner() {
        let whitelisted = [
            json!({"ip_rep": "clean", "whitelist": {"name": "Googlebot", "note": "crawler"}}),
            json!({"ip_rep": "malicious", "whitelist": "Googlebot"}),
            json!({"ip_rep": "clean", "whitelist": null, "whitelist_description": "Googlebot"}),
            json!({"ip_rep": "clean", "whitelist_value": "66.249.64.0/19"}),
            json!({"ip_rep": "bot, crawler", "whitelist_note": "search engine"}),
            json!({"whitelist": true}),
        ];
        for d in whitelisted {
            let r = with_details(d.clone());
            assert_eq!((r.status, r.scanner), (Status::Safe, true), "{d}");
        }
        let not = [
            json!({"ip_rep": "clean", "whitelist": null, "whitelist_description": null,
                   "whitelist_note": null, "whitelist_value": null}),
            json!({"ip_rep": "clean", "whitelist": ""}),
            json!({"ip_rep": "clean", "whitelist": false}),
            json!({"ip_rep": "clean"}),
        ];
        for d in not {
            let r = with_details(d.clone());
            assert_eq!((r.status, r.scanner), (Status::Unknown, false), "{d}");
        }
        // A top-level whitelist counts too.
        let r = rep(json!({"message": "whitelisted", "whitelist": {"name": "Bingbot"}}));
        assert_eq!((r.status, r.scanner), (Status::Safe, true));
    }

    #[test]
    fn ip_info_is_optional_and_lenient() {
        let r = rep(json!({"details": {"ip_rep": "clean"}}));
        assert_eq!((r.country, r.asn), (None, None));
        let r = rep(json!({"details": {}, "ipInfo": {"asn": "AS64496", "country_code": "DE"}}));
        assert_eq!((r.country.as_deref(), r.asn), (Some("DE"), Some(64496)));
        let r = rep(
            json!({"details": {}, "ipInfo": {"asn": 64497, "country": "Germany", "country_code": ""}}),
        );
        assert_eq!(
            (r.country.as_deref(), r.asn),
            (Some("Germany"), Some(64497))
        );
        let r = rep(json!({"details": {}, "ipInfo": "n/a"}));
        assert_eq!((r.country, r.asn), (None, None));
        let r = rep(json!({"details": {}, "ipInfo": {"asn": "unknown"}}));
        assert_eq!(r.asn, None);
    }

    #[test]
    fn extra_and_missing_fields() {
        let r = rep(json!({"message": "IP not found in database"}));
        assert_eq!(r.status, Status::Unknown);
        assert_eq!(r.score, None);
        let r =
            rep(json!({"message": "x", "details": {"score": 5, "new": [1, 2]}, "meta": {"v": 2}}));
        assert_eq!(r.score, Some(5));
        assert_eq!(r.raw.to_value()["meta"]["v"], json!(2));
        let r = rep(json!({"details": "garbage"}));
        assert_eq!(r.status, Status::Unknown);
    }

    #[test]
    fn error_bodies_and_wrong_shapes() {
        let d =
            decode(br#"{"error":true,"statusCode":403,"message":"Usage limit exceeded"}"#).unwrap();
        assert_eq!(d, Decoded::ErrorBody { status: 403 });
        assert!(matches!(
            decode(br#"{"error":true,"message":"?"}"#),
            Err(ProviderError::Decode(_))
        ));
        for body in [&b"<html>"[..], b"", b"[]", b"42", b"{}", br#"{"other":1}"#] {
            assert!(
                matches!(decode(body), Err(ProviderError::Decode(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn usage_limit_detection() {
        let body = br#"{"error":true,"statusCode":403,"message":"Usage limit exceeded"}"#;
        assert!(is_usage_limit(403, body));
        assert!(is_usage_limit(403, b"usage limit exceeded for today"));
        assert!(!is_usage_limit(
            403,
            br#"{"error":true,"statusCode":403,"message":"Invalid API key"}"#
        ));
        assert!(!is_usage_limit(500, body));
    }
}
