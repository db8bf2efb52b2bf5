//! What the HAProxy sections mean for fipsrelay: each directive is either
//! carried into a key of the `RawConfig`, noted as not carried (with why), or
//! noted as done by fipsrelay without a setting; the values seen across
//! sections are then settled (one port range, one site, the longest
//! timeout, the name servers the servers use, ...). Pure: text in, a
//! `Migration` out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::haproxy::{duration_text, haproxy_time, Directive, Parsed, Section};
use super::{Migration, Note, FIPS_PROXY_PREFIX, STOCK_HOLD_VALID, STOCK_TIMEOUT};
use crate::config::{self, RawConfig, DEFAULT_PORT_RANGE_START, DEFAULT_SITE, DEFAULT_UPSTREAM_PORT, PORT_COUNT};
use crate::route::PRODUCTS;

/// One `bind` address.
#[derive(Debug, Clone)]
struct Bind {
    line: usize,
    /// `None` for "every address" (`*`, `0.0.0.0`, `::`, empty).
    addr: Option<IpAddr>,
    /// The address came from `${DD_FIPS_LOCAL_ADDRESS}`, which fipsrelay reads itself.
    from_env: bool,
    port: u16,
}

#[derive(Debug, Clone, Default)]
struct Frontend {
    name: String,
    line: usize,
    binds: Vec<Bind>,
    default_backend: Option<(usize, String)>,
    /// (line, backend, path prefix) of `use_backend B if { path_beg P }`.
    use_backends: Vec<(usize, String, String)>,
    stats: bool,
}

