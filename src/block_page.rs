//! The answer a blocked client gets: HTML from a template, or JSON when preferred.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

const DEFAULT_HTML: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Access denied</title></head>\n<body><h1>Access denied</h1>\n<p>Requests from {ip} are not allowed ({rule}).</p></body></html>\n";

/// A rendered block response.
#[derive(Debug, Clone)]
pub struct BlockBody {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

/// The configured block response.
#[derive(Debug, Clone)]
pub struct BlockPage {
    status: StatusCode,
    template: String,
}

/// Why a block page could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockPageError {
    /// The template file cannot be read.
    #[error("block_response.html: cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not a status code.
    #[error("block_response.status: {0} is not an HTTP status")]
    Status(u16),
}

impl BlockPage {
    /// Loads the template named by the config (built-in page when none).
    pub fn from_config(cfg: &crate::config::BlockResponse) -> Result<BlockPage, BlockPageError> {
        let status =
            StatusCode::from_u16(cfg.status).map_err(|_| BlockPageError::Status(cfg.status))?;
        let template = match &cfg.html {
            Some(path) => {
                std::fs::read_to_string(&path.0).map_err(|source| BlockPageError::Read {
                    path: path.0.clone(),
                    source,
                })?
            }
            None => DEFAULT_HTML.to_string(),
        };
        Ok(BlockPage { status, template })
    }

    /// Renders the response for a blocked `client_ip`; JSON when `accept` prefers it.
    /// `reason` is what the client may be told (never provider errors or operator
    /// notes: see `Decision::public_reason`).
    pub fn render(
        &self,
        client_ip: std::net::IpAddr,
        rule: &str,
        reason: &str,
        accept: Option<&HeaderValue>,
    ) -> BlockBody {
        if prefers_json(accept) {
            let body = serde_json::json!({
                "error": "blocked",
                "ip": client_ip.to_string(),
                "rule": rule,
                "reason": reason,
            });
            return BlockBody {
                status: self.status,
                content_type: HeaderValue::from_static("application/json"),
                body: Bytes::from(body.to_string()),
            };
        }
        let html = self
            .template
            .replace("{ip}", &escape(&client_ip.to_string()))
            .replace("{rule}", &escape(rule))
            .replace("{reason}", &escape(reason));
        BlockBody {
            status: self.status,
            content_type: HeaderValue::from_static("text/html; charset=utf-8"),
            body: Bytes::from(html),
        }
    }
}

/// True when the Accept header ranks application/json above text/html.
pub fn prefers_json(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut json_q = -1.0f32;
    let mut html_q = -1.0f32;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" | "application/problem+json" => json_q = json_q.max(q),
            "text/html" => html_q = html_q.max(q),
            _ => {}
        }
    }
    json_q > 0.0 && json_q > html_q
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(prefers_json(Some(&h("application/json"))));
        assert!(prefers_json(Some(&h("application/json, text/plain, */*"))));
        assert!(!prefers_json(Some(&h(
            "text/html,application/xhtml+xml,application/json;q=0.9"
        ))));
        assert!(prefers_json(Some(&h("text/html;q=0.5, application/json"))));
        assert!(!prefers_json(Some(&h("*/*"))));
        assert!(!prefers_json(None));
        assert!(!prefers_json(Some(&h("application/json;q=0"))));
    }

    #[test]
    fn provider_errors_are_not_shown_to_clients() {
        let page = BlockPage::from_config(&crate::config::BlockResponse::default()).unwrap();
        let d = crate::snapshot::Snapshot::for_tests().build(
            "198.51.100.1".parse().unwrap(),
            crate::decision::DecidedBy::LookupError,
            "rule `x` needs reputation and none is available (iocscout: HTTP 500)".into(),
            None,
        );
        for accept in [None, Some(HeaderValue::from_static("application/json"))] {
            let body = page
                .render(d.client_ip, d.rule(), d.public_reason(), accept.as_ref())
                .body;
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("iocscout") && !text.contains("500"),
                "{text}"
            );
        }
        let json = page
            .render(
                d.client_ip,
                d.rule(),
                d.public_reason(),
                Some(&HeaderValue::from_static("application/json")),
            )
            .body;
        assert!(String::from_utf8_lossy(&json).contains("reputation unavailable"));
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
