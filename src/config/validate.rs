//! Checks that hold across keys (references, ranges, names), each reported at the key
//! it is about.

use std::collections::HashSet;
use std::time::Duration;

use super::error::ConfigIssue;
use super::{Condition, Config};
use crate::reputation::ProviderId;

impl Config {
    /// Checks that hold across keys (references, ranges).
    pub(super) fn check(&self, text: &str, issues: &mut Vec<ConfigIssue>) {
        let mut feed_names = HashSet::new();
        for (i, feed) in self.lists.feeds.iter().enumerate() {
            let key = format!("lists.feeds[{i}].name");
            if feed.name.0.is_empty() {
                issues.push(ConfigIssue::at_key(
                    text,
                    feed.pos.line,
                    feed.pos.column,
                    key,
                    "a feed needs a non-empty name".into(),
                ));
            } else if !feed_names.insert(feed.name.0.as_str()) {
                issues.push(ConfigIssue::at_key(
                    text,
                    feed.pos.line,
                    feed.pos.column,
                    key,
                    format!("feed `{}` is defined twice", feed.name),
                ));
            }
            if feed.refresh.0 < Duration::from_secs(1) {
                issues.push(ConfigIssue::keyed(
                    format!("lists.feeds[{i}].refresh"),
                    "refresh must be at least 1s",
                ));
            }
        }
        let mut rule_names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let line = rule.referenced.line();
            let column = rule.referenced.column();
            let at = |key: String, msg: String| ConfigIssue::at_key(text, line, column, key, msg);
            if rule.value.name.0.is_empty() {
                issues.push(at(
                    format!("rules[{i}].name"),
                    "a rule needs a non-empty name".into(),
                ));
            } else if !rule_names.insert(rule.value.name.0.as_str()) {
                issues.push(at(
                    format!("rules[{i}].name"),
                    format!("rule `{}` is defined twice", rule.value.name),
                ));
            }
            check_condition(
                &rule.value.when,
                &format!("rules[{i}].when"),
                &feed_names,
                &mut |k, m| issues.push(at(k, m)),
            );
        }
        if !(200..=599).contains(&self.block_response.status) {
            issues.push(ConfigIssue::keyed(
                "block_response.status",
                format!(
                    "{} cannot answer a request (use a final status, 200-599)",
                    self.block_response.status
                ),
            ));
        }
        if self.cache.ipv6_prefix == 0 || self.cache.ipv6_prefix > 128 {
            issues.push(ConfigIssue::keyed(
                "cache.ipv6_prefix",
                format!("{} is not a prefix length (1-128)", self.cache.ipv6_prefix),
            ));
        }
        if self.cache.max_entries == 0 {
            issues.push(ConfigIssue::keyed(
                "cache.max_entries",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            issues.push(ConfigIssue::keyed(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.limits.max_concurrent_streams == 0 {
            issues.push(ConfigIssue::keyed(
                "limits.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.limits.upstream_max_connections == 0 {
            issues.push(ConfigIssue::keyed(
                "limits.upstream_max_connections",
                "must be at least 1",
            ));
        }
        if self.listen.is_empty() {
            issues.push(ConfigIssue::keyed(
                "listen",
                "at least one address is needed",
            ));
        }
        for (key, d) in [
            (
                "limits.header_read_timeout",
                self.limits.header_read_timeout.0,
            ),
            ("limits.idle_timeout", self.limits.idle_timeout.0),
            ("limits.upstream_timeout", self.limits.upstream_timeout.0),
            ("cache.error_ttl", self.cache.error_ttl.0),
        ] {
            if d < Duration::from_millis(100) {
                issues.push(ConfigIssue::keyed(
                    key,
                    "must be at least 100ms (0 would cut every connection or retry every failure at once)",
                ));
            }
        }
        if let Some(admin) = &self.admin
            && !admin.listen.0.ip().is_loopback()
            && admin.token.as_ref().is_none_or(|t| t.0.trim().is_empty())
        {
            issues.push(ConfigIssue::keyed(
                "admin.listen",
                format!(
                    "{} is reachable off this machine: set admin.token (the admin API can ban, reload and flush), or listen on a loopback address",
                    admin.listen.0
                ),
            ));
        }
        if let Some(url) = self.cache.redis.as_ref().filter(|u| !u.0.is_empty())
            && let Err(why) = check_redis_url(&url.0)
        {
            issues.push(ConfigIssue::keyed("cache.redis", why));
        }
        if self.cache.redis_timeout.0.is_zero()
            || self.cache.redis_timeout.0 > Duration::from_secs(5)
        {
            issues.push(ConfigIssue::keyed(
                "cache.redis_timeout",
                "must be more than 0 and at most 5s (a slow Redis must never slow a decision)",
            ));
        }
        if self.cache.redis_prefix.0.contains(char::is_whitespace) {
            issues.push(ConfigIssue::keyed(
                "cache.redis_prefix",
                "must not contain spaces",
            ));
        }
        if self.lookup.timeout.0.is_zero() {
            issues.push(ConfigIssue::keyed("lookup.timeout", "must be more than 0"));
        }
    }
}

fn check_condition(
    c: &Condition,
    key: &str,
    feeds: &HashSet<&str>,
    report: &mut dyn FnMut(String, String),
) {
    for name in &c.in_list {
        if !feeds.contains(name.as_str()) {
            let mut known: Vec<&str> = feeds.iter().copied().collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "no feed is defined".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            report(
                format!("{key}.in_list"),
                format!("no feed named `{name}` in lists.feeds ({known})"),
            );
        }
    }
    if let Some(Err(e)) = c.provider.as_deref().map(str::parse::<ProviderId>) {
        report(format!("{key}.provider"), e);
    }
    if let Some(s) = c.score_above
        && s > 100
    {
        report(
            format!("{key}.score_above"),
            format!("{s} is above 100: the rule could never match"),
        );
    }
    if let Some(inner) = &c.not {
        check_condition(inner, &format!("{key}.not"), feeds, report);
    }
}

/// `redis://` or `rediss://` with a host; the message never shows a password.
fn check_redis_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("not a URL ({e}); expected redis://HOST:PORT[/DB] or rediss://..."))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(format!(
            "scheme `{}`: expected redis:// or rediss:// (TLS)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host: expected redis://HOST:PORT[/DB]".into());
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u8>().is_err() {
        return Err(format!("`/{db}` is not a database number"));
    }
    Ok(())
}
