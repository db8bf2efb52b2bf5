//! `loadgen`: a load generator for plaintext HTTP/1.1 forwarders such as
//! fipsrelay — Agent-shaped POSTs, closed loop or open loop at a fixed rate
//! (latency from the intended send time), HDR latency percentiles, optional
//! body-by-body verification against the mock intake. Prints a summary on
//! stdout (and `--json FILE`), a progress line on stderr when it is a
//! terminal. Loads only loopback addresses unless `--allow-remote`; every
//! run is bounded by `--duration` (at most 1h) and `--requests`.
//!
//! Exit status: 0 done, 1 could not run, 3 `--verify` found a mismatch.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use loadgen::duration::parse_duration;
use loadgen::load::{self, BodySize, Compression, LoadOptions, PayloadKind, Target, VerifyOptions};

/// Exit status when `--verify` finds lost, duplicated or corrupted bodies.
const EXIT_MISMATCH: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for plaintext HTTP/1.1 forwarders (fipsrelay): Agent-shaped payloads, \
             closed or open loop, HDR latencies, body verification against the mock intake",
    after_help = "Examples:\n  \
        loadgen --ports 9804 --duration 10s\n  \
        loadgen --target http://127.0.0.1:9804/api/v2/series --rate 5000 --connections 64 --threads 2 --pin\n  \
        loadgen --ports 9804,9808 --payload logs --body-size 1k-64k --compress zstd --json out.json\n  \
        loadgen --ports 9804,9805,9808,9815 --connections 8 --rate 250 --payload raw --sizes log-uniform:512..1m\n  \
        loadgen --ports 9804 --requests 10000 --verify https://127.0.0.1:18443 --tls-dir /tmp/pki"
)]
struct Args {
    /// Target URL, http://host:port/path; repeat for several (connections
    /// are spread over them round-robin).
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,
    /// fipsrelay ports to load, comma-separated, each with the Agent's
    /// usual path (9804 /api/v2/series, 9805 /api/v0.2/traces, 9808
    /// /api/v2/logs, ...).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    ports: Vec<u16>,
    /// Host for --ports.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Accept targets that are not loopback addresses.
    #[arg(long)]
    allow_remote: bool,
    /// Concurrent connections, in all.
    #[arg(long, short = 'c', default_value_t = load::DEFAULT_CONNECTIONS)]
    connections: usize,
    /// Threads, each with its own single-threaded runtime.
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Pin thread i to core i.
    #[arg(long)]
    pin: bool,
    /// Measured time (after --warmup), e.g. 10s, 2m, 1h; at most 1h.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_long_duration)]
    duration: Duration,
    /// Time before measuring starts; its requests are not recorded.
    #[arg(long, default_value = "0", value_parser = parse_long_duration)]
    warmup: Duration,
    /// Stop after this many measured requests.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_long_duration)]
    timeout: Duration,
    /// Open loop at this many requests per second in all (latency counted
    /// from each request's intended send time; each request waits on a
    /// timerfd and leaves within µs of it); closed loop without it. The
    /// report adds the client's own send lag (p50/p99/max) and warns when
    /// it is large enough to distort the latency figures.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Open loop: busy-wait (yielding) this long before each send instead of
    /// sleeping through it, e.g. 100us; for a client with a CPU of its own
    /// (it keeps that CPU busy). Removes the idle wake-up from the send lag.
    #[arg(long, default_value = "0", value_parser = parse_long_duration)]
    spin: Duration,
    /// Open loop: release each request at the next multiple of this after its
    /// scheduled time, as a timer wheel with this tick does (tokio's: 1ms),
    /// and measure from that release. Bunches sends; for comparing with tools
    /// that pace that way (oha). Default: send at the scheduled time.
    #[arg(long, default_value = "0", value_parser = parse_long_duration)]
    quantum: Duration,
    /// series | logs | traces | raw
    #[arg(long, default_value = "series")]
    payload: PayloadKind,
    /// Uncompressed body size: fixed (1k, 512, 2m, fixed:1m), a uniform
    /// range (1k-64k, uniform:1k..64k) or a log-uniform one
    /// (log-uniform:512..1m: each decade of sizes equally likely, as the
    /// Agent's payloads; with --payload raw every request draws its own
    /// size, JSON kinds pick among 64 templates spaced so). At most 32m.
    #[arg(long, visible_alias = "sizes", default_value = "1k", value_name = "SIZES")]
    body_size: BodySize,
    /// Seed of the body sizes (and template choice): the same seed,
    /// --connections and --sizes send the same sequence of sizes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// none | deflate | zstd (sets Content-Encoding).
    #[arg(long, default_value = "none")]
    compress: Compression,
    /// Mock intake to verify against, https://host:port: it is reset
    /// before the run and every body answered 2xx must be there once. No
    /// limit on the run's length: both sides keep fixed-size digests, and
    /// lost/duplicated/corrupted are reported only when proven.
    #[arg(long, value_name = "MOCK_URL")]
    verify: Option<String>,
    /// PEM CA of the mock intake (default: <--tls-dir>/ca.pem).
    #[arg(long, value_name = "FILE")]
    verify_ca: Option<PathBuf>,
    /// Directory of the mock's test PKI (as written by mock-intake --tls-dir).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress line, even on a terminal.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// [`parse_duration`] plus hours (`1h`).
fn parse_long_duration(text: &str) -> Result<Duration, String> {
    if let Some(hours) = text.trim().strip_suffix('h') {
        let h: u64 = hours.parse().map_err(|_| format!("bad duration {text:?}; write it like 10s, 2m or 1h"))?;
        return h.checked_mul(3600).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} is too large"));
    }
    parse_duration(text).map_err(|e| e.to_string())
}

