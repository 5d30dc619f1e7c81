//! The offline `file` provider: a YAML or JSON map from IP or CIDR to a normalized
//! reputation, e.g.
//!
//! ```yaml
//! 203.0.113.0/24: { status: threat, score: 90, classes: [attack] }
//! 203.0.113.7:    { status: safe, scanner: true }
//! 198.51.100.0/24: { status: suspicious, tor: true, country: DE, asn: 64496 }
//! ```
//!
//! A file whose name ends in `.json` is read as JSON, anything else as YAML. A look-up
//! answers with the most specific network containing the IP (O(prefix length)); no
//! match gives [`Reputation::unknown`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use futures_util::future::BoxFuture;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Availability, Provider, ProviderBuildError, ProviderError};
use crate::config::parse_cidr;
use crate::reputation::{ProviderId, Reputation, Status, ThreatClass};

/// One entry of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// safe, suspicious, threat or unknown.
    pub status: Status,
    /// 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    /// Threat classes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ThreatClass>,
    /// A Tor exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor: Option<bool>,
    /// A VPN address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn: Option<bool>,
    /// A known legitimate scanner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanner: Option<bool>,
    /// ISO code or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// AS number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
}

impl FileEntry {
    fn to_reputation(&self) -> Reputation {
        Reputation {
            provider: ProviderId::File,
            status: self.status,
            score: self.score,
            classes: self.classes.clone(),
            tor: self.tor,
            vpn: self.vpn,
            scanner: self.scanner.unwrap_or(false),
            country: self.country.clone(),
            asn: self.asn,
            last_seen: None,
            raw: crate::reputation::RawJson::from_value(
                &serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
            ),
        }
    }
}

/// The file's entries in file order (duplicates are detected, not silently merged).
struct Entries(Vec<(String, FileEntry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from IP or CIDR to a reputation")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, FileEntry>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reputation from a local file.
#[derive(Clone, Default)]
pub struct FileProvider {
    path: String,
    v4: PrefixMap<Ipv4Net, Reputation>,
    v6: PrefixMap<Ipv6Net, Reputation>,
}

impl fmt::Debug for FileProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileProvider")
            .field("path", &self.path)
            .field("entries", &self.len())
            .finish()
    }
}

impl FileProvider {
    /// Reads `path` (JSON when it ends in `.json`, YAML otherwise).
    pub fn load(path: &str) -> Result<Self, ProviderBuildError> {
        let err = |message: String| ProviderBuildError::File {
            path: path.to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json = std::path::Path::new(path)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::parse(&text, json).map_err(err).map(|mut p| {
            p.path = path.to_string();
            p
        })
    }

    /// Parses file contents. Errors name the line (and column, or the entry) and the
    /// kind of problem, never the file's content: the path may point at any file the
    /// process can read, and the error is logged.
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        let entries = if json {
            serde_json::from_str::<Entries>(text).map_err(|e| json_error(&e))?
        } else if text.trim().is_empty() {
            Entries(Vec::new())
        } else {
            serde_saphyr::from_str::<Entries>(text).map_err(|e| yaml_error(&e))?
        };
        let mut p = FileProvider::default();
        let mut seen: HashMap<IpNet, String> = HashMap::new();
        let mut from_line = 0;
        for (i, (key, entry)) in entries.0.into_iter().enumerate() {
            let at = match key_line(text, &key, &mut from_line) {
                Some(line) => format!("line {line}, entry {}", i + 1),
                None => format!("entry {}", i + 1),
            };
            let net = parse_cidr(&key)
                .map_err(|_| format!("{at}: the key is not a valid IP address or CIDR"))?
                .0;
            if let Some(score) = entry.score
                && score > 100
            {
                return Err(format!("{at}: the score is above 100"));
            }
            if let Some(first) = seen.insert(net, at.clone()) {
                return Err(format!("{at}: the same network as {first}"));
            }
            let rep = entry.to_reputation();
            match net {
                IpNet::V4(n) => {
                    p.v4.insert(n, rep);
                }
                IpNet::V6(n) => {
                    p.v6.insert(n, rep);
                }
            }
        }
        Ok(p)
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the file has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most specific entry containing `ip` (IPv4-mapped IPv6 is matched as IPv4).
    pub fn get(&self, ip: IpAddr) -> Option<&Reputation> {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, r)| r),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, r)| r),
        }
    }
}

