//! Getting a feed body: HTTP(S) with conditional requests, or a local file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    ETAG, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, USER_AGENT,
};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::FeedError;

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// An `http://` or `https://` URL.
    Http(Url),
    /// A local file (a bare path or `file://` followed by a path).
    File(PathBuf),
}

impl Source {
    /// Reads a configured `source`.
    pub(crate) fn parse(s: &str) -> Result<Source, FeedError> {
        let s = s.trim();
        let bad = || FeedError::BadSource(redact(s));
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = Url::parse(s).map_err(|_| bad())?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad());
            }
            return Ok(Source::Http(url));
        }
        if let Some(path) = s.strip_prefix("file://") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        if s.is_empty() || s.contains("://") {
            return Err(bad());
        }
        Ok(Source::File(PathBuf::from(s)))
    }

    /// The source as it may be shown (no credentials, no query string).
    pub(crate) fn display(&self) -> String {
        match self {
            Source::Http(url) => redact(url.as_str()),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// Drops user info and the query string of a URL-looking source (they may hold keys).
pub(crate) fn redact(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut url) if url.has_host() => {
            let had_query = url.query().is_some();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            let mut out = url.to_string();
            if had_query {
                out.push_str("?…");
            }
            out
        }
        _ => match s.split_once('?') {
            Some((head, _)) => format!("{head}?…"),
            None => s.to_string(),
        },
    }
}

/// HTTP cache validators of the copy in use, sent back on the next request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Validators {
    /// The `ETag` response header, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// The `Last-Modified` response header, sent back verbatim as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

impl Validators {
    pub(crate) fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// Identity of a file's contents as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The outcome of one fetch.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The source says the copy in use is current (HTTP 304, or an unchanged file).
    NotModified,
    /// A new body, with what identifies it for the next conditional fetch.
    Body {
        body: Bytes,
        validators: Validators,
        stamp: Option<FileStamp>,
    },
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_body: u64,
    pub timeout: Duration,
}

/// `GET url`, conditional on `validators` when given; reads at most `limits.max_body`
/// bytes and gives up after `limits.timeout` (whole request, body included).
pub(crate) async fn fetch_http(
    client: &reqwest::Client,
    url: &Url,
    validators: Option<&Validators>,
    limits: Limits,
) -> Result<Fetched, FeedError> {
    let mut req = client.get(url.clone()).timeout(limits.timeout).header(
        USER_AGENT,
        concat!("ipgate/", env!("CARGO_PKG_VERSION"), " (feeds)"),
    );
    let mut conditional = false;
    if let Some(v) = validators {
        if let Some(etag) = v
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            req = req.header(IF_NONE_MATCH, etag);
            conditional = true;
        }
        if let Some(lm) = v
            .last_modified
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            req = req.header(IF_MODIFIED_SINCE, lm);
            conditional = true;
        }
    }
    let mut resp = req.send().await.map_err(|e| transport(e, limits.timeout))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED if conditional => return Ok(Fetched::NotModified),
        StatusCode::NOT_MODIFIED => return Err(FeedError::UnexpectedNotModified),
        s => return Err(FeedError::Status(s.as_u16())),
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let new_validators = Validators {
        etag: header(ETAG),
        last_modified: header(LAST_MODIFIED),
    };
    if resp.content_length().is_some_and(|n| n > limits.max_body) {
        return Err(FeedError::TooLarge {
            limit: limits.max_body,
        });
    }
    let capacity = resp.content_length().unwrap_or(0).min(limits.max_body);
    let mut buf = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport(e, limits.timeout))?
    {
        if (buf.len() + chunk.len()) as u64 > limits.max_body {
            return Err(FeedError::TooLarge {
                limit: limits.max_body,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body {
        body: Bytes::from(buf),
        validators: new_validators,
        stamp: None,
    })
}

/// A reqwest error without its URL (which may carry a key), with its causes.
fn transport(e: reqwest::Error, timeout: Duration) -> FeedError {
    if e.is_timeout() {
        return FeedError::Timeout(timeout);
    }
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    FeedError::Transport(msg)
}

/// Reads a file unless its modification time and size equal `last`.
pub(crate) async fn fetch_file(
    path: &Path,
    last: Option<FileStamp>,
    max_body: u64,
) -> Result<Fetched, FeedError> {
    let io = |source| FeedError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let stamp = FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    };
    if last == Some(stamp) && stamp.modified.is_some() {
        return Ok(Fetched::NotModified);
    }
    if stamp.len > max_body {
        return Err(FeedError::TooLarge { limit: max_body });
    }
    let mut buf = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
    (&mut file)
        .take(max_body.saturating_add(1))
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() as u64 > max_body {
        return Err(FeedError::TooLarge { limit: max_body });
    }
    Ok(Fetched::Body {
        body: Bytes::from(buf),
        validators: Validators::default(),
        stamp: Some(stamp),
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn sources() {
        assert!(matches!(
            Source::parse("https://check.torproject.org/torbulkexitlist").unwrap(),
            Source::Http(_)
        ));
        assert!(matches!(
            Source::parse("HTTP://example.com/x").unwrap(),
            Source::Http(_)
        ));
        assert_eq!(
            Source::parse("/etc/ipgate/vpn.txt").unwrap(),
            Source::File(PathBuf::from("/etc/ipgate/vpn.txt"))
        );
        assert_eq!(
            Source::parse("file:///etc/ipgate/vpn.txt").unwrap(),
            Source::File(PathBuf::from("/etc/ipgate/vpn.txt"))
        );
        assert_eq!(
            Source::parse("lists/tor.txt").unwrap(),
            Source::File(PathBuf::from("lists/tor.txt"))
        );
        for bad in [
            "",
            "ftp://example.com/x",
            "https://",
            "file://",
            "s3://bucket/key",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn redaction_hides_keys() {
        assert_eq!(
            redact("https://user:pw@feeds.example.com/list.txt?key=SECRET"),
            "https://feeds.example.com/list.txt?…"
        );
        assert_eq!(
            redact("https://feeds.example.com/a.txt"),
            "https://feeds.example.com/a.txt"
        );
        assert_eq!(redact("weird://x?key=SECRET"), "weird://x?…");
        let err = Source::parse("ftp://h/x?key=SECRET")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn files_are_reread_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, "192.0.2.1\n").unwrap();
        let Fetched::Body { body, stamp, .. } = fetch_file(&path, None, 1024).await.unwrap() else {
            panic!("expected a body");
        };
        assert_eq!(&body[..], b"192.0.2.1\n");
        assert!(matches!(
            fetch_file(&path, stamp, 1024).await.unwrap(),
            Fetched::NotModified
        ));
        std::fs::write(&path, "192.0.2.1\n192.0.2.2\n").unwrap();
        assert!(matches!(
            fetch_file(&path, stamp, 1024).await.unwrap(),
            Fetched::Body { .. }
        ));
        assert!(matches!(
            fetch_file(&path, None, 5).await.unwrap_err(),
            FeedError::TooLarge { limit: 5 }
        ));
        assert!(matches!(
            fetch_file(&dir.path().join("missing"), None, 1024)
                .await
                .unwrap_err(),
            FeedError::Io { .. }
        ));
        assert!(matches!(
            fetch_file(dir.path(), None, 1024).await.unwrap_err(),
            FeedError::Io { .. }
        ));
    }
}
