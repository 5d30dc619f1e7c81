//! Keeping API keys out of messages, `Debug` output and logs.

use std::fmt;

use crate::reputation::RawJson;

/// What replaces a secret in a message.
pub const REDACTED: &str = "***";

/// Replaces every occurrence of `secret` in `text` (as is, and in its URL-encoded
/// forms, since IOCScout's key travels in the query string) with `***`. An empty
/// secret changes nothing.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(secret, REDACTED);
    for encoded in [form_urlencode(secret), percent_encode(secret)] {
        if encoded != secret && !encoded.is_empty() {
            out = replace_ignore_ascii_case(&out, &encoded);
        }
    }
    out
}

/// An API key. Its `Debug` and `Display` print `***`; [`Secret::expose`] gives the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Secret(key.into())
    }

    /// The key itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A stable 64-bit fingerprint of the key (SipHash with fixed keys): the same in
    /// every process, and no way back to the key.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0x6970_6761_7465, 0x6b65_7966_7072);
        self.0.hash(&mut h);
        h.finish()
    }

    /// `text` with this key replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.0)
    }

    /// Redacts this key from every string of `value` (object keys included), in place.
    /// True when something was replaced.
    pub fn redact_json(&self, value: &mut serde_json::Value) -> bool {
        if self.0.is_empty() {
            return false;
        }
        redact_value(value, self)
    }

    /// `raw` with this key redacted from every string in it; `raw` itself when the key
    /// is not in it.
    pub fn redact_raw(&self, raw: RawJson) -> RawJson {
        let mut value = raw.to_value();
        if self.redact_json(&mut value) {
            RawJson::from_value(&value)
        } else {
            raw
        }
    }
}

fn redact_value(value: &mut serde_json::Value, secret: &Secret) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => redact_string(s, secret),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |hit, v| redact_value(v, secret) | hit),
        Value::Object(map) => {
            let mut hit = false;
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let redacted = secret.redact(&key);
                if redacted != key
                    && let Some(v) = map.remove(&key)
                {
                    hit = true;
                    map.insert(redacted, v);
                }
            }
            map.values_mut()
                .fold(hit, |hit, v| redact_value(v, secret) | hit)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn redact_string(s: &mut String, secret: &Secret) -> bool {
    let redacted = secret.redact(s);
    if redacted == *s {
        return false;
    }
    *s = redacted;
    true
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// application/x-www-form-urlencoded, as `url`'s query serializer writes it.
fn form_urlencode(s: &str) -> String {
    encode(s, true)
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    encode(s, false)
}

fn encode(s: &str, form: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => out.push(char::from(b)),
            b'*' if form => out.push('*'),
            b'~' if !form => out.push('~'),
            b' ' if form => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Replaces `needle` (ASCII) in `hay` ignoring ASCII case (percent escapes may be
/// written `%2f` or `%2F`).
fn replace_ignore_ascii_case(hay: &str, needle: &str) -> String {
    let lower_hay = hay.to_ascii_lowercase();
    let lower_needle = needle.to_ascii_lowercase();
    // Lower-casing ASCII keeps byte offsets, so indexes found in `lower_hay` hold in `hay`.
    let mut out = String::with_capacity(hay.len());
    let mut last = 0;
    for (idx, _) in lower_hay.match_indices(&lower_needle) {
        if idx < last {
            continue;
        }
        out.push_str(&hay[last..idx]);
        out.push_str(REDACTED);
        last = idx + needle.len();
    }
    out.push_str(&hay[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_forms_are_hidden() {
        let key = "KEY-sekrit-1234567890";
        assert_eq!(
            redact("url?apiKey=KEY-sekrit-1234567890&ip=1", key),
            "url?apiKey=***&ip=1"
        );
        let odd = "a b/c+d~é";
        let s = format!(
            "q1={} q2={} q3={} raw={odd}",
            form_urlencode(odd),
            percent_encode(odd),
            percent_encode(odd).to_lowercase()
        );
        let r = redact(&s, odd);
        assert_eq!(r, "q1=*** q2=*** q3=*** raw=***", "{s}");
    }

    #[test]
    fn every_string_of_a_json_answer_is_redacted() {
        let key = Secret::new("KEY-sekrit/1234567890");
        let raw = RawJson::from_value(&serde_json::json!({
            "echo": "key KEY-sekrit/1234567890 ok",
            "request": { "url": "https://x/?apiKey=KEY-sekrit%2F1234567890&ip=1" },
            "list": [1, null, "KEY-sekrit/1234567890"],
            "KEY-sekrit/1234567890": true,
            "score": 90
        }));
        let out = key.redact_raw(raw);
        assert_eq!(
            out,
            serde_json::json!({
                "echo": "key *** ok",
                "request": { "url": "https://x/?apiKey=***&ip=1" },
                "list": [1, null, "***"],
                "***": true,
                "score": 90
            })
        );
        let clean = RawJson::from_value(&serde_json::json!({"score": 1}));
        assert_eq!(key.redact_raw(clean.clone()).get(), clean.get());
    }

    #[test]
    fn empty_secret_changes_nothing() {
        assert_eq!(redact("abc", ""), "abc");
    }

    #[test]
    fn secret_debug_hides_the_key() {
        let s = Secret::new("KEY-sekrit-1234567890");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "KEY-sekrit-1234567890");
    }
}
