//! IOCScout (<https://api.iocscout.com/v1>): `GET {base_url}?apiKey=KEY&ip=IP[&realTimeData=1]`.
//!
//! The key travels in the query string, so the request URL is never logged and every
//! error is stripped of its URL and redacted.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{Decoded, Http, HttpApi};
use super::lenient;
use super::{ProviderBuildError, ProviderError};
use crate::config::IocscoutConfig;
use crate::reputation::{ProviderId, Reputation, Status, ThreatClass};

/// The IOCScout client.
pub struct Iocscout {
    http: Http,
    real_time: bool,
}

impl fmt::Debug for Iocscout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra = [("real_time", &self.real_time as &dyn fmt::Debug)];
        self.http.fmt_debug(f, "Iocscout", "base_url", &extra)
    }
}

impl Iocscout {
    /// Reads time (cool-downs, `Retry-After` dates) from `clock` instead of the system.
    pub fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.http.set_clock(clock);
        self
    }

    /// A client for `cfg` (its `api_key` should be non-empty; see [`super::build`]).
    pub fn new(cfg: &IocscoutConfig, client: reqwest::Client) -> Result<Self, ProviderBuildError> {
        let base = &cfg.base_url.0;
        let (timeout, quota) = (cfg.timeout.0, cfg.daily_quota);
        Ok(Iocscout {
            http: Http::new(
                ProviderId::Iocscout,
                &cfg.api_key.0,
                base,
                base,
                timeout,
                quota,
                client,
            )?,
            real_time: cfg.real_time,
        })
    }
}

impl HttpApi for Iocscout {
    fn http(&self) -> &Http {
        &self.http
    }

    fn request(&self, req: reqwest::RequestBuilder, ip: &str) -> reqwest::RequestBuilder {
        let mut query = vec![("apiKey", self.http.key.expose()), ("ip", ip)];
        if self.real_time {
            query.push(("realTimeData", "1"));
        }
        req.query(&query)
    }

    fn decode_ok(body: &[u8]) -> Result<Decoded, ProviderError> {
        decode(body).map(Decoded::Reputation)
    }
}

/// The documented top-level fields; an object with none of them is not an answer.
const TOP_LEVEL: [&str; 6] = ["detection", "status", "threat", "known", "location", "net"];

/// Decodes a 200 body: JSON object → [`Response`] → normalized [`Reputation`] whose
/// `raw` is the whole JSON as received.
pub fn decode(body: &[u8]) -> Result<Reputation, ProviderError> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Decode(format!("not JSON: {e}")))?;
    let Some(obj) = raw.as_object() else {
        return Err(ProviderError::Decode("not a JSON object".into()));
    };
    if !TOP_LEVEL.iter().any(|k| obj.contains_key(*k)) {
        return Err(ProviderError::Decode(
            "no IOCScout field (status, threat, net, ...) in the answer".into(),
        ));
    }
    let resp = Response::deserialize(&raw)
        .map_err(|e| ProviderError::Decode(format!("unexpected shape: {e}")))?;
    Ok(normalize(&resp, raw))
}

