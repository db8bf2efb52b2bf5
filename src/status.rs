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
    /// The linked FIPS module and its CMVP status (`crypto::MODULE_TABLE`).
    pub fips_module: crate::crypto::FipsModule,
    pub io_backend: &'static str,
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
    let _ = writeln!(s, "fipsrelay {}", info.version);
    let _ = writeln!(s, "uptime: {}s", hub.started.elapsed().as_secs());
    let _ = writeln!(s, "fips: enabled ({})", info.fips_module);
    let _ = writeln!(s, "io: {} ({} workers)", info.io_backend, info.workers);
    let _ = writeln!(s, "upstream protocol: {}", info.upstream_protocol);
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
        "\n{:<28} {:>10} {:>8} {:>9} {:>9} {:>6} {:>6}  upstream",
        "product", "requests", "errors", "p50", "p99", "open", "idle"
    );
    for p in PRODUCTS.iter() {
        let st = &m.products[p.offset as usize];
        let (open, idle, host) = match &info.routes.routes[p.offset as usize] {
            ProductRoute::Forward { default, .. } => {
                let u = &m.upstreams[*default];
                (u.sessions_open.to_string(), u.sessions_idle.to_string(), info.routes.upstreams[*default].host.clone())
            }
            ProductRoute::Status => ("-".into(), "-".into(), "(this page)".into()),
            ProductRoute::Unconfigured { .. } => ("-".into(), "-".into(), "(not configured)".into()),
        };
        let errors: u64 = st.errors.iter().sum::<u64>() + st.refused;
        let _ = writeln!(
            s,
            "{:<28} {:>10} {:>8} {:>9} {:>9} {:>6} {:>6}  {}",
            format!("{} ({})", p.name, p.offset),
            st.total_requests(),
            errors,
            pct(&st.latency, 0.5),
            pct(&st.latency, 0.99),
            open,
            idle,
            host
        );
    }
    let _ = writeln!(s, "\n{:<40} {:<6} {:<18} addresses", "upstream", "up", "speaks");
    for id in 0..info.directory.len() {
        let r = info.directory.get(id);
        let addrs: Vec<String> =
            r.endpoints.iter().map(|e| format!("{} {}", e.addr, if e.is_up() { "UP" } else { "DOWN" })).collect();
        let mut line = format!(
            "{:<40} {:<6} {:<18} {}",
            info.directory.host(id),
            format!("{}/{}", r.up_count(), r.endpoints.len()),
            m.upstreams.get(id).map(speaks).unwrap_or_default(),
            addrs.join(", ")
        );
        if info.directory.via_proxy(id) {
            line.push_str(match info.directory.proxy() {
                Some(p) if p.config.resolve_locally => "  via proxy",
                _ => "  via proxy (the addresses are the proxy's; it resolves the name)",
            });
        }
        if info.directory.in_panic(id) {
            line.push_str("  PANIC MODE: no address up; one request at a time, 250 ms apart, still tries to connect");
        }
        if let Some(e) = &r.error {
            line.push_str(&format!("  (DNS: {e})"));
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

/// What the relay speaks to a host now: HTTP/2 connections, HTTP/1.1 (by
/// ALPN's choice, or configured), or nothing open yet.
fn speaks(u: &crate::metrics::UpstreamStats) -> String {
    match (u.h2_connections, u.h2_http1_fallback, u.sessions_open) {
        (n, _, _) if n > 0 => format!("h2 ({n} conn)"),
        (_, f, _) if f > 0 => "http/1.1 (by ALPN)".into(),
        (_, _, n) if n > 0 => "http/1.1".into(),
        _ => "-".into(),
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

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn prometheus(info: &StatusInfo, hub: &StatsHub) -> String {
    let m = hub.merged();
    let mut s = String::with_capacity(16 * 1024);
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let forwarded = || PRODUCTS.iter().filter(|p| p.prefix.is_some() || p.offset == crate::route::APPSEC_OFFSET);

    let _ = writeln!(s, "# HELP {M_UPTIME} Seconds since the relay started.\n# TYPE {M_UPTIME} gauge");
    let _ = writeln!(s, "{M_UPTIME} {}", hub.started.elapsed().as_secs());

    let fm = &info.fips_module;
    let _ = writeln!(
        s,
        "# HELP {M_FIPS_MODULE} The linked FIPS module: version, CMVP certificate and status (always 1).\n# TYPE {M_FIPS_MODULE} gauge"
    );
    let _ = writeln!(
        s,
        "{M_FIPS_MODULE}{{version=\"{}\",certificate=\"{}\",status=\"{}\",linkage=\"{}\"}} 1",
        fm.version,
        fm.certificate_label(),
        fm.status.name(),
        fm.linkage.name()
    );

    let _ = writeln!(
        s,
        "# HELP {M_REQUESTS} Answers sent to the Agent, by product and status class.\n# TYPE {M_REQUESTS} counter"
    );
    for p in forwarded() {
        let st = &m.products[p.offset as usize];
        for (i, c) in classes.iter().enumerate() {
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
        for p in forwarded() {
            let _ = writeln!(s, "{name}{{product=\"{}\"}} {}", p.name, get(&m.products[p.offset as usize]));
        }
    }
    let _ = writeln!(s, "# HELP {M_UPSTREAM_ERRORS} Upstream faults answered 502/503/504, by cause.\n# TYPE {M_UPSTREAM_ERRORS} counter");
    for p in forwarded() {
        let st = &m.products[p.offset as usize];
        for c in Cause::ALL {
            let _ =
                writeln!(s, "{M_UPSTREAM_ERRORS}{{product=\"{}\",cause=\"{}\"}} {}", p.name, c.label(), st.error(c));
        }
    }
    let _ =
        writeln!(s, "# HELP {M_OPEN_CONNECTIONS} Open connections from the Agent.\n# TYPE {M_OPEN_CONNECTIONS} gauge");
    for p in PRODUCTS.iter() {
        let _ = writeln!(
            s,
            "{M_OPEN_CONNECTIONS}{{product=\"{}\"}} {}",
            p.name, m.products[p.offset as usize].open_connections
        );
    }
    for (name, help, get) in [
        (
            M_UPSTREAM_SESSIONS_OPEN,
            "Open HTTP/1.1 TLS sessions to the upstream host.",
            (|u: &crate::metrics::UpstreamStats| u.sessions_open) as fn(&crate::metrics::UpstreamStats) -> i64,
        ),
        (M_UPSTREAM_SESSIONS_IDLE, "Idle pooled HTTP/1.1 TLS sessions to the upstream host.", |u| u.sessions_idle),
        (M_UPSTREAM_H2_CONNECTIONS, "Open HTTP/2 connections (TLS sessions) to the upstream host.", |u| {
            u.h2_connections
        }),
        (
            M_UPSTREAM_H2_FALLBACK,
            "Workers that speak HTTP/1.1 to the upstream host because it picked HTTP/1.1 by ALPN (upstream.protocol = auto).",
            |u| u.h2_http1_fallback,
        ),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, u) in info.routes.upstreams.iter().enumerate() {
            let v = get(&m.upstreams[i]);
            let _ = writeln!(s, "{name}{{upstream=\"{}\"}} {}", u.host, v);
        }
    }
    for (name, help, get) in [
        (
            M_UPSTREAM_H2_WRITES,
            "TLS writes on HTTP/2 connections to the upstream host (each carries every frame queued since the last).",
            (|u: &crate::metrics::UpstreamStats| u.h2_writes) as fn(&crate::metrics::UpstreamStats) -> u64,
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
    ] {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, u) in info.routes.upstreams.iter().enumerate() {
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
    let per_host: [(&str, &str, &str, HostValue); 2] = [
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
    for p in forwarded() {
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