#[derive(Debug, Clone)]
struct Server {
    line: usize,
    host: String,
    port: Option<u16>,
    ssl: bool,
    sni: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Backend {
    name: String,
    line: usize,
    servers: Vec<Server>,
    set_host: Option<(usize, String)>,
}

/// Values seen for one key, with their lines, to be settled at the end.
#[derive(Default)]
struct Seen<T> {
    values: Vec<(usize, T, String)>,
}

impl<T: Clone + PartialEq> Seen<T> {
    fn add(&mut self, line: usize, v: T, text: String) {
        self.values.push((line, v, text));
    }
    fn lines(&self) -> Vec<usize> {
        self.values.iter().map(|v| v.0).collect()
    }
    fn texts(&self) -> String {
        let mut t: Vec<&str> = self.values.iter().map(|v| v.2.as_str()).collect();
        t.dedup();
        shorten(&t.join(", "))
    }
    fn all_same(&self) -> bool {
        self.values.windows(2).all(|w| w[0].1 == w[1].1)
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 100 {
        let mut t: String = s.chars().take(97).collect();
        t.push_str("...");
        t
    } else {
        s.to_string()
    }
}

#[derive(Default)]
struct Collected {
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
    connect_timeout: Seen<Duration>,
    response_timeout: Seen<Duration>,
    client_timeout: Seen<Duration>,
    header_timeout: Seen<Duration>,
    check_timeout: Seen<Duration>,
    retries: Seen<usize>,
    threads: Seen<usize>,
    /// Name servers per resolvers section.
    nameservers: BTreeMap<String, Vec<(usize, SocketAddr)>>,
    resolv_conf: BTreeMap<String, usize>,
    hold_valid: BTreeMap<String, (usize, Duration)>,
    resolvers_used: Seen<String>,
    prefer: Seen<String>,
    inter: Seen<Duration>,
    down_inter: Seen<Duration>,
    rise: Seen<u32>,
    fall: Seen<u32>,
    check_lines: Vec<usize>,
    ca_files: Seen<PathBuf>,
    alpn: Seen<String>,
    ca_base: Option<PathBuf>,
}

pub(super) fn translate(parsed: Parsed) -> Migration {
    let mut m = Migration { raw: RawConfig::default(), ..Migration::default() };
    for p in parsed.problems {
        for l in &p.lines {
            m.drop_note(*l, p.what.clone(), p.why.clone());
        }
    }
    let mut c = Collected::default();
    // `defaults` apply to the sections after them; HAProxy allows several.
    let mut defaults: Vec<Directive> = Vec::new();
    for s in &parsed.sections {
        match s.kind.as_str() {
            "global" => global(&mut m, &mut c, s),
            "defaults" => {
                defaults = s.body.clone();
                for d in &s.body {
                    proxy_directive(&mut m, &mut c, d, None, None);
                }
            }
            "resolvers" => resolvers(&mut m, &mut c, s),
            "frontend" | "backend" | "listen" => {
                let mut fe = (s.kind != "backend").then(|| Frontend {
                    name: s.name.clone(),
                    line: s.line,
                    ..Frontend::default()
                });
                let mut be = (s.kind != "frontend").then(|| Backend {
                    name: s.name.clone(),
                    line: s.line,
                    ..Backend::default()
                });
                // `default-server` lines (from `defaults`, then this section) add
                // their options to every server line.
                let default_server: Vec<String> = defaults
                    .iter()
                    .chain(&s.body)
                    .filter(|d| d.word(0) == "default-server")
                    .flat_map(|d| d.words[1..].iter().cloned())
                    .collect();
                for d in &s.body {
                    let kw = d.word(0);
                    if kw == "server" || kw == "server-template" {
                        match be.as_mut() {
                            Some(be) => {
                                let mut words = d.words.clone();
                                words.extend(default_server.iter().cloned());
                                server(&mut m, &mut c, be, &Directive { line: d.line, words }, d);
                            }
                            None => m.drop_note(
                                d.line,
                                d.head(2),
                                "a server in a frontend section: HAProxy would refuse it",
                            ),
                        }
                        continue;
                    }
                    proxy_directive(&mut m, &mut c, d, fe.as_mut(), be.as_mut());
                }
                if let Some(mut fe) = fe {
                    // A `listen` section with servers is its own backend.
                    if fe.default_backend.is_none() && be.as_ref().is_some_and(|b| !b.servers.is_empty()) {
                        fe.default_backend = Some((s.line, s.name.clone()));
                    }
                    c.frontends.push(fe);
                }
                if let Some(be) = be {
                    c.backends.push(be);
                }
            }
            other => m.drop_note(
                s.line,
                format!("{other} {}", s.name).trim().to_string(),
                format!("a {other} section: nothing in fipsrelay corresponds"),
            ),
        }
    }
    settle(&mut m, &c);
    m
}

fn global(m: &mut Migration, c: &mut Collected, s: &Section) {
    for d in &s.body {
        let kw = d.word(0);
        match kw {
            "nbthread" => match d.word(1).parse::<usize>() {
                Ok(n) if n > 0 => c.threads.add(d.line, n, d.head(2)),
                _ => m.drop_note(d.line, d.head(2), "not a thread count"),
            },
            "ca-base" => {
                m.same(d.line, d.head(2), "a relative ca-file is read from here (the path carried is absolute)");
                c.ca_base = Some(PathBuf::from(d.word(1)));
            }
            "maxconn" => m.drop_note(
                d.line,
                d.head(2),
                "HAProxy's limit for the whole process; fipsrelay limits Agent connections per worker (limits.max_connections, default 4096)",
            ),
            "log" | "log-send-hostname" | "log-tag" => {
                m.same(d.line, kw, "fipsrelay logs to stderr (the journal under systemd); log.format = \"json\" for structured lines")
            }
            "daemon" | "master-worker" | "pidfile" | "nbproc" => {
                m.same(d.line, kw, "systemd (or the container runtime) supervises fipsrelay; there is no daemon mode or pid file")
            }
            "user" | "group" | "uid" | "gid" => m.drop_note(
                d.line,
                d.head(2),
                "the packaged unit runs fipsrelay as its own user (fipsrelay); run.user does the same for a relay started as root",
            ),
            "chroot" => m.same(d.line, d.head(2), "the systemd unit confines the relay (ProtectSystem=strict, no capabilities)"),
            "stats" => m.drop_note(
                d.line,
                d.head(2),
                "no stats socket: the status port (offset 0) serves the status page, /metrics and the admin API",
            ),
            "cpu-map" => {
                m.drop_note(d.line, d.head(3), "workers pin themselves to the CPUs the process may use (workers.pin); use CPUAffinity= in the unit")
            }
            "ssl-default-server-ciphers" | "ssl-default-server-ciphersuites" | "tune.ssl.default-dh-param" => m.same(
                d.line,
                kw,
                "fipsrelay's TLS offer is fixed by its FIPS module: TLS 1.2 ECDHE with AES-GCM, TLS 1.3 AES-GCM (fipsrelay version shows it)",
            ),
            "ssl-default-server-options" => ssl_options(m, d, &d.words[1..]),
            "ssl-server-verify" if d.word(1) == "none" => m.drop_note(
                d.line,
                d.head(2),
                "fipsrelay always verifies the intake's certificate (against upstream.ca_file or the system store)",
            ),
            "ssl-server-verify" => m.same(d.line, d.head(2), "fipsrelay always verifies the intake's certificate"),
            "setenv" | "presetenv" => m.drop_note(
                d.line,
                d.head(2),
                "environment set inside HAProxy's config: set it in fipsrelay's unit (systemctl edit fipsrelay) if the relay reads it",
            ),
            k if k.starts_with("tune.") => {
                m.drop_note(d.line, d.head(2), "HAProxy tuning; fipsrelay's buffers and limits are its own (docs/configuration.md)")
            }
            k if k.starts_with("ssl-default-bind") => m.same(
                d.line,
                kw,
                "the Agent speaks plaintext HTTP to the relay on loopback (fips.https: false): no TLS on the listeners",
            ),
            _ => unknown(m, d),
        }
    }
}

fn unknown(m: &mut Migration, d: &Directive) {
    m.drop_note(d.line, d.head(2), "not a directive fipsrelay migrate knows; check by hand whether it matters");
}

fn ssl_options(m: &mut Migration, d: &Directive, opts: &[String]) {
    let mut i = 0;
    while i < opts.len() {
        match opts[i].as_str() {
            "ssl-min-ver" => {
                let v = opts.get(i + 1).map(String::as_str).unwrap_or("");
                if v == "TLSv1.2" || v == "TLSv1.0" || v == "TLSv1.1" {
                    m.same(d.line, format!("ssl-min-ver {v}"), "fipsrelay offers TLS 1.2 and 1.3 only");
                } else {
                    m.drop_note(d.line, format!("ssl-min-ver {v}"), "fipsrelay's TLS versions are fixed: 1.2 and 1.3");
                }
                i += 2;
            }
            "ssl-max-ver" => {
                m.drop_note(d.line, "ssl-max-ver", "fipsrelay's TLS versions are fixed: 1.2 and 1.3");
                i += 2;
            }
            "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "force-tlsv12" | "no-tls-tickets" => {
                m.same(d.line, opts[i].clone(), "fipsrelay offers TLS 1.2 and 1.3 only, with session resumption");
                i += 1;
            }
            other => {
                m.drop_note(d.line, other.to_string(), "a TLS option fipsrelay migrate does not know");
                i += 1;
            }
        }
    }
}

fn resolvers(m: &mut Migration, c: &mut Collected, s: &Section) {
    for d in &s.body {
        let kw = d.word(0);
        match kw {
            "nameserver" => {
                let addr = d.word(2);
                let addr = addr.strip_prefix("udp@").or_else(|| addr.strip_prefix("tcp@")).unwrap_or(addr);
                match parse_nameserver(addr) {
                    Some(a) => c.nameservers.entry(s.name.clone()).or_default().push((d.line, a)),
                    None => m.drop_note(
                        d.line,
                        d.head(3),
                        "not an IP address with an optional port: dns.nameservers takes IP or IP:PORT",
                    ),
                }
            }
            "parse-resolv-conf" => {
                c.resolv_conf.insert(s.name.clone(), d.line);
            }
            "hold" if d.word(1) == "valid" => match haproxy_time(d.word(2)) {
                Some(t) => {
                    c.hold_valid.insert(s.name.clone(), (d.line, t));
                }
                None => m.drop_note(d.line, d.head(3), "not an HAProxy time (a number with us, ms, s, m, h or d)"),
            },
            "hold" => m.same(
                d.line,
                format!("hold {}", d.word(1)),
                "a failed lookup keeps the last good addresses and is retried within 5 s",
            ),
            "timeout" | "resolve_retries" => m.same(
                d.line,
                d.head(3),
                "one lookup is bounded by dns.timeout (5s); re-resolution follows dns.refresh and the answers' TTLs",
            ),
            "accepted_payload_size" => m.same(d.line, kw, "hickory-resolver sizes EDNS answers itself (UDP, then TCP)"),
            _ => unknown(m, d),
        }
    }
}

fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

/// A directive of `defaults`, `frontend`, `backend` or `listen` (not `server`).
fn proxy_directive(
    m: &mut Migration,
    c: &mut Collected,
    d: &Directive,
    fe: Option<&mut Frontend>,
    be: Option<&mut Backend>,
) {
    let kw = d.word(0);
    match kw {
        "timeout" => {
            let Some(t) = haproxy_time(d.word(2)) else {
                return m.drop_note(d.line, d.head(3), "not an HAProxy time (a number with us, ms, s, m, h or d)");
            };
            let text = d.head(3);
            match d.word(1) {
                "connect" => c.connect_timeout.add(d.line, t, text),
                "server" => c.response_timeout.add(d.line, t, text),
                "client" | "http-keep-alive" => c.client_timeout.add(d.line, t, text),
                "http-request" => c.header_timeout.add(d.line, t, text),
                "check" => c.check_timeout.add(d.line, t, text),
                "queue" => m.same(
                    d.line,
                    "timeout queue",
                    "no queue: past limits.max_connections the relay answers 503 at once (the Agent retries)",
                ),
                "tunnel" | "client-fin" | "server-fin" => {
                    m.same(d.line, format!("timeout {}", d.word(1)), "fipsrelay relays HTTP requests only, no tunnels")
                }
                other => m.drop_note(d.line, format!("timeout {other}"), "a timeout fipsrelay migrate does not know"),
            }
        }
        "retries" => match d.word(1).parse::<usize>() {
            Ok(n) => c.retries.add(d.line, n, d.head(2)),
            Err(_) => m.drop_note(d.line, d.head(2), "not a number"),
        },
        "mode" => m.same(d.line, "mode", "fipsrelay relays each product as HTTP (the Agent sends HTTP on every port)"),
        "balance" => m.same(d.line, "balance", "fipsrelay spreads connections over a host's healthy addresses (up to 5)"),
        "http-reuse" => m.same(d.line, "http-reuse", "fipsrelay keeps pooled keep-alive sessions to the intake (HTTP/2 by default)"),
        "log" => m.same(d.line, "log", "fipsrelay logs to stderr (the journal under systemd)"),
        "maxconn" => m.drop_note(
            d.line,
            d.head(2),
            "fipsrelay limits Agent connections per worker (limits.max_connections, default 4096)",
        ),
        "default-server" => m.same(d.line, "default-server", "its options are read as part of every server line after it"),
        "option" => match d.word(1) {
            "redispatch" => m.same(d.line, "option redispatch", "a failed connect moves on to the host's next address (upstream.retries)"),
            "dontlognull" | "tcplog" | "httplog" | "logasap" | "log-health-checks" | "contstats" | "dontlog-normal" => m.same(
                d.line,
                format!("option {}", d.word(1)),
                "fipsrelay logs failures and a periodic summary, never a line per request",
            ),
            "http-server-close" | "httpclose" | "http-keep-alive" | "http-pretend-keepalive" | "forceclose" => m.same(
                d.line,
                format!("option {}", d.word(1)),
                "keep-alive on both sides: the Agent's connections (limits.client_idle_timeout) and the intake's (upstream.idle_timeout)",
            ),
            "httpchk" | "ssl-hello-chk" | "tcp-check" => m.drop_note(
                d.line,
                d.head(3),
                "fipsrelay's health check is a TCP connect and a FIPS TLS handshake per address ([health])",
            ),
            "forwardfor" => m.drop_note(d.line, "option forwardfor", "fipsrelay adds no X-Forwarded-For header: the Agent's headers pass unchanged"),
            other => m.drop_note(d.line, format!("option {other}"), "an option fipsrelay migrate does not know"),
        },
        "bind" => bind(m, d, fe),
        "default_backend" => {
            if let Some(fe) = fe {
                m.same(d.line, "default_backend", "each port relays to its product's intake host");
                fe.default_backend = Some((d.line, d.word(1).to_string()));
            } else {
                m.drop_note(d.line, d.head(2), "default_backend outside a frontend or listen section")
            }
        }
        "use_backend" => use_backend(m, d, fe),
        "stats" => {
            if let Some(fe) = fe {
                match d.word(1) {
                    "enable" | "uri" | "refresh" | "show-legends" | "show-node" | "hide-version" => {
                        fe.stats = true;
                        m.same(
                            d.line,
                            format!("stats {}", d.word(1)),
                            "the status port (offset 0) serves the status page at /, /metrics (OpenMetrics) and /health",
                        );
                    }
                    _ => m.drop_note(
                        d.line,
                        format!("stats {}", d.word(1)),
                        "the status page has no login or admin form; /admin/* needs the bearer token in admin.token_file",
                    ),
                }
            } else {
                m.drop_note(d.line, d.head(2), "stats outside a frontend or listen section");
            }
        }
        "http-request" if d.word(1) == "set-header" && d.word(2).eq_ignore_ascii_case("host") => match be {
            Some(be) => be.set_host = Some((d.line, d.word(3).to_string())),
            None => m.drop_note(d.line, d.head(4), "fipsrelay sets Host to the product's intake host"),
        },
        "http-request" | "http-response" | "tcp-request" | "tcp-response" | "acl" | "http-after-response" => m.drop_note(
            d.line,
            d.head(3),
            "fipsrelay passes requests and answers through unchanged; it has no rules",
        ),
        "compression" => m.same(d.line, "compression", "bodies pass through as the Agent compressed them"),
        _ => unknown(m, d),
    }
}

fn bind(m: &mut Migration, d: &Directive, fe: Option<&mut Frontend>) {
    let Some(fe) = fe else {
        return m.drop_note(d.line, d.head(2), "bind outside a frontend or listen section");
    };
    for spec in d.word(1).split(',') {
        let spec = spec.strip_prefix("ipv4@").or_else(|| spec.strip_prefix("ipv6@")).unwrap_or(spec);
        let (host, port) = match spec.rsplit_once(':') {
            Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            None => ("", spec),
        };
        let Ok(port) = port.parse::<u16>() else {
            m.drop_note(d.line, d.head(2), "no port, or a port range: fipsrelay binds one port per product");
            continue;
        };
        let (addr, from_env) = match host {
            "" | "*" | "0.0.0.0" | "::" => (None, false),
            "${DD_FIPS_LOCAL_ADDRESS}" => (None, true),
            h => match h.parse::<IpAddr>() {
                Ok(ip) => (Some(ip), false),
                Err(_) => {
                    m.drop_note(d.line, d.head(2), "the bind address is not an IP address: listen.address takes one");
                    continue;
                }
            },
        };
        fe.binds.push(Bind { line: d.line, addr, from_env, port });
    }
    let opts = &d.words[2.min(d.words.len())..];
    if opts.iter().any(|o| o == "ssl") {
        m.drop_note(
            d.line,
            "bind ... ssl",
            "TLS between the Agent and the relay: fipsrelay listens in plaintext on loopback (set fips.https: false in datadog.yaml)",
        );
    } else if !opts.is_empty() {
        m.drop_note(
            d.line,
            format!("bind options {}", shorten(&opts.join(" "))),
            "fipsrelay sets its own listener options",
        );
    }
}

fn use_backend(m: &mut Migration, d: &Directive, fe: Option<&mut Frontend>) {
    let Some(fe) = fe else {
        return m.drop_note(d.line, d.head(2), "use_backend outside a frontend or listen section");
    };
    // use_backend B if { path_beg [-i] /prefix }
    let path = d.words.iter().skip(2).find(|w| w.starts_with('/')).cloned();
    match (d.word(2), path) {
        ("if", Some(p)) if d.words.iter().any(|w| w == "path_beg") => {
            fe.use_backends.push((d.line, d.word(1).to_string(), p));
        }
        _ => m.drop_note(
            d.line,
            shorten(&d.words.join(" ")),
            "fipsrelay routes by port, and on the metrics port by /api/v1/validate and /support/flare only",
        ),
    }
}

fn server(m: &mut Migration, c: &mut Collected, be: &mut Backend, d: &Directive, written: &Directive) {
    let template = d.word(0) == "server-template";
    // server NAME ADDR opts | server-template PREFIX NUM ADDR opts
    let addr_at = if template { 3 } else { 2 };
    let addr = d.word(addr_at);
    if addr.is_empty() {
        return m.drop_note(d.line, written.head(2), "a server without an address");
    }
    let (host, port) = split_host_port(addr);
    let mut srv = Server { line: d.line, host: host.to_ascii_lowercase(), port, ssl: false, sni: None };
    let opts = &d.words[(addr_at + 1).min(d.words.len())..];
    let mut i = 0;
    let arg = |i: usize| opts.get(i + 1).map(String::as_str).unwrap_or("");
    while i < opts.len() {
        let o = opts[i].as_str();
        let mut step = 1;
        match o {
            "ssl" => {
                srv.ssl = true;
                m.same(d.line, "ssl", "fipsrelay always speaks TLS to the intake, from its FIPS module");
            }
            "verify" => {
                step = 2;
                if arg(i) == "none" {
                    m.drop_note(
                        d.line,
                        "verify none",
                        "fipsrelay always verifies the intake's certificate (upstream.ca_file or the system store)",
                    );
                } else {
                    m.same(d.line, "verify required", "fipsrelay always verifies the intake's certificate");
                }
            }
            "ca-file" => {
                step = 2;
                let mut p = PathBuf::from(arg(i));
                if p.is_relative() {
                    if let Some(base) = &c.ca_base {
                        p = base.join(p);
                    }
                }
                c.ca_files.add(d.line, p, format!("ca-file {}", arg(i)));
            }
            "sni" => {
                step = 2;
                let v = arg(i);
                srv.sni = Some(v.strip_prefix("str(").and_then(|s| s.strip_suffix(')')).unwrap_or(v).to_string());
            }
            "check" => c.check_lines.push(d.line),
            "check-ssl" | "check-sni" | "check-alpn" | "port" | "addr" => {
                step = if o == "check-ssl" { 1 } else { 2 };
                m.same(d.line, o, "health checks connect to the address's own port and complete a FIPS TLS handshake");
            }
            "inter" | "fastinter" | "downinter" => {
                step = 2;
                match haproxy_time(arg(i)) {
                    Some(t) if o == "inter" => c.inter.add(d.line, t, format!("inter {}", arg(i))),
                    Some(t) => c.down_inter.add(d.line, t, format!("{o} {}", arg(i))),
                    None => m.drop_note(d.line, format!("{o} {}", arg(i)), "not an HAProxy time"),
                }
            }
            "rise" | "fall" => {
                step = 2;
                match arg(i).parse::<u32>() {
                    Ok(n) if n > 0 && o == "rise" => c.rise.add(d.line, n, format!("rise {n}")),
                    Ok(n) if n > 0 => c.fall.add(d.line, n, format!("fall {n}")),
                    _ => m.drop_note(d.line, format!("{o} {}", arg(i)), "not a positive count"),
                }
            }
            "resolvers" => {
                step = 2;
                c.resolvers_used.add(d.line, arg(i).to_string(), format!("resolvers {}", arg(i)));
            }
            "resolve-prefer" => {
                step = 2;
                c.prefer.add(d.line, arg(i).to_string(), format!("resolve-prefer {}", arg(i)));
            }
            "init-addr" => {
                step = 2;
                m.same(d.line, "init-addr", "fipsrelay resolves at start and answers 503 for a host until it resolves");
            }
            "resolve-opts" | "resolve-net" => {
                step = 2;
                m.drop_note(d.line, format!("{o} {}", arg(i)), "not a setting of fipsrelay's resolver");
            }
            "alpn" => {
                step = 2;
                c.alpn.add(d.line, arg(i).to_string(), format!("alpn {}", arg(i)));
            }
            "weight" => {
                step = 2;
                m.same(d.line, "weight", "fipsrelay weighs a host's addresses equally");
            }
            "backup" => m.drop_note(
                d.line,
                "backup",
                "no backup servers: fipsrelay uses every address the product's host resolves to",
            ),
            "maxconn" | "maxqueue" | "slowstart" | "on-marked-down" | "on-marked-up" | "observe" | "error-limit"
            | "pool-max-conn" | "pool-purge-delay" | "pool-low-conn" | "max-reuse" | "agent-check" | "agent-port"
            | "agent-inter" | "cookie" | "send-proxy" | "send-proxy-v2" | "crt" | "ciphers" | "ciphersuites"
            | "ssl-min-ver" | "ssl-max-ver" | "no-ssl-reuse" | "no-tls-tickets" | "tfo" | "proto" | "source"
            | "namespace" | "id" | "disabled" | "enabled" => {
                step = match o {
                    "agent-check" | "send-proxy" | "send-proxy-v2" | "no-ssl-reuse" | "no-tls-tickets" | "tfo"
                    | "disabled" | "enabled" => 1,
                    _ => 2,
                };
                let v = if step == 2 { format!("{o} {}", arg(i)) } else { o.to_string() };
                let why = match o {
                    "crt" => "no client certificate toward the intake: the Agent's API key authenticates",
                    "ciphers" | "ciphersuites" | "ssl-min-ver" | "ssl-max-ver" => {
                        "fipsrelay's TLS offer is fixed by its FIPS module (TLS 1.2/1.3, AES-GCM only)"
                    }
                    "maxconn" | "maxqueue" | "pool-max-conn" | "pool-low-conn" => {
                        "fipsrelay bounds pooled sessions per host (upstream.max_idle_per_host, upstream.h2_max_connections)"
                    }
                    _ => "a server option fipsrelay has no counterpart for",
                };
                m.drop_note(d.line, v, why);
            }
            other => m.drop_note(d.line, other.to_string(), "a server option fipsrelay migrate does not know"),
        }
        i += step;
    }
    be.servers.push(srv);
}

fn split_host_port(addr: &str) -> (String, Option<u16>) {
    let addr = addr.strip_prefix("ipv4@").or_else(|| addr.strip_prefix("ipv6@")).unwrap_or(addr);
    if let Some(v6) = addr.strip_prefix('[') {
        if let Some((h, rest)) = v6.split_once(']') {
            return (h.to_string(), rest.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    if addr.parse::<IpAddr>().is_ok() {
        return (addr.to_string(), None);
    }
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()),
        None => (addr.to_string(), None),
    }
}

/// The product a host belongs to: (offset, or 100 for the API host and
/// 101 for flare; the site), from the host's prefix.
const API: u16 = 100;
const FLARE: u16 = 101;

fn product_of(host: &str) -> Option<(u16, String)> {
    let prefixes = PRODUCTS.iter().filter_map(|p| p.prefix.map(|x| (p.offset, x))).chain([
        (API, "api"),
        (FLARE, "flare"),
        (1, "haproxy-app.agent"),
        (3, "profile.agent"),
    ]);
    for (offset, prefix) in prefixes {
        if let Some(site) = host.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) {
            if site.contains('.') && !site.starts_with('.') {
                return Some((offset, site.to_string()));
            }
        }
    }
    None
}

fn product_name(offset: u16) -> &'static str {
    match offset {
        API => "api (metrics port, /api/v1/validate)",
        FLARE => "flare (metrics port, /support/flare)",
        o => PRODUCTS.get(o as usize).map(|p| p.name).unwrap_or("?"),
    }
}

