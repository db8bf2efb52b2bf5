//! `wanlink`: a WAN link emulator for tests and benches on a kernel
//! without `netem` (see `loadgen::wan`): listens, connects each accepted
//! connection to `--target`, and forwards each direction `--delay` later
//! (the round trip gains twice that), optionally capped at `--bandwidth`
//! bytes/s. Prints exactly one line, `listening on ADDR`, once it accepts
//! connections; serves until SIGINT or SIGTERM, then prints its counters
//! as JSON to stderr. Only the delay is emulated: both legs are loopback
//! TCP, so a real path's slow start and losses are not (docs/testing.md).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use loadgen::duration::parse_duration;
use loadgen::wan::{WanConfig, WanLink, DEFAULT_BUFFER};

#[derive(Parser, Debug)]
#[command(about = "WAN link emulator: a TCP relay adding a fixed delay each way (and an optional bandwidth cap)")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: SocketAddr,
    /// Where each connection goes, e.g. 127.0.0.1:8443.
    #[arg(long)]
    target: SocketAddr,
    /// One-way delay added to each direction, e.g. 20ms (a 40 ms round trip).
    #[arg(long, value_parser = parse_duration)]
    delay: Duration,
    /// Bandwidth cap per direction in bytes/s, e.g. 12500k (100 Mbit/s);
    /// k and m are binary (1024, 1048576). No cap by default.
    #[arg(long, value_parser = parse_bytes)]
    bandwidth: Option<u64>,
    /// Bytes each direction holds in its delay line at most (then the
    /// link stops reading and TCP pushes back), e.g. 8m.
    #[arg(long, value_parser = parse_bytes, default_value_t = DEFAULT_BUFFER as u64)]
    buffer: u64,
}

/// `1000`, `64k`, `8m` (binary units).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, mult) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1024),
        Some(b'm') => (&t[..t.len() - 1], 1 << 20),
        _ => (&t[..], 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a byte count; write it like 65536, 64k or 8m"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = WanConfig {
        listen: args.listen,
        target: args.target,
        delay: args.delay,
        bandwidth: args.bandwidth,
        buffer: usize::try_from(args.buffer).context("--buffer is too large")?,
    };
    let mut link = WanLink::start(cfg).with_context(|| format!("cannot start the link on {}", args.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", link.addr())?;
    stdout.flush()?;
    drop(stdout);

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
        anyhow::Ok(())
    })?;
    link.shutdown();
    let s = link.stats();
    let counters = serde_json::json!({
        "connections": s.connections.load(Ordering::Relaxed),
        "connect_failures": s.connect_failures.load(Ordering::Relaxed),
        "bytes": s.bytes.load(Ordering::Relaxed),
        "peak_buffered": s.peak_buffered.load(Ordering::Relaxed),
    });
    eprintln!("{counters}");
    Ok(())
}
