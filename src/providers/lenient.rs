//! Lenient decoding helpers: a field of an unexpected type becomes "absent" instead of
//! failing the whole answer (docs/configuration.md, "Provider answers": unknown or missing fields never fail a parse).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `deserialize_with` for `Option<T>`: null or a value of another shape gives `None`.
pub(crate) fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}

/// `deserialize_with` for `Vec<T>`: null → empty; a single value → one item; items of
/// another shape are dropped.
pub(crate) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| T::deserialize(i).ok())
            .collect(),
        other => T::deserialize(other).ok().into_iter().collect(),
    })
}

/// `deserialize_with` for a number: an integer, a float or a numeric string.
pub(crate) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(number_of(&Value::deserialize(d)?))
}

/// `deserialize_with` for a whole number (floats are truncated; numeric strings read).
pub(crate) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(number_of(&Value::deserialize(d)?).map(|f| f as i64))
}

/// `deserialize_with` for a string; numbers and booleans are written out, other shapes
/// give `None`.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// `deserialize_with` for a boolean: `true`/`false`, `1`/`0`, `"true"`/`"false"`.
pub(crate) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

/// A number from a JSON number or a numeric string (finite only).
pub(crate) fn number_of(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    f.is_finite().then_some(f)
}

/// A 0–100 score from any number: clamped, then rounded.
pub(crate) fn score(f: Option<f64>) -> Option<u8> {
    let f = f?;
    if !f.is_finite() {
        return None;
    }
    Some(f.clamp(0.0, 100.0).round() as u8)
}

/// An AS number from `64496`, `"64496"`, `"AS64496"`, `"as64496 Example"`.
pub(crate) fn asn_of(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => {
            let s = s.trim();
            let s = s
                .strip_prefix("AS")
                .or_else(|| s.strip_prefix("as"))
                .or_else(|| s.strip_prefix("As"))
                .unwrap_or(s)
                .trim_start();
            let digits: &str = &s[..s.bytes().take_while(u8::is_ascii_digit).count()];
            digits.parse().ok()
        }
        _ => None,
    }
}

/// Unix seconds from a number (seconds; values above 10^11 are taken as milliseconds)
/// or a string accepted by [`parse_timestamp`] or made of digits.
pub(crate) fn timestamp_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(_) => number_of(v).map(seconds_or_millis),
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<i64>().ok().map(|n| seconds_or_millis(n as f64))
            } else {
                parse_timestamp(t)
            }
        }
        _ => None,
    }
}

fn seconds_or_millis(f: f64) -> i64 {
    if f.abs() >= 1e11 {
        (f / 1000.0) as i64
    } else {
        f as i64
    }
}

/// Parses an ISO 8601 / RFC 3339 date-time leniently into unix seconds:
/// `2025-12-10T12:00:00Z`, `…:00.123Z`, `…+00:00`, `…+0000`, `…+00`,
/// `2025-12-10 12:00:00 +0000`, `… UTC`/`GMT`, no zone (taken as UTC),
/// `2025-12-10T12:00` and a bare date `2025-12-10` (midnight UTC).
/// Anything else (including `""`) gives `None`.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut rest = &s[10..];
    let (mut hour, mut minute, mut second) = (0, 0, 0);
    if let Some(r) = rest.strip_prefix(['T', 't', ' ']) {
        let t = r.as_bytes();
        if t.len() < 5 || t[2] != b':' {
            return None;
        }
        hour = digits(&t[0..2])?;
        minute = digits(&t[3..5])?;
        rest = &r[5..];
        if let Some(r2) = rest.strip_prefix(':') {
            let t2 = r2.as_bytes();
            if t2.len() < 2 {
                return None;
            }
            second = digits(&t2[0..2])?;
            rest = &r2[2..];
            if let Some(frac) = rest.strip_prefix(['.', ',']) {
                let n = frac.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return None;
                }
                rest = &frac[n..];
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
    }
    let offset = zone_offset(rest.trim_start())?;
    let days = days_from_civil(i64::from(year), month, day);
    Some(
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
            - offset,
    )
}

