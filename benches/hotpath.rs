//! Microbenches of the relay's hot path, printed as HDR summaries:
//! request-head parse + rewrite, chunked scanning, TLS record encryption
//! through the FIPS provider (1 KiB and 64 KiB), and, end to end through a
//! real relay and a real TLS mock intake in steady state, allocations per
//! forwarded request (counted on relay worker threads only) and body bytes
//! copied in user space per forwarded body byte.
//!
//! Run: `cargo bench --bench hotpath` (add `-- --quick` for a short run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fipsrelay::http1::{parse_request, ChunkedScanner};
use hdrhistogram::Histogram;

// ---- allocation counting, restricted to relay worker threads ----

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0 = unknown, 1 = a relay worker thread, 2 = another thread.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn on_worker_thread() -> bool {
    KIND.with(|k| {
        if k.get() == 0 {
            // prctl reads the thread name into a stack buffer: no allocation here.
            let mut name = [0u8; 16];
            unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
            k.set(if name.starts_with(b"fipsrelay-w") { 1 } else { 2 });
        }
        k.get() == 1
    })
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- helpers ----

mod harness;
use harness::machine;

/// Runs `op` in batches, records ns per op, prints a summary line.
fn measure(name: &str, bytes_per_op: usize, iters: u64, mut op: impl FnMut()) {
    let batch = 64u64;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..iters.div_ceil(batch).min(50) {
        op(); // warm up
    }
    let start = Instant::now();
    for _ in 0..iters.div_ceil(batch) {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let _ = h.record((t.elapsed().as_nanos() as u64 / batch).max(1));
    }
    let total = start.elapsed();
    let ops = iters.div_ceil(batch) * batch;
    let per_sec = ops as f64 / total.as_secs_f64();
    let mbs =
        if bytes_per_op > 0 { format!(" {:>9.1} MB/s", per_sec * bytes_per_op as f64 / 1e6) } else { String::new() };
    println!(
        "{name:<34} {:>12.0} ops/s{mbs}  ns/op p50 {:>7} p99 {:>7} p99.9 {:>7} max {:>8}",
        per_sec,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

const AGENT_HEAD: &[u8] = b"POST /api/v2/series HTTP/1.1\r\nHost: 127.0.0.1:9804\r\nUser-Agent: datadog-agent/7.60.0\r\nContent-Length: 1024\r\nContent-Encoding: zstd\r\nContent-Type: application/x-protobuf\r\nDd-Api-Key: 0123456789abcdef0123456789abcdef\r\nDd-Agent-Version: 7.60.0\r\nDd-Agent-Payload: 5.95.0\r\nAccept-Encoding: gzip\r\n\r\n";

fn bench_parse(iters: u64) {
    let mut out = Vec::with_capacity(1024);
    measure("http1 parse+rewrite (Agent head)", AGENT_HEAD.len(), iters, || {
        let h =
            parse_request(AGENT_HEAD, 65536, 1 << 26, Some("metrics.agent.ddog-gov.com"), &mut out).unwrap().unwrap();
        std::hint::black_box(h);
    });
}

fn bench_chunked(iters: u64) {
    let body = vec![b'x'; 64 * 1024];
    let encoded = loadgen::client::encode_chunked(&body, 8 * 1024);
    measure("chunked scan 64 KiB (8 KiB chunks)", body.len(), iters / 20, || {
        let mut s = ChunkedScanner::new();
        let n = s.scan(&encoded).unwrap();
        assert!(s.is_done() && n == encoded.len());
    });
}

/// An in-memory FIPS client/server pair, handshake done.
fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    use rustls::pki_types::pem::PemObject;
    let pki = loadgen::pki::TestPki::generate(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let client_cfg = fipsrelay::crypto::client_config(&fipsrelay::crypto::TrustSource::CaFile(ca)).unwrap();
    let certs: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pki.leaf_cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(fipsrelay::crypto::fips_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut client =
        rustls::ClientConnection::new(client_cfg, "metrics.agent.ddog-gov.com".try_into().unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut buf = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut &buf[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    (client, server)
}

fn bench_tls(iters: u64) {
    let (mut client, _server) = tls_pair();
    let suite = format!("{:?}", client.negotiated_cipher_suite().unwrap().suite());
    for size in [1024usize, 64 * 1024] {
        let data = vec![7u8; size];
        let mut sink = Vec::with_capacity(size + 4096);
        let n = if size > 4096 { iters / 40 } else { iters / 2 };
        measure(&format!("tls encrypt {} KiB ({suite})", size / 1024), size, n, || {
            client.writer().write_all(&data).unwrap();
            sink.clear();
            while client.wants_write() {
                client.write_tls(&mut sink).unwrap();
            }
            std::hint::black_box(&sink);
        });
    }
}

/// A TLS mock intake on its own thread, and the path of its CA.
fn in_process_intake() -> (tempfile::TempDir, std::path::PathBuf, loadgen::mock::MockIntake) {
    let dir = tempfile::tempdir().unwrap();
    let pki = loadgen::pki::TestPki::generate(&[]);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let mock = loadgen::mock::MockIntake::start(loadgen::mock::MockConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        pki.leaf_cert_pem.clone(),
        pki.leaf_key_pem.clone(),
    ))
    .unwrap();
    (dir, ca, mock)
}

/// Pool take + give_back of a live TLS session (the take includes the
/// liveness check on the real socket), on the epoll backend.
fn bench_pool(iters: u64) {
    use fipsrelay::io::{epoll::Epoll, Backend};
    use fipsrelay::upstream::pool::Pool;
    let (_dir, ca, mock) = in_process_intake();
    let cfg = fipsrelay::crypto::client_config(&fipsrelay::crypto::TrustSource::CaFile(ca)).unwrap();
    Epoll::block_on(async move {
        let session = fipsrelay::upstream::open_session::<Epoll>(
            fipsrelay::upstream::Dial::direct(mock.addr()),
            cfg,
            "metrics.agent.ddog-gov.com",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut pool = Pool::new(1, 64, Duration::from_secs(30));
        let now = Instant::now();
        pool.give_back(0, session, now);
        measure("pool take+give_back (live check)", 0, iters, || {
            let (s, dropped) = pool.take(0, now);
            assert_eq!(dropped, 0);
            pool.give_back(0, s.expect("session stays live"), now);
        });
    })
    .unwrap();
}

/// The relay's body counters, summed over products: (bytes in, bytes out,
/// bytes copied), read from `/metrics` on the status port.
fn body_counters(status: std::net::SocketAddr) -> (u64, u64, u64) {
    let mut s = std::net::TcpStream::connect(status).unwrap();
    loadgen::client::send(&mut s, "GET", "/metrics", &[("connection", "close")], b"").unwrap();
    let r = loadgen::client::read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (sum(fipsrelay::metrics::M_BYTES_IN), sum(fipsrelay::metrics::M_BYTES_OUT), sum(fipsrelay::metrics::M_BYTES_COPIED))
}

/// Polls the counters until the relay has published `bytes_in` request
/// body bytes (workers publish a few times a second).
fn counters_at(status: std::net::SocketAddr, bytes_in: u64) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = body_counters(status);
        if c.0 >= bytes_in || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// End to end through an in-process relay, in steady state (after
/// warm-up): allocations on worker threads per forwarded request, and body
/// bytes copied in user space per forwarded body byte (the relay's own
/// `fipsrelay_body_bytes_copied_total`), at 1 KiB and 64 KiB.
fn bench_allocs(requests: u64) {
    let (_dir, ca, mock) = in_process_intake();
    let base = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().clamp(20000, 60000) / 16 * 16
    };
    let mut results = Vec::new();
    let runs = [("uring", "http1"), ("epoll", "http1"), ("uring", "h2"), ("epoll", "h2")];
    for (k, (io, protocol)) in runs.into_iter().enumerate() {
        if io == "uring" && fipsrelay::io::probe_uring().is_err() {
            println!("allocs/request ({io}): skipped, io_uring unavailable");
            continue;
        }
        let base = base + 32 * k as u16;
        let toml = format!(
            "[listen]\nport_range_start = {base}\n[workers]\nthreads = 1\npin = false\nio = \"{io}\"\n[upstream]\nprotocol = \"{protocol}\"\noverride_addr = \"{}\"\nca_file = \"{}\"\n[shutdown]\ndrain_timeout = \"1s\"\n[admin]\nenabled = false\n",
            mock.addr(),
            ca.display()
        );
        let raw = fipsrelay::config::parse_str(&toml).unwrap();
        let config = raw.validate().unwrap();
        let relay = std::thread::spawn(move || fipsrelay::control::run(config, fipsrelay::config::Source::Defaults));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], base + 1));
        let status = std::net::SocketAddr::from(([127, 0, 0, 1], base));
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("relay did not start: {e}"),
            }
        };
        let mut reader = BufReader::new(stream);
        let mut sent_in: u64 = 0;
        for (label, size, n) in [("1 KiB", 1024usize, requests), ("64 KiB", 64 * 1024, requests / 10)] {
            let body = vec![b'a'; size];
            let send = |reader: &mut BufReader<std::net::TcpStream>| {
                loadgen::client::send(reader.get_mut(), "POST", "/api/v2/series", &[], &body).unwrap();
                let r = loadgen::client::read_response(reader, false).unwrap();
                assert_eq!(r.status, 202);
            };
            for _ in 0..200 {
                send(&mut reader);
            }
            sent_in += 200 * size as u64;
            let before = counters_at(status, sent_in);
            WORKER_ALLOCS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            for _ in 0..n {
                send(&mut reader);
            }
            COUNTING.store(false, Ordering::Relaxed);
            let allocs = WORKER_ALLOCS.load(Ordering::Relaxed);
            sent_in += n * size as u64;
            let after = counters_at(status, sent_in);
            let forwarded = (after.0 - before.0) + (after.1 - before.1);
            let copied = after.2 - before.2;
            results.push(format!(
                "allocs/request ({io:<5} {protocol:<5}) {label:<6} keep-alive: {:.2} ({allocs} allocations over {n} requests, worker threads only); body bytes copied in user space per forwarded body byte: {:.3} ({copied} of {forwarded})",
                allocs as f64 / n as f64,
                copied as f64 / forwarded.max(1) as f64,
            ));
        }
        drop(reader);
        unsafe { libc::raise(libc::SIGTERM) };
        relay.join().unwrap().unwrap();
    }
    for r in results {
        println!("{r}");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters: u64 = if quick { 20_000 } else { 400_000 };
    println!("# fipsrelay hot-path microbenches — {}", machine());
    println!("# {}", fipsrelay::crypto::module_description());
    bench_parse(iters);
    bench_chunked(iters);
    bench_tls(iters);
    bench_pool(iters / 4);
    bench_allocs(if quick { 500 } else { 5_000 });
}
