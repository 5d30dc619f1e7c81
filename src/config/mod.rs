//! The configuration file (docs/configuration.md): serde types, `${VAR}` expansion, durations, and
//! validation whose errors name file, line, column and key.

mod duration;
pub mod env;
mod error;
mod scalar;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigIssue};
pub use scalar::{
    Addr, Cidr, Dur, Pos, Reference, SecretText, Text, Url, normalize_net, parse_cidr, parse_url,
};

use crate::reputation::{Status, ThreatClass};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the gateway listens: one address or a list.
    #[serde(deserialize_with = "one_or_many_addr")]
    pub listen: Vec<SocketAddr>,
    /// The application behind the gateway (required for `run`).
    pub upstream: Option<Url>,
    /// CA certificates (PEM) an `https` upstream is verified against, in place of the
    /// public roots.
    pub upstream_ca: Option<Text>,
    /// The upstream sees the client's Host (false: the upstream's authority).
    pub preserve_host: bool,
    pub limits: Limits,
    pub tls: Option<TlsConfig>,
    pub mode: Mode,
    pub client_ip: ClientIpConfig,
    pub providers: Providers,
    pub lookup: LookupConfig,
    pub cache: CacheConfig,
    pub lists: Lists,
    pub rules: Vec<Spanned<Rule>>,
    pub default: Action,
    pub block_response: BlockResponse,
    /// Add x-ipgate-client-ip, x-ipgate-decision, x-ipgate-score, x-ipgate-country.
    pub upstream_headers: bool,
    pub admin: Option<AdminConfig>,
    pub reload: ReloadConfig,
    pub shutdown_grace: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            upstream: None,
            upstream_ca: None,
            preserve_host: true,
            limits: Limits::default(),
            tls: None,
            mode: Mode::Enforce,
            client_ip: ClientIpConfig::default(),
            providers: Providers::default(),
            lookup: LookupConfig::default(),
            cache: CacheConfig::default(),
            lists: Lists::default(),
            rules: Vec::new(),
            default: Action::Allow,
            block_response: BlockResponse::default(),
            upstream_headers: false,
            admin: None,
            reload: ReloadConfig::default(),
            shutdown_grace: Dur(Duration::from_secs(10)),
        }
    }
}

/// Protection against slow and flooding clients and slow upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub header_read_timeout: Dur,
    pub max_connections: usize,
    pub upstream_timeout: Dur,
    pub idle_timeout: Dur,
    /// Concurrent HTTP/2 streams one client connection may have open.
    pub max_concurrent_streams: u32,
    /// Connections to the upstream at once, pooled ones included.
    pub upstream_max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_connections: 10_000,
            upstream_timeout: Dur(Duration::from_secs(60)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_concurrent_streams: 100,
            upstream_max_connections: 1024,
        }
    }
}

/// TLS termination on the listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Text,
    pub key: Text,
}

/// enforce, or dry_run (decide and log, never block).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// Who the client is (docs/configuration.md, "Client IP").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// Peers allowed to speak for a client. Empty: nobody.
    pub trusted_proxies: Vec<Cidr>,
    pub header: HeaderSource,
    /// Expect PROXY protocol v1/v2 from trusted peers.
    pub proxy_protocol: bool,
}

/// The one forwarding header read from trusted proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum HeaderSource {
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    #[serde(rename = "forwarded")]
    Forwarded,
    #[serde(rename = "x-real-ip")]
    XRealIp,
    #[serde(rename = "cf-connecting-ip")]
    CfConnectingIp,
    #[serde(rename = "none")]
    None,
}

/// Reputation providers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Providers {
    pub iocscout: Option<IocscoutConfig>,
    pub ipswamp: Option<IpswampConfig>,
    pub file: Option<FileProviderConfig>,
}

/// IOCScout (key in the URL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IocscoutConfig {
    pub api_key: SecretText,
    pub base_url: Url,
    /// Sends realTimeData=1.
    pub real_time: bool,
    /// Look-ups per UTC day, never exceeded.
    pub daily_quota: u32,
    pub timeout: Dur,
}

impl Default for IocscoutConfig {
    fn default() -> Self {
        IocscoutConfig {
            api_key: SecretText(String::new()),
            base_url: Url("https://api.iocscout.com/v1".into()),
            real_time: false,
            daily_quota: 5,
            timeout: Dur(Duration::from_secs(2)),
        }
    }
}

/// IPSwamp.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpswampConfig {
    pub api_key: SecretText,
    pub base_url: Url,
    pub auth: IpswampAuth,
    /// Sends detailed=true.
    pub detailed: bool,
    pub daily_quota: u32,
    pub timeout: Dur,
}