/// Maps an answer to the normalized form (docs/configuration.md, "Provider answers"):
///
/// - status: `status` (`benign`, which the docs also use, is `safe`; unknown words and
///   a missing status are `unknown`);
/// - score: `threat.score` clamped to 0–100 and rounded;
/// - classes: `threat.class` (unknown words ignored, duplicates dropped);
/// - tor / vpn: `net.tor` / `net.vpn.detected`;
/// - scanner: `known.scanner` **or** `known.service` non-empty (both list parties the
///   provider recognizes as legitimate; `raw` keeps which);
/// - country: `location.country` (a name, e.g. "United States of America");
/// - asn: `net.as.number`; last_seen: `detection.last`.
pub fn normalize(resp: &Response, raw: Value) -> Reputation {
    let threat = resp.threat.as_ref();
    let mut classes: Vec<ThreatClass> = Vec::new();
    for c in threat.map(|t| t.class.as_slice()).unwrap_or_default() {
        if let Ok(c) = c.trim().to_ascii_lowercase().parse::<ThreatClass>()
            && !classes.contains(&c)
        {
            classes.push(c);
        }
    }
    let known = resp.known.as_ref();
    let net = resp.net.as_ref();
    Reputation {
        provider: ProviderId::Iocscout,
        status: status_of(resp.status.as_deref()),
        score: lenient::score(threat.and_then(|t| t.score)),
        classes,
        tor: net.and_then(|n| n.tor),
        vpn: net.and_then(|n| n.vpn.as_ref()).and_then(|v| v.detected),
        scanner: known.is_some_and(|k| !k.scanner.is_empty() || !k.service.is_empty()),
        country: resp
            .location
            .as_ref()
            .and_then(|l| l.country.as_deref())
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        asn: net
            .and_then(|n| n.autonomous_system.as_ref())
            .and_then(|a| a.number),
        last_seen: resp.detection.as_ref().and_then(|d| d.last),
        raw: crate::reputation::RawJson::from_value(&raw),
    }
}

fn status_of(s: Option<&str>) -> Status {
    match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("safe" | "benign") => Status::Safe,
        Some("suspicious") => Status::Suspicious,
        Some("threat" | "malicious") => Status::Threat,
        _ => Status::Unknown,
    }
}

/// An IOCScout answer, every documented field. Every field may be missing or null, and
/// a field of an unexpected type reads as missing; unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// Threat activity timestamps (null unless `status` is `threat`).
    #[serde(deserialize_with = "lenient::opt")]
    pub detection: Option<Detection>,
    /// `safe`, `suspicious`, `threat` or `unknown`.
    #[serde(deserialize_with = "lenient::string")]
    pub status: Option<String>,
    /// Threat classification.
    #[serde(deserialize_with = "lenient::opt")]
    pub threat: Option<Threat>,
    /// Recognized services and scanners.
    #[serde(deserialize_with = "lenient::opt")]
    pub known: Option<Known>,
    /// Geolocation.
    #[serde(deserialize_with = "lenient::opt")]
    pub location: Option<Location>,
    /// Network details.
    #[serde(deserialize_with = "lenient::opt")]
    pub net: Option<Net>,
}

/// `detection`: first and last occurrence, unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Detection {
    /// First occurrence.
    #[serde(deserialize_with = "timestamp")]
    pub first: Option<i64>,
    /// Last occurrence.
    #[serde(deserialize_with = "timestamp")]
    pub last: Option<i64>,
}

/// `threat`: score and classes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Threat {
    /// 0 (not a threat) to 100.
    #[serde(deserialize_with = "lenient::number")]
    pub score: Option<f64>,
    /// attack, c2, malware, phishing, spam, suspicious (null unless threat: empty).
    #[serde(deserialize_with = "lenient::list")]
    pub class: Vec<String>,
}

/// `known`: recognized services and legitimate scanners (each a list, or one object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Known {
    /// Services not performing infrastructure scans, e.g. GitHub.
    #[serde(deserialize_with = "lenient::list")]
    pub service: Vec<KnownParty>,
    /// Legitimate infrastructure scanners, e.g. Googlebot.
    #[serde(deserialize_with = "lenient::list")]
    pub scanner: Vec<KnownParty>,
}

/// One entry of `known.service` / `known.scanner`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnownParty {
    /// Name.
    #[serde(deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// Description.
    #[serde(deserialize_with = "lenient::string")]
    pub description: Option<String>,
    /// Additional information.
    #[serde(deserialize_with = "lenient::list")]
    pub info: Vec<String>,
}

/// `location`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Location {
    /// Country name.
    #[serde(deserialize_with = "lenient::string")]
    pub country: Option<String>,
    /// Region name.
    #[serde(deserialize_with = "lenient::string")]
    pub region: Option<String>,
    /// City name.
    #[serde(deserialize_with = "lenient::string")]
    pub city: Option<String>,
}

