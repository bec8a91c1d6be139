//! Who is asking: the tenant behind an API key or a verified JWT, or an
//! anonymous client IP. Keys are compared by SHA-256, so the config never
//! holds a usable key; the same digest finds a token verified before.

use super::RateLimiter;
use crate::auth::jwt::Bearer;
use crate::auth::verdict::{Failure, TokenTenant};
use crate::certificates::client::ClientCertificate;
use crate::config::model::{Anonymous, ApiKeyField};
use ipnet::IpNet;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;

/// A requester.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A tenant, by index, identified by its API key.
    Tenant(usize),
    /// A tenant, by index, identified by a verified client certificate
    /// naming it (`tenants.<name>.certificates`).
    Certificate(usize),
    /// A tenant, by index, named by a route's auth service
    /// (`forward_auth.tenant_field`).
    AuthService(usize),
    /// A tenant named by a verified JWT (configured or not).
    Token(Arc<TokenTenant>),
    /// No key: the client's IP (IPv6: its network, see [`anonymous_network`]).
    Anonymous(IpAddr),
}

/// Why a request is refused before any budget is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A key was sent and is unknown or malformed: 401 `invalid_api_key`.
    InvalidKey,
    /// No key, and anonymous requests are refused: 401 `api_key_required`.
    KeyRequired,
    /// A JWT that did not verify: 401 `invalid_token`.
    InvalidToken(Failure),
}

impl Refusal {
    /// The `tollgate_auth_failures_total` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::InvalidKey => "api_key",
            Refusal::KeyRequired => "missing",
            Refusal::InvalidToken(failure) => failure.reason(),
        }
    }
}

impl Identity {
    /// The tenant's name, if the requester is a tenant.
    pub fn tenant_name<'a>(&'a self, limiter: &'a RateLimiter) -> Option<&'a str> {
        match self {
            Identity::Tenant(i) | Identity::Certificate(i) | Identity::AuthService(i) => {
                limiter.tenants.get(*i).map(|(name, _)| &**name)
            }
            Identity::Token(t) => Some(&t.name),
            Identity::Anonymous(_) => None,
        }
    }
}

/// `sha256:<hex>` of a key, as the config stores it.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl RateLimiter {
    /// Identifies the requester of `req` arriving from `peer` over a
    /// connection whose client presented `cert` (verified). A certificate
    /// naming a tenant decides before any key or token the request
    /// carries: it is proven by the handshake, they are only sent.
    pub fn identify(
        &self,
        req: &RequestHeader,
        peer: Option<IpAddr>,
        cert: Option<&ClientCertificate>,
    ) -> Result<Identity, Refusal> {
        if let Some(cert) = cert.filter(|_| !self.certificate_tenants.is_empty()) {
            if let Some(&i) = cert
                .names
                .iter()
                .find_map(|name| self.certificate_tenants.get(name))
            {
                return Ok(Identity::Certificate(i));
            }
        }
        for source in &self.config.key_sets {
            let key = match source {
                ApiKeyField::Bearer => match req.headers.get(http::header::AUTHORIZATION) {
                    None => continue,
                    Some(v) => {
                        let v = v.to_str().map_err(|_| Refusal::InvalidKey)?;
                        match v
                            .strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                        {
                            Some(k) => k.trim(),
                            None => return Err(Refusal::InvalidKey),
                        }
                    }
                },
                ApiKeyField::Header(name) => match req.headers.get(name) {
                    None => continue,
                    Some(v) => v.to_str().map_err(|_| Refusal::InvalidKey)?.trim(),
                },
            };
            if key.is_empty() {
                return Err(Refusal::InvalidKey);
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if let (ApiKeyField::Bearer, Some(jwt)) = (source, &self.jwt) {
                match jwt.read(key, &digest) {
                    Bearer::ApiKey => {}
                    Bearer::Token(tenant) => return Ok(Identity::Token(tenant)),
                    Bearer::Refused(failure) => return Err(Refusal::InvalidToken(failure)),
                }
            }
            return self
                .keys
                .get(&digest)
                .map(|&i| Identity::Tenant(i))
                .ok_or(Refusal::InvalidKey);
        }
        self.anonymous(req, peer).ok_or(Refusal::KeyRequired)
    }

    /// The anonymous requester of `req` (its client's network), when
    /// anonymous requests have a tier.
    pub fn anonymous(&self, req: &RequestHeader, peer: Option<IpAddr>) -> Option<Identity> {
        match self.config.anonymous {
            Anonymous::Reject => None,
            Anonymous::Tier(_) => {
                let ip = client_ip(req, peer, &self.config.trusted_proxies);
                Some(Identity::Anonymous(anonymous_network(
                    ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    self.config.ipv6_prefix,
                )))
            }
        }
    }
}

impl RateLimiter {
    /// Whether a request carries a credential: `Authorization`, or one of
    /// the configured API-key headers. Such a request's response is stored
    /// only when it says so (RFC 9111 §3.5), as for `Authorization`.
    pub fn carries_credentials(&self, req: &RequestHeader) -> bool {
        self.config.key_sets.iter().any(|source| match source {
            ApiKeyField::Bearer => false, // `Authorization`, checked by the cache itself
            ApiKeyField::Header(name) => req.headers.contains_key(name),
        })
    }

