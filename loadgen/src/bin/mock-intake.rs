//! `mock-intake`: runs the loadgen mock Datadog intake as a process, for
//! benches and manual runs. Prints exactly one line, `listening on ADDR`, to
//! stdout once it accepts connections, serves until SIGINT or SIGTERM, then
//! prints its final counters as JSON to stderr. It never talks to a real
//! intake and never uses aws-lc.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use loadgen::duration::parse_duration;
use loadgen::mock::{Behavior, CipherMode, Fault, MockConfig, MockIntake};
use loadgen::pki::TestPki;

#[derive(Parser, Debug)]
#[command(about = "Mock Datadog intake: TLS HTTP/1.1 server that counts and hashes requests")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory for a generated test PKI (ca.pem, cert.pem, key.pem);
    /// required unless --cert and --key are given.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// PEM certificate chain to serve (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key to serve (with --cert).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Status of every answer.
    #[arg(long, default_value_t = 202)]
    status: u16,
    /// Delay before answering, e.g. 10ms.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    latency: Duration,
    /// none | reset | close-mid-answer | close-after-head | slow:<duration> |
    /// slow-read:<bytes/s, e.g. 64k> (read bodies slowly) |
    /// drop-record | duplicate-record | corrupt-record (these three prove
    /// `loadgen --verify` works) | reset-mid-request | blackhole (accept, never answer) |
    /// tls-alert (a fatal handshake_failure alert) | HTTP/2 only:
    /// goaway:<streams> (graceful GOAWAY after that many streams on a connection) |
    /// goaway-abrupt:<streams> (immediate GOAWAY; later streams never processed) |
    /// refuse-stream (REFUSED_STREAM for each connection's first stream) |
    /// freeze (a connection goes silent after its first answer).
    #[arg(long, default_value = "none")]
    fault: Fault,
    /// Accept only ChaCha20-Poly1305 suites.
    #[arg(long)]
    chacha_only: bool,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS to announce (no limit by default).
    #[arg(long)]
    h2_max_streams: Option<u32>,
    /// HTTP/2 receive window per stream, bytes (65535 by default; nginx
    /// announces 65536).
    #[arg(long)]
    h2_stream_window: Option<u32>,
    /// HTTP/2 receive window per connection, bytes (65535 by default;
    /// nginx announces 2147483647).
    #[arg(long)]
    h2_connection_window: Option<u32>,
    /// Offer only http/1.1 by ALPN (an intake without HTTP/2).
    #[arg(long)]
    http1_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (cert_chain_pem, key_pem) = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => (
            std::fs::read_to_string(cert).with_context(|| format!("cannot read --cert {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("cannot read --key {}", key.display()))?,
        ),
        _ => {
            let Some(dir) = &args.tls_dir else {
                bail!("give --tls-dir DIR (a test PKI is generated there) or --cert and --key");
            };
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create --tls-dir {}", dir.display()))?;
            let pki = TestPki::try_generate(&[]).context("cannot generate the test PKI")?;
            pki.write_to(dir).with_context(|| format!("cannot write the test PKI to {}", dir.display()))?;
            eprintln!("mock-intake: test PKI written to {} (trust ca.pem)", dir.display());
            (pki.leaf_cert_pem, pki.leaf_key_pem)
        }
    };
    let cfg = MockConfig {
        listen: args.listen,
        cert_chain_pem,
        key_pem,
        behavior: Behavior { status: args.status, latency: args.latency, fault: args.fault, ..Behavior::default() },
        cipher: if args.chacha_only { CipherMode::ChaChaOnly } else { CipherMode::Default },
        h2_max_streams: args.h2_max_streams,
        h2_stream_window: args.h2_stream_window,
        h2_connection_window: args.h2_connection_window,
        http1_only: args.http1_only,
    };
    let mut mock =
        MockIntake::start(cfg).with_context(|| format!("cannot start the mock intake on {}", args.listen))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", mock.addr())?;
    stdout.flush()?;
    drop(stdout);

    wait_for_signal()?;
    mock.shutdown();
    eprintln!("{}", serde_json::to_string(&mock.stats())?);
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the signal runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