/// The most common value, first seen on a tie.
fn most_common<T: PartialEq + Clone>(values: &[T]) -> Option<T> {
    let mut best: Option<(usize, &T)> = None;
    for v in values {
        let n = values.iter().filter(|x| *x == v).count();
        if best.is_none_or(|(b, _)| n > b) {
            best = Some((n, v));
        }
    }
    best.map(|(_, v)| v.clone())
}

fn lines_of(v: &[(usize, impl Sized)]) -> Vec<usize> {
    v.iter().map(|x| x.0).collect()
}

/// Settles what the sections said into keys and notes.
fn settle(m: &mut Migration, c: &Collected) {
    ports_and_products(m, c);
    timeouts(m, c);
    dns(m, c);
    health(m, c);
    tls(m, c);
    if let Some((line, n, text)) = c.threads.values.last().cloned() {
        for (l, _, t) in &c.threads.values[..c.threads.values.len() - 1] {
            m.drop_note(*l, t.clone(), "a later nbthread replaces it");
        }
        {
            m.raw.workers.threads = n.min(1024);
            m.carry(
                "workers.threads",
                vec![line],
                text,
                Some("HAProxy's threads; 0 (the default) starts one worker per CPU, each pinned".into()),
            );
        }
    }
    if !c.retries.values.is_empty() {
        let n = c.retries.values.iter().map(|v| v.1).max().unwrap_or(3);
        if n != config::DEFAULT_RETRIES {
            m.raw.upstream.retries = n.min(10);
            let caveat = (n > 10).then(|| {
                format!("HAProxy's {n} is above fipsrelay's limit of 10; the Agent retries a failed request itself")
            });
            m.carry("upstream.retries", c.retries.lines(), c.retries.texts(), caveat);
        } else {
            for l in c.retries.lines() {
                m.same(l, format!("retries {n}"), "fipsrelay's default (upstream.retries = 3)");
            }
        }
    }
}

