//! `fipsrelay diagnose`: checks every upstream the config routes to, through
//! the relay's own stack: resolve, TCP connect, FIPS TLS handshake (version,
//! suite, the protocol ALPN picked, peer certificate subject and expiry),
//! then one request in the protocol the relay would speak (HTTP/2 or
//! HTTP/1.1: `HEAD /`, or `GET /api/v1/validate` with `--api-key` on the API
//! host). With an egress proxy, the proxy hop (connect, CONNECT and its
//! answer) is its own step before the TLS handshake, which runs inside the
//! tunnel. A failure gets a kind and a fix ([`failure`]); hosts that fail
//! for one cause are listed under it, and the cause is said once.
//!
//! Then the host itself ([`local`]): whether a fipsrelay answers on the
//! listen ports (or something else holds them), and whether the Agent's
//! `datadog.yaml` points at them.
//!
//! It opens its own short-lived sessions on a private epoll runtime; toward
//! a running relay it only connects and asks `/health`. The API key is sent
//! only to the API host and is never printed.

pub mod failure;
pub mod local;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, Source, UpstreamProtocol};
use crate::crypto::{self, CryptoError, TrustSource};
use crate::http1::{self, Method};
use crate::io::{epoll::Epoll, Backend};
use crate::route::RouteTable;
use crate::upstream::proxy::{Hop, Proxy};
use crate::upstream::tls::TlsSession;

use failure::{Failure, Kind};

/// The connection to an intake: direct, or through the proxy's tunnel.
type Stream = <Epoll as Backend>::Stream;
/// The TLS session with an intake.
type Session = TlsSession<Hop<Stream>>;

/// One upstream host's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub host: String,
    pub products: String,
    pub addr: Option<SocketAddr>,
    /// The proxy hop: `None` without a proxy in the config.
    pub proxy: Option<String>,
    pub tls: String,
    /// What ALPN settled: what the relay would speak to this host.
    pub protocol: String,
    pub certificate: String,
    pub http: String,
    pub ok: bool,
    pub reason: String,
    /// Why it failed, when it did.
    pub failure: Option<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("cannot start the diagnose runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Proxy(#[from] crate::upstream::proxy::ProxySetupError),
}

/// Runs every check; the relay's config decides hosts, trust and timeouts.
pub fn run(config: &Config, api_key: Option<&str>) -> Result<Vec<Check>, DiagnoseError> {
    let trust = match &config.ca_file {
        Some(p) => TrustSource::CaFile(p.clone()),
        None => TrustSource::System,
    };
    // ALPN as the relay's workers offer it (`control::startup::tls_per_worker`).
    let base = crypto::client_config(&trust)?;
    let tls = match config.protocol {
        UpstreamProtocol::Http1 => base,
        UpstreamProtocol::H2 => crypto::with_alpn(&base, &[crypto::ALPN_H2]),
        UpstreamProtocol::Auto => crypto::with_alpn(&base, &[crypto::ALPN_H2, crypto::ALPN_HTTP1]),
    };
    let proxy = match &config.proxy {
        Some(p) => Some(Proxy::from_config(p)?),
        None => None,
    };
    let routes = RouteTable::new(config);
    let mut checks = Vec::new();
    for up in &routes.upstreams {
        let proxy = proxy.as_ref().filter(|p| p.config.applies_to(&up.host));
        let check = Epoll::block_on(check_host(config, tls.clone(), proxy, &up.host, up.products.join(", "), api_key))
            .map_err(DiagnoseError::Runtime)?;
        checks.push(check);
    }
    Ok(checks)
}

/// The address to connect to: the intake's, or the proxy's when the proxy
/// resolves the intake's name.
async fn lookup(config: &Config, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    // The same resolver as `run`: the system one, or dns.nameservers.
    let resolver = crate::upstream::dns::Resolver::new(&config.dns);
    match resolver.lookup(name).await {
        Ok(a) => Ok(crate::upstream::dns::socket_addrs(&a.ips, port, crate::upstream::MAX_ADDRS_PER_HOST)),
        Err(e) => Err(format!("DNS ({}): {e}", resolver.describe())),
    }
}