impl Default for IpswampConfig {
    fn default() -> Self {
        IpswampConfig {
            api_key: SecretText(String::new()),
            base_url: Url("https://ipswamp.com/api/v1".into()),
            auth: IpswampAuth::Bearer,
            detailed: true,
            daily_quota: 1000,
            timeout: Dur(Duration::from_secs(2)),
        }
    }
}

/// How the IPSwamp key is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpswampAuth {
    /// `Authorization: Bearer KEY`
    #[default]
    Bearer,
    /// `X-API-Key: KEY`
    Header,
}

/// Offline reputation file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProviderConfig {
    pub path: Text,
}

/// How look-ups are made.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    pub mode: LookupMode,
    /// Bound on the whole look-up, all providers together.
    pub timeout: Dur,
    pub on_error: Action,
    pub on_miss: Action,
    pub skip_private: bool,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            mode: LookupMode::Inline,
            timeout: Dur(Duration::from_millis(1500)),
            on_error: Action::Allow,
            on_miss: Action::Allow,
            skip_private: true,
        }
    }
}

/// inline: wait for the answer; background: decide with on_miss now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupMode {
    #[default]
    Inline,
    Background,
}

/// The reputation cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub ttl: Dur,
    pub ttl_by_status: TtlByStatus,
    pub error_ttl: Dur,
    pub max_entries: u64,
    pub ipv6_prefix: u8,
    pub path: Option<Text>,
    /// The shared tier: `redis://[:PASSWORD@]HOST:PORT[/DB]` or `rediss://` (TLS).
    pub redis: Option<SecretText>,
    /// Prefix of every Redis key (several deployments can share one Redis).
    pub redis_prefix: Text,
    /// Bound on every Redis call; a slower answer counts as Redis down.
    pub redis_timeout: Dur,
    /// Look-ups per provider per day this gateway may spend on its own while Redis is
    /// down (they cannot be counted for the cluster). 0: none, `lookup.on_error` decides.
    pub redis_fallback_quota: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Dur(Duration::from_secs(86_400)),
            ttl_by_status: TtlByStatus::default(),
            error_ttl: Dur(Duration::from_secs(300)),
            max_entries: 1_000_000,
            ipv6_prefix: 64,
            path: None,
            redis: None,
            redis_prefix: Text("ipgate:".into()),
            redis_timeout: Dur(Duration::from_millis(50)),
            redis_fallback_quota: 0,
        }
    }
}

/// Per-status TTLs (unset: `cache.ttl`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlByStatus {
    pub threat: Option<Dur>,
    pub suspicious: Option<Dur>,
    pub unknown: Option<Dur>,
    pub safe: Option<Dur>,
}

impl TtlByStatus {
    /// The TTL for `status`, falling back to `default`.
    pub fn for_status(&self, status: Status, default: Duration) -> Duration {
        let v = match status {
            Status::Threat => &self.threat,
            Status::Suspicious => &self.suspicious,
            Status::Unknown => &self.unknown,
            Status::Safe => &self.safe,
        };
        v.as_ref().map_or(default, |d| d.0)
    }
}

/// Allow/block lists and named feeds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lists {
    pub allow: Vec<Cidr>,
    pub block: Vec<Cidr>,
    #[serde(deserialize_with = "located_feeds")]
    pub feeds: Vec<FeedConfig>,
}

/// A named list loaded from a URL or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    pub name: Text,
    pub source: Text,
    #[serde(default)]
    pub format: FeedFormat,
    #[serde(default = "default_refresh")]
    pub refresh: Dur,
    #[serde(default)]
    pub tag: Option<FeedTag>,
    /// Where the feed stands in the file (for errors).
    #[serde(skip)]
    pub pos: Pos,
}

/// Reads `lists.feeds`, keeping where each feed stands.
fn located_feeds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FeedConfig>, D::Error> {
    let feeds: Vec<Spanned<FeedConfig>> = Vec::deserialize(d)?;
    Ok(feeds
        .into_iter()
        .map(|s| {
            let mut f = s.value;
            f.pos = Pos {
                line: s.referenced.line(),
                column: s.referenced.column(),
            };
            f
        })
        .collect())
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(3600))
}

/// Feed file formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedFormat {
    /// One IP or CIDR a line, `#`/`;` comments.
    #[default]
    Plain,
    /// Spamhaus DROP JSON: one object a line with `cidr`.
    SpamhausDropJson,
}

/// Members of a tagged feed satisfy `tor: true` / `vpn: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedTag {
    Tor,
    Vpn,
}

/// One rule: all of `when` must hold, then `action`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: Text,
    #[serde(default)]
    pub when: Condition,
    pub action: Action,
}