/// serde_saphyr's message with `line L, column C`, without the source snippet or
/// anything quoted from the file.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let mut message = e.without_snippet().to_string();
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    let message = without_content(message.trim());
    match e.location() {
        Some(l) if l.line() > 0 => format!("line {}, column {}: {message}", l.line(), l.column()),
        _ => message,
    }
}

/// serde_json's message as `line L, column C: kind`, without anything quoted from the
/// file.
fn json_error(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    let message = without_content(message.trim());
    if e.line() > 0 {
        format!("line {}, column {}: {message}", e.line(), e.column())
    } else {
        message
    }
}

/// A serde message without the input it quotes: `unknown field `x`, expected one of
/// `status`, …` becomes `unknown field, expected one of `status`, …` (what was
/// expected comes from the format, not the file); `invalid type: string "x", expected
/// u8` becomes `invalid type: string, expected u8`.
fn without_content(message: &str) -> String {
    // These quote a name of the format, never the input.
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        return message.to_string();
    }
    let (head, expected) = match message.find(", expected") {
        Some(i) => message.split_at(i),
        None => (message, ""),
    };
    let head = match head.find(['`', '"', '\'']) {
        Some(i) => head[..i].trim_end().trim_end_matches(':'),
        None => head,
    };
    let head = if head.is_empty() {
        "invalid value"
    } else {
        head
    };
    format!("{head}{expected}")
}

/// The 1-based line where the map key `key` is written, searching from `*from`
/// (0-based) on, for block-style files (one key a line); `None` when not found (a
/// flow-style or one-line file).
fn key_line(text: &str, key: &str, from: &mut usize) -> Option<usize> {
    for (idx, line) in text.lines().enumerate().skip(*from) {
        let t = line.trim_start();
        let rest = [
            t.strip_prefix(key),
            t.strip_prefix('"')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('"')),
            t.strip_prefix('\'')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('\'')),
        ];
        if rest
            .into_iter()
            .flatten()
            .any(|r| r.trim_start().starts_with(':'))
        {
            *from = idx + 1;
            return Some(idx + 1);
        }
    }
    None
}

impl Provider for FileProvider {
    fn id(&self) -> ProviderId {
        ProviderId::File
    }