fn ports_and_products(m: &mut Migration, c: &Collected) {
    let backend = |name: &str| c.backends.iter().find(|b| b.name == name);
    // Each frontend's product: the stats page, or the hosts of its default backend.
    let mut fe_product: Vec<Option<u16>> = Vec::new();
    for fe in &c.frontends {
        if fe.stats {
            fe_product.push(Some(0));
            continue;
        }
        let be = fe.default_backend.as_ref().and_then(|(_, n)| backend(n));
        let offs: Vec<u16> = be
            .map(|b| b.servers.iter().filter_map(|s| product_of(&s.host).map(|p| p.0)).filter(|o| *o < API).collect())
            .unwrap_or_default();
        fe_product.push(most_common(&offs));
    }
    // The range start: port − offset over the frontends whose product is known.
    let starts: Vec<u32> = c
        .frontends
        .iter()
        .zip(&fe_product)
        .flat_map(|(fe, p)| {
            fe.binds.iter().filter_map(move |b| p.map(|o| u32::from(b.port).wrapping_sub(u32::from(o))))
        })
        .filter(|s| (1..=65535 - u32::from(PORT_COUNT) + 1).contains(s))
        .collect();
    let start = most_common(&starts).map(|s| s as u16);
    // Frontends found by host only now get their product by port.
    if let Some(start) = start {
        for (fe, p) in c.frontends.iter().zip(fe_product.iter_mut()) {
            if p.is_none() {
                if let Some(b) = fe.binds.first() {
                    let off = b.port.wrapping_sub(start);
                    if off < PORT_COUNT {
                        *p = Some(off);
                    }
                }
            }
        }
    }
    let mut used_backends: Vec<(String, u16)> = Vec::new();
    let mut served = [false; PORT_COUNT as usize];
    let mut addrs: Vec<(usize, Option<IpAddr>, bool)> = Vec::new();
    let mut unbound_backends: Vec<String> = Vec::new();
    for (fe, p) in c.frontends.iter().zip(&fe_product) {
        if fe.binds.is_empty() {
            if let Some((_, be)) = &fe.default_backend {
                unbound_backends.push(be.clone());
            }
            m.drop_note(
                fe.line,
                format!("{} {} without a usable bind", if fe.stats { "listen" } else { "frontend" }, fe.name),
                "it listens nowhere fipsrelay can take over",
            );
            continue;
        }
        let Some(off) = *p else {
            for b in &fe.binds {
                m.drop_note(
                    b.line,
                    format!("frontend {} (port {})", fe.name, b.port),
                    "no product found: its servers are not intake hosts and its port is outside the range the other frontends use",
                );
            }
            continue;
        };
        served[off as usize] = true;
        if let Some((_, be)) = &fe.default_backend {
            used_backends.push((be.clone(), off));
        }
        for (line, be, path) in &fe.use_backends {
            let which = if path.starts_with("/api/v1/validate") {
                Some(API)
            } else if path.starts_with("/support/flare") {
                Some(FLARE)
            } else {
                None
            };
            match which {
                Some(w) if off == 1 => {
                    used_backends.push((be.clone(), w));
                    m.same(
                        *line,
                        format!("use_backend {be} if path_beg {path}"),
                        "the metrics port routes this path the same way",
                    );
                }
                _ => m.drop_note(
                    *line,
                    format!("use_backend {be} if path_beg {path}"),
                    "fipsrelay routes by path only on the metrics port, for /api/v1/validate and /support/flare",
                ),
            }
        }
        for b in &fe.binds {
            addrs.push((b.line, b.addr, b.from_env));
            if let Some(start) = start {
                let want = u32::from(start) + u32::from(off);
                if u32::from(b.port) != want {
                    m.drop_note(
                        b.line,
                        format!("bind port {} ({})", b.port, product_name(off)),
                        format!(
                            "fipsrelay serves {} at port_range_start + {off} = {want}, where the Agent sends it",
                            product_name(off)
                        ),
                    );
                }
            }
        }
    }
    for be in &c.backends {
        if !used_backends.iter().any(|(n, _)| *n == be.name)
            && !unbound_backends.contains(&be.name)
            && !be.servers.is_empty()
        {
            m.drop_note(be.line, format!("backend {}", be.name), "no frontend uses it");
        }
    }
    if let Some(start) = start {
        let lines: Vec<usize> = c.frontends.iter().flat_map(|f| f.binds.iter().map(|b| b.line)).collect();
        if start != DEFAULT_PORT_RANGE_START {
            m.raw.listen.port_range_start = start;
            let first = c.frontends.iter().flat_map(|f| &f.binds).map(|b| b.port).min().unwrap_or(start);
            m.carry(
                "listen.port_range_start",
                lines,
                format!("bind ports from {first}"),
                Some(format!("set the Agent's fips.port_range_start (DD_FIPS_PORT_RANGE_START) to {start} too")),
            );
        } else {
            for l in lines {
                m.same(l, "bind ports 9803-9818", "fipsrelay's default range (listen.port_range_start = 9803)");
            }
        }
    }
    let missing: Vec<&str> =
        (1..PORT_COUNT).filter(|o| !served[*o as usize] && *o != 11).map(|o| product_name(o)).collect();
    if start.is_some() && !missing.is_empty() {
        m.built_in.push(Note {
            lines: vec![],
            what: format!("products with no frontend here: {}", missing.join(", ")),
            why: "fipsrelay serves every Agent product on its port".into(),
        });
    }
    listen_address(m, &addrs);
    upstream_hosts(m, c, &used_backends);
}