/// `net`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Net {
    /// Public VPN service.
    #[serde(deserialize_with = "lenient::opt")]
    pub vpn: Option<Vpn>,
    /// True for Tor exit nodes.
    #[serde(deserialize_with = "lenient::boolean")]
    pub tor: Option<bool>,
    /// PTR record.
    #[serde(deserialize_with = "lenient::opt")]
    pub ptr: Option<Ptr>,
    /// Autonomous system (`as` in the JSON).
    #[serde(rename = "as", deserialize_with = "lenient::opt")]
    pub autonomous_system: Option<AutonomousSystem>,
    /// Registration data.
    #[serde(deserialize_with = "lenient::opt")]
    pub route: Option<Route>,
}

/// `net.vpn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vpn {
    /// True for addresses of a VPN pool.
    #[serde(deserialize_with = "lenient::boolean")]
    pub detected: Option<bool>,
    /// The VPN provider.
    #[serde(deserialize_with = "lenient::string")]
    pub name: Option<String>,
}

/// `net.ptr`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ptr {
    /// Record value, null if absent.
    #[serde(deserialize_with = "lenient::string")]
    pub value: Option<String>,
    /// Forward and reverse DNS match.
    #[serde(deserialize_with = "lenient::boolean")]
    pub iprev: Option<bool>,
}

/// `net.as`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutonomousSystem {
    /// AS number (`64496`; `"AS64496"` is read too).
    #[serde(deserialize_with = "asn")]
    pub number: Option<u32>,
    /// AS name.
    #[serde(deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// AS web page.
    #[serde(deserialize_with = "lenient::string")]
    pub url: Option<String>,
}

/// `net.route`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Range threat level 0–100.
    #[serde(deserialize_with = "lenient::number")]
    pub score: Option<f64>,
    /// Organization managing the range (registry).
    #[serde(deserialize_with = "lenient::string")]
    pub source: Option<String>,
    /// Range name.
    #[serde(deserialize_with = "lenient::string")]
    pub netname: Option<String>,
    /// Last modification, ISO 8601 (as received).
    #[serde(deserialize_with = "lenient::string")]
    pub update: Option<String>,
    /// First and last addresses.
    #[serde(deserialize_with = "lenient::string")]
    pub inetnum: Option<String>,
    /// Registering organization.
    #[serde(deserialize_with = "lenient::opt")]
    pub org: Option<Contact>,
    /// Contacts.
    #[serde(deserialize_with = "lenient::opt")]
    pub contact: Option<Contacts>,
}

/// `net.route.contact`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contacts {
    /// Administrative contact.
    #[serde(deserialize_with = "lenient::opt")]
    pub admin: Option<Contact>,
    /// Technical contact.
    #[serde(deserialize_with = "lenient::opt")]
    pub tech: Option<Contact>,
    /// Abuse contact.
    #[serde(deserialize_with = "lenient::opt")]
    pub abuse: Option<Contact>,
}

/// An organization or a contact (`net.route.org`, `net.route.contact.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    /// ID.
    #[serde(deserialize_with = "lenient::string")]
    pub id: Option<String>,
    /// Name.
    #[serde(deserialize_with = "lenient::string")]
    pub name: Option<String>,
    /// Email.
    #[serde(deserialize_with = "lenient::string")]
    pub email: Option<String>,
    /// Phone.
    #[serde(deserialize_with = "lenient::string")]
    pub phone: Option<String>,
    /// Address lines.
    #[serde(deserialize_with = "lenient::list")]
    pub address: Vec<String>,
}

fn timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(lenient::timestamp_of(&Value::deserialize(d)?))
}

