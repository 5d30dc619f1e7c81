//! The answer a blocked client gets: HTML from a template, or JSON when preferred.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::gate::Decision;

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
pub enum BlockPageError {
    #[error("block_response.html: cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("block_response.status: {0} is not an HTTP status")]
    Status(u16),
}

impl BlockPage {
    /// Loads the template named by the config (built-in page when none).
    pub fn from_config(cfg: &crate::config::BlockResponse) -> Result<BlockPage, BlockPageError> {
        let status =
            StatusCode::from_u16(cfg.status).map_err(|_| BlockPageError::Status(cfg.status))?;
        let template = match &cfg.html {
            Some(path) => std::fs::read_to_string(&path.0).map_err(|e| BlockPageError::Read {
                path: path.0.clone(),
                message: e.to_string(),
            })?,
            None => DEFAULT_HTML.to_string(),
        };
        Ok(BlockPage { status, template })
    }

    /// Renders the response for `decision`; JSON when `accept` prefers it.
    pub fn render(&self, decision: &Decision, accept: Option<&HeaderValue>) -> BlockBody {
        // A client is told why in general terms; provider errors stay in logs and the
        // admin API.
        let reason: &str = if &*decision.rule == "lookup-error" {
            "reputation unavailable"
        } else {
            &decision.reason
        };
        if prefers_json(accept) {
            let body = serde_json::json!({
                "error": "blocked",
                "ip": decision.client_ip.to_string(),
                "rule": &*decision.rule,
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
            .replace("{ip}", &escape(&decision.client_ip.to_string()))
            .replace("{rule}", &escape(&decision.rule))
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
        let d = Decision {
            client_ip: "198.51.100.1".parse().unwrap(),
            action: crate::config::Action::Block,
            verdict: crate::config::Action::Block,
            rule: "lookup-error".into(),
            reason: "rule `x` needs reputation and none is available (iocscout: HTTP 500)".into(),
            reputation: None,
        };
        for accept in [None, Some(HeaderValue::from_static("application/json"))] {
            let body = page.render(&d, accept.as_ref()).body;
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("iocscout") && !text.contains("500"),
                "{text}"
            );
        }
        let json = page
            .render(&d, Some(&HeaderValue::from_static("application/json")))
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
