//! Where allowed requests go: the `upstream` URL, parsed once per configuration.

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// Why an `upstream` URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Not a URI at all.
    #[error("upstream `{url}` is not a URL")]
    Invalid {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// No `http://` or `https://`.
    #[error("upstream `{0}` has no scheme (use http:// or https://)")]
    NoScheme(String),
    /// No host.
    #[error("upstream `{0}` has no host")]
    NoHost(String),
}

/// The upstream: scheme, authority and an optional path prefix.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// Read by the gateway's proxy only.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    scheme: Scheme,
    authority: Authority,
    /// The authority as a `Host` value (made once, not per request).
    host: Option<http::HeaderValue>,
    /// Path prefix of the upstream URL ("" for none).
    base_path: String,
    /// The roots an `https` upstream is verified against (`upstream_ca`), when not the
    /// public ones.
    #[cfg(feature = "gateway")]
    tls: Option<std::sync::Arc<crate::upstream_connect::CaRoots>>,
    /// Where its connections go: made once, borrowed by every request.
    #[cfg(feature = "gateway")]
    key: crate::upstream_connect::PoolKey,
}

impl Upstream {
    /// Parses `http://host:port[/prefix]`.
    pub(crate) fn parse(url: &str) -> Result<Upstream, UpstreamError> {
        let uri: Uri = url.parse().map_err(|source| UpstreamError::Invalid {
            url: url.to_string(),
            source,
        })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| UpstreamError::NoScheme(url.to_string()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::NoHost(url.to_string()))?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host = http::HeaderValue::from_str(authority.as_str()).ok();
        #[cfg(feature = "gateway")]
        let key = crate::upstream_connect::PoolKey {
            scheme: scheme.clone(),
            authority: authority.clone(),
            tls: None,
        };
        Ok(Upstream {
            scheme,
            authority,
            host,
            base_path,
            #[cfg(feature = "gateway")]
            tls: None,
            #[cfg(feature = "gateway")]
            key,
        })
    }

    /// Verifies the (`https`) upstream against the certificates in `ca` alone; those of
    /// `previous` are kept when `ca` still holds them.
    #[cfg(feature = "gateway")]
    pub(crate) fn with_ca(
        mut self,
        ca: &str,
        previous: Option<&Upstream>,
    ) -> Result<Upstream, crate::upstream_connect::UpstreamCaError> {
        if self.scheme != Scheme::HTTPS {
            return Err(crate::upstream_connect::UpstreamCaError::NotHttps(format!(
                "{}://{}",
                self.scheme, self.authority
            )));
        }
        let previous = previous.and_then(|p| p.tls.as_ref());
        let roots = crate::upstream_connect::load_ca(ca, previous)?;
        self.key.tls = Some(roots.config.clone());
        self.tls = Some(roots);
        Ok(self)
    }

    /// The upstream's authority (its `Host` when `preserve_host` is false).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream's authority as a `Host` header value.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn host(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// Where connections to this upstream go (the pool's key).
    #[cfg(feature = "gateway")]
    pub(crate) fn pool_key(&self) -> &crate::upstream_connect::PoolKey {
        &self.key
    }

    /// The request target to send upstream (origin form) for a request's path and
    /// query, when it differs from the request's own: only with a path prefix. Without
    /// one, `None`: the request's path and query go as they are (the upstream request's
    /// head is written from them), and no URI is built per request.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn origin_for(&self, pq: Option<&PathAndQuery>) -> Result<Option<Uri>, http::Error> {
        if self.base_path.is_empty() {
            return Ok(None);
        }
        let pq = pq.map_or("/", |p| p.as_str());
        Uri::builder()
            .path_and_query(format!("{}{pq}", self.base_path))
            .build()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefix_and_errors() {
        let u = Upstream::parse("http://127.0.0.1:3000/app/").unwrap();
        let pq: PathAndQuery = "/x?y=1".parse().unwrap();
        assert_eq!(
            u.origin_for(Some(&pq)).unwrap().unwrap().to_string(),
            "/app/x?y=1"
        );
        assert_eq!(u.origin_for(None).unwrap().unwrap().to_string(), "/app/");
        #[cfg(feature = "gateway")]
        assert_eq!(u.pool_key().authority.as_str(), "127.0.0.1:3000");
        let bare = Upstream::parse("http://127.0.0.1:3000").unwrap();
        // Sent as the request has it (`upstream_h1::encode_head` writes its path and
        // query, `/` without one).
        assert!(bare.origin_for(Some(&pq)).unwrap().is_none());
        assert!(matches!(
            Upstream::parse("/only/a/path"),
            Err(UpstreamError::NoScheme(_))
        ));
        assert!(matches!(
            Upstream::parse("http://exa mple"),
            Err(UpstreamError::Invalid { .. })
        ));
    }
}
