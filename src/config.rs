//! Configuration: the TOML file, the environment overrides, validation, and
//! the typed [`Config`] the rest of the relay reads.
//!
//! The file is parsed into `RawConfig` (serde, unknown keys rejected), the
//! environment overrides are applied (all of them listed in [`ENV_OVERRIDES`]),
//! and `validate()` turns it into [`Config`]. Every error names the key and
//! says how to fix it. This module never opens a socket or reads a CA file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::logging::LogFormat;

/// Where `run` and `check-config` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fipsrelay/fipsrelay.toml";
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1";
pub const DEFAULT_PORT_RANGE_START: u16 = 9803;
pub const DEFAULT_SITE: &str = "ddog-gov.com";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "15s";
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: &str = "30s";
pub const DEFAULT_MAX_IDLE_PER_HOST: usize = 64;
/// ALPN offers h2 and http/1.1; each intake host gets what it picks.
pub const DEFAULT_PROTOCOL: &str = "auto";
pub const DEFAULT_H2_MAX_CONNECTIONS: usize = 2;
/// Times a request none of which the intake processed is tried again.
pub const DEFAULT_RETRIES: usize = 3;
/// HTTP/2 receive windows advertised to the intake: a stream's, and the
/// connection's (answers are small; these let a 3 MiB one stream at a
/// 100 ms, 240 Mbit/s link's bandwidth-delay product).
pub const DEFAULT_H2_STREAM_WINDOW: u32 = 1 << 20;
pub const DEFAULT_H2_CONNECTION_WINDOW: u32 = 4 << 20;
/// Exchanges of one worker and host that may wait for a stream while every
/// HTTP/2 connection is at the intake's stream limit; beyond, 503 at once.
pub const DEFAULT_H2_MAX_QUEUED: usize = 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: &str = "120s";
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Status-port connections (offset 0: probes, scrapes, the admin API) one
/// worker serves at once, counted apart from `limits.max_connections`: the
/// relay answers `/health` and `/metrics` even when every Agent slot is
/// taken. Beyond it, 503 at once.
pub const STATUS_CONNECTIONS_PER_WORKER: usize = 16;
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10s";
pub const DEFAULT_DNS_REFRESH: &str = "30s";
/// The intake's TLS port.
pub const DEFAULT_UPSTREAM_PORT: u16 = 443;
pub const DEFAULT_DNS_TIMEOUT: &str = "5s";
pub const DEFAULT_HEALTH_INTERVAL: &str = "10s";
pub const DEFAULT_HEALTH_DOWN_INTERVAL: &str = "500ms";
pub const DEFAULT_HEALTH_TIMEOUT: &str = "5s";
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
/// The shortest re-resolution interval, whatever the TTL says.
pub const MIN_DNS_REFRESH: Duration = Duration::from_secs(1);
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "/etc/fipsrelay/admin.token";

/// Where the Datadog FIPS Proxy image reads its HAProxy config (the Helm
/// chart mounts `customFipsConfig` there). Not ours: see [`haproxy_config_notice`].
pub const HAPROXY_CONFIG_PATH: &str = "/etc/datadog-fips-proxy/datadog-fips-proxy.cfg";

/// The one line logged when an HAProxy config for the Datadog FIPS Proxy is
/// mounted: it is ignored, and these keys replace its common settings.
pub fn haproxy_config_notice(path: &Path) -> Option<String> {
    path.exists().then(|| {
        format!(
            "{} is HAProxy configuration for the Datadog FIPS Proxy (Helm customFipsConfig) and is ignored; `fipsrelay migrate --from {}` prints the equivalent fipsrelay.toml; fipsrelay reads {DEFAULT_CONFIG_PATH} (or $FIPSRELAY_CONFIG): resolvers -> dns.nameservers, bind ports -> listen.port_range_start (or DD_FIPS_PORT_RANGE_START), bind address -> listen.address (DD_FIPS_LOCAL_ADDRESS), timeout connect -> upstream.connect_timeout, timeout server -> upstream.response_timeout, timeout client -> limits.client_idle_timeout, ca-file -> upstream.ca_file",
            path.display(),
            path.display()
        )
    })
}

/// The Datadog sites `upstream.site` accepts, with their names. The relay is
/// built for the US1-FED intake (FIPS); the others are valid Datadog sites.
pub const KNOWN_SITES: &[(&str, &str)] = &[
    ("ddog-gov.com", "US1-FED"),
    ("us2.ddog-gov.com", "US2-FED"),
    ("datadoghq.com", "US1"),
    ("us3.datadoghq.com", "US3"),
    ("us5.datadoghq.com", "US5"),
    ("datadoghq.eu", "EU1"),
    ("ap1.datadoghq.com", "AP1"),
    ("ap2.datadoghq.com", "AP2"),
];

/// `site (NAME), ...` for an error message.
fn known_sites_list() -> String {
    KNOWN_SITES.iter().map(|(s, n)| format!("{s} ({n})")).collect::<Vec<_>>().join(", ")
}

/// The known site nearest to a typo (at most two edits away), if any.
fn closest_site(site: &str) -> Option<&'static str> {
    fn edits(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }
    KNOWN_SITES.iter().map(|(s, _)| (edits(site, s), *s)).filter(|(d, _)| *d <= 2).min().map(|(_, s)| s)
}

/// Environment variables that override the file, in the order applied.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DD_FIPS_PORT_RANGE_START", "listen.port_range_start"),
    ("DD_FIPS_LOCAL_ADDRESS", "listen.address"),
    ("DD_SITE", "upstream.site"),
    ("DD_FIPS_PROXY_URL", "upstream.proxy.url"),
    // Only with upstream.proxy.use_env = true (the Agent unsets these for
    // itself, so they are never picked up by surprise).
    ("HTTPS_PROXY", "upstream.proxy.url"),
    ("NO_PROXY", "upstream.proxy.no_proxy"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} {problem}; point --config at a TOML file (at most 1 MiB)")]
    Read { path: PathBuf, problem: crate::files::FileError },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?} is invalid: {problem}; {fix}")]
    Invalid { key: &'static str, value: String, problem: String, fix: &'static str },
    #[error(
        "upstream.site = {value:?} is not a Datadog site{}; use one of {} (DD_SITE overrides the key)",
        suggestion.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default(),
        known_sites_list()
    )]
    UnknownSite { value: String, suggestion: Option<&'static str> },
    #[error("environment variable {var} = {value:?} is invalid for {key}: {problem}")]
    Env { var: &'static str, key: &'static str, value: String, problem: String },
}