/// allow or block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Allow,
    Block,
}

impl Action {
    /// `allow` or `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
        }
    }
}

/// The conditions of a rule's `when` (docs/configuration.md, "Conditions"); all present ones must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Condition {
    #[serde(deserialize_with = "one_or_many")]
    pub status: Vec<Status>,
    pub score_above: Option<u8>,
    #[serde(deserialize_with = "one_or_many")]
    pub class: Vec<ThreatClass>,
    pub tor: Option<bool>,
    pub vpn: Option<bool>,
    pub scanner: Option<bool>,
    #[serde(deserialize_with = "one_or_many")]
    pub country: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub asn: Vec<u32>,
    #[serde(deserialize_with = "one_or_many")]
    pub in_list: Vec<String>,
    pub provider: Option<String>,
    pub not: Option<Box<Condition>>,
}

/// The answer to a blocked client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockResponse {
    pub status: u16,
    /// HTML template file; `{ip}`, `{rule}`, `{reason}` are replaced.
    pub html: Option<Text>,
}

impl Default for BlockResponse {
    fn default() -> Self {
        BlockResponse {
            status: 403,
            html: None,
        }
    }
}

/// The admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: Addr,
    /// When non-empty, admin calls need `Authorization: Bearer TOKEN`.
    pub token: Option<SecretText>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Addr(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token: None,
        }
    }
}

/// Live reload.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when the file changes.
    pub watch: bool,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut cfg = Config::from_yaml(&text, &path.display().to_string())?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    /// A text with no key at all (empty, blank, comments only: a truncated file) is an
    /// error, never the built-in defaults; write `{}` to mean "all defaults".
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let has_content = text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---" && t != "..."
        });
        if !has_content {
            return Err(ConfigError::Invalid {
                file: origin.to_string(),
                issues: vec![ConfigIssue {
                    line: 1,
                    column: 1,
                    key: String::new(),
                    message: "the file sets nothing (empty or truncated?): refusing to fall back to the built-in defaults; write `{}` to mean all defaults".into(),
                }],
            });
        }
        scalar::clear_issues();
        let parsed: Result<Config, serde_saphyr::Error> = serde_saphyr::from_str(text);
        let leaf_issues = scalar::take_issues();
        let mut issues: Vec<ConfigIssue> = leaf_issues
            .into_iter()
            .map(|i| ConfigIssue::at(text, i.line, i.column, i.message))
            .collect();
        let cfg = match parsed {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                issues.push(ConfigIssue::from_yaml_error(text, &e));
                None
            }
        };
        if let Some(cfg) = &cfg {
            let mut checked = Vec::new();
            cfg.check(text, &mut checked);
            issues.extend(checked.into_iter().map(|i| i.locate(text)));
        }
        issues.sort_by_key(|i| (i.line, i.column));
        issues.dedup();
        match cfg {
            Some(cfg) if issues.is_empty() => Ok(cfg),
            _ => Err(ConfigError::Invalid {
                file: origin.to_string(),
                issues,
            }),
        }
    }

    /// Relative file paths in the config are relative to the config file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |t: &mut Text| {
            if !t.0.is_empty() && Path::new(&t.0).is_relative() {
                t.0 = base.join(&t.0).display().to_string();
            }
        };
        if let Some(f) = &mut self.providers.file {
            fix(&mut f.path);
        }
        if let Some(h) = &mut self.block_response.html {
            fix(h);
        }
        if let Some(ca) = &mut self.upstream_ca {
            fix(ca);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(p) = &mut self.cache.path {
            fix(p);
        }
        for feed in &mut self.lists.feeds {
            if !feed.source.0.starts_with("http://") && !feed.source.0.starts_with("https://") {
                fix(&mut feed.source);
            }
        }
    }
}

/// Accepts `X` or `[X, ...]`.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a value or a list of values")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|x| vec![x])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            T::deserialize(de::value::U64Deserializer::<E>::new(v)).map(|x| vec![x])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            T::deserialize(de::value::I64Deserializer::<E>::new(v)).map(|x| vec![x])
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// Accepts `ADDR` or `[ADDR, ...]`.
fn one_or_many_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address like 127.0.0.1:8080 or a list of them")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Addr(a)) = seq.next_element()? {
                out.push(a);
            }
            Ok(out)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = env::expand(v).map_err(E::custom)?;
            v.parse::<SocketAddr>().map(|a| vec![a]).map_err(|_| {
                E::custom(format!(
                    "`{v}` is not a socket address (e.g. 127.0.0.1:8080 or [::]:8080)"
                ))
            })
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests;