    /// Sets what the upstream learns about the requester: the tenant's
    /// name in `tenant_header` and a verified token's `forward_claims`
    /// (a client's own copies of these fields removed first, so it cannot
    /// claim to be another tenant), and, unless `forward_api_key`, no API
    /// key headers.
    pub fn forward_identity(
        &self,
        upstream: &mut RequestHeader,
        who: Option<&Identity>,
    ) -> pingora::Result<()> {
        upstream.remove_header(&self.config.tenant_header);
        if let Some(jwt) = &self.config.jwt {
            for (_, header) in &jwt.forward_claims {
                upstream.remove_header(header);
            }
        }
        if let Some(name) = who.and_then(|w| w.tenant_name(self)) {
            upstream.insert_header(self.config.tenant_header.clone(), name)?;
        }
        if let Some(Identity::Token(token)) = who {
            for (header, value) in &token.forward {
                upstream.insert_header(header.clone(), value.clone())?;
            }
        }
        if !self.config.forward_api_key {
            for source in &self.config.key_sets {
                match source {
                    ApiKeyField::Bearer => upstream.remove_header(&http::header::AUTHORIZATION),
                    ApiKeyField::Header(name) => upstream.remove_header(name),
                };
            }
        }
        Ok(())
    }
}

/// What an anonymous budget is keyed by: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address counts as that IPv4 address), an IPv6 address
/// cut to its `/prefix` network — a client holding a /64 would otherwise
/// get a fresh budget per address, 2^64 of them.
pub fn anonymous_network(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ipnet::Ipv6Net::new(v6, ipv6_prefix.min(128))
                .map_or(ip, |net| IpAddr::V6(net.network())),
        },
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is walked from the right past trusted hops.
pub fn client_ip(req: &RequestHeader, peer: Option<IpAddr>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { break };
        for hop in text.rsplit(',') {
            let Some(ip) = forwarded_address(hop.trim()) else {
                return Some(client);
            };
            client = ip;
            if !is_trusted(ip) {
                return Some(ip);
            }
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry as proxies write it: an address, or an
/// address with a port (`203.0.113.9:51234`, `[2001:db8::1]:443`, as IIS
/// ARR and Azure front doors append), or a bracketed IPv6 address.
/// Anything else (`unknown`, an obfuscated RFC 7239 node) is not an
/// address.
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok
            .then(|| v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))
            .flatten();
    }
    hop.parse::<std::net::SocketAddrV4>()
        .ok()
        .map(|a| IpAddr::V4(*a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("hdr");
        }
        r
    }

    #[test]
    fn ipv6_clients_share_their_network_and_mapped_ipv4_is_ipv4() {
        let net = |s: &str, p| anonymous_network(s.parse().expect("ip"), p).to_string();
        assert_eq!(net("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(net("2001:db8:1:2:ffff::9", 64), "2001:db8:1:2::");
        assert_eq!(net("2001:db8:1:2:ffff::9", 128), "2001:db8:1:2:ffff::9");
        assert_eq!(net("2001:db8:1:2:ffff::9", 48), "2001:db8:1::");
        assert_eq!(net("::ffff:192.0.2.7", 64), "192.0.2.7");
        assert_eq!(net("192.0.2.7", 64), "192.0.2.7");
    }

    #[test]
    fn hashes_match_the_config_format() {
        assert_eq!(
            hash_key("secret"),
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: [IpNet; 1] = ["10.0.0.0/8".parse().expect("cidr")];
        let peer: IpAddr = "10.1.2.3".parse().expect("ip");
        let r = req(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.9.9.9")]);
        assert_eq!(
            client_ip(&r, Some(peer), &trusted),
            Some("203.0.113.9".parse().expect("ip"))
        );
        let stranger: IpAddr = "192.0.2.50".parse().expect("ip");
        assert_eq!(client_ip(&r, Some(stranger), &trusted), Some(stranger));
        assert_eq!(client_ip(&req(&[]), Some(peer), &trusted), Some(peer));
    }

    /// Entries with a port are addresses too: every client behind a proxy
    /// that writes them would otherwise share the proxy's budget.
    #[test]
    fn forwarded_entries_with_ports_are_read() {
        let trusted: [IpNet; 1] = ["10.0.0.0/8".parse().expect("cidr")];
        let peer: IpAddr = "10.1.2.3".parse().expect("ip");
        for (entry, client) in [
            ("203.0.113.9:51234", "203.0.113.9"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("10.9.9.9:80, 198.51.100.7:1", "198.51.100.7"),
        ] {
            let r = req(&[("x-forwarded-for", &format!("{entry}, 10.0.0.1:8080"))]);
            assert_eq!(
                client_ip(&r, Some(peer), &trusted),
                Some(client.parse().expect("ip")),
                "{entry}"
            );
        }
        for junk in [
            "unknown",
            "[2001:db8::1]:x",
            "203.0.113.9:99999",
            "_hidden",
            "[::1",
        ] {
            let r = req(&[("x-forwarded-for", junk)]);
            assert_eq!(client_ip(&r, Some(peer), &trusted), Some(peer), "{junk}");
        }
    }
}