async fn check_host(
    config: &Config,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<&Proxy>,
    host: &str,
    products: String,
    api_key: Option<&str>,
) -> Check {
    let mut c = Check {
        host: host.to_string(),
        products,
        addr: None,
        proxy: config.proxy.as_ref().map(|_| "direct (upstream.proxy.no_proxy)".to_string()),
        tls: "-".into(),
        protocol: "-".into(),
        certificate: "-".into(),
        http: "-".into(),
        ok: false,
        reason: String::new(),
        failure: None,
    };
    if let Err(f) = check_steps(&mut c, config, tls, proxy, api_key).await {
        c.reason = f.reason.clone();
        c.failure = Some(f);
    }
    c
}

/// The steps of one host's check, in order; the first that fails ends it
/// with its reason.
async fn check_steps(
    c: &mut Check,
    config: &Config,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<&Proxy>,
    api_key: Option<&str>,
) -> Result<(), Failure> {
    let host = c.host.clone();
    // 1. Resolve (or the override addresses).
    let addr = resolve(config, proxy, &host).await?;
    c.addr = Some(addr);
    // 2. The proxy hop, as its own step.
    let stream = open_hop(c, config, proxy, &host, addr).await?;
    // 3. The FIPS TLS handshake with the intake (inside the tunnel).
    let server_name = config.server_name_for(&host);
    let started = Instant::now();
    let session =
        match tokio::time::timeout(config.connect_timeout, TlsSession::connect(stream, tls, server_name)).await {
            Err(_) => {
                let why = format!("TLS handshake with {server_name} timed out after {:?}", config.connect_timeout);
                return Err(Failure::new(Kind::TlsCut, why));
            }
            Ok(Err(e)) => return Err(Failure::new(Kind::of_tls(&e), format!("TLS with {server_name} failed: {e}"))),
            Ok(Ok(s)) => s,
        };
    c.tls = format!("{} in {} ms", session.describe(), started.elapsed().as_millis());
    c.protocol = match (config.protocol, session.is_h2()) {
        (_, true) => "h2 (the intake picked h2 by ALPN)".into(),
        (UpstreamProtocol::Http1, false) => "http/1.1 (upstream.protocol = \"http1\")".into(),
        (_, false) => "http/1.1 (the intake picked http/1.1 by ALPN, or none)".into(),
    };
    c.certificate = session.peer_certificate().map(describe_certificate).unwrap_or_else(|| "none".into());
    // 4. One request.
    request(c, config, session, &host, api_key).await
}

/// The first address to connect to: the override addresses, the intake's,
/// or the proxy's when the proxy resolves the intake's name.
async fn resolve(config: &Config, proxy: Option<&Proxy>, host: &str) -> Result<SocketAddr, Failure> {
    let proxy_resolves = proxy.is_some_and(|p| !p.config.resolve_locally);
    let addrs: Vec<SocketAddr> = if !config.override_addrs.is_empty() {
        config.override_addrs.clone()
    } else {
        let found = match proxy {
            Some(p) if proxy_resolves => lookup(config, &p.config.host, p.config.port).await,
            _ => lookup(config, host, config.upstream_port).await,
        };
        found.map_err(|e| Failure::new(Kind::Dns, if proxy_resolves { format!("proxy {e}") } else { e }))?
    };
    addrs.first().copied().ok_or_else(|| Failure::new(Kind::Dns, "DNS: no address"))
}

/// The TCP connection to the intake, or the tunnel through the proxy
/// (recorded in `c.proxy`).
async fn open_hop(
    c: &mut Check,
    config: &Config,
    proxy: Option<&Proxy>,
    host: &str,
    addr: SocketAddr,
) -> Result<Hop<Stream>, Failure> {
    let started = Instant::now();
    let Some(p) = proxy else {
        return match tokio::time::timeout(config.connect_timeout, Epoll::connect(addr)).await {
            Err(_) => Err(Failure::new(
                Kind::ConnectTimeout,
                format!("connect to {addr} timed out after {:?}", config.connect_timeout),
            )),
            Ok(Err(e)) => Err(Failure::new(Kind::of_connect(&e), format!("connect to {addr} failed: {e}"))),
            Ok(Ok(s)) => Ok(Hop::Tcp(s)),
        };
    };
    let (connect_to, target) = if p.config.resolve_locally {
        match lookup(config, &p.config.host, p.config.port).await.map(|a| a.first().copied()) {
            Ok(Some(pa)) => (pa, addr.to_string()),
            Ok(None) => return Err(Failure::new(Kind::Dns, format!("proxy {}: no address", p.display))),
            Err(e) => return Err(Failure::new(Kind::Dns, format!("proxy {e}"))),
        }
    } else {
        (addr, format!("{host}:{}", config.upstream_port))
    };
    match p.open_tunnel::<Epoll>(connect_to, &target, config.connect_timeout).await {
        Ok(hop) => {
            c.proxy = Some(format!(
                "{} ({connect_to}): CONNECT {target} answered 2xx in {} ms",
                p.display,
                started.elapsed().as_millis()
            ));
            Ok(hop)
        }
        Err(e) => {
            c.proxy = Some(format!("{} ({connect_to}): FAILED", p.display));
            Err(Failure::new(Kind::Proxy, e.to_string()))
        }
    }
}

