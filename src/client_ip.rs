//! TEMPORARY stand-in until the real resolver lands.
use std::net::IpAddr;
use crate::config::HeaderSource;
use crate::lists::IpSet;

pub struct ClientIpResolver { trusted: IpSet, _header: HeaderSource }
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError { #[error("bad")] Bad }
impl ClientIpResolver {
    pub fn new(trusted: impl IntoIterator<Item = ipnet::IpNet>, header: HeaderSource) -> Self { Self { trusted: trusted.into_iter().collect(), _header: header } }
    pub fn is_trusted(&self, ip: IpAddr) -> bool { self.trusted.contains(ip) }
    pub fn resolve(&self, peer: IpAddr, _headers: &http::HeaderMap) -> Result<IpAddr, ClientIpError> { Ok(peer.to_canonical()) }
}