fn invalid(key: &'static str, value: impl ToString, problem: impl ToString, fix: &'static str) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), problem: problem.to_string(), fix }
}

/// The file as written, before validation. Field names are the config keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: RawListen,
    pub workers: RawWorkers,
    pub upstream: RawUpstream,
    pub limits: RawLimits,
    pub shutdown: RawShutdown,
    pub dns: RawDns,
    pub health: RawHealth,
    pub log: RawLog,
    pub run: RawRun,
    pub admin: RawAdmin,
    pub crypto: RawCrypto,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCrypto {
    /// Run even when the linked FIPS module is not one `crypto::MODULE_TABLE`
    /// marks CMVP-validated (warned at start and every hour). Off by default.
    pub allow_unvalidated_module: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Serve `/admin/*` on the status port (bearer token required).
    pub enabled: bool,
    /// The bearer token; created (mode 0600) at start when missing.
    pub token_file: PathBuf,
    /// Answer `/admin/*` to peers that are not on loopback (only possible
    /// with `listen.allow_non_local`). Off: they get 403.
    pub allow_non_local: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { enabled: true, token_file: PathBuf::from(DEFAULT_ADMIN_TOKEN_FILE), allow_non_local: false }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRun {
    /// Started as root, become this user after binding (the packaged default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub address: String,
    pub port_range_start: u16,
    pub allow_non_local: bool,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            address: DEFAULT_LISTEN_ADDRESS.into(),
            port_range_start: DEFAULT_PORT_RANGE_START,
            allow_non_local: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWorkers {
    pub threads: usize,
    pub io: String,
    pub pin: bool,
}

impl Default for RawWorkers {
    fn default() -> Self {
        Self { threads: 0, io: "auto".into(), pin: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub site: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appsec_host: Option<String>,
    /// The intake's TLS port for resolved hosts.
    pub port: u16,
    pub connect_timeout: String,
    pub response_timeout: String,
    pub idle_timeout: String,
    pub max_idle_per_host: usize,
    /// `http1`, `h2` or `auto` (offer both by ALPN, use what the intake picks).
    pub protocol: String,
    /// HTTP/2 connections per worker and intake host.
    pub h2_max_connections: usize,
    /// Tries again of a request the intake never processed.
    pub retries: usize,
    /// HTTP/2 receive window per stream, in bytes.
    pub h2_stream_window: u32,
    /// HTTP/2 receive window of a connection, in bytes.
    pub h2_connection_window: u32,
    /// Exchanges waiting for a stream, per worker and host.
    pub h2_max_queued: usize,
    /// `[upstream.proxy]`: egress through an HTTP CONNECT proxy.
    pub proxy: RawProxy,
}

/// `[upstream.proxy]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// `http://host:port` or `https://host:port`; empty = no proxy.
    pub url: String,
    /// CA bundle for an `https://` proxy's certificate; the system store when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// One line `user:password`, mode 0600; read at start and on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Upstream hosts (or domain suffixes) that go direct; `"*"` = all.
    pub no_proxy: Vec<String>,
    /// Take `HTTPS_PROXY` / `NO_PROXY` from the environment.
    pub use_env: bool,
    /// Resolve intake hosts here and CONNECT to their addresses; by default
    /// the proxy resolves the names.
    pub resolve_locally: bool,
    /// The environment variable `url` came from (set by `apply_env`).
    #[serde(skip)]
    pub url_from_env: Option<&'static str>,
    /// `NO_PROXY` entries that are not host names (CIDR ranges, IP
    /// addresses, `host:port`): skipped, and logged at start.
    #[serde(skip)]
    pub no_proxy_skipped: Vec<String>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            site: DEFAULT_SITE.into(),
            ca_file: None,
            server_name: None,
            override_addr: None,
            appsec_host: None,
            port: DEFAULT_UPSTREAM_PORT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.into(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT.into(),
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT.into(),
            max_idle_per_host: DEFAULT_MAX_IDLE_PER_HOST,
            protocol: DEFAULT_PROTOCOL.into(),
            h2_max_connections: DEFAULT_H2_MAX_CONNECTIONS,
            retries: DEFAULT_RETRIES,
            h2_stream_window: DEFAULT_H2_STREAM_WINDOW,
            h2_connection_window: DEFAULT_H2_CONNECTION_WINDOW,
            h2_max_queued: DEFAULT_H2_MAX_QUEUED,
            proxy: RawProxy::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub client_idle_timeout: String,
    pub header_timeout: String,
    pub max_connections: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT.into(),
            header_timeout: DEFAULT_HEADER_TIMEOUT.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    pub drain_timeout: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self { drain_timeout: DEFAULT_DRAIN_TIMEOUT.into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// Re-resolve every host this often (sooner when a TTL is shorter).
    pub refresh: String,
    /// Name servers as IP or IP:PORT; empty = the system resolver (getaddrinfo).
    pub nameservers: Vec<String>,
    /// `ipv4` or `ipv6`: use that family when a host has both.
    pub prefer: String,
    /// Bound on one lookup.
    pub timeout: String,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            refresh: DEFAULT_DNS_REFRESH.into(),
            nameservers: Vec::new(),
            prefer: "ipv4".into(),
            timeout: DEFAULT_DNS_TIMEOUT.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Active checks (TCP connect + FIPS TLS handshake per address) and passive marking.
    pub enabled: bool,
    pub interval: String,
    /// First check of an address that went down comes this soon, then the
    /// gap doubles up to `interval` (HAProxy's `fastinter`/`downinter`).
    pub down_interval: String,
    /// Bound on one check's connect and handshake, each.
    pub timeout: String,
    /// Consecutive successful checks that bring a down address back.
    pub rise: u32,
    /// Consecutive failures (checks or live connects) that take an address down.
    pub fall: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: DEFAULT_HEALTH_INTERVAL.into(),
            down_interval: DEFAULT_HEALTH_DOWN_INTERVAL.into(),
            timeout: DEFAULT_HEALTH_TIMEOUT.into(),
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// What the relay speaks to the intake (`upstream.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2,
    /// ALPN offers `h2` and `http/1.1`; the intake picks.
    Auto,
}

impl UpstreamProtocol {
    pub fn label(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoChoice {
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// DNS settings (`[dns]`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub refresh: Duration,
    /// Empty: the system resolver. Else these, through hickory-resolver.
    pub nameservers: Vec<SocketAddr>,
    pub prefer: IpFamily,
    pub timeout: Duration,
}

/// Health check settings (`[health]`).
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// First check of a down address; the gap doubles up to `interval`.
    pub down_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Whether the proxy is reached over plain TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    Http,
    Https,
}

impl ProxyScheme {
    pub fn name(self) -> &'static str {
        match self {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
        }
    }
}

/// The egress proxy (`[upstream.proxy]`), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub scheme: ProxyScheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub ca_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    /// Lowercased, leading dots removed; `"*"` bypasses the proxy for every host.
    pub no_proxy: Vec<String>,
    pub resolve_locally: bool,
    /// Where the URL came from: the key or the environment variable.
    pub source: &'static str,
}

impl ProxyConfig {
    /// `scheme://host:port`: what logs, the status page and metrics show
    /// (never credentials: the URL cannot hold any).
    pub fn display(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.scheme.name(), self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme.name(), self.host, self.port)
        }
    }

    /// `host:port` of the proxy, for log lines.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether upstream `host` goes through the proxy (`no_proxy` decides):
    /// an entry matches the host itself and every name below it.
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        !self.no_proxy.iter().any(|e| {
            e == "*"
                || host == *e
                || (host.len() > e.len()
                    && host.ends_with(e.as_str())
                    && host.as_bytes()[host.len() - e.len() - 1] == b'.')
        })
    }
}

/// Parses `http://host:port` or `https://host:port` (port defaults: 3128 for
/// http, 443 for https). Credentials in the URL are refused without echoing
/// them; a path is refused. Returns (scheme, host, port) or the problem.
pub fn parse_proxy_url(url: &str) -> Result<(ProxyScheme, String, u16), String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("http") => (ProxyScheme::Http, r),
        Some((s, r)) if s.eq_ignore_ascii_case("https") => (ProxyScheme::Https, r),
        // The scheme is quoted only when it looks like one: a malformed URL
        // may hold a password before its "://".
        Some((s, _)) if s.chars().all(|c| c.is_ascii_alphanumeric()) && s.len() <= 16 => {
            return Err(format!("scheme {s:?} is not supported (only http:// and https:// proxies)"))
        }
        Some(_) => return Err("is not a proxy URL (only http:// and https:// proxies)".into()),
        None => return Err("has no scheme".into()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err("holds credentials".into());
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("has a path; a proxy URL is scheme://host:port".into());
    }
    let default_port = match scheme {
        ProxyScheme::Http => 3128,
        ProxyScheme::Https => 443,
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has an unclosed [ in its host")?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("[{h}] is not an IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port"))?),
            None if after.is_empty() => (h.to_string(), default_port),
            None => return Err("has junk after the IPv6 address".into()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port"))?),
            None => (rest.to_string(), default_port),
        }
    };
    if port == 0 {
        return Err("port 0 is not a port".into());
    }
    let host = host.to_ascii_lowercase();
    if host.parse::<IpAddr>().is_err() && (host.is_empty() || !host.split('.').all(is_dns_label)) {
        return Err(format!("host {host:?} is not a DNS name or IP address"));
    }
    Ok((scheme, host, port))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_address: IpAddr,
    pub port_range_start: u16,
    pub allow_non_local: bool,
    pub threads: usize,
    pub io: IoChoice,
    pub pin: bool,
    pub site: String,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    /// Addresses to send every product to (tests, demos, benches); empty = resolve hosts.
    pub override_addrs: Vec<SocketAddr>,
    pub appsec_host: Option<String>,
    /// The TLS port of resolved hosts (443; tests and TLS proxies set another).
    pub upstream_port: u16,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub max_idle_per_host: usize,
    pub protocol: UpstreamProtocol,
    pub h2_max_connections: usize,
    /// A failed connect or handshake moves to the next address, and an
    /// HTTP/2 stream the intake never processed is sent again, this many times.
    pub retries: usize,
    pub h2_stream_window: u32,
    pub h2_connection_window: u32,
    pub h2_max_queued: usize,
    /// Egress through an HTTP CONNECT proxy (`[upstream.proxy]`), if set.
    pub proxy: Option<ProxyConfig>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub client_idle_timeout: Duration,
    /// A request head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// Agent connections one worker serves at once; beyond, 503 and close.
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub dns: DnsConfig,
    pub health: HealthConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub run_user: Option<String>,
    /// `/admin/*` served on the status port.
    pub admin_enabled: bool,
    /// Where the admin bearer token lives (read, or created, at start).
    pub admin_token_file: PathBuf,
    /// `admin.allow_non_local`: `/admin/*` answered to non-loopback peers.
    pub admin_allow_non_local: bool,
    /// `crypto.allow_unvalidated_module`: run on a module that is not validated.
    pub allow_unvalidated_module: bool,
    /// The raw form after environment overrides, for `check-config`.
    pub raw: RawConfig,
}

/// Where the configuration came from, for the log and `check-config`.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults (no config file)"),
        }
    }
}