fn listen_address(m: &mut Migration, addrs: &[(usize, Option<IpAddr>, bool)]) {
    for (line, addr, from_env) in addrs {
        match addr {
            _ if *from_env => m.same(*line, "bind ${DD_FIPS_LOCAL_ADDRESS}", "fipsrelay reads DD_FIPS_LOCAL_ADDRESS too (listen.address)"),
            None => m.drop_note(
                *line,
                "bind on every address (*, 0.0.0.0)",
                "the Agent's traffic to the relay is plaintext: fipsrelay listens on 127.0.0.1; listen.address with listen.allow_non_local = true opens it off-host, which loses FIPS compliance",
            ),
            Some(ip) if ip.is_loopback() => {}
            Some(ip) => m.drop_note(
                *line,
                format!("bind {ip}"),
                "not a loopback address: the Agent's traffic would cross the network in plaintext; listen.address takes it only with listen.allow_non_local = true",
            ),
        }
    }
    let loopback: Vec<(usize, IpAddr)> =
        addrs.iter().filter_map(|(l, a, e)| a.filter(|ip| ip.is_loopback() && !*e).map(|ip| (*l, ip))).collect();
    if let Some(ip) = most_common(&loopback.iter().map(|x| x.1).collect::<Vec<_>>()) {
        let lines: Vec<usize> = loopback.iter().filter(|x| x.1 == ip).map(|x| x.0).collect();
        if ip.to_string() != config::DEFAULT_LISTEN_ADDRESS {
            m.raw.listen.address = ip.to_string();
            m.carry(
                "listen.address",
                lines,
                format!("bind {ip}"),
                Some("set the Agent's fips.local_address (DD_FIPS_LOCAL_ADDRESS) to it too".into()),
            );
        }
        for (l, other) in loopback.iter().filter(|x| x.1 != ip) {
            m.drop_note(*l, format!("bind {other}"), format!("fipsrelay binds every port on one address ({ip})"));
        }
    }
}