fn options(args: Args) -> Result<(LoadOptions, Option<PathBuf>)> {
    let mut targets = args.targets;
    for port in &args.ports {
        // Parsed again (and checked) by load::run; built here for the URL.
        let host = if args.host.contains(':') && !args.host.starts_with('[') {
            format!("[{}]", args.host)
        } else {
            args.host.clone()
        };
        targets.push(format!("http://{host}:{port}{}", load::target::default_path(*port)));
    }
    if targets.is_empty() {
        bail!("give --target http://127.0.0.1:9804/api/v2/series or --ports 9804");
    }
    for t in &targets {
        Target::parse(t, args.allow_remote)?;
    }
    let verify = match &args.verify {
        None => None,
        Some(url) => {
            let ca_path = match (&args.verify_ca, &args.tls_dir) {
                (Some(ca), _) => ca.clone(),
                (None, Some(dir)) => dir.join("ca.pem"),
                (None, None) => bail!("--verify needs the mock's CA: give --verify-ca FILE or --tls-dir DIR"),
            };
            let ca_pem = std::fs::read_to_string(&ca_path)
                .with_context(|| format!("cannot read the mock's CA {}", ca_path.display()))?;
            Some(VerifyOptions { url: url.clone(), ca_pem })
        }
    };
    let opts = LoadOptions {
        targets,
        allow_remote: args.allow_remote,
        connections: args.connections,
        threads: args.threads,
        pin: args.pin,
        duration: args.duration,
        warmup: args.warmup,
        requests: args.requests,
        timeout: args.timeout,
        rate: args.rate,
        spin: args.spin,
        quantum: args.quantum,
        payload: args.payload,
        body_size: args.body_size,
        seed: args.seed,
        compression: args.compress,
        verify,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    Ok((opts, args.json))
}

fn main() -> Result<ExitCode> {
    let (opts, json) = options(Args::parse())?;
    let report = load::run(opts).context("load run failed")?;
    print!("{report}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    match report.verify {
        Some(v) if !v.matched => Ok(ExitCode::from(EXIT_MISMATCH)),
        _ => Ok(ExitCode::SUCCESS),
    }
}
