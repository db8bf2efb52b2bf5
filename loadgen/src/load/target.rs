//! Where the load goes: parsing `http://host:port/path` targets, the default
//! Agent path for each fipsrelay port, and the loopback-only safety check.
//! Owns no sockets; name resolution happens here once, before the run.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// First port of the Agent's FIPS range (offset 0, the relay's status port).
pub const PORT_RANGE_START: u16 = 9803;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "target {0:?} is not an http:// URL; loadgen speaks plaintext HTTP/1.1 only (like the Agent to fipsrelay)"
    )]
    NotHttp(String),
    #[error("target {0:?} has no port or a bad one; write it like http://127.0.0.1:9804/api/v2/series")]
    BadPort(String),
    #[error("target {0:?} has no host")]
    NoHost(String),
    #[error("cannot resolve target host {0:?}: {1}")]
    Resolve(String, String),
    #[error(
        "target {0} ({1}) is not a loopback address; loadgen only loads 127.0.0.0/8, ::1 and localhost \
         unless --allow-remote is given"
    )]
    NotLoopback(String, IpAddr),
}

/// One place to send requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given (or built from `--ports`), for reports.
    pub url: String,
    /// Value of the Host header: `host:port` as in the URL.
    pub authority: String,
    pub addr: SocketAddr,
    /// Request target: path and query, starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses `http://host[:port][/path]` (port 80 and path `/` by default)
    /// and resolves the host. With `allow_remote` false, refuses any address
    /// that is not loopback.
    pub fn parse(url: &str, allow_remote: bool) -> Result<Target, TargetError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| TargetError::NotHttp(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = split_host_port(authority).ok_or_else(|| TargetError::BadPort(url.to_owned()))?;
        if host.is_empty() {
            return Err(TargetError::NoHost(url.to_owned()));
        }
        let addr = resolve(host, port)?;
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(TargetError::NotLoopback(url.to_owned(), addr.ip()));
        }
        Ok(Target { url: url.to_owned(), authority: authority.to_owned(), addr, path: path.to_owned() })
    }

    /// Target for a fipsrelay port on `host`, with [`default_path`].
    pub fn for_port(host: &str, port: u16, allow_remote: bool) -> Result<Target, TargetError> {
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        Target::parse(&format!("http://{host}:{port}{}", default_path(port)), allow_remote)
    }
}

/// The path the Agent sends most to each port of the FIPS range: 9804
/// `/api/v2/series`, 9805 `/api/v0.2/traces`, 9808 `/api/v2/logs`, and so on
/// (DESIGN §1); `/api/v2/<product>` for the event-platform ports.
pub fn default_path(port: u16) -> &'static str {
    match port.wrapping_sub(PORT_RANGE_START) {
        1 => "/api/v2/series",
        2 => "/api/v0.2/traces",
        3 => "/api/v2/profile",
        4 => "/api/v1/collector",
        5 => "/api/v2/logs",
        6 => "/api/v2/dbm-metrics",
        7 => "/api/v2/databasequery",
        8 => "/api/v2/ndm",
        9 => "/api/v2/snmp-traps",
        10 => "/api/v2/apmtelemetry",
        11 => "/api/v2/appsec",
        12 => "/api/v2/orch",
        13 => "/api/v2/runtime-security",
        14 => "/api/v2/compliance",
        15 => "/api/v2/ndmflow",
        _ => "/api/v2/load",
    }
}

/// `host:port`, `[v6]:port`, or `host` (port 80).
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, 80)),
            p => Some((host, p.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 80)),
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, TargetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| TargetError::Resolve(host.to_owned(), e.to_string()))?;
    // Prefer IPv4 for localhost-like names, as the relay binds 127.0.0.1.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| TargetError::Resolve(host.to_owned(), "no address".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:9804/api/v2/series?x=1", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9804".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:9804");
        assert_eq!(t.path, "/api/v2/series?x=1");
        let t = Target::parse("http://[::1]:81", false).unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert_eq!(t.path, "/");
        assert_eq!(Target::parse("http://127.0.0.2", false).unwrap().addr.port(), 80);
        assert!(matches!(Target::parse("https://127.0.0.1:1/", false), Err(TargetError::NotHttp(_))));
        assert!(matches!(Target::parse("http://127.0.0.1:x/", false), Err(TargetError::BadPort(_))));
        assert!(matches!(Target::parse("http://:80/", false), Err(TargetError::NoHost(_))));
    }

    #[test]
    fn refuses_remote_unless_allowed() {
        assert!(matches!(Target::parse("http://10.1.2.3:9804/", false), Err(TargetError::NotLoopback(..))));
        assert!(Target::parse("http://10.1.2.3:9804/", true).is_ok());
        assert!(Target::parse("http://localhost:9804/", false).is_ok());
    }

    #[test]
    fn default_paths_per_port() {
        assert_eq!(default_path(9804), "/api/v2/series");
        assert_eq!(default_path(9805), "/api/v0.2/traces");
        assert_eq!(default_path(9808), "/api/v2/logs");
        assert!(default_path(9812).starts_with("/api/v2/"));
        assert!(default_path(80).starts_with("/api/v2/"));
        let t = Target::for_port("127.0.0.1", 9808, false).unwrap();
        assert_eq!(t.url, "http://127.0.0.1:9808/api/v2/logs");
        assert_eq!(Target::for_port("::1", 9805, false).unwrap().path, "/api/v0.2/traces");
    }
}