fn asn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(lenient::asn_of(&Value::deserialize(d)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    /// The example response of the IOCScout documentation (May 6, 2025), verbatim.
    pub(crate) const DOC_EXAMPLE: &str = include_str!("fixtures/iocscout-doc-example.json");

    #[test]
    fn documented_example_decodes_fully() {
        let raw: Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let resp = Response::deserialize(&raw).unwrap();
        assert_eq!(
            resp.detection,
            Some(Detection {
                first: Some(1_643_720_870),
                last: Some(1_738_415_270)
            })
        );
        assert_eq!(resp.status.as_deref(), Some("threat"));
        let threat = resp.threat.as_ref().unwrap();
        assert_eq!(threat.score, Some(75.0));
        assert_eq!(threat.class, vec!["malware", "phishing"]);
        let known = resp.known.as_ref().unwrap();
        assert_eq!(known.service[0].name.as_deref(), Some("Example"));
        assert_eq!(known.service[0].info, vec!["https://example.com"]);
        assert_eq!(
            known.scanner[0].description.as_deref(),
            Some("Example web service scanner")
        );
        let loc = resp.location.as_ref().unwrap();
        assert_eq!(loc.country.as_deref(), Some("United States of America"));
        assert_eq!(loc.region.as_deref(), Some("California"));
        assert_eq!(loc.city.as_deref(), Some("Los Angeles"));
        let net = resp.net.as_ref().unwrap();
        assert_eq!(
            net.vpn,
            Some(Vpn {
                detected: Some(true),
                name: Some("Example VPN provider".into())
            })
        );
        assert_eq!(net.tor, Some(false));
        assert_eq!(
            net.ptr,
            Some(Ptr {
                value: Some("test.example.org.".into()),
                iprev: Some(true)
            })
        );
        let asys = net.autonomous_system.as_ref().unwrap();
        assert_eq!(asys.number, Some(64496));
        assert_eq!(asys.name.as_deref(), Some("Reserved"));
        assert_eq!(asys.url.as_deref(), Some("https://www.iana.org"));
        let route = net.route.as_ref().unwrap();
        assert_eq!(route.score, Some(31.0));
        assert_eq!(route.source.as_deref(), Some("arin"));
        assert_eq!(route.netname.as_deref(), Some("TEST-NET-1"));
        assert_eq!(route.update.as_deref(), Some("2024-05-23T10:19:53-04:00"));
        assert_eq!(route.inetnum.as_deref(), Some("192.0.2.0 - 192.0.2.255"));
        let org = route.org.as_ref().unwrap();
        assert_eq!(org.id.as_deref(), Some("IANA"));
        assert_eq!(org.email.as_deref(), Some(""));
        assert_eq!(org.address.len(), 6);
        let contact = route.contact.as_ref().unwrap();
        for c in [&contact.admin, &contact.tech, &contact.abuse] {
            let c = c.as_ref().unwrap();
            assert_eq!(c.id.as_deref(), Some("IANA-IP-ARIN"));
            assert_eq!(c.name.as_deref(), Some("ICANN"));
            assert_eq!(c.email.as_deref(), Some("abuse@iana.org"));
            assert_eq!(c.phone.as_deref(), Some("+1-310-301-5820"));
            assert_eq!(c.address.last().map(String::as_str), Some("United States"));
        }
        // Nothing is lost between the answer and the typed model.
        assert_eq!(
            serde_json::to_value(&resp).unwrap()["net"]["as"]["number"],
            json!(64496)
        );
    }

    #[test]
    fn documented_example_normalizes() {
        let rep = decode(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(rep.provider, ProviderId::Iocscout);
        assert_eq!(rep.status, Status::Threat);
        assert_eq!(rep.score, Some(75));
        assert_eq!(
            rep.classes,
            vec![ThreatClass::Malware, ThreatClass::Phishing]
        );
        assert_eq!(rep.tor, Some(false));
        assert_eq!(rep.vpn, Some(true));
        assert!(rep.scanner);
        assert_eq!(rep.country.as_deref(), Some("United States of America"));
        assert_eq!(rep.asn, Some(64496));
        assert_eq!(rep.last_seen, Some(1_738_415_270));
        assert_eq!(rep.raw, serde_json::from_str::<Value>(DOC_EXAMPLE).unwrap());
    }

    #[test]
    fn nulls_and_missing_fields_never_fail() {
        let rep = decode(br#"{"status":"unknown"}"#).unwrap();
        assert_eq!(rep.status, Status::Unknown);
        assert_eq!(
            (rep.score, rep.tor, rep.vpn, rep.asn, rep.last_seen),
            (None, None, None, None, None)
        );
        assert!(!rep.scanner && rep.classes.is_empty() && rep.country.is_none());

        let rep = decode(
            br#"{"detection":{"first":null,"last":null},"status":"suspicious",
                 "threat":{"score":40,"class":null},"known":{},"location":{"country":""},
                 "net":{"vpn":{"detected":false},"tor":false,"ptr":{"value":null,"iprev":false},
                        "as":null,"route":{"org":null,"contact":{"admin":null}}}}"#,
        )
        .unwrap();
        assert_eq!(rep.status, Status::Suspicious);
        assert_eq!(rep.score, Some(40));
        assert!(rep.classes.is_empty());
        assert_eq!((rep.tor, rep.vpn), (Some(false), Some(false)));
        assert_eq!(rep.country, None, "an empty country is no country");
        assert_eq!((rep.asn, rep.last_seen), (None, None));
    }

    #[test]
    fn extra_fields_and_odd_types_are_tolerated() {
        let rep = decode(
            br#"{"status":"THREAT","new_field":{"x":1},
                 "threat":{"score":"88.6","class":["attack","botnet","ATTACK","c2"],"extra":true},
                 "known":{"scanner":{"name":"Single object scanner"}},
                 "location":{"country":"Germany","city":42},
                 "net":{"tor":"true","vpn":"not an object","as":{"number":"AS64500"},
                        "route":{"score":"high"}},
                 "detection":{"last":"2025-12-10T12:00:00Z","first":"never"}}"#,
        )
        .unwrap();
        assert_eq!(rep.status, Status::Threat);
        assert_eq!(rep.score, Some(89));
        assert_eq!(rep.classes, vec![ThreatClass::Attack, ThreatClass::C2]);
        assert!(rep.scanner, "a single scanner object counts");
        assert_eq!(rep.country.as_deref(), Some("Germany"));
        assert_eq!(rep.tor, Some(true));
        assert_eq!(rep.vpn, None);
        assert_eq!(rep.asn, Some(64500));
        assert_eq!(rep.last_seen, Some(1_765_368_000));
        assert_eq!(
            rep.raw.to_value()["new_field"]["x"],
            json!(1),
            "raw keeps unknown fields"
        );
    }

    #[test]
    fn normalization_table() {
        let cases: &[(Value, Status, bool)] = &[
            (
                json!({"status":"safe","known":{"scanner":[{"name":"Googlebot"}]}}),
                Status::Safe,
                true,
            ),
            (
                json!({"status":"benign","known":{"scanner":[{"name":"Googlebot"}]}}),
                Status::Safe,
                true,
            ),
            (
                json!({"status":"safe","known":{"service":[{"name":"GitHub"}],"scanner":[]}}),
                Status::Safe,
                true,
            ),
            (
                json!({"status":"suspicious","threat":{"score":30}}),
                Status::Suspicious,
                false,
            ),
            (
                json!({"status":"threat","known":{"scanner":[],"service":[]}}),
                Status::Threat,
                false,
            ),
            (json!({"status":"unknown"}), Status::Unknown, false),
            (json!({"status":"something-new"}), Status::Unknown, false),
            (
                json!({"status":null,"threat":{"score":0}}),
                Status::Unknown,
                false,
            ),
            (json!({"net":{"tor":true}}), Status::Unknown, false),
        ];
        for (v, status, scanner) in cases {
            let rep = decode(v.to_string().as_bytes()).unwrap();
            assert_eq!(rep.status, *status, "{v}");
            assert_eq!(rep.scanner, *scanner, "{v}");
        }
        let tor = decode(br#"{"status":"threat","net":{"tor":true}}"#).unwrap();
        assert_eq!(tor.tor, Some(true));
        let clamp = decode(br#"{"status":"threat","threat":{"score":150}}"#).unwrap();
        assert_eq!(clamp.score, Some(100));
    }

    #[test]
    fn wrong_shapes_are_decode_errors() {
        for body in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            b"\"threat\"",
            b"{}",
            br#"{"error":"nope"}"#,
        ] {
            assert!(
                matches!(decode(body), Err(ProviderError::Decode(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
