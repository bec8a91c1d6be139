//! DNS questions for backend names, asked through `hickory-resolver` (a
//! well-kept resolver crate: we do not write DNS). One client per `dns`
//! setting; its own answer cache is off, because the refresher already
//! asks again exactly when an answer's TTL (bounded by `min_ttl` and
//! `max_ttl`) runs out and must then see the server's current records.

use crate::config::model::{AddressFamily, DnsQuery, DnsSettings};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One address an answer gave, with what an SRV record said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Where to connect.
    pub addr: SocketAddr,
    /// RFC 2782 priority (0 for A/AAAA answers): lower is preferred.
    pub priority: u16,
    /// RFC 2782 weight (`None` for A/AAAA answers).
    pub srv_weight: Option<u16>,
    /// The SRV target it came from (`None` for A/AAAA answers).
    pub target: Option<String>,
}

/// A successful resolution: the addresses and how long they hold.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Every address, in answer order, without duplicates.
    pub addrs: Vec<Address>,
    /// The shortest TTL of the records used, before bounds are applied.
    pub ttl: Duration,
}

/// A failed resolution: the `result` label it is counted under and what
/// the resolver said.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `tollgate_dns_resolutions_total{result}`: `timeout`, `nxdomain`,
    /// `no_records`, `servfail`, `refused`, `unreachable` or `error`.
    pub result: &'static str,
    /// The resolver's message.
    pub message: String,
}

/// Asks the configured (or the system's) name servers.
pub struct DnsClient {
    resolver: TokioResolver,
    settings: DnsSettings,
}

impl DnsClient {
    /// A client for `settings`: its servers, or `/etc/resolv.conf`'s (with
    /// its search domains and `ndots`); the hosts file is read first either
    /// way. Lookups must run inside a Tokio runtime.
    pub fn new(settings: &DnsSettings) -> Result<Self, String> {
        let (config, mut opts) = if settings.servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("dns: cannot read the system's resolver config: {e}"))?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|server| {
                    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut ns.connections {
                        connection.port = server.port();
                    }
                    ns
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                Default::default(),
            )
        };
        opts.timeout = settings.timeout;
        opts.attempts = 2;
        opts.cache_size = 0;
        opts.ip_strategy = match settings.family {
            AddressFamily::Any => LookupIpStrategy::Ipv4AndIpv6,
            AddressFamily::Ipv4 => LookupIpStrategy::Ipv4Only,
            AddressFamily::Ipv6 => LookupIpStrategy::Ipv6Only,
        };
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("dns: cannot build the resolver: {e}"))?;
        Ok(Self {
            resolver,
            settings: settings.clone(),
        })
    }

    /// The settings this client was built for.
    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Resolves `query` to its current addresses. Bounded in time even if
    /// every server is black-holed: one query timeout per attempt and
    /// server, and a hard ceiling over the whole resolution.
    pub async fn resolve(&self, query: &DnsQuery) -> Result<Answer, Failure> {
        let ceiling = self.settings.timeout * 4;
        match tokio::time::timeout(ceiling, self.resolve_unbounded(query)).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                result: "timeout",
                message: format!("{query}: no answer within {ceiling:?}"),
            }),
        }
    }

    async fn resolve_unbounded(&self, query: &DnsQuery) -> Result<Answer, Failure> {
        match query {
            DnsQuery::Host { name, port } => {
                let (ips, valid_until) = self.addresses(name).await?;
                let addrs = ips
                    .into_iter()
                    .map(|ip| Address {
                        addr: SocketAddr::new(ip, *port),
                        priority: 0,
                        srv_weight: None,
                        target: None,
                    })
                    .collect();
                Ok(Answer {
                    addrs,
                    ttl: ttl_from(valid_until),
                })
            }
            DnsQuery::Srv { name } => self.srv(name).await,
        }
    }

    async fn addresses(&self, name: &str) -> Result<(Vec<std::net::IpAddr>, Instant), Failure> {
        let lookup = self
            .resolver
            .lookup_ip(name)
            .await
            .map_err(|e| failure(name, &e))?;
        let mut ips: Vec<std::net::IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Err(Failure {
                result: "no_records",
                message: format!("{name}: no address records"),
            });
        }
        Ok((ips, lookup.valid_until()))
    }

    /// RFC 2782: every target of the SRV set (a target of "." says the
    /// service is not offered there), each with its addresses.
    async fn srv(&self, name: &str) -> Result<Answer, Failure> {
        let lookup = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| failure(name, &e))?;
        let mut valid_until = lookup.valid_until();
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .filter(|srv| !srv.target.is_root())
            .collect();
        if records.is_empty() {
            return Err(Failure {
                result: "no_records",
                message: format!("{name}: no SRV targets"),
            });
        }
        let lookups = records.iter().map(|srv| {
            let target = srv.target.to_ascii();
            async move { (self.addresses(&target).await, target) }
        });
        let mut addrs: Vec<Address> = Vec::new();
        let mut failures = Vec::new();
        for (srv, (result, target)) in records.iter().zip(futures::future::join_all(lookups).await)
        {
            match result {
                Ok((ips, until)) => {
                    valid_until = valid_until.min(until);
                    for ip in ips {
                        let addr = SocketAddr::new(ip, srv.port);
                        if addrs.iter().any(|a| a.addr == addr) {
                            continue;
                        }
                        addrs.push(Address {
                            addr,
                            priority: srv.priority,
                            srv_weight: Some(srv.weight),
                            target: Some(target.trim_end_matches('.').to_owned()),
                        });
                    }
                }
                Err(f) => failures.push(f),
            }
        }
        // Targets that do not resolve are left out; the set fails only when
        // none of them gives an address (its last good set then stays).
        if addrs.is_empty() {
            return Err(failures.into_iter().next().unwrap_or(Failure {
                result: "no_records",
                message: format!("{name}: no SRV target has an address"),
            }));
        }
        Ok(Answer {
            addrs,
            ttl: ttl_from(valid_until),
        })
    }
}

fn ttl_from(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// Classifies a resolver error for the metric and keeps its message.
fn failure(name: &str, error: &NetError) -> Failure {
    let result = match error {
        NetError::Timeout => "timeout",
        e if e.is_nx_domain() => "nxdomain",
        e if e.is_no_records_found() => "no_records",
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "servfail",
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => "refused",
        NetError::Io(_) | NetError::NoConnections => "unreachable",
        _ => "error",
    };
    Failure {
        result,
        message: format!("{name}: {error}"),
    }
}

/// An answer of `addrs` (`ip:port`) with `ttl`, for unit tests.
#[cfg(test)]
pub(crate) fn answer_for_tests(addrs: &[&str], ttl: Duration) -> Answer {
    Answer {
        addrs: addrs
            .iter()
            .map(|a| Address {
                addr: a.parse().expect("addr"),
                priority: 0,
                srv_weight: None,
                target: None,
            })
            .collect(),
        ttl,
    }
}
