//! TLS termination: the certificate chain and key (PEM), offered with h2 and
//! http/1.1 by ALPN. Read at start and again on every reload.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate or key file cannot be read.
    #[error("tls: cannot read {what} from {path}")]
    File {
        /// `certificates` or `a private key`.
        what: &'static str,
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls: {0} holds no certificate")]
    NoCertificate(String),
    /// rustls refused the certificate and key.
    #[error("tls: certificate and key do not fit")]
    Rustls(#[source] tokio_rustls::rustls::Error),
}

/// Loads the certificate chain and key (PEM) and offers h2 and http/1.1 by ALPN.
pub fn tls_acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::File {
            what: "certificates",
            path: cert.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::File {
        what: "a private key",
        path: key.to_string(),
        source,
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