/// Seconds east of UTC for `Z`, `UTC`, `GMT`, `+HH:MM`, `+HHMM`, `+HH`, or nothing.
fn zone_offset(z: &str) -> Option<i64> {
    match z {
        "" | "Z" | "z" | "UTC" | "GMT" => return Some(0),
        _ => {}
    }
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let r = rest.as_bytes();
    let (h, m) = match r.len() {
        2 => (digits(r)?, 0),
        4 => (digits(&r[0..2])?, digits(&r[2..4])?),
        5 if r[2] == b':' => (digits(&r[0..2])?, digits(&r[3..5])?),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (i64::from(h) * 3600 + i64::from(m) * 60))
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: i64 = 1_765_368_000; // 2025-12-10T12:00:00Z

    #[test]
    fn timestamps_in_every_published_form() {
        for s in [
            "2025-12-10T12:00:00Z",
            "2025-12-10t12:00:00z",
            "2025-12-10T12:00:00.123Z",
            "2025-12-10T12:00:00+00:00",
            "2025-12-10T12:00:00+0000",
            "2025-12-10 12:00:00 +0000",
            "2025-12-10 12:00:00+0000",
            "2025-12-10 12:00:00 UTC",
            "2025-12-10 12:00:00",
            "2025-12-10T12:00",
            "2025-12-10T13:00:00+01",
            "2025-12-10T07:00:00-05:00",
            " 2025-12-10T12:00:00Z ",
        ] {
            assert_eq!(parse_timestamp(s), Some(T), "{s}");
        }
        assert_eq!(parse_timestamp("2025-12-10"), Some(T - 12 * 3600));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(
            parse_timestamp("2024-05-23T10:19:53-04:00"),
            Some(1_716_473_993)
        );
    }

    #[test]
    fn bad_timestamps_are_none() {
        for s in [
            "",
            "yesterday",
            "2025-13-10T12:00:00Z",
            "2025-02-29T12:00:00Z",
            "2025-12-10T25:00:00Z",
            "2025-12-10T12:00:00+2500",
            "2025-12-10T12:00:00 CET",
            "2025-12-10T12:00:00.Z",
            "2025-12-10X12:00:00Z",
            "25-12-10",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn timestamp_values() {
        assert_eq!(timestamp_of(&json!(1_738_415_270)), Some(1_738_415_270));
        assert_eq!(
            timestamp_of(&json!(1_738_415_270_123_i64)),
            Some(1_738_415_270)
        );
        assert_eq!(timestamp_of(&json!(1_738_415_270.9)), Some(1_738_415_270));
        assert_eq!(timestamp_of(&json!("1738415270")), Some(1_738_415_270));
        assert_eq!(timestamp_of(&json!("2025-12-10T12:00:00Z")), Some(T));
        assert_eq!(timestamp_of(&json!(null)), None);
        assert_eq!(timestamp_of(&json!("")), None);
        assert_eq!(timestamp_of(&json!({})), None);
    }

    #[test]
    fn scores_clamp_and_round() {
        assert_eq!(score(Some(85.0)), Some(85));
        assert_eq!(score(Some(85.5)), Some(86));
        assert_eq!(score(Some(85.4)), Some(85));
        assert_eq!(score(Some(-3.0)), Some(0));
        assert_eq!(score(Some(250.0)), Some(100));
        assert_eq!(score(Some(f64::NAN)), None);
        assert_eq!(score(None), None);
        assert_eq!(number_of(&json!("42.5")), Some(42.5));
        assert_eq!(number_of(&json!("x")), None);
        assert_eq!(number_of(&json!(true)), None);
    }

    #[test]
    fn asns() {
        assert_eq!(asn_of(&json!("AS12345")), Some(12345));
        assert_eq!(asn_of(&json!("as12345")), Some(12345));
        assert_eq!(asn_of(&json!("AS 12345 Example")), Some(12345));
        assert_eq!(asn_of(&json!("12345")), Some(12345));
        assert_eq!(asn_of(&json!(64496)), Some(64496));
        assert_eq!(asn_of(&json!("AS")), None);
        assert_eq!(asn_of(&json!("ASX")), None);
        assert_eq!(asn_of(&json!(-1)), None);
        assert_eq!(asn_of(&json!(5_000_000_000_u64)), None);
        assert_eq!(asn_of(&json!(null)), None);
    }
}