fn upstream_hosts(m: &mut Migration, c: &Collected, used: &[(String, u16)]) {
    let mut sites: Vec<(usize, String)> = Vec::new();
    let mut ports: Vec<(usize, u16)> = Vec::new();
    // Per used backend: servers on other hosts than the product's.
    let mut overrides: Vec<(String, u16, Vec<&Server>)> = Vec::new();
    let mut standard_backends = 0;
    for (name, off) in used {
        let Some(be) = c.backends.iter().find(|b| &b.name == name) else {
            m.drop_note(0, format!("backend {name}"), "named by a frontend but not defined");
            continue;
        };
        let mut odd = Vec::new();
        for s in &be.servers {
            match product_of(&s.host) {
                Some((o, site)) => {
                    m.same(
                        s.line,
                        "servers on the products' intake hosts",
                        "fipsrelay resolves each product's host and spreads over up to 5 of its addresses",
                    );
                    if o != *off && !(o == 1 && *off == 1) {
                        m.drop_note(
                            s.line,
                            format!("server {}", s.host),
                            format!(
                                "the {} host in the backend of {}: fipsrelay sends each product to its own host",
                                product_name(o),
                                product_name(*off)
                            ),
                        );
                    }
                    sites.push((s.line, site));
                    ports.push((s.line, s.port.unwrap_or(DEFAULT_UPSTREAM_PORT)));
                }
                None => odd.push(s),
            }
            if !s.ssl {
                m.drop_note(
                    s.line,
                    format!("server {} without ssl", s.host),
                    "fipsrelay always speaks TLS to the intake",
                );
            }
            if let Some(sni) = &s.sni {
                let expected = product_of(&s.host).map(|_| s.host.clone());
                if expected.as_deref() == Some(sni.as_str()) || product_of(sni).is_some_and(|(o, _)| o == *off) {
                    m.same(s.line, "sni", "fipsrelay sends the product's host as SNI");
                } else {
                    m.drop_note(s.line, format!("sni {sni}"), "fipsrelay sends the product's host as SNI (upstream.server_name replaces it for every product)");
                }
            }
        }
        if let Some((line, host)) = &be.set_host {
            if product_of(host).is_some_and(|(o, _)| o == *off) {
                m.same(*line, "http-request set-header Host", "fipsrelay sets Host to the product's intake host");
            } else {
                m.drop_note(
                    *line,
                    format!("http-request set-header Host {host}"),
                    "fipsrelay sets Host to the product's intake host",
                );
            }
        }
        if odd.is_empty() {
            standard_backends += 1;
        } else if odd.len() == be.servers.len() {
            overrides.push((name.clone(), *off, odd));
        } else {
            for s in odd {
                m.drop_note(
                    s.line,
                    format!("server {}:{}", s.host, s.port.map(|p| p.to_string()).unwrap_or_default()),
                    format!("an extra server beside the intake hosts of {}: fipsrelay uses the addresses the product's host resolves to", product_name(*off)),
                );
            }
        }
    }
    // The site and the intake's port.
    if let Some(site) = most_common(&sites.iter().map(|s| s.1.clone()).collect::<Vec<_>>()) {
        for (l, s) in sites.iter().filter(|s| s.1 != site) {
            m.drop_note(
                *l,
                format!("server on site {s}"),
                format!("fipsrelay sends every product to one site ({site})"),
            );
        }
        if site != DEFAULT_SITE {
            m.raw.upstream.site = site.clone();
            m.carry("upstream.site", lines_of(&sites), format!("servers *.{site}"), None);
        }
    }
    if let Some(port) = most_common(&ports.iter().map(|p| p.1).collect::<Vec<_>>()) {
        for (l, p) in ports.iter().filter(|p| p.1 != port) {
            m.drop_note(
                *l,
                format!("server port {p}"),
                format!("fipsrelay uses one intake port for every host ({port})"),
            );
        }
        if port != DEFAULT_UPSTREAM_PORT {
            m.raw.upstream.port = port;
            m.carry("upstream.port", lines_of(&ports), format!("servers on port {port}"), None);
        }
    }
    // Every product to the same fixed addresses: upstream.override_addr.
    if overrides.is_empty() {
        return;
    }
    let set = |srvs: &[&Server]| {
        let mut v: Vec<Option<SocketAddr>> = srvs
            .iter()
            .map(|s| s.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, s.port.unwrap_or(443))))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let first = set(&overrides[0].2);
    let all_same = overrides.iter().all(|o| set(&o.2) == first) && first.iter().all(Option::is_some);
    if standard_backends == 0 && all_same {
        let list: Vec<String> = first.iter().flatten().map(|a| a.to_string()).collect();
        m.raw.upstream.override_addr = Some(list.join(","));
        let lines: Vec<usize> = overrides.iter().flat_map(|o| o.2.iter().map(|s| s.line)).collect();
        m.carry(
            "upstream.override_addr",
            lines,
            format!("every backend's servers are {}", list.join(", ")),
            Some(
                "every product goes to these addresses; SNI, Host and the certificate check stay the product's host"
                    .into(),
            ),
        );
    } else {
        for (name, off, srvs) in &overrides {
            for s in srvs {
                let why = if s.host.parse::<IpAddr>().is_err() && standard_backends == 0 {
                    "upstream.override_addr takes IP:PORT, not a host name: resolve it and set the addresses, or use [upstream.proxy] for a CONNECT proxy".to_string()
                } else {
                    format!(
                        "backend {name} ({}) goes elsewhere than the intake; fipsrelay cannot send one product elsewhere (upstream.override_addr moves every product)",
                        product_name(*off)
                    )
                };
                m.drop_note(
                    s.line,
                    format!("server {}:{}", s.host, s.port.map(|p| p.to_string()).unwrap_or_default()),
                    why,
                );
            }
        }
    }
}

