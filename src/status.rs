//! The status port (offset 0): a plain-text summary on `/`, Prometheus text
//! on `/metrics`, JSON on `/health`. These pages are read-only: they answer
//! GET and HEAD only and change nothing. The same port carries the admin API
//! (`/admin/*`, see [`crate::admin`]), which needs a bearer token and only
//! hands commands to the control loop.

use std::fmt::Write as _;

use crate::fault::Cause;
use crate::metrics::*;
use crate::route::{ProductRoute, RouteTable, PRODUCTS};

/// What the status pages need to know besides the counters.
pub struct StatusInfo {
    pub version: &'static str,
    /// The commit the binary was built from (`control::COMMIT`).
    pub commit: &'static str,
    /// The linked FIPS module and its CMVP status (`crypto::MODULE_TABLE`).
    pub fips_module: crate::crypto::FipsModule,
    pub io_backend: &'static str,
    /// `listen.address` and `listen.port_range_start`: the page labels
    /// products by their port.
    pub listen_address: std::net::IpAddr,
    pub port_range_start: u16,
    /// `upstream.protocol`: http1, h2 or auto.
    pub upstream_protocol: &'static str,
    pub workers: usize,
    pub routes: std::sync::Arc<RouteTable>,
    /// Upstream addresses and their health, as the workers see them.
    pub directory: std::sync::Arc<crate::upstream::Directory>,
    /// The admin API's token and command channel to the control loop.
    pub admin: crate::admin::AdminAccess,
    /// [`READY_STARTING`], [`READY_SERVING`] or [`READY_DRAINING`], set by the control loop.
    pub readiness: std::sync::atomic::AtomicU8,
}

/// Workers are still starting: not ready.
pub const READY_STARTING: u8 = 0;
/// Every listener is bound, the FIPS module passed its self-tests and every
/// worker serves: ready.
pub const READY_SERVING: u8 = 1;
/// Stopping or restarting in place: not ready (still live).
pub const READY_DRAINING: u8 = 2;

impl StatusInfo {
    /// Why the relay is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self.readiness.load(std::sync::atomic::Ordering::Acquire) {
            READY_SERVING => None,
            READY_DRAINING => Some("draining"),
            _ => Some("starting"),
        }
    }
}

/// Renders the answer for `path`: (status, content type, body).
pub fn render(path: &[u8], info: &StatusInfo, hub: &StatsHub) -> (u16, &'static str, String) {
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"/");
    match path {
        b"/" => (200, "text/plain; charset=utf-8", summary(info, hub)),
        b"/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", prometheus(info, hub)),
        // Readiness: 503 until every worker serves (listeners bound, FIPS
        // self-tests passed), and again while draining.
        b"/health" => match info.not_ready() {
            None => (200, "application/json", health(info, hub)),
            Some(_) => (503, "application/json", health(info, hub)),
        },
        // Liveness: the process answers.
        b"/health/live" => {
            (200, "application/json", format!("{}\n", serde_json::json!({"live": true, "version": info.version})))
        }
        _ => (404, "text/plain; charset=utf-8", "not found: try /, /metrics, /health or /health/live\n".to_string()),
    }
}

fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        format!("{:.2}ms", h.value_at_quantile(q) as f64 / 1000.0)
    }
}

