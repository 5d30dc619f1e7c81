//! TEMPORARY stand-in until the real reader lands.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError { #[error("timeout")] Timeout }
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(_stream: &mut S, _timeout: std::time::Duration) -> Result<Option<std::net::SocketAddr>, ProxyProtocolError> { Ok(None) }
