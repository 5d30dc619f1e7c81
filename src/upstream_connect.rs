//! Opening connections to the upstream: TCP (name resolution, `TCP_NODELAY`), then TLS
//! for an `https://` upstream, verified against the public (webpki) roots or, with
//! `upstream_ca`, against those certificates alone. HTTP/1.1 is offered by ALPN.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use http::Uri;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::either::Either;
use tower_service::Service;

use crate::upstream_h1::BoxError;

/// A connection to the upstream: plain, or TLS.
pub(crate) type UpstreamIo = Either<TcpStream, TlsStream<TcpStream>>;

/// Why `upstream_ca` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamCaError {
    /// The file cannot be read, or is not PEM.
    #[error("upstream_ca: cannot read certificates from {path}")]
    File {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("upstream_ca: {0} holds no certificate")]
    Empty(String),
    /// A certificate is not one rustls can trust as a root.
    #[error("upstream_ca: a certificate in {path} cannot be a trust anchor")]
    BadCertificate {
        path: String,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The upstream is not `https://`: there would be nothing to verify.
    #[error("upstream_ca is set, but the upstream `{0}` is not https://")]
    NotHttps(String),
    /// rustls refused to make a client configuration with these roots.
    #[error("upstream_ca: no TLS client configuration with the roots in {path}")]
    Config {
        path: String,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
}

/// The roots of `upstream_ca`: its certificates and the client configuration that
/// trusts them alone.
#[derive(Debug)]
pub(crate) struct CaRoots {
    certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub(crate) config: Arc<ClientConfig>,
}

/// Reads the certificates (PEM) in `path`. When they are those of `previous` (a reload
/// that did not change them), `previous` is kept: pooled connections stay in use.
pub(crate) fn load_ca(
    path: &str,
    previous: Option<&Arc<CaRoots>>,
) -> Result<Arc<CaRoots>, UpstreamCaError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| UpstreamCaError::File {
            path: path.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(UpstreamCaError::Empty(path.to_string()));
    }
    if let Some(p) = previous.filter(|p| p.certs == certs) {
        return Ok(p.clone());
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|source| UpstreamCaError::BadCertificate {
                path: path.to_string(),
                source,
            })?;
    }
    let config = client_config(roots).map_err(|source| UpstreamCaError::Config {
        path: path.to_string(),
        source,
    })?;
    Ok(Arc::new(CaRoots { certs, config }))
}

/// Every problem with `upstream_ca` as a gateway would use it with `upstream` (`None`:
/// not known yet, the file alone is checked): `ipgate validate` refuses what `run`
/// refuses, all at once.
pub fn check_upstream_ca(upstream: Option<&str>, ca: &str) -> Vec<UpstreamCaError> {
    let mut problems = Vec::new();
    if let Some(u) = upstream {
        let https = u
            .parse::<Uri>()
            .is_ok_and(|u| u.scheme() == Some(&Scheme::HTTPS));
        if !https {
            problems.push(UpstreamCaError::NotHttps(u.to_string()));
        }
    }
    if let Err(e) = load_ca(ca, None) {
        problems.push(e);
    }
    problems
}

/// The client configuration trusting the public (webpki) roots: made once.
fn public_roots() -> Result<Arc<ClientConfig>, tokio_rustls::rustls::Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, tokio_rustls::rustls::Error>> =
        OnceLock::new();
    CONFIG
        .get_or_init(|| {
            client_config(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        })
        .clone()
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, tokio_rustls::rustls::Error> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where a connection goes: the pool reuses connections only for the same key.
#[derive(Debug, Clone)]
pub(crate) struct PoolKey {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// For `https`: the roots to verify the upstream against, when not the public ones
    /// (`upstream_ca`). A connection verified against other roots is not reused.
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &PoolKey) -> bool {
        self.scheme == other.scheme
            && self.authority == other.authority
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for PoolKey {}

/// Opens connections to a [`PoolKey`]'s upstream.
pub(crate) trait Connect: Clone + Send + Sync + 'static {
    /// The connection's I/O.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    /// A new connection to `key`'s upstream.
    fn connect(&self, key: &PoolKey) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;
}

/// The gateway's connector.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    tcp: HttpConnector,
}

impl UpstreamConnector {
    pub(crate) fn new() -> UpstreamConnector {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        UpstreamConnector { tcp }
    }
}

/// Why a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("`{0}` is not a TLS server name")]
    ServerName(String),
    #[error("TLS handshake with the upstream failed: {0}")]
    Handshake(#[source] std::io::Error),
}

impl Connect for UpstreamConnector {
    type Io = crate::batched_io::Batched<UpstreamIo>;

    async fn connect(&self, key: &PoolKey) -> Result<Self::Io, BoxError> {
        let https = key.scheme == Scheme::HTTPS;
        let uri = Uri::builder()
            .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()?;
        let mut tcp = self.tcp.clone();
        std::future::poll_fn(|cx| tcp.poll_ready(cx)).await?;
        let stream = tcp.call(uri).await?.into_inner();
        if !https {
            return Ok(crate::batched_io::Batched::new(Either::Left(stream)));
        }
        let host = key.authority.host();
        // An IPv6 literal comes in brackets.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(name.to_string())
            .map_err(|_| ConnectError::ServerName(host.to_string()))?;
        let config = match &key.tls {
            Some(c) => c.clone(),
            None => public_roots()?,
        };
        let tls = TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(crate::batched_io::Batched::new(Either::Right(tls)))
    }
}