fn summary(info: &StatusInfo, hub: &StatsHub) -> String {
    let m = hub.merged();
    let mut s = String::new();
    let _ = writeln!(s, "fipsrelay {} (commit {})", info.version, info.commit);
    let _ = writeln!(s, "uptime: {}s", hub.started.elapsed().as_secs());
    let _ = writeln!(s, "fips: enabled ({})", info.fips_module);
    let _ = writeln!(s, "io: {} ({} workers)", info.io_backend, info.workers);
    let _ = writeln!(
        s,
        "upstream protocol: {}{}",
        info.upstream_protocol,
        match info.upstream_protocol {
            "auto" => " (HTTP/2 to each host that offers h2 by ALPN, else HTTP/1.1)",
            "h2" => " (HTTP/2 only)",
            _ => " (HTTP/1.1 only)",
        }
    );
    if let Some(p) = info.directory.proxy() {
        let d = &info.directory;
        let direct: Vec<&str> = (0..d.len()).filter(|id| !d.via_proxy(*id)).map(|id| d.host(id)).collect();
        let _ = writeln!(
            s,
            "egress: through proxy {} ({}; intake names resolved {}; {}){}",
            p.display,
            p.config.source,
            if p.config.resolve_locally { "here" } else { "by the proxy" },
            match p.user() {
                Some(u) => format!("user {u}"),
                None => "no credentials".into(),
            },
            if direct.is_empty() { String::new() } else { format!("; direct (no_proxy): {}", direct.join(", ")) }
        );
        let failures: Vec<String> = p.stats.failures().iter().map(|(k, v)| format!("{k} x{v}")).collect();
        let _ = writeln!(
            s,
            "proxy tunnels: {} opened, {} failed{}",
            p.stats.tunnels.load(std::sync::atomic::Ordering::Relaxed),
            p.stats.failures().iter().map(|(_, v)| v).sum::<u64>(),
            if failures.is_empty() { String::new() } else { format!(" ({})", failures.join(", ")) }
        );
    }
    let _ = writeln!(
        s,
        "listen: {}:{}-{} (the Agent's fips.port_range_start: {})",
        info.listen_address,
        info.port_range_start,
        info.port_range_start + crate::config::PORT_COUNT - 1,
        info.port_range_start
    );

    // Products, by the port the Agent sends them to.
    let mut rows = Vec::with_capacity(PRODUCTS.len());
    for p in PRODUCTS.iter() {
        let st = &m.products[p.offset as usize];
        let port = (u32::from(info.port_range_start) + u32::from(p.offset)).to_string();
        let agent = st.open_connections.to_string();
        let upstream = match &info.routes.routes[p.offset as usize] {
            ProductRoute::Forward { default, .. } => info.routes.upstreams[*default].host.clone(),
            ProductRoute::Status => "(this page)".into(),
            ProductRoute::Unconfigured { .. } => "(not configured: answers 503)".into(),
        };
        let row = if matches!(info.routes.routes[p.offset as usize], ProductRoute::Status) {
            vec![port, p.name.into(), "-".into(), "-".into(), "-".into(), "-".into(), agent, upstream]
        } else {
            let errors: u64 = st.errors.iter().sum::<u64>() + st.refused;
            vec![
                port,
                p.name.into(),
                st.total_requests().to_string(),
                errors.to_string(),
                pct(&st.latency, 0.5),
                pct(&st.latency, 0.99),
                agent,
                upstream,
            ]
        };
        rows.push(row);
    }
    s.push('\n');
    table(
        &mut s,
        &["port", "product", "requests", "errors", "p50", "p99", "agent conns", "upstream"],
        &[Align::Left, Align::Left, Align::Right, Align::Right, Align::Right, Align::Right, Align::Right, Align::Left],
        &rows,
    );

    // Upstream hosts: health, what the relay speaks to each, and its sessions
    // by protocol.
    let mut rows = Vec::with_capacity(info.directory.len());
    for id in 0..info.directory.len() {
        let r = info.directory.get(id);
        let addrs: Vec<String> =
            r.endpoints.iter().map(|e| format!("{} {}", e.addr, if e.is_up() { "UP" } else { "DOWN" })).collect();
        let mut notes = addrs.join(", ");
        if info.directory.via_proxy(id) {
            notes.push_str(match info.directory.proxy() {
                Some(p) if p.config.resolve_locally => "  via proxy",
                _ => "  via proxy (the addresses are the proxy's; it resolves the name)",
            });
        }
        if info.directory.in_panic(id) {
            notes.push_str("  PANIC MODE: no address up; one request at a time, 250 ms apart, still tries to connect");
        }
        if let Some(e) = &r.error {
            notes.push_str(&format!("  (DNS: {e})"));
        }
        let u = m.upstreams.get(id).cloned().unwrap_or_default();
        rows.push(vec![
            info.directory.host(id).to_string(),
            format!("{}/{}", r.up_count(), r.endpoints.len()),
            speaks(&u).into(),
            u.h2_connections.to_string(),
            u.h2_streams.to_string(),
            u.sessions_open.to_string(),
            u.sessions_idle.to_string(),
            notes,
        ]);
    }
    s.push('\n');
    table(
        &mut s,
        &["upstream", "up", "speaks", "h2 conns", "h2 streams", "h1 open", "h1 idle", "addresses"],
        &[Align::Left, Align::Left, Align::Left, Align::Right, Align::Right, Align::Right, Align::Right, Align::Left],
        &rows,
    );
    s.push_str(
        "\nagent conns: the Agent's open connections to the port\n\
         h2 conns:    open HTTP/2 connections to the host (each carries many requests at once)\n\
         h2 streams:  HTTP/2 streams opened since start (one per request try)\n\
         h1 open:     open HTTP/1.1 sessions (upstream.protocol = \"http1\", or a host that picked HTTP/1.1 by ALPN)\n\
         h1 idle:     of those, idle in the pool\n",
    );
    s
}

