//! `fipsrelay check-config`: the effective config after the file and the
//! environment overrides, which overrides applied, the port table with each
//! product's upstream host, the upstream protocol, and the egress path.
//!
//! It prints a config that `control::preflight` (run by `main` first)
//! already admitted: the files the config names were read there. It must
//! never open a socket, create a file, or start anything.

use std::fmt::Write as _;

use crate::config::{Config, Source, UpstreamProtocol, ENV_OVERRIDES, PORT_COUNT};
use crate::route::{ProductRoute, RouteTable, PRODUCTS};

#[derive(Debug, thiserror::Error)]
pub enum CheckConfigError {
    #[error("rendering the config")]
    Render(#[from] toml::ser::Error),
}

/// Prints the report on stdout; `env` reads an environment variable.
pub fn print(config: &Config, source: &Source, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CheckConfigError> {
    println!("# config: OK ({source})");
    println!("# start checks passed: trust store, FIPS module, run.user, I/O backend, admin token file, proxy");
    for (var, key) in ENV_OVERRIDES {
        if let Some(v) = env(var) {
            let generic = matches!(*var, "HTTPS_PROXY" | "NO_PROXY");
            if generic && !config.raw.upstream.proxy.use_env {
                println!("# {var} is set and ignored: upstream.proxy.use_env = false");
            } else {
                println!("# {key} overridden by {var}={v}");
            }
        }
    }
    println!("{}", toml::to_string(&config.raw)?);
    let routes = RouteTable::new(config);
    print!("{}", port_table(config, &routes));
    println!("# upstream protocol: {}", protocol(config));
    if !config.override_addrs.is_empty() {
        let list: Vec<String> = config.override_addrs.iter().map(|a| a.to_string()).collect();
        println!("# every upstream connection goes to {} (upstream.override_addr)", list.join(", "));
    }
    print!("{}", egress(config, &routes));
    Ok(())
}

/// One line per port: the product and where it goes.
fn port_table(config: &Config, routes: &RouteTable) -> String {
    let mut s = String::from("# port   product                      upstream host\n");
    for p in PRODUCTS.iter().take(PORT_COUNT as usize) {
        let port = config.port(p.offset);
        let host = match &routes.routes[p.offset as usize] {
            ProductRoute::Status => "(status page, served locally)".to_string(),
            ProductRoute::Unconfigured { reason } => format!("(503: {reason})"),
            ProductRoute::Forward { default, validate, flare } => {
                let mut h = routes.upstreams[*default].host.clone();
                if let Some(v) = validate {
                    h.push_str(&format!("; /api/v1/validate -> {}", routes.upstreams[*v].host));
                }
                if let Some(f) = flare {
                    h.push_str(&format!("; /support/flare -> {}", routes.upstreams[*f].host));
                }
                h
            }
        };
        let _ = writeln!(s, "# {port:<6} {:<28} {host}", p.name);
    }
    s
}

/// What `upstream.protocol` means for the connections to the intake.
fn protocol(config: &Config) -> String {
    match config.protocol {
        UpstreamProtocol::Http1 => "HTTP/1.1 (upstream.protocol = \"http1\"; no ALPN offered)".to_string(),
        UpstreamProtocol::H2 => format!(
            "HTTP/2 only (ALPN h2; an intake without it is refused), up to {} connections per worker and host",
            config.h2_max_connections
        ),
        UpstreamProtocol::Auto => format!(
            "ALPN h2, http/1.1: what each intake host picks; up to {} HTTP/2 connections per worker and host",
            config.h2_max_connections
        ),
    }
}

/// With an egress proxy: the proxy, its credentials, and each host's path.
fn egress(config: &Config, routes: &RouteTable) -> String {
    let mut s = String::new();
    let Some(p) = &config.proxy else { return s };
    let resolve = if p.resolve_locally { "resolved here, CONNECT to the address" } else { "resolved by the proxy" };
    let _ = writeln!(s, "# egress: through proxy {} (from {}); intake names {resolve}", p.display(), p.source);
    let _ = match &p.credentials_file {
        Some(f) => writeln!(s, "# proxy credentials: {} (Proxy-Authorization: Basic)", f.display()),
        None => writeln!(s, "# proxy credentials: none"),
    };
    for u in &routes.upstreams {
        let how = if p.applies_to(&u.host) {
            format!("CONNECT {}:{}", u.host, config.upstream_port)
        } else {
            "direct (upstream.proxy.no_proxy)".to_string()
        };
        let _ = writeln!(s, "#   {:<40} {how}", u.host);
    }
    s
}
