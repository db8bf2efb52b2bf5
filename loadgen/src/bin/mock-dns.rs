//! `mock-dns`: runs the loadgen mock DNS server as a process, for manual runs
//! and tests of the relay's DNS re-resolution. Prints exactly one line,
//! `listening on ADDR`, to stdout once it serves, logs one line per query to
//! stderr (`query NAME TYPE -> RESULT`), serves until SIGINT or SIGTERM, then
//! prints its final counters as JSON to stderr. The zone file is re-read on
//! every query (format in `loadgen::dns`); it never recurses or forwards.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use loadgen::dns::MockDns;

#[derive(Parser, Debug)]
#[command(about = "Mock DNS server: answers A/AAAA queries over UDP from a zone file re-read on every query")]
struct Args {
    /// UDP address to listen on, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: SocketAddr,
    /// Zone file, one record a line: `<name> A <ipv4> [ttl]`, `<name> AAAA <ipv6> [ttl]`,
    /// `<name> SERVFAIL` or `<name> DROP` (never answered); `#` comments. Replace it by rename.
    #[arg(long)]
    zone: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Watch the signals before saying we listen, so a SIGTERM sent right
    // after the line still ends the process cleanly.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the signal runtime")?;
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        anyhow::Ok((term, int))
    })?;

    let mut dns = MockDns::start_observed(args.listen, args.zone.clone(), |log| eprintln!("{log}"))
        .with_context(|| format!("cannot start the mock DNS server on {}", args.listen))?;
    if !args.zone.is_file() {
        let zone = args.zone.display();
        eprintln!("mock-dns: the zone file {zone} does not exist yet; every query gets SERVFAIL until it does");
    }

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", dns.local_addr())?;
    stdout.flush()?;
    drop(stdout);

    runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    dns.shutdown();
    eprintln!("{}", serde_json::json!({ "queries": dns.queries(), "dropped": dns.dropped() }));
    Ok(())
}