    fn lookup(&self, ip: IpAddr) -> BoxFuture<'_, Result<Reputation, ProviderError>> {
        let rep = self
            .get(ip)
            .cloned()
            .unwrap_or_else(|| Reputation::unknown(ProviderId::File));
        Box::pin(std::future::ready(Ok(rep)))
    }

    fn availability(&self) -> Availability {
        Availability::Ready
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const YAML: &str = "\
203.0.113.0/24: { status: threat, score: 90, classes: [attack, spam] }
203.0.113.7: { status: safe, scanner: true }
10.0.0.0/8: { status: suspicious, tor: true, vpn: false, country: DE, asn: 64496 }
2001:db8::/32: { status: threat }
2001:db8:1::/48: { status: unknown }
";

    #[test]
    fn most_specific_network_wins() {
        let p = FileProvider::parse(YAML, false).unwrap();
        assert_eq!(p.len(), 5);
        let r = p.get(ip("203.0.113.7")).unwrap();
        assert_eq!((r.status, r.scanner), (Status::Safe, true));
        let r = p.get(ip("203.0.113.8")).unwrap();
        assert_eq!(r.status, Status::Threat);
        assert_eq!(r.score, Some(90));
        assert_eq!(r.classes, vec![ThreatClass::Attack, ThreatClass::Spam]);
        assert_eq!(
            r.raw,
            json!({"status": "threat", "score": 90, "classes": ["attack", "spam"]})
        );
        let r = p.get(ip("10.9.8.7")).unwrap();
        assert_eq!(
            (r.tor, r.vpn, r.country.as_deref(), r.asn),
            (Some(true), Some(false), Some("DE"), Some(64496))
        );
        assert_eq!(p.get(ip("2001:db8:1::5")).unwrap().status, Status::Unknown);
        assert_eq!(p.get(ip("2001:db8:2::5")).unwrap().status, Status::Threat);
        assert_eq!(
            p.get(ip("::ffff:203.0.113.7")).unwrap().status,
            Status::Safe
        );
        assert!(p.get(ip("192.0.2.1")).is_none());
    }

    #[tokio::test]
    async fn lookup_answers_unknown_when_nothing_matches() {
        let p = FileProvider::parse(YAML, false).unwrap();
        assert_eq!(
            p.lookup(ip("192.0.2.1")).await.unwrap(),
            Reputation::unknown(ProviderId::File)
        );
        let r = p.lookup(ip("203.0.113.7")).await.unwrap();
        assert_eq!(r.provider, ProviderId::File);
        assert_eq!(p.availability(), Availability::Ready);
    }

    #[test]
    fn json_files() {
        let p = FileProvider::parse(r#"{"192.0.2.1": {"status": "threat", "score": 70}}"#, true)
            .unwrap();
        assert_eq!(p.get(ip("192.0.2.1")).unwrap().score, Some(70));
        let e =
            FileProvider::parse("{\n  \"192.0.2.1\": {\"status\": \"bad\"}\n}", true).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn empty_files_are_empty() {
        assert!(FileProvider::parse("", false).unwrap().is_empty());
        assert!(
            FileProvider::parse("# nothing\n", false)
                .unwrap()
                .is_empty()
        );
        assert!(FileProvider::parse("{}", true).unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_named() {
        let e =
            FileProvider::parse("192.0.2.1: { status: threat, colour: red }\n", false).unwrap_err();
        assert!(e.contains("unknown field") && e.contains("line 1"), "{e}");
        let e = FileProvider::parse("192.0.2.1: { status: evil }\n", false).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = FileProvider::parse("# list\n010.0.0.1: { status: threat }\n", false).unwrap_err();
        assert_eq!(
            e,
            "line 2, entry 1: the key is not a valid IP address or CIDR"
        );
        let e =
            FileProvider::parse("192.0.2.1: { status: threat, score: 101 }\n", false).unwrap_err();
        assert!(e.contains("above 100"), "{e}");
        let e = FileProvider::parse("192.0.2.1: { score: 10 }\n", false).unwrap_err();
        assert!(e.contains("status"), "{e}");
        let e = FileProvider::parse(
            "10.1.2.3/8: { status: threat }\n10.0.0.0/8: { status: safe }\n",
            false,
        )
        .unwrap_err();
        assert_eq!(e, "line 2, entry 2: the same network as line 1, entry 1");
        let e = FileProvider::parse("- 192.0.2.1\n", false).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn errors_never_quote_the_file() {
        for (text, json) in [
            ("root:$6$secretHASH:19000:0:99999:7:::\n", false),
            (
                "192.0.2.1: { status: threat }\nsecretHASH: { status: threat }\n",
                false,
            ),
            ("192.0.2.1: { status: secretHASH }\n", false),
            ("192.0.2.1: { status: threat, secretHASH: 1 }\n", false),
            ("192.0.2.1: { status: threat, score: secretHASH }\n", false),
            (
                "192.0.2.1: { status: threat, classes: [secretHASH] }\n",
                false,
            ),
            ("192.0.2.1: secretHASH\n", false),
            ("- secretHASH\n", false),
            ("secretHASH", false),
            ("{\"secretHASH\": {\"status\": \"threat\"}}", true),
            ("{\n\"192.0.2.1\": {\"status\": \"secretHASH\"}\n}", true),
            (
                "{\"192.0.2.1\": {\"secretHASH\": 1, \"status\": \"safe\"}}",
                true,
            ),
            (
                "{\"192.0.2.1\": {\"status\": \"safe\", \"score\": \"secretHASH\"}}",
                true,
            ),
            ("[\"secretHASH\"]", true),
            ("secretHASH", true),
        ] {
            let e = FileProvider::parse(text, json).unwrap_err();
            assert!(!e.contains("secretHASH"), "{text}: {e}");
            assert!(!e.is_empty(), "{text}");
        }
        let e = FileProvider::parse(
            "192.0.2.1: { status: threat }\nsecretHASH: { status: threat }\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "line 2, entry 2: the key is not a valid IP address or CIDR"
        );
    }

    #[test]
    fn load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rep.yaml");
        std::fs::write(&path, "192.0.2.1: { status: nope }\n").unwrap();
        let e = FileProvider::load(path.to_str().unwrap()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("rep.yaml") && s.contains("line 1"), "{s}");
        let e = FileProvider::load("/nonexistent/rep.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/rep.json"), "{e}");
        let json = dir.path().join("rep.JSON");
        std::fs::write(&json, r#"{"192.0.2.0/24": {"status": "safe"}}"#).unwrap();
        let p = FileProvider::load(json.to_str().unwrap()).unwrap();
        assert_eq!(p.get(ip("192.0.2.9")).unwrap().status, Status::Safe);
    }
}
