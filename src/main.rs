//! The `fipsrelay` command: `run` (default), `check-config`, `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fipsrelay::config::{self, Config, Source, UpstreamProtocol, ENV_OVERRIDES, PORT_COUNT};
use fipsrelay::route::{ProductRoute, RouteTable, PRODUCTS};
use fipsrelay::{crypto, logging, server, tuning};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fipsrelay", version, about = "FIPS TLS forwarder for the Datadog Agent (US1-FED)")]
struct Cli {
    /// Config file (TOML). Default: /etc/fipsrelay/fipsrelay.toml when it exists, else built-in defaults.
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the config and print the effective settings and port table.
    CheckConfig,
    /// Print the version, the FIPS module, the TLS offer and the I/O backends.
    Version,
    /// Demo on an embedded default: mock intake + this relay + a verified loadgen run.
    Demo {
        /// How long the load runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent Agent-like connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The mock-intake binary (default: beside fipsrelay).
        #[arg(long, value_name = "PATH")]
        mock_intake: Option<PathBuf>,
        /// The loadgen binary (default: beside fipsrelay).
        #[arg(long, value_name = "PATH")]
        loadgen: Option<PathBuf>,
        /// Keep the demo's files (PKI, config, logs) for a look afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Check every upstream through the relay's own stack: resolve, connect,
    /// FIPS TLS handshake, one request. Exit 0 when all pass, 1 otherwise.
    Diagnose {
        /// Send GET /api/v1/validate with this key to the API host (never printed).
        #[arg(long, value_name = "KEY", env = "DD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Host tuning for high volume (read-only checks).
    #[command(subcommand)]
    Tuning(TuningCommand),
    /// Health probe for images without a shell (ECS healthCheck, Docker
    /// HEALTHCHECK): GET the status port's /health (readiness) or
    /// /health/live; exit 0 on 200, 1 otherwise. The port comes from the
    /// config and DD_FIPS_PORT_RANGE_START, as for `run`.
    Probe {
        /// `ready` (/health) or `live` (/health/live).
        #[arg(long, default_value = "ready", value_parser = ["ready", "live"])]
        check: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum TuningCommand {
    /// Compare this host with a tuning profile; print each difference with its fix.
    /// Exit 0 when nothing differs, 1 otherwise.
    Check {
        /// One of: throughput (default), latency, many-connections.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Also print the settings that already match.
        #[arg(long, short)]
        verbose: bool,
    },
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<(Config, Source)> {
    Ok(config::load(path, &|k| std::env::var(k).ok())?)
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: with them the allocator's
    // first arenas alone cost ~9 MB of resident memory at idle (measured).
    // Done first, before the allocator maps much; mimalloc is also built with
    // `no_thp` so it never asks for them itself.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Some(Command::CheckConfig | Command::Version | Command::Tuning(_) | Command::Diagnose { .. })
    ) {
        // Printing commands end quietly when their reader goes away (`| head`).
        // `run` keeps Rust's SIGPIPE = ignore: a closed socket must be an error, not a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::CheckConfig => check_config(cli.config),
        Command::Version => version(),
        Command::Demo { seconds, connections, mock_intake, loadgen, keep } => {
            let opts = fipsrelay::demo::DemoOptions {
                seconds: seconds.clamp(1, 3600),
                connections,
                mock_intake,
                loadgen,
                keep,
            };
            fipsrelay::demo::run(&opts).map_err(anyhow::Error::from)
        }
        Command::Diagnose { api_key } => {
            return match diagnose(cli.config, api_key) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("{}", logging::scrub(&format!("fipsrelay: error: {}", error_text(&e))));
                    ExitCode::from(2)
                }
            };
        }
        Command::Probe { check, timeout } => {
            return match probe(cli.config, &check, std::time::Duration::from_secs(timeout.clamp(1, 60))) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fipsrelay probe: {}", error_text(&e));
                    ExitCode::from(1)
                }
            };
        }
        Command::Tuning(TuningCommand::Check { profile, verbose }) => {
            return match tuning_check(cli.config, profile, verbose) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("fipsrelay: error: {}", error_text(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", logging::scrub(&format!("fipsrelay: error: {}", error_text(&e))));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: most of our errors already
/// quote their cause in their own message.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    // A SIGHUP (reload) that comes before the control loop installs its
    // handler must not kill the relay with the default action.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let (config, source) = load(path.as_deref())?;
    logging::init(&config.log_level, config.log_format);
    server::run(config, source)?;
    Ok(())
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, source) = load(path.as_deref())?;
    println!("# config: OK ({source})");
    for (var, key) in ENV_OVERRIDES {
        if let Ok(v) = std::env::var(var) {
            let generic = matches!(*var, "HTTPS_PROXY" | "NO_PROXY");
            if generic && !config.raw.upstream.proxy.use_env {
                println!("# {var} is set and ignored: upstream.proxy.use_env = false");
            } else {
                println!("# {key} overridden by {var}={v}");
            }
        }
    }
    println!("{}", toml::to_string(&config.raw).context("rendering the config")?);
    let routes = RouteTable::new(&config);
    println!("# port   product                      upstream host");
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
        println!("# {port:<6} {:<28} {host}", p.name);
    }
    let protocol = match config.protocol {
        UpstreamProtocol::Http1 => "HTTP/1.1 (upstream.protocol = \"http1\"; no ALPN offered)".to_string(),
        UpstreamProtocol::H2 => format!(
            "HTTP/2 only (ALPN h2; an intake without it is refused), up to {} connections per worker and host",
            config.h2_max_connections
        ),
        UpstreamProtocol::Auto => format!(
            "ALPN h2, http/1.1: what each intake host picks; up to {} HTTP/2 connections per worker and host",
            config.h2_max_connections
        ),
    };
    println!("# upstream protocol: {protocol}");
    if !config.override_addrs.is_empty() {
        let list: Vec<String> = config.override_addrs.iter().map(|a| a.to_string()).collect();
        println!("# every upstream connection goes to {} (upstream.override_addr)", list.join(", "));
    }
    if let Some(p) = &config.proxy {
        let resolve = if p.resolve_locally { "resolved here, CONNECT to the address" } else { "resolved by the proxy" };
        println!("# egress: through proxy {} (from {}); intake names {resolve}", p.display(), p.source);
        match &p.credentials_file {
            Some(f) => println!("# proxy credentials: {} (Proxy-Authorization: Basic)", f.display()),
            None => println!("# proxy credentials: none"),
        }
        for u in &routes.upstreams {
            let how = if p.applies_to(&u.host) {
                format!("CONNECT {}:{}", u.host, config.upstream_port)
            } else {
                "direct (upstream.proxy.no_proxy)".to_string()
            };
            println!("#   {:<40} {how}", u.host);
        }
    }
    Ok(())
}

fn tuning_check(path: Option<PathBuf>, profile: Option<String>, verbose: bool) -> anyhow::Result<u8> {
    // The worker count comes from the config when one is readable; 0 = one per CPU.
    let workers = load(path.as_deref()).map(|(c, _)| c.threads).unwrap_or(0);
    let name = profile.as_deref().unwrap_or(tuning::DEFAULT_PROFILE);
    let report = tuning::check(name, &tuning::Host::current(), workers)?;
    let text = if verbose { format!("{report:#}") } else { format!("{report}") };
    println!("{}", text.trim_end());
    Ok(report.exit_code())
}

fn diagnose(path: Option<PathBuf>, api_key: Option<String>) -> anyhow::Result<bool> {
    let (config, source) = load(path.as_deref())?;
    println!("# diagnose: site {} ({source}), FIPS module {}", config.site, crypto::module_description());
    let checks = fipsrelay::diagnose::run(&config, api_key.as_deref())?;
    print!("{}", logging::scrub(&fipsrelay::diagnose::render(&checks)));
    Ok(checks.iter().all(|c| c.ok))
}

/// `probe`: one GET on the status port, bounded by `timeout` as a whole.
fn probe(path: Option<PathBuf>, check: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let (config, _) = load(path.as_deref())?;
    let addr = std::net::SocketAddr::new(config.listen_address, config.port(0));
    let target = if check == "live" { "/health/live" } else { "/health" };
    let deadline = std::time::Instant::now() + timeout;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(
        deadline.saturating_duration_since(std::time::Instant::now()).max(std::time::Duration::from_millis(1)),
    ))?;
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::with_capacity(4096);
    s.take(64 * 1024).read_to_end(&mut answer).with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(format!("{addr}{target}: {status}"))
    } else {
        anyhow::bail!("{addr}{target}: {} {body}", if status.is_empty() { "no answer" } else { status.as_str() })
    }
}

fn version() -> anyhow::Result<()> {
    println!("fipsrelay {}", server::VERSION);
    match crypto::assert_fips_module() {
        Ok(()) => println!("fips: enabled ({})", crypto::module_description()),
        Err(e) => println!("fips: NOT enabled ({e})"),
    }
    for line in crypto::offer_description() {
        println!("{line}");
    }
    match fipsrelay::io::probe_uring() {
        Ok(()) => println!("io_uring: usable"),
        Err(e) => println!("io_uring: unavailable ({e}); the relay will use epoll"),
    }
    println!("cpus allowed: {}", server::allowed_cpus().len());
    Ok(())
}