/// Loads the config: `path` if given (it must exist), else the default path
/// when it exists, else the built-in defaults; then env overrides; then validation.
pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<(Config, Source), ConfigError> {
    let (raw, source) = match path {
        Some(p) => (read_file(p)?, Source::File(p.to_path_buf())),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            (read_file(p)?, Source::File(p.to_path_buf()))
        }
        None => (RawConfig::default(), Source::Defaults),
    };
    let raw = apply_env(raw, env)?;
    Ok((raw.validate()?, source))
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let read = |problem| ConfigError::Read { path: path.to_path_buf(), problem };
    let bytes = crate::files::read_bounded(path, crate::files::MAX_CONFIG_BYTES).map_err(read)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::Parse { path: path.to_path_buf(), message: "not UTF-8 text".into() })?;
    parse_str(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
}

/// Parses TOML text; the error message carries the line, column and key.
pub fn parse_str(text: &str) -> Result<RawConfig, String> {
    toml::from_str(text).map_err(|e| toml_error(text, &e))
}

/// A TOML error on one line, for the terminal, the log and the admin API
/// alike: `TOML parse error at line 12, column 1 (`bogus_key = 1`): unknown
/// field `bogus_key`, expected one of ...`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else { return format!("TOML parse error: {message}") };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let source: String = text.lines().nth(line - 1).unwrap_or("").trim().chars().take(80).collect();
    if source.is_empty() {
        format!("TOML parse error at line {line}, column {column}: {message}")
    } else {
        format!("TOML parse error at line {line}, column {column} (`{source}`): {message}")
    }
}

