//! Resolving the intake hosts: the system resolver (getaddrinfo, the
//! default) or the name servers in `dns.nameservers` through
//! hickory-resolver, which also gives the answer's TTL.
//!
//! Runs on the control thread only. A lookup never fails the start and never
//! takes an address away: the caller keeps the last good answer on error.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{DnsConfig, IpFamily};

/// One successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ips: Vec<IpAddr>,
    /// When the answer's TTL runs out, where the resolver tells (hickory).
    pub valid_until: Option<Instant>,
}

enum Backend {
    System,
    Hickory(Box<TokioResolver>),
}

pub struct Resolver {
    backend: Backend,
    prefer: IpFamily,
    timeout: Duration,
}

impl Resolver {
    /// Builds the resolver the config asks for. Must be called inside the
    /// control thread's tokio runtime when name servers are configured.
    pub fn new(config: &DnsConfig) -> Resolver {
        let backend = if config.nameservers.is_empty() {
            Backend::System
        } else {
            let mut servers = ResolverConfig::from_name_servers(Vec::new());
            for ns in &config.nameservers {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                servers.add_name_server(NameServerConfig::new(ns.ip(), true, vec![udp, tcp]));
            }
            let mut builder = hickory_resolver::Resolver::builder_with_config(servers, TokioRuntimeProvider::default());
            let opts = builder.options_mut();
            opts.timeout = config.timeout;
            opts.attempts = 1;
            // Hosts are absolute names: never try search domains.
            opts.ndots = 0;
            opts.ip_strategy = match config.prefer {
                IpFamily::V4 => LookupIpStrategy::Ipv4thenIpv6,
                IpFamily::V6 => LookupIpStrategy::Ipv6thenIpv4,
            };
            match builder.build() {
                Ok(r) => Backend::Hickory(Box::new(r)),
                Err(e) => {
                    // Only reachable with a broken runtime; the system resolver still works.
                    tracing::error!(error = %e, "cannot build the DNS resolver for dns.nameservers; using the system resolver");
                    Backend::System
                }
            }
        };
        Resolver { backend, prefer: config.prefer, timeout: config.timeout }
    }

    pub fn describe(&self) -> &'static str {
        match self.backend {
            Backend::System => "system resolver",
            Backend::Hickory(_) => "dns.nameservers",
        }
    }

    /// Resolves `host`, bounded by `dns.timeout`. The addresses are in the
    /// resolver's order, filtered to the preferred family when it has any.
    pub async fn lookup(&self, host: &str) -> Result<Answer, String> {
        let answer = match &self.backend {
            Backend::System => {
                let name = host.to_string();
                let blocking = tokio::task::spawn_blocking(move || {
                    (name.as_str(), 0u16).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
                });
                match tokio::time::timeout(self.timeout, blocking).await {
                    Err(_) => return Err(format!("lookup timed out after {:?}", self.timeout)),
                    Ok(Err(e)) => return Err(format!("lookup task failed: {e}")),
                    Ok(Ok(Err(e))) => return Err(e.to_string()),
                    Ok(Ok(Ok(ips))) => Answer { ips, valid_until: None },
                }
            }
            Backend::Hickory(resolver) => {
                resolver.clear_cache();
                let fqdn = format!("{}.", host.trim_end_matches('.'));
                match tokio::time::timeout(self.timeout + Duration::from_millis(500), resolver.lookup_ip(fqdn)).await {
                    Err(_) => return Err(format!("lookup timed out after {:?}", self.timeout)),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(lookup)) => Answer { ips: lookup.iter().collect(), valid_until: Some(lookup.valid_until()) },
                }
            }
        };
        let ips = prefer(answer.ips, self.prefer);
        if ips.is_empty() {
            return Err("no address".into());
        }
        Ok(Answer { ips, valid_until: answer.valid_until })
    }
}

/// Keeps only the preferred family when the answer has any of it; removes
/// duplicates, keeps the order.
pub fn prefer(ips: Vec<IpAddr>, family: IpFamily) -> Vec<IpAddr> {
    let wanted = |ip: &IpAddr| match family {
        IpFamily::V4 => ip.is_ipv4(),
        IpFamily::V6 => ip.is_ipv6(),
    };
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    let any_wanted = ips.iter().any(wanted);
    for ip in ips {
        if (!any_wanted || wanted(&ip)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// When to look a host up again: after `refresh`, or when the TTL runs out
/// if that is sooner, but never sooner than one second.
pub fn next_refresh(now: Instant, refresh: Duration, valid_until: Option<Instant>) -> Duration {
    let by_ttl = valid_until.map(|t| t.saturating_duration_since(now)).unwrap_or(refresh);
    by_ttl.min(refresh).max(crate::config::MIN_DNS_REFRESH)
}

/// After a failed lookup: try again soon (a host that never resolved makes
/// every request to it a 503), but not more often than every second.
pub fn retry_after_failure(refresh: Duration) -> Duration {
    refresh.min(Duration::from_secs(5)).max(crate::config::MIN_DNS_REFRESH)
}

/// The socket addresses for an answer: the intake port, at most `max`.
pub fn socket_addrs(ips: &[IpAddr], port: u16, max: usize) -> Vec<SocketAddr> {
    ips.iter().take(max).map(|ip| SocketAddr::new(*ip, port)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn prefer_keeps_the_family_when_present() {
        let mixed = ips(&["::1", "10.0.0.1", "fd00::2", "10.0.0.2", "10.0.0.1"]);
        assert_eq!(prefer(mixed.clone(), IpFamily::V4), ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(prefer(mixed, IpFamily::V6), ips(&["::1", "fd00::2"]));
        // Only the other family: use it rather than nothing.
        assert_eq!(prefer(ips(&["::1"]), IpFamily::V4), ips(&["::1"]));
    }

    #[test]
    fn refresh_respects_shorter_ttls_with_a_floor() {
        let now = Instant::now();
        let refresh = Duration::from_secs(30);
        assert_eq!(next_refresh(now, refresh, None), refresh);
        assert_eq!(next_refresh(now, refresh, Some(now + Duration::from_secs(300))), refresh);
        assert_eq!(next_refresh(now, refresh, Some(now + Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(next_refresh(now, refresh, Some(now)), Duration::from_secs(1));
        assert_eq!(retry_after_failure(refresh), Duration::from_secs(5));
        assert_eq!(retry_after_failure(Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn at_most_max_addresses() {
        let list = ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let addrs = socket_addrs(&list, 443, 5);
        assert_eq!(addrs.len(), 5);
        assert_eq!(addrs[0], "10.0.0.1:443".parse().unwrap());
    }
}