/// How a column is aligned in [`table`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Writes a table: each column as wide as its widest cell, two spaces
/// between columns; the last column is not padded (it may be long).
fn table(s: &mut String, header: &[&str], align: &[Align], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            match (align[i], i + 1 == cols) {
                (_, true) => out.push_str(cell),
                (Align::Left, false) => {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
                (Align::Right, false) => {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(cell);
                }
            }
        }
        let _ = writeln!(s, "{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// What the relay speaks to a host now: HTTP/2, HTTP/1.1 (by ALPN's choice,
/// or configured), or nothing open yet.
fn speaks(u: &crate::metrics::UpstreamStats) -> &'static str {
    match (u.h2_connections, u.h2_http1_fallback, u.sessions_open) {
        (n, _, _) if n > 0 => "h2",
        (_, f, _) if f > 0 => "http/1.1 (by ALPN)",
        (_, _, n) if n > 0 => "http/1.1",
        _ => "-",
    }
}

fn health(info: &StatusInfo, hub: &StatsHub) -> String {
    let m = &info.fips_module;
    let module = serde_json::json!({
        "name": m.full,
        "version": m.version,
        "linkage": m.linkage.name(),
        "certificate": m.status.certificate(),
        "status": m.status.name(),
        "validated": m.is_validated(),
    });
    let body = serde_json::json!({
        // "degraded": running on a module that is not validated
        // (crypto.allow_unvalidated_module).
        "status": match (info.not_ready(), m.is_validated()) {
            (Some(why), _) => why,
            (None, true) => "ok",
            (None, false) => "degraded",
        },
        "ready": info.not_ready().is_none(),
        "version": info.version,
        "commit": info.commit,
        "fips": true,
        "fips_module": module,
        "io": info.io_backend,
        "upstream_protocol": info.upstream_protocol,
        "workers": info.workers,
        "uptime_seconds": hub.started.elapsed().as_secs(),
        "proxy": info.directory.proxy().map(|p| p.display.clone()),
    });
    format!("{body}\n")
}

/// The egress proxy's series: which proxy (never credentials), which hosts
/// go through it, tunnels, CONNECT latency and failures by status.
fn proxy_metrics(s: &mut String, p: &crate::upstream::proxy::Proxy, d: &crate::upstream::Directory) {
    use crate::upstream::proxy::CONNECT_BUCKETS;
    let _ = writeln!(
        s,
        "# HELP {M_PROXY_INFO} The egress proxy (scheme, host and port; always 1).\n# TYPE {M_PROXY_INFO} gauge"
    );
    let resolve = if p.config.resolve_locally { "local" } else { "proxy" };
    let _ = writeln!(s, "{M_PROXY_INFO}{{proxy=\"{}\",resolve=\"{resolve}\"}} 1", p.display);
    let _ = writeln!(s, "# HELP {M_UPSTREAM_VIA_PROXY} 1 if the upstream host is reached through the proxy, 0 if direct (no_proxy).\n# TYPE {M_UPSTREAM_VIA_PROXY} gauge");
    for id in 0..d.len() {
        let _ = writeln!(s, "{M_UPSTREAM_VIA_PROXY}{{upstream=\"{}\"}} {}", d.host(id), u8::from(d.via_proxy(id)));
    }
    let tunnels = p.stats.tunnels.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(s, "# HELP {M_PROXY_TUNNELS} CONNECT tunnels the proxy opened (one per new intake session).\n# TYPE {M_PROXY_TUNNELS} counter");
    let _ = writeln!(s, "{M_PROXY_TUNNELS} {tunnels}");
    let _ = writeln!(s, "# HELP {M_PROXY_CONNECT} Time from the TCP connect to the proxy to its 2xx answer to CONNECT.\n# TYPE {M_PROXY_CONNECT} histogram");
    let mut cumulative = 0;
    let buckets = p.stats.buckets();
    for (b, n) in CONNECT_BUCKETS.iter().zip(&buckets) {
        cumulative += n;
        let _ = writeln!(s, "{M_PROXY_CONNECT}_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(s, "{M_PROXY_CONNECT}_bucket{{le=\"+Inf\"}} {tunnels}");
    let _ = writeln!(s, "{M_PROXY_CONNECT}_sum {}", p.stats.sum_seconds());
    let _ = writeln!(s, "{M_PROXY_CONNECT}_count {tunnels}");
    let _ = writeln!(s, "# HELP {M_PROXY_FAILURES} Tunnels that failed, by the proxy's status code or by connect, timeout, tls, closed, bad_answer.\n# TYPE {M_PROXY_FAILURES} counter");
    for (reason, n) in p.stats.failures() {
        let _ = writeln!(s, "{M_PROXY_FAILURES}{{reason=\"{reason}\"}} {n}");
    }
}

/// The process's own series, under the names Prometheus client libraries
/// use: CPU, resident memory, descriptors and their limit, start time.
fn process_metrics(s: &mut String, hub: &StatsHub) {
    use crate::procstat;
    let pid = std::process::id() as i32;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(hub.started.elapsed());
    let series: [(&str, &str, &str, Option<String>); 5] = [
        (
            M_PROCESS_CPU,
            "counter",
            "User and system CPU time, in seconds.",
            Some(format!("{}", procstat::cpu_us(pid) as f64 / 1e6)),
        ),
        (M_PROCESS_RSS, "gauge", "Resident memory, in bytes.", Some((procstat::rss_kib(pid) * 1024).to_string())),
        (M_PROCESS_OPEN_FDS, "gauge", "Open file descriptors.", procstat::open_fds(pid).map(|n| n.to_string())),
        (
            M_PROCESS_MAX_FDS,
            "gauge",
            "The limit on open file descriptors (RLIMIT_NOFILE, soft).",
            Some(procstat::max_fds().to_string()),
        ),
        (
            M_PROCESS_START,
            "gauge",
            "When the relay started, in seconds since the Unix epoch.",
            Some(started.as_secs().to_string()),
        ),
    ];
    // An fd count the process may not read is left out rather than shown as 0.
    for (name, kind, help, value) in series.into_iter().filter_map(|(n, k, h, v)| Some((n, k, h, v?))) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Status classes of the answers counted. No 1xx: interim answers are
/// passed on, not counted, and a 101 is a fault (counted 502).
const CLASSES: [(usize, &str); 4] = [(1, "2xx"), (2, "3xx"), (3, "4xx"), (4, "5xx")];

/// Prometheus text for `/metrics`, kept lean (docs/operations.md, "Which
/// series appear"): a series that cannot change in this configuration is
/// never written (class 1xx, HTTP/2 series under `protocol = "http1"`), a
/// product's series appear with its first request, an error cause's with
/// its first count, and an upstream's session series once a product it
/// serves has had a request. Health, panic and process series are always
/// there.
fn prometheus(info: &StatusInfo, hub: &StatsHub) -> String {
    let m = hub.merged();
    let mut s = String::with_capacity(16 * 1024);
    // Ports that have had a request, an error or a refusal (the status port
    // is never one: its series are the process's own).
    let active: Vec<bool> = PRODUCTS
        .iter()
        .map(|p| {
            let st = &m.products[p.offset as usize];
            p.offset != crate::route::STATUS_OFFSET
                && (st.total_requests() > 0 || st.refused > 0 || st.errors.iter().any(|&n| n > 0))
        })
        .collect();
    let shown = || PRODUCTS.iter().filter(|p| active[p.offset as usize]);
    // Upstreams that serve an active product (the metrics port's validate
    // and flare hosts count with it).
    let mut used = vec![false; info.routes.upstreams.len()];
    for (route, _) in info.routes.routes.iter().zip(&active).filter(|(_, a)| **a) {
        if let ProductRoute::Forward { default, validate, flare } = route {
            for id in [Some(*default), *validate, *flare].into_iter().flatten() {
                used[id] = true;
            }
        }
    }

    let _ = writeln!(s, "# HELP {M_UPTIME} Seconds since the relay started.\n# TYPE {M_UPTIME} gauge");
    let _ = writeln!(s, "{M_UPTIME} {}", hub.started.elapsed().as_secs());
    let _ = writeln!(
        s,
        "# HELP {M_BUILD_INFO} This relay: its version, I/O backend and upstream.protocol (always 1).\n# TYPE {M_BUILD_INFO} gauge"
    );
    let _ = writeln!(
        s,
        "{M_BUILD_INFO}{{relay_version=\"{}\",io=\"{}\",protocol=\"{}\"}} 1",
        info.version, info.io_backend, info.upstream_protocol
    );

    let fm = &info.fips_module;
    // `module_version`, not `version`: Datadog keeps `version` (with `env`,
    // `service`, `host`) for its unified service tagging.
    let _ = writeln!(
        s,
        "# HELP {M_FIPS_MODULE} The linked FIPS module: version, CMVP certificate and status (always 1).\n# TYPE {M_FIPS_MODULE} gauge"
    );
    let _ = writeln!(
        s,
        "{M_FIPS_MODULE}{{module_version=\"{}\",certificate=\"{}\",status=\"{}\",linkage=\"{}\"}} 1",
        fm.version,
        fm.certificate_label(),
        fm.status.name(),
        fm.linkage.name()
    );
    process_metrics(&mut s, hub);

    let _ = writeln!(
        s,
        "# HELP {M_REQUESTS} Answers sent to the Agent, by product and status class.\n# TYPE {M_REQUESTS} counter"
    );
    for p in shown() {
        let st = &m.products[p.offset as usize];
        for (i, c) in CLASSES {
            let _ = writeln!(s, "{M_REQUESTS}{{product=\"{}\",class=\"{}\"}} {}", p.name, c, st.requests[i]);
        }
    }
    for (name, help, get) in [
        (
            M_BYTES_IN,
            "Request body bytes received from the Agent.",
            (|p: &ProductStats| p.bytes_in) as fn(&ProductStats) -> u64,
        ),
        (M_BYTES_OUT, "Answer body bytes sent to the Agent.", |p: &ProductStats| p.bytes_out),
        (
            M_BYTES_COPIED,
            "Body bytes, either way, copied in user space (not read straight into a TLS record buffer or written from the one they were opened in).",
            |p: &ProductStats| p.bytes_copied,
        ),
        (M_POOL_HITS, "Requests sent on a pooled upstream session.", |p: &ProductStats| p.pool_hits),
        (M_POOL_MISSES, "Requests that needed a new upstream session.", |p: &ProductStats| p.pool_misses),
        (M_REFUSED, "Malformed or oversized requests refused with 4xx.", |p: &ProductStats| p.refused),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in shown() {
            let _ = writeln!(s, "{name}{{product=\"{}\"}} {}", p.name, get(&m.products[p.offset as usize]));
        }
    }
    let _ = writeln!(s, "# HELP {M_UPSTREAM_ERRORS} Upstream faults answered 502/503/504, by cause (a cause appears with its first count).\n# TYPE {M_UPSTREAM_ERRORS} counter");
    for p in shown() {
        let st = &m.products[p.offset as usize];
        for c in Cause::ALL.into_iter().filter(|c| st.error(*c) > 0) {
            let _ =
                writeln!(s, "{M_UPSTREAM_ERRORS}{{product=\"{}\",cause=\"{}\"}} {}", p.name, c.label(), st.error(c));
        }
    }
    let _ =
        writeln!(s, "# HELP {M_OPEN_CONNECTIONS} Open connections from the Agent.\n# TYPE {M_OPEN_CONNECTIONS} gauge");
    for p in PRODUCTS.iter() {
        let open = m.products[p.offset as usize].open_connections;
        if p.offset == crate::route::STATUS_OFFSET || active[p.offset as usize] || open != 0 {
            let _ = writeln!(s, "{M_OPEN_CONNECTIONS}{{product=\"{}\"}} {open}", p.name);
        }
    }
    // HTTP/2 series where HTTP/2 can be spoken; the ALPN fallback only
    // where ALPN offers both.
    let h2 = info.upstream_protocol != "http1";
    let auto = info.upstream_protocol == "auto";
    type Gauge = fn(&crate::metrics::UpstreamStats) -> i64;
    let gauges: [(&str, &str, bool, Gauge); 4] = [
        (M_UPSTREAM_SESSIONS_OPEN, "Open HTTP/1.1 TLS sessions to the upstream host.", true, |u| u.sessions_open),
        (M_UPSTREAM_SESSIONS_IDLE, "Idle pooled HTTP/1.1 TLS sessions to the upstream host.", true, |u| u.sessions_idle),
        (M_UPSTREAM_H2_CONNECTIONS, "Open HTTP/2 connections (TLS sessions) to the upstream host.", h2, |u| {
            u.h2_connections
        }),
        (
            M_UPSTREAM_H2_FALLBACK,
            "Workers that speak HTTP/1.1 to the upstream host because it picked HTTP/1.1 by ALPN (upstream.protocol = auto).",
            auto,
            |u| u.h2_http1_fallback,
        ),
    ];
    for (name, help, _, get) in gauges.into_iter().filter(|g| g.2) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, u) in info.routes.upstreams.iter().enumerate().filter(|(i, _)| used[*i]) {
            let _ = writeln!(s, "{name}{{upstream=\"{}\"}} {}", u.host, get(&m.upstreams[i]));
        }
    }
    type Counter = fn(&crate::metrics::UpstreamStats) -> u64;
    let counters: [(&str, &str, Counter); 6] = [
        (
            M_UPSTREAM_H2_WRITES,
            "TLS writes on HTTP/2 connections to the upstream host (each carries every frame queued since the last).",
            |u| u.h2_writes,
        ),
        (M_UPSTREAM_H2_FRAMES, "HTTP/2 frames written to the upstream host.", |u| u.h2_frames),
        (M_UPSTREAM_H2_STREAMS, "HTTP/2 streams opened to the upstream host (one per request try).", |u| u.h2_streams),
        (
            M_UPSTREAM_H2_REPLAYS,
            "Requests sent again because the upstream host refused them unprocessed (GOAWAY, REFUSED_STREAM).",
            |u| u.h2_replays,
        ),
        (M_UPSTREAM_H2_PINGS, "Liveness PINGs sent on HTTP/2 connections to the upstream host.", |u| u.h2_pings),
        (
            M_UPSTREAM_H2_WINDOW_DETOURS,
            "Request bodies longer than the upstream host's HTTP/2 flow-control window sent over an HTTP/1.1 session instead.",
            |u| u.h2_window_detours,
        ),
    ];
    for (name, help, get) in counters.into_iter().filter(|_| h2) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, u) in info.routes.upstreams.iter().enumerate().filter(|(i, _)| used[*i]) {
            let _ = writeln!(s, "{name}{{upstream=\"{}\"}} {}", u.host, get(&m.upstreams[i]));
        }
    }
    let _ = writeln!(
        s,
        "# HELP {M_UPSTREAM_ADDRESS_UP} 1 if the upstream address passes its health checks.\n# TYPE {M_UPSTREAM_ADDRESS_UP} gauge"
    );
    for id in 0..info.directory.len() {
        for e in info.directory.get(id).endpoints.iter() {
            let host = info.directory.host(id);
            let _ = writeln!(
                s,
                "{M_UPSTREAM_ADDRESS_UP}{{upstream=\"{host}\",address=\"{}\"}} {}",
                e.addr,
                u8::from(e.is_up())
            );
        }
    }
    let _ = writeln!(
        s,
        "# HELP {M_UPSTREAM_TRANSITIONS} Times the upstream address went down or came back up.\n# TYPE {M_UPSTREAM_TRANSITIONS} counter"
    );
    for id in 0..info.directory.len() {
        for e in info.directory.get(id).endpoints.iter() {
            let host = info.directory.host(id);
            for (to, n) in [("down", &e.downs), ("up", &e.ups)] {
                let n = n.load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(
                    s,
                    "{M_UPSTREAM_TRANSITIONS}{{upstream=\"{host}\",address=\"{}\",to=\"{to}\"}} {n}",
                    e.addr
                );
            }
        }
    }
    let d = &info.directory;
    type HostValue<'a> = &'a dyn Fn(usize) -> u64;
    let per_host: [(&str, &str, &str, HostValue); 4] = [
        (
            M_UPSTREAM_ADDRESSES_UP,
            "Addresses of the upstream host that pass their health checks (the per-address series summed, without the address label).",
            "gauge",
            &|id| d.get(id).up_count() as u64,
        ),
        (M_UPSTREAM_ADDRESSES, "Addresses the upstream host resolves to now.", "gauge", &|id| {
            d.get(id).endpoints.len() as u64
        }),
        (
            M_UPSTREAM_PANIC,
            "1 while the upstream host has addresses but none up (panic mode: one request at a time, 250 ms apart, still tries to connect).",
            "gauge",
            &|id| u64::from(d.in_panic(id)),
        ),
        (
            M_UPSTREAM_PANIC_PROBES,
            "Requests that tried a down address because the host had none up.",
            "counter",
            &|id| d.panic_probes(id),
        ),
    ];
    for (name, help, kind, value) in per_host {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for id in 0..d.len() {
            let _ = writeln!(s, "{name}{{upstream=\"{}\"}} {}", d.host(id), value(id));
        }
    }
    if let Some(p) = d.proxy() {
        proxy_metrics(&mut s, p, d);
    }
    let _ = writeln!(
        s,
        "# HELP {M_LATENCY} Time from a complete request head to a complete answer.\n# TYPE {M_LATENCY} histogram"
    );
    for p in shown() {
        let h = &m.products[p.offset as usize].latency;
        for b in BUCKETS {
            let le_us = (b * 1e6) as u64;
            let count = if h.is_empty() { 0 } else { h.count_between(0, le_us) };
            let _ = writeln!(s, "{M_LATENCY}_bucket{{product=\"{}\",le=\"{}\"}} {}", p.name, b, count);
        }
        let _ = writeln!(s, "{M_LATENCY}_bucket{{product=\"{}\",le=\"+Inf\"}} {}", p.name, h.len());
        let sum: f64 =
            h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() / 1e6;
        let _ = writeln!(s, "{M_LATENCY}_sum{{product=\"{}\"}} {}", p.name, sum);
        let _ = writeln!(s, "{M_LATENCY}_count{{product=\"{}\"}} {}", p.name, h.len());
    }
    s
}