/// Applies the environment overrides listed in [`ENV_OVERRIDES`].
pub fn apply_env(mut raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<RawConfig, ConfigError> {
    if let Some(v) = env("DD_FIPS_PORT_RANGE_START") {
        raw.listen.port_range_start = v.trim().parse().map_err(|e: std::num::ParseIntError| ConfigError::Env {
            var: "DD_FIPS_PORT_RANGE_START",
            key: "listen.port_range_start",
            value: v.clone(),
            problem: e.to_string(),
        })?;
    }
    if let Some(v) = env("DD_FIPS_LOCAL_ADDRESS") {
        raw.listen.address = v.trim().to_string();
    }
    if let Some(v) = env("DD_SITE") {
        raw.upstream.site = v.trim().to_string();
    }
    // The proxy: the generic names only when the file opts in; our own
    // name always, and last (it wins).
    if raw.upstream.proxy.use_env {
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("HTTPS_PROXY").or_else(|| set("https_proxy")) {
            raw.upstream.proxy.url = v.trim().to_string();
            raw.upstream.proxy.url_from_env = Some("HTTPS_PROXY");
        }
        if let Some(v) = env("NO_PROXY").or_else(|| env("no_proxy")) {
            for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                // The generic variable also holds CIDR ranges, addresses and
                // ports (for other programs); the relay's upstreams are names.
                let name = entry.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
                if entry != "*" && !name.split('.').all(is_dns_label) {
                    raw.upstream.proxy.no_proxy_skipped.push(entry.to_string());
                } else if !raw.upstream.proxy.no_proxy.iter().any(|n| n == entry) {
                    raw.upstream.proxy.no_proxy.push(entry.to_string());
                }
            }
        }
    }
    if let Some(v) = env("DD_FIPS_PROXY_URL") {
        raw.upstream.proxy.url = v.trim().to_string();
        raw.upstream.proxy.url_from_env = Some("DD_FIPS_PROXY_URL");
    }
    Ok(raw)
}

fn duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| invalid(key, value, e, "write a duration such as \"500ms\", \"5s\" or \"2m\""))?;
    if d.is_zero() {
        return Err(invalid(key, value, "must be greater than zero", "write a duration such as \"5s\""));
    }
    Ok(d)
}

/// Number of ports from `port_range_start`: offsets 0 (status) to 15 (netflow).
pub const PORT_COUNT: u16 = 16;