/// One request over the session (`HEAD /`, or the API key's validation on
/// the API host), in the protocol ALPN settled, and its answer's status;
/// closes the session.
async fn request(
    c: &mut Check,
    config: &Config,
    mut session: Session,
    host: &str,
    api_key: Option<&str>,
) -> Result<(), Failure> {
    let validate = api_key.is_some() && host.starts_with("api.");
    let h2 = session.is_h2();
    let mut request = String::new();
    if let (true, Some(key)) = (validate, api_key) {
        let _ = write!(request, "GET /api/v1/validate HTTP/1.1\r\nHost: {host}\r\nDD-API-KEY: {key}\r\n");
    } else {
        let _ = write!(request, "HEAD / HTTP/1.1\r\nHost: {host}\r\n");
    }
    request.push_str("User-Agent: fipsrelay-diagnose\r\n");
    if !h2 {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let method = if validate { Method::Get } else { Method::Head };
    let deadline = config.response_timeout;
    let exchange = async {
        if h2 {
            h2_status(&mut session, request.as_bytes()).await
        } else {
            session.write_plain(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
            read_status(&mut session, method).await
        }
    };
    let answer = tokio::time::timeout(deadline, exchange).await;
    session.close().await;
    match answer {
        Err(_) => {
            Err(Failure::new(Kind::AnswerTimeout, format!("no answer within upstream.response_timeout ({deadline:?})")))
        }
        Ok(Err(e)) => Err(Failure::new(Kind::AnswerBroken, e)),
        Ok(Ok(status)) => {
            let what = if validate { "GET /api/v1/validate" } else { "HEAD /" };
            c.http = format!("{what} {status} (over {})", if h2 { "HTTP/2" } else { "HTTP/1.1" });
            if validate && !(200..300).contains(&status) {
                return Err(Failure::new(Kind::ApiKeyRejected, format!("the API key was not accepted ({status})")));
            }
            c.ok = true;
            c.reason = "reachable over FIPS TLS".into();
            Ok(())
        }
    }
}

/// One HTTP/2 exchange on a fresh connection: the preface and SETTINGS,
/// then `head` (an HTTP/1.1 head, as the relay renders it) on stream 1
/// without a body; the answer's status.
async fn h2_status(session: &mut Session, head: &[u8]) -> Result<u16, String> {
    use crate::h2::conn::{Conn, Event, LocalSettings};
    let mut conn = Conn::new(LocalSettings::default());
    let id = conn.open(head, true).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        if !conn.output().is_empty() {
            session.write_plain(conn.output().plain()).await.map_err(|e| format!("sending the request: {e}"))?;
            conn.output().clear();
        }
        if buf.len() == buf.capacity() {
            return Err("the intake's HTTP/2 frames are too large".into());
        }
        match session.read_plain(&mut buf).await {
            Ok(0) => return Err("the intake closed the connection before answering".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        let mut answer: Option<Result<u16, String>> = None;
        let used = conn
            .receive(&buf, |_, event| match event {
                Event::Head { stream, status, .. } if stream == id && status >= 200 => answer = Some(Ok(status)),
                Event::Reset { stream, code } if stream == id => {
                    answer = Some(Err(format!("the intake reset the HTTP/2 stream ({code:?})")))
                }
                Event::GoAway { last_stream, code } if last_stream < id => {
                    answer = Some(Err(format!("the intake sent GOAWAY ({code:?}) before answering")))
                }
                _ => {}
            })
            .map_err(|e| e.to_string())?;
        buf.drain(..used);
        if let Some(a) = answer {
            return a;
        }
    }
}

/// Reads the answer's head (past 1xx answers) and returns its status.
async fn read_status(session: &mut Session, method: Method) -> Result<u16, String> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut head_out = Vec::new();
    loop {
        match http1::parse_response(&buf, 64 * 1024, method, http1::ClientConn::CLOSE, &mut head_out) {
            Ok(Some(h)) if h.status >= 200 => return Ok(h.status),
            Ok(Some(h)) => {
                buf.drain(..h.head_len);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if buf.len() == buf.capacity() {
            return Err("answer head too large".to_string());
        }
        match session.read_plain(&mut buf).await {
            Ok(0) => return Err("the intake closed the connection before answering".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn describe_certificate(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let left = cert.validity().time_to_expiration().map(|d| d.whole_days());
            let until = cert.validity().not_after.to_datetime().date();
            match left {
                Some(days) => format!("{} (expires {until}, in {days} days)", cert.subject()),
                None => format!("{} (EXPIRED {until})", cert.subject()),
            }
        }
        Err(e) => format!("unparsable certificate: {e}"),
    }
}

/// Where the relay takes its roots from, for the fixes.
fn trust_description(config: &Config) -> String {
    match &config.ca_file {
        Some(p) => format!("upstream.ca_file {}", p.display()),
        None => "the system trust store".into(),
    }
}

/// What `upstream.protocol` makes the relay speak, for the header.
pub fn protocol_description(protocol: UpstreamProtocol) -> &'static str {
    match protocol {
        UpstreamProtocol::Auto => {
            "upstream.protocol = auto: ALPN offers h2 and http/1.1; each host gets what it picks (h2 at Datadog's intake)"
        }
        UpstreamProtocol::H2 => "upstream.protocol = h2: ALPN offers h2 only; a host without it is refused",
        UpstreamProtocol::Http1 => "upstream.protocol = http1: HTTP/1.1, no ALPN",
    }
}

/// The report `fipsrelay diagnose` prints for the intake checks: a block
/// per host that passed, a line per host that failed naming its cause, then
/// each cause once with its hosts and its fix, then the count.
pub fn render(checks: &[Check], config: &Config) -> String {
    let mut s = String::new();
    let failed: Vec<(&Check, String, &Failure)> = checks
        .iter()
        .filter_map(|c| {
            let f = c.failure.as_ref()?;
            let addr = c.addr.map(|a| a.to_string()).unwrap_or_default();
            let sni = config.server_name_for(&c.host);
            Some((c, f.general(&[&addr, &c.host, sni]), f))
        })
        .collect();
    let groups = failure::group(failed.iter().map(|(c, g, f)| (c.host.as_str(), g.clone(), *f)));
    for c in checks {
        let Some(f) = &c.failure else {
            let _ = writeln!(s, "PASS {}  ({})", c.host, c.products);
            let _ = writeln!(s, "     address:     {}", c.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()));
            if let Some(p) = &c.proxy {
                let _ = writeln!(s, "     proxy:       {p}");
            }
            let _ = writeln!(s, "     tls:         {}", c.tls);
            let _ = writeln!(s, "     protocol:    {}", c.protocol);
            let _ = writeln!(s, "     certificate: {}", c.certificate);
            let _ = writeln!(s, "     http:        {}", c.http);
            let _ = writeln!(s, "     result:      {}", c.reason);
            continue;
        };
        let addr = c.addr.map(|a| format!(" at {a}")).unwrap_or_default();
        let cause = groups.iter().position(|(k, _, hosts)| *k == f.kind && hosts.contains(&c.host));
        let _ = writeln!(s, "FAIL {}  ({}){addr}: cause {}", c.host, c.products, cause.map_or(0, |i| i + 1));
    }
    if !groups.is_empty() {
        let _ = writeln!(s);
        s.push_str(&failure::render_causes(&groups, &config.site, &trust_description(config)));
    }
    let passed = checks.iter().filter(|c| c.ok).count();
    let _ = writeln!(s, "{passed} of {} upstream hosts passed", checks.len());
    s
}

/// `fipsrelay diagnose`: prints a header, runs every check and prints the
/// report (scrubbed), then the checks of this host (the relay's listeners,
/// the Agent's settings in `agent_config`); whether everything passed.
pub fn report(
    config: &Config,
    source: &Source,
    api_key: Option<&str>,
    agent_config: &local::AgentConfigPath,
) -> Result<bool, DiagnoseError> {
    println!("# diagnose: site {} ({source}), FIPS module {}", config.site, crypto::module_description());
    println!("# protocol: {}", protocol_description(config.protocol));
    let checks = run(config, api_key)?;
    print!("{}", crate::logging::scrub(&render(&checks, config)));
    let local = local::check(config, agent_config);
    print!("\n{}", crate::logging::scrub(&local.text));
    Ok(checks.iter().all(|c| c.ok) && local.ok)
}