fn timeouts(m: &mut Migration, c: &Collected) {
    // (seen, key, fipsrelay default, setter)
    type Set = fn(&mut RawConfig, String);
    type Row<'a> = (&'a Seen<Duration>, &'static str, &'static str, Option<Duration>, Set);
    let rows: [Row; 5] = [
        (
            &c.connect_timeout,
            "upstream.connect_timeout",
            config::DEFAULT_CONNECT_TIMEOUT,
            Some(STOCK_TIMEOUT),
            |r, v| r.upstream.connect_timeout = v,
        ),
        (
            &c.response_timeout,
            "upstream.response_timeout",
            config::DEFAULT_RESPONSE_TIMEOUT,
            Some(STOCK_TIMEOUT),
            |r, v| r.upstream.response_timeout = v,
        ),
        (
            &c.client_timeout,
            "limits.client_idle_timeout",
            config::DEFAULT_CLIENT_IDLE_TIMEOUT,
            Some(STOCK_TIMEOUT),
            |r, v| r.limits.client_idle_timeout = v,
        ),
        (&c.header_timeout, "limits.header_timeout", config::DEFAULT_HEADER_TIMEOUT, None, |r, v| {
            r.limits.header_timeout = v
        }),
        (&c.check_timeout, "health.timeout", config::DEFAULT_HEALTH_TIMEOUT, None, |r, v| r.health.timeout = v),
    ];
    for (seen, key, default, stock, set) in rows {
        if seen.values.is_empty() {
            continue;
        }
        // Several values (defaults, then per section): the longest, so
        // that nothing is cut shorter than HAProxy allowed.
        let longest = seen.values.iter().map(|v| v.1).max().unwrap_or_default();
        let text = duration_text(longest);
        if humantime::parse_duration(default).ok() == Some(longest) {
            for l in seen.lines() {
                m.same(l, seen.texts(), format!("fipsrelay's default ({key} = \"{default}\")"));
            }
            continue;
        }
        if Some(longest) == stock {
            for l in seen.lines() {
                m.same(
                    l,
                    format!("{} (the FIPS Proxy's stock value)", seen.values.iter().find(|v| v.0 == l).map(|v| v.2.clone()).unwrap_or_default()),
                    format!("not carried: fipsrelay's {key} = \"{default}\" fits the Agent better; set {key} = \"{text}\" to keep HAProxy's"),
                );
            }
            continue;
        }
        set(&mut m.raw, text);
        let caveat = (!seen.all_same()).then(|| format!("the longest of {}", seen.texts()));
        m.carry(key, seen.lines(), seen.texts(), caveat);
    }
}

fn dns(m: &mut Migration, c: &Collected) {
    // The resolvers sections the servers name (HAProxy ignores the others).
    let mut used: Vec<String> = c.resolvers_used.values.iter().map(|v| v.1.clone()).collect();
    used.sort();
    used.dedup();
    let defined: Vec<String> =
        c.nameservers.keys().chain(c.resolv_conf.keys()).chain(c.hold_valid.keys()).cloned().collect();
    for name in &defined {
        if !used.contains(name) {
            let lines = c
                .nameservers
                .get(name)
                .map(|v| lines_of(v))
                .unwrap_or_default()
                .into_iter()
                .chain(c.resolv_conf.get(name).copied())
                .chain(c.hold_valid.get(name).map(|h| h.0));
            for l in lines {
                m.drop_note(l, format!("resolvers {name}"), "no server names it (HAProxy would not use it either)");
            }
        }
    }
    if let Some(name) = used.first() {
        for other in used.iter().skip(1) {
            m.drop_note(
                c.resolvers_used.values.iter().find(|v| &v.1 == other).map(|v| v.0).unwrap_or(0),
                format!("resolvers {other}"),
                format!("fipsrelay has one set of name servers: it takes those of resolvers {name}"),
            );
        }
        if let Some(ns) = c.nameservers.get(name) {
            m.raw.dns.nameservers = ns.iter().map(|(_, a)| a.to_string()).collect();
            m.carry("dns.nameservers", lines_of(ns), format!("resolvers {name}: nameserver ..."), None);
            if let Some(l) = c.resolv_conf.get(name) {
                m.drop_note(
                    *l,
                    "parse-resolv-conf",
                    "fipsrelay asks either its dns.nameservers or the system resolver, not both",
                );
            }
        } else if let Some(l) = c.resolv_conf.get(name) {
            m.same(*l, "parse-resolv-conf", "fipsrelay's default: the system resolver (dns.nameservers = [])");
        } else if !c.nameservers.contains_key(name)
            && !c.resolv_conf.contains_key(name)
            && !c.hold_valid.contains_key(name)
        {
            m.drop_note(c.resolvers_used.values[0].0, format!("resolvers {name}"), "named by a server but not defined");
        }
        if let Some((line, t)) = c.hold_valid.get(name) {
            let text = duration_text(*t);
            if *t == STOCK_HOLD_VALID {
                m.same(
                    *line,
                    "hold valid 10s (the FIPS Proxy's stock value)",
                    format!("not carried: fipsrelay re-resolves every dns.refresh = \"{}\" or sooner when a TTL is shorter; set dns.refresh = \"{text}\" to keep HAProxy's", config::DEFAULT_DNS_REFRESH),
                );
            } else if *t >= config::MIN_DNS_REFRESH {
                m.raw.dns.refresh = text.clone();
                m.carry("dns.refresh", vec![*line], format!("hold valid {text}"), None);
            } else {
                m.drop_note(*line, format!("hold valid {text}"), "under dns.refresh's minimum of 1s");
            }
        }
    }
    if let Some(p) = most_common(&c.prefer.values.iter().map(|v| v.1.clone()).collect::<Vec<_>>()) {
        match p.as_str() {
            "ipv4" => {
                for l in c.prefer.lines() {
                    m.same(l, "resolve-prefer ipv4", "fipsrelay's default (dns.prefer = \"ipv4\")");
                }
            }
            "ipv6" => {
                m.raw.dns.prefer = "ipv6".into();
                m.carry("dns.prefer", c.prefer.lines(), "resolve-prefer ipv6".into(), None);
            }
            other => {
                for l in c.prefer.lines() {
                    m.drop_note(l, format!("resolve-prefer {other}"), "dns.prefer takes ipv4 or ipv6");
                }
            }
        }
    }
}