impl RawConfig {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let listen_address: IpAddr = self.listen.address.trim().parse().map_err(|e| {
            invalid("listen.address", &self.listen.address, e, "write an IP address such as 127.0.0.1 or ::1")
        })?;
        if !listen_address.is_loopback() && !self.listen.allow_non_local {
            return Err(invalid(
                "listen.address",
                listen_address,
                "is not a loopback address, and traffic between the Agent and the relay is plaintext",
                "use 127.0.0.1, or set listen.allow_non_local = true if you accept that FIPS compliance is not retained off-host",
            ));
        }
        let start = self.listen.port_range_start;
        if start == 0 || u32::from(start) + u32::from(PORT_COUNT) - 1 > 65535 {
            return Err(invalid(
                "listen.port_range_start",
                start,
                format!("the range needs {PORT_COUNT} ports from 1 to 65535"),
                "use the default 9803 (or DD_FIPS_PORT_RANGE_START) or a start no higher than 65520",
            ));
        }
        let io = match self.workers.io.trim() {
            "auto" => IoChoice::Auto,
            "uring" | "io_uring" => IoChoice::Uring,
            "epoll" => IoChoice::Epoll,
            other => return Err(invalid("workers.io", other, "unknown I/O backend", "use one of auto, uring, epoll")),
        };
        if self.workers.threads > 1024 {
            return Err(invalid("workers.threads", self.workers.threads, "too many", "use 0 for one per CPU"));
        }
        let site = self.upstream.site.trim().trim_matches('.').to_ascii_lowercase();
        if !KNOWN_SITES.iter().any(|(s, _)| *s == site) {
            return Err(ConfigError::UnknownSite {
                value: self.upstream.site.clone(),
                suggestion: closest_site(&site),
            });
        }
        if let Some(sn) = &self.upstream.server_name {
            if sn.trim().is_empty() || rustls_pki_name(sn).is_none() {
                return Err(invalid(
                    "upstream.server_name",
                    sn,
                    "is not a valid TLS server name",
                    "write a DNS name such as metrics.agent.ddog-gov.com, or remove the key",
                ));
            }
        }
        if let Some(h) = &self.upstream.appsec_host {
            if !h.split('.').all(is_dns_label) {
                return Err(invalid(
                    "upstream.appsec_host",
                    h,
                    "is not a DNS name",
                    "write a host name, or remove the key",
                ));
            }
        }
        let override_addrs = match &self.upstream.override_addr {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .map(|a| {
                    a.trim().parse::<SocketAddr>().map_err(|e| {
                        invalid(
                            "upstream.override_addr",
                            s,
                            e,
                            "write IP:PORT such as 127.0.0.1:8443 (several separated by commas), or remove the key",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if let Some(p) = &self.upstream.ca_file {
            if p.as_os_str().is_empty() {
                return Err(invalid(
                    "upstream.ca_file",
                    "",
                    "is empty",
                    "write the path of a PEM file, or remove the key to use the system trust store",
                ));
            }
        }
        let proxy = self.upstream.proxy.validate(&override_addrs)?;
        if self.upstream.max_idle_per_host > 4096 {
            return Err(invalid(
                "upstream.max_idle_per_host",
                self.upstream.max_idle_per_host,
                "too large",
                "use at most 4096",
            ));
        }
        let protocol = match self.upstream.protocol.as_str() {
            "http1" | "http/1.1" => UpstreamProtocol::Http1,
            "h2" => UpstreamProtocol::H2,
            "auto" => UpstreamProtocol::Auto,
            other => return Err(invalid("upstream.protocol", other, "unknown protocol", "use one of http1, h2, auto")),
        };
        if !(1..=64).contains(&self.upstream.h2_max_connections) {
            return Err(invalid(
                "upstream.h2_max_connections",
                self.upstream.h2_max_connections,
                "out of range",
                "use 1 to 64 HTTP/2 connections per worker and host",
            ));
        }
        if self.upstream.retries > 10 {
            return Err(invalid(
                "upstream.retries",
                self.upstream.retries,
                "too many",
                "use 0 to 10; the Agent retries a failed request itself",
            ));
        }
        // RFC 9113 §6.5.2: a window is at most 2^31-1.
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        if !(65_535..=MAX_WINDOW).contains(&self.upstream.h2_stream_window) {
            return Err(invalid(
                "upstream.h2_stream_window",
                self.upstream.h2_stream_window,
                "out of range",
                "use 65535 to 2147483647 bytes; the default is 1048576",
            ));
        }
        if !(self.upstream.h2_stream_window..=MAX_WINDOW).contains(&self.upstream.h2_connection_window) {
            return Err(invalid(
                "upstream.h2_connection_window",
                self.upstream.h2_connection_window,
                "out of range",
                "use at least upstream.h2_stream_window and at most 2147483647 bytes; the default is 4194304",
            ));
        }
        if self.upstream.h2_max_queued > 1 << 20 {
            return Err(invalid(
                "upstream.h2_max_queued",
                self.upstream.h2_max_queued,
                "too large",
                "use 0 to 1048576 waiting requests per worker and host; the default is 1024",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                self.limits.max_header_bytes,
                "must be between 1024 and 16777216",
                "the default 65536 fits every Agent request",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", 0, "must be at least 1", "the default is 4096 per worker"));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid(
                "limits.max_body_bytes",
                0,
                "must be greater than zero",
                "the default is 67108864 (64 MiB)",
            ));
        }
        let log_format = match self.log.format.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("log.format", other, "unknown log format", "use text or json")),
        };
        let log_level = self.log.level.trim().to_ascii_lowercase();
        if let Err(e) = crate::logging::parse_filter(&log_level) {
            let problem = match e {
                crate::logging::FilterError::Invalid { reason, .. } => format!("not a log level or filter ({reason})"),
                other => other.to_string(),
            };
            return Err(invalid(
                "log.level",
                &self.log.level,
                problem,
                "use one of error, warn, info, debug, trace, or target=level directives",
            ));
        }
        if self.admin.token_file.as_os_str().is_empty() {
            return Err(invalid(
                "admin.token_file",
                "",
                "is empty",
                "write the path of the admin token file (default /etc/fipsrelay/admin.token), or set admin.enabled = false",
            ));
        }
        Ok(Config {
            listen_address,
            port_range_start: start,
            allow_non_local: self.listen.allow_non_local,
            threads: self.workers.threads,
            io,
            pin: self.workers.pin,
            site,
            ca_file: self.upstream.ca_file.clone(),
            server_name: self.upstream.server_name.as_ref().map(|s| s.trim().to_string()),
            override_addrs,
            appsec_host: self.upstream.appsec_host.as_ref().map(|s| s.trim().to_ascii_lowercase()),
            upstream_port: match self.upstream.port {
                0 => return Err(invalid("upstream.port", 0, "is not a port", "use 443, the intake's port")),
                p => p,
            },
            connect_timeout: duration("upstream.connect_timeout", &self.upstream.connect_timeout)?,
            response_timeout: duration("upstream.response_timeout", &self.upstream.response_timeout)?,
            upstream_idle_timeout: duration("upstream.idle_timeout", &self.upstream.idle_timeout)?,
            max_idle_per_host: self.upstream.max_idle_per_host,
            protocol,
            h2_max_connections: self.upstream.h2_max_connections,
            retries: self.upstream.retries,
            h2_stream_window: self.upstream.h2_stream_window,
            h2_connection_window: self.upstream.h2_connection_window,
            h2_max_queued: self.upstream.h2_max_queued,
            proxy,
            max_header_bytes: self.limits.max_header_bytes,
            max_body_bytes: self.limits.max_body_bytes,
            client_idle_timeout: duration("limits.client_idle_timeout", &self.limits.client_idle_timeout)?,
            header_timeout: duration("limits.header_timeout", &self.limits.header_timeout)?,
            max_connections: self.limits.max_connections,
            drain_timeout: duration("shutdown.drain_timeout", &self.shutdown.drain_timeout)?,
            dns: self.dns.validate()?,
            health: self.health.validate()?,
            log_level,
            log_format,
            run_user: match &self.run.user {
                Some(u) if u.trim().is_empty() => {
                    return Err(invalid("run.user", u, "is empty", "name an unprivileged user, or remove the key"))
                }
                other => other.as_ref().map(|u| u.trim().to_string()),
            },
            admin_enabled: self.admin.enabled,
            admin_token_file: self.admin.token_file.clone(),
            admin_allow_non_local: self.admin.allow_non_local,
            allow_unvalidated_module: self.crypto.allow_unvalidated_module,
            raw: self.clone(),
        })
    }
}

/// Config keys (`section.key`) whose value differs between `old` and `new`,
/// sorted. Both are compared as written (after environment overrides).
pub fn changed_keys(old: &RawConfig, new: &RawConfig) -> Vec<String> {
    fn flatten(raw: &RawConfig) -> std::collections::BTreeMap<String, toml::Value> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(raw) {
            for (section, table) in sections {
                match table {
                    toml::Value::Table(keys) => {
                        out.extend(keys.into_iter().map(|(k, v)| (format!("{section}.{k}"), v)));
                    }
                    other => {
                        out.insert(section, other);
                    }
                }
            }
        }
        out
    }
    let (old, new) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = old.keys().chain(new.keys()).filter(|k| old.get(*k) != new.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

impl RawProxy {
    fn validate(&self, override_addrs: &[SocketAddr]) -> Result<Option<ProxyConfig>, ConfigError> {
        const KEY: &str = "upstream.proxy.url";
        if self.url.trim().is_empty() {
            return Ok(None);
        }
        let (scheme, host, port) = parse_proxy_url(&self.url).map_err(|problem| {
            // The value is never echoed: a URL with credentials would put
            // the password in the error.
            let fix = if problem == "holds credentials" {
                "write the URL as scheme://host:port and put user:password in the file named by upstream.proxy.credentials_file (mode 0600)"
            } else {
                "write http://host:port or https://host:port, e.g. http://proxy.example:3128"
            };
            match self.url_from_env {
                Some(var) => ConfigError::Env { var, key: KEY, value: "(not shown)".into(), problem: format!("{problem}; {fix}") },
                None => invalid(KEY, "(not shown)", problem, fix),
            }
        })?;
        if !override_addrs.is_empty() {
            return Err(invalid(
                "upstream.override_addr",
                "(set)",
                "cannot be combined with upstream.proxy.url: override_addr sends every product straight to fixed addresses",
                "remove upstream.override_addr to reach the intake through the proxy, or remove upstream.proxy.url",
            ));
        }
        for (key, path) in
            [("upstream.proxy.ca_file", &self.ca_file), ("upstream.proxy.credentials_file", &self.credentials_file)]
        {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key, "", "is empty", "write the path of the file, or remove the key"));
            }
        }
        if let (Some(ca), ProxyScheme::Http) = (&self.ca_file, scheme) {
            return Err(invalid(
                "upstream.proxy.ca_file",
                ca.display(),
                "is set, but the proxy URL is http:// (no TLS to the proxy)",
                "use an https:// proxy URL, or remove the key",
            ));
        }
        let mut no_proxy = Vec::new();
        for entry in &self.no_proxy {
            let e = entry
                .trim()
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if e != "*" && (e.is_empty() || !e.split('.').all(is_dns_label)) {
                return Err(invalid(
                    "upstream.proxy.no_proxy",
                    entry,
                    "is not a host name or domain",
                    "write host names or domain suffixes such as \"ddog-gov.com\" (covers every host below it), or \"*\" for all",
                ));
            }
            no_proxy.push(e);
        }
        let source = self.url_from_env.unwrap_or(KEY);
        Ok(Some(ProxyConfig {
            scheme,
            host,
            port,
            ca_file: self.ca_file.clone(),
            credentials_file: self.credentials_file.clone(),
            no_proxy,
            resolve_locally: self.resolve_locally,
            source,
        }))
    }
}

impl RawDns {
    fn validate(&self) -> Result<DnsConfig, ConfigError> {
        let nameservers = self
            .nameservers
            .iter()
            .map(|n| {
                let n = n.trim();
                n.parse::<SocketAddr>().or_else(|_| n.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))).map_err(|e| {
                    invalid(
                        "dns.nameservers",
                        n,
                        e,
                        "write IP addresses, optionally with a port (\"10.0.0.2\", \"10.0.0.3:5353\", \"[fd00::2]:53\"), or an empty list for the system resolver",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefer = match self.prefer.trim() {
            "ipv4" => IpFamily::V4,
            "ipv6" => IpFamily::V6,
            other => return Err(invalid("dns.prefer", other, "unknown address family", "use ipv4 or ipv6")),
        };
        let refresh = duration("dns.refresh", &self.refresh)?;
        if refresh < MIN_DNS_REFRESH {
            return Err(invalid(
                "dns.refresh",
                &self.refresh,
                "shorter than one second",
                "use at least \"1s\" (default \"30s\")",
            ));
        }
        Ok(DnsConfig { refresh, nameservers, prefer, timeout: duration("dns.timeout", &self.timeout)? })
    }
}

impl RawHealth {
    fn validate(&self) -> Result<HealthConfig, ConfigError> {
        for (key, v) in [("health.rise", self.rise), ("health.fall", self.fall)] {
            if !(1..=100).contains(&v) {
                return Err(invalid(key, v, "must be between 1 and 100", "the defaults are rise = 2, fall = 3"));
            }
        }
        let interval = duration("health.interval", &self.interval)?;
        // Never slower than the normal interval (a short health.interval in
        // tests and demos keeps the default 500ms from exceeding it).
        let down_interval = duration("health.down_interval", &self.down_interval)?.min(interval);
        Ok(HealthConfig {
            enabled: self.enabled,
            interval,
            down_interval,
            timeout: duration("health.timeout", &self.timeout)?,
            rise: self.rise,
            fall: self.fall,
        })
    }
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn rustls_pki_name(s: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(s.trim().to_string()).ok()
}

impl Config {
    /// The TLS server name (SNI, certificate check) for upstream `host`.
    pub fn server_name_for<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or(host)
    }

    /// The listening port for a port offset.
    pub fn port(&self, offset: u16) -> u16 {
        self.port_range_start + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_validate() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.port_range_start, 9803);
        assert_eq!(c.listen_address.to_string(), "127.0.0.1");
        assert_eq!(c.site, "ddog-gov.com");
        assert_eq!(c.io, IoChoice::Auto);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let err = parse_str("[listen]\naddress = \"127.0.0.1\"\nprot = 1\n").unwrap_err();
        assert!(err.starts_with("TOML parse error at line 3, column 1 (`prot = 1`): unknown field `prot`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let err = parse_str("[upstream]\nport = \"x\"\n").unwrap_err();
        assert!(err.starts_with("TOML parse error at line 2, column 8 (`port = \"x\"`): invalid type"), "{err}");
        let err = parse_str("[upstream\n").unwrap_err();
        assert!(err.starts_with("TOML parse error at line 1, column 10"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let raw = parse_str("[listen]\nport_range_start = 10000\n").unwrap();
        let env = |k: &str| match k {
            "DD_FIPS_PORT_RANGE_START" => Some("20000".to_string()),
            "DD_SITE" => Some("datadoghq.eu".to_string()),
            _ => None,
        };
        let c = apply_env(raw, &env).unwrap().validate().unwrap();
        assert_eq!(c.port_range_start, 20000);
        assert_eq!(c.site, "datadoghq.eu");
        let bad = apply_env(RawConfig::default(), &|k: &str| (k == "DD_FIPS_PORT_RANGE_START").then(|| "x".into()));
        assert!(bad.unwrap_err().to_string().contains("DD_FIPS_PORT_RANGE_START"));
    }

    #[test]
    fn errors_name_key_and_fix() {
        let mut raw = RawConfig::default();
        raw.listen.address = "0.0.0.0".into();
        let e = raw.validate().unwrap_err().to_string();
        assert!(e.contains("listen.address") && e.contains("allow_non_local"), "{e}");
        raw.listen.allow_non_local = true;
        assert!(raw.validate().is_ok());

        let mut raw = RawConfig::default();
        raw.upstream.connect_timeout = "five".into();
        let e = raw.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.connect_timeout"), "{e}");

        let mut raw = RawConfig::default();
        raw.workers.io = "kqueue".into();
        assert!(raw.validate().unwrap_err().to_string().contains("auto, uring, epoll"));

        let mut raw = RawConfig::default();
        raw.listen.port_range_start = 65530;
        assert!(raw.validate().unwrap_err().to_string().contains("listen.port_range_start"));

        let mut raw = RawConfig::default();
        raw.upstream.override_addr = Some("localhost".into());
        assert!(raw.validate().unwrap_err().to_string().contains("upstream.override_addr"));
        raw.upstream.override_addr = Some("127.0.0.1:1, [::1]:2".into());
        assert_eq!(raw.validate().unwrap().override_addrs.len(), 2);
    }

    #[test]
    fn unknown_site_is_refused_with_the_list() {
        for (site, _) in KNOWN_SITES {
            let c = parse_str(&format!("[upstream]\nsite = \"{}.\"\n", site.to_uppercase())).unwrap().validate();
            assert_eq!(c.unwrap().site, *site);
        }
        let e = parse_str("[upstream]\nsite = \"datadoghq.co\"\n").unwrap().validate().unwrap_err().to_string();
        assert!(e.starts_with("upstream.site = \"datadoghq.co\" is not a Datadog site"), "{e}");
        assert!(e.contains("did you mean \"datadoghq.com\"?"), "{e}");
        assert!(e.contains("ddog-gov.com (US1-FED)") && e.contains("datadoghq.eu (EU1)"), "{e}");
        let e = parse_str("[upstream]\nsite = \"example.org\"\n").unwrap().validate().unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn upstream_protocol_keys() {
        let c = parse_str("").unwrap().validate().unwrap();
        assert_eq!((c.protocol, c.h2_max_connections), (UpstreamProtocol::Auto, 2));
        for (v, want) in
            [("h2", UpstreamProtocol::H2), ("auto", UpstreamProtocol::Auto), ("http1", UpstreamProtocol::Http1)]
        {
            let c = parse_str(&format!("[upstream]\nprotocol = \"{v}\"\n")).unwrap().validate().unwrap();
            assert_eq!(c.protocol, want);
        }
        let e = parse_str("[upstream]\nprotocol = \"spdy\"\n").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("upstream.protocol") && e.contains("http1, h2, auto"), "{e}");
        let e = parse_str("[upstream]\nh2_max_connections = 0\n").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("upstream.h2_max_connections"), "{e}");
        assert_eq!(
            (c.retries, c.h2_stream_window, c.h2_connection_window, c.h2_max_queued),
            (3, 1 << 20, 4 << 20, 1024)
        );
        for (text, key) in [
            ("retries = 11", "upstream.retries"),
            ("h2_stream_window = 1000", "upstream.h2_stream_window"),
            ("h2_stream_window = 2147483648", "upstream.h2_stream_window"),
            ("h2_connection_window = 65535", "upstream.h2_connection_window"),
            ("h2_max_queued = 2000000", "upstream.h2_max_queued"),
        ] {
            let e = parse_str(&format!("[upstream]\n{text}\n")).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = parse_str("[upstream]\nretries = 0\nh2_stream_window = 65535\nh2_connection_window = 65535\n")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!((c.retries, c.h2_stream_window, c.h2_connection_window), (0, 65_535, 65_535));
    }

    #[test]
    fn admin_defaults_and_changed_keys() {
        let c = RawConfig::default().validate().unwrap();
        assert!(c.admin_enabled);
        assert_eq!(c.admin_token_file, PathBuf::from(DEFAULT_ADMIN_TOKEN_FILE));
        let raw = parse_str("[admin]\nenabled = false\ntoken_file = \"/tmp/t\"\n").unwrap();
        assert!(!raw.validate().unwrap().admin_enabled);
        assert!(parse_str("[admin]\ntoken = \"x\"\n").is_err());
        let e = parse_str("[admin]\ntoken_file = \"\"\n").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("admin.token_file"), "{e}");

        let old = RawConfig::default();
        assert!(changed_keys(&old, &old.clone()).is_empty());
        let mut new = old.clone();
        new.log.level = "debug".into();
        new.listen.port_range_start = 9903;
        new.upstream.ca_file = Some("/x.pem".into());
        assert_eq!(changed_keys(&old, &new), ["listen.port_range_start", "log.level", "upstream.ca_file"]);
    }

    #[test]
    fn dns_and_health_keys() {
        let c = RawConfig::default().validate().unwrap();
        assert!(c.dns.nameservers.is_empty());
        assert_eq!(c.dns.prefer, IpFamily::V4);
        assert_eq!(c.dns.refresh, Duration::from_secs(30));
        assert!(c.health.enabled);
        assert_eq!((c.health.rise, c.health.fall), (2, 3));
        assert_eq!(c.health.interval, Duration::from_secs(10));

        let raw =
            parse_str("[dns]\nnameservers = [\"10.0.0.2\", \"127.0.0.1:5353\", \"[::1]:53\"]\nprefer = \"ipv6\"\n")
                .unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.dns.nameservers[0], "10.0.0.2:53".parse().unwrap());
        assert_eq!(c.dns.nameservers[1], "127.0.0.1:5353".parse().unwrap());
        assert_eq!(c.dns.prefer, IpFamily::V6);

        for (text, key) in [
            ("[dns]\nnameservers = [\"dns.example\"]\n", "dns.nameservers"),
            ("[dns]\nprefer = \"ipv5\"\n", "dns.prefer"),
            ("[dns]\nrefresh = \"100ms\"\n", "dns.refresh"),
            ("[health]\nfall = 0\n", "health.fall"),
            ("[health]\ninterval = \"soon\"\n", "health.interval"),
        ] {
            let e = parse_str(text).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn proxy_urls_parse_and_credentials_are_refused_unseen() {
        assert_eq!(
            parse_proxy_url("http://proxy.example:3128").unwrap(),
            (ProxyScheme::Http, "proxy.example".into(), 3128)
        );
        assert_eq!(
            parse_proxy_url("HTTP://Proxy.Example/").unwrap(),
            (ProxyScheme::Http, "proxy.example".into(), 3128)
        );
        assert_eq!(parse_proxy_url("https://10.0.0.5").unwrap(), (ProxyScheme::Https, "10.0.0.5".into(), 443));
        assert_eq!(parse_proxy_url("http://[fd00::1]:8080").unwrap(), (ProxyScheme::Http, "fd00::1".into(), 8080));
        for bad in [
            "proxy:3128",
            "socks5://p:1080",
            "http://p:0",
            "http://p:x",
            "http://p:1/path",
            "http://-p:1",
            "http://[zz]:1",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad}");
        }
        let mut raw = RawConfig::default();
        raw.upstream.proxy.url = "http://relay:hunter2@proxy.example:3128".into();
        let e = raw.validate().unwrap_err().to_string();
        assert!(e.contains("upstream.proxy.url") && e.contains("credentials_file") && !e.contains("hunter2"), "{e}");
        let env = |k: &str| (k == "DD_FIPS_PROXY_URL").then(|| "http://relay:hunter2@p:1".to_string());
        let e = apply_env(RawConfig::default(), &env).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("DD_FIPS_PROXY_URL") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn proxy_env_is_used_only_when_asked_and_no_proxy_matches_suffixes() {
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://env-proxy:3128".to_string()),
            "NO_PROXY" => Some("internal.example, .corp, 10.0.0.0/8, ::1, host:8080".to_string()),
            _ => None,
        };
        // The Agent unsets HTTPS_PROXY for itself; the relay ignores it unless told.
        let c = apply_env(RawConfig::default(), &env).unwrap().validate().unwrap();
        assert!(c.proxy.is_none());
        let raw = parse_str("[upstream.proxy]\nuse_env = true\nno_proxy = [\"*.ddog-gov.com\"]\n").unwrap();
        let c = apply_env(raw.clone(), &env).unwrap().validate().unwrap();
        let p = c.proxy.unwrap();
        assert_eq!((p.host.as_str(), p.port, p.source), ("env-proxy", 3128, "HTTPS_PROXY"));
        assert_eq!(p.no_proxy, ["ddog-gov.com", "internal.example", "corp"]);
        // The generic variable's addresses, ranges and ports are skipped, not fatal.
        let skipped = apply_env(raw.clone(), &env).unwrap().upstream.proxy.no_proxy_skipped;
        assert_eq!(skipped, ["10.0.0.0/8", "::1", "host:8080"]);
        assert!(!p.applies_to("metrics.agent.ddog-gov.com") && !p.applies_to("ddog-gov.com"));
        assert!(p.applies_to("notddog-gov.com") && p.applies_to("datadoghq.com"));
        // Our own variable wins over both.
        let ours = |k: &str| if k == "DD_FIPS_PROXY_URL" { Some("https://ours:8443".to_string()) } else { env(k) };
        let p = apply_env(raw, &ours).unwrap().validate().unwrap().proxy.unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port, p.source),
            (ProxyScheme::Https, "ours", 8443, "DD_FIPS_PROXY_URL")
        );
        assert_eq!(p.display(), "https://ours:8443");

        let mut raw = RawConfig::default();
        raw.upstream.proxy.url = "http://p:3128".into();
        raw.upstream.proxy.no_proxy = vec!["*".into()];
        assert!(!raw.validate().unwrap().proxy.unwrap().applies_to("api.ddog-gov.com"));
        raw.upstream.proxy.no_proxy = vec!["bad host".into()];
        assert!(raw.validate().unwrap_err().to_string().contains("upstream.proxy.no_proxy"));
        raw.upstream.proxy.no_proxy = vec![];
        raw.upstream.proxy.ca_file = Some("/ca.pem".into());
        assert!(raw.validate().unwrap_err().to_string().contains("https://"));
        raw.upstream.proxy.ca_file = None;
        raw.upstream.override_addr = Some("127.0.0.1:1".into());
        assert!(raw.validate().unwrap_err().to_string().contains("upstream.override_addr"));
    }

    #[test]
    fn a_mounted_haproxy_config_is_named_as_ignored_with_its_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("datadog-fips-proxy.cfg");
        assert!(haproxy_config_notice(&cfg).is_none());
        std::fs::write(&cfg, "global\n  maxconn 100\n").unwrap();
        let line = haproxy_config_notice(&cfg).unwrap();
        assert!(
            line.contains("is ignored")
                && line.contains(&format!("fipsrelay migrate --from {}", cfg.display()))
                && line.contains("dns.nameservers")
                && line.contains("upstream.connect_timeout"),
            "{line}"
        );
    }

    #[test]
    fn load_missing_file_names_path() {
        let e = load(Some(Path::new("/nonexistent/x.toml")), &no_env).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