fn health(m: &mut Migration, c: &Collected) {
    if c.check_lines.is_empty() {
        let servers: Vec<usize> = c.backends.iter().flat_map(|b| b.servers.iter().map(|s| s.line)).collect();
        if let Some(l) = servers.first() {
            m.drop_note(
                *l,
                "servers without check",
                "HAProxy did not health-check them; fipsrelay checks every address (health.enabled = true); set health.enabled = false to match",
            );
        }
    } else {
        for l in &c.check_lines {
            m.same(
                *l,
                "check",
                "fipsrelay checks every address: TCP connect and a FIPS TLS handshake (health.enabled)",
            );
        }
    }
    let rows: [(&Seen<Duration>, &str, &str); 2] = [
        (&c.inter, "health.interval", config::DEFAULT_HEALTH_INTERVAL),
        (&c.down_inter, "health.down_interval", config::DEFAULT_HEALTH_DOWN_INTERVAL),
    ];
    for (seen, key, default) in rows {
        let Some(v) = most_common(&seen.values.iter().map(|v| v.1).collect::<Vec<_>>()) else { continue };
        if humantime::parse_duration(default).ok() == Some(v) {
            for l in seen.lines() {
                m.same(l, seen.texts(), format!("fipsrelay's default ({key} = \"{default}\")"));
            }
            continue;
        }
        let text = duration_text(v);
        match key {
            "health.interval" => m.raw.health.interval = text,
            _ => m.raw.health.down_interval = text,
        }
        let caveat = (!seen.all_same()).then(|| "the most common of the servers' values".to_string());
        m.carry(key, seen.lines(), seen.texts(), caveat);
    }
    for (seen, key, default) in
        [(&c.rise, "health.rise", config::DEFAULT_HEALTH_RISE), (&c.fall, "health.fall", config::DEFAULT_HEALTH_FALL)]
    {
        let Some(v) = most_common(&seen.values.iter().map(|v| v.1).collect::<Vec<_>>()) else { continue };
        if v == default {
            for l in seen.lines() {
                m.same(l, seen.texts(), format!("fipsrelay's default ({key} = {default})"));
            }
            continue;
        }
        match key {
            "health.rise" => m.raw.health.rise = v,
            _ => m.raw.health.fall = v,
        }
        m.carry(key, seen.lines(), seen.texts(), None);
    }
}

fn tls(m: &mut Migration, c: &Collected) {
    if let Some(ca) = most_common(&c.ca_files.values.iter().map(|v| v.1.clone()).collect::<Vec<_>>()) {
        for (l, other, _) in c.ca_files.values.iter().filter(|v| v.1 != ca) {
            m.drop_note(
                *l,
                format!("ca-file {}", other.display()),
                format!("fipsrelay verifies every host against one CA file ({})", ca.display()),
            );
        }
        if ca.starts_with(FIPS_PROXY_PREFIX) {
            for l in c.ca_files.lines() {
                m.same(
                    l,
                    format!("ca-file {} (the FIPS Proxy's own bundle)", ca.display()),
                    "not carried: it belongs to the datadog-fips-proxy package and goes with it; fipsrelay verifies against the system trust store (or upstream.ca_file)",
                );
            }
        } else {
            m.raw.upstream.ca_file = Some(ca.clone());
            let lines: Vec<usize> = c.ca_files.values.iter().filter(|v| v.1 == ca).map(|v| v.0).collect();
            m.carry(
                "upstream.ca_file",
                lines,
                format!("ca-file {}", ca.display()),
                Some("the fipsrelay user must be able to read it".into()),
            );
        }
    }
    if let Some(a) = most_common(&c.alpn.values.iter().map(|v| v.1.clone()).collect::<Vec<_>>()) {
        let protocols: Vec<&str> = a.split(',').collect();
        let p = match (protocols.contains(&"h2"), protocols.contains(&"http/1.1")) {
            (true, true) => None,
            (true, false) => Some("h2"),
            (false, true) => Some("http1"),
            _ => {
                for l in c.alpn.lines() {
                    m.drop_note(l, format!("alpn {a}"), "upstream.protocol takes http1, h2 or auto");
                }
                return;
            }
        };
        match p {
            None => {
                for l in c.alpn.lines() {
                    m.same(
                        l,
                        format!("alpn {a}"),
                        "fipsrelay's default (upstream.protocol = \"auto\": h2 and http/1.1 offered)",
                    );
                }
            }
            Some(p) => {
                m.raw.upstream.protocol = p.into();
                m.carry("upstream.protocol", c.alpn.lines(), c.alpn.texts(), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_their_product_and_site() {
        assert_eq!(product_of("metrics.agent.ddog-gov.com"), Some((1, "ddog-gov.com".into())));
        assert_eq!(product_of("agent-http-intake.logs.ddog-gov.com"), Some((5, "ddog-gov.com".into())));
        assert_eq!(product_of("runtime-security-http-intake.logs.ddog-gov.com"), Some((13, "ddog-gov.com".into())));
        assert_eq!(product_of("api.ddog-gov.com"), Some((API, "ddog-gov.com".into())));
        assert_eq!(product_of("egress.corp.example"), None);
    }
}
