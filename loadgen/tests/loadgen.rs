//! End-to-end checks of the load generator over real loopback sockets: the
//! open-loop rate is what was asked (counted at a fast local HTTP server),
//! and `--verify` proves every accepted body reached the mock intake once —
//! and notices a lost, duplicated or corrupted one. For verify, a tiny
//! plaintext→TLS forwarder stands in for fipsrelay between loadgen (plain
//! HTTP) and the mock (TLS, ring provider).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loadgen::load::{self, LoadOptions, Report, VerifyOptions};
use loadgen::mock::{Behavior, Fault, MockConfig, MockIntake};
use loadgen::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SNI: &str = "metrics.agent.ddog-gov.com";

/// Starts `serve` on a listener at 127.0.0.1:0 in a background thread with
/// its own single-threaded runtime; returns the address. The thread lives
/// as long as the test process.
fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                tokio::task::spawn_local(serve(tcp));
            }
        });
    });
    addr
}

/// A fast HTTP/1.1 server: answers `202 {}` to every request (Content-Length
/// bodies, pipelining allowed) and counts them.
fn fast_server() -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let addr = spawn_server(move |tcp| serve_fast(tcp, Arc::clone(&counter)));
    (addr, count)
}

async fn serve_fast(mut tcp: TcpStream, count: Arc<AtomicU64>) {
    const ANSWER: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let mut buf = vec![0u8; 256 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut skip: usize = 0; // body bytes still to drop
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        match tcp.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
        loop {
            if skip > 0 {
                let take = skip.min(end - start);
                start += take;
                skip -= take;
                if skip > 0 {
                    break;
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[start..end]) {
                Ok(httparse::Status::Complete(len)) => {
                    skip = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0);
                    start += len;
                    count.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(ANSWER);
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// A plaintext→TLS forwarder to `mock`, trusting `ca_pem`, with SNI
/// [`SNI`]: what fipsrelay does, minus everything else.
fn tls_forwarder(mock: SocketAddr, ca_pem: &str) -> SocketAddr {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    spawn_server(move |mut plain| {
        let connector = connector.clone();
        async move {
            let Ok(tcp) = TcpStream::connect(mock).await else { return };
            let _ = tcp.set_nodelay(true);
            let Ok(mut tls) = connector.connect(ServerName::try_from(SNI).unwrap(), tcp).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
        }
    })
}

fn temp_json(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-test-{}-{name}.json", std::process::id()))
}

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("run the loadgen binary")
}

#[test]
fn open_loop_sends_the_asked_rate() {
    let (addr, served) = fast_server();
    let json = temp_json("rate");
    let target = format!("http://{addr}/api/v2/series");
    let out = loadgen(&[
        "--target",
        &target,
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--timeout",
        "5s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    // Counts, not time: 2000 req/s for 2 s is 4000 requests, ±5%.
    assert!((3800..=4200).contains(&report.requests), "sent {} requests: {report:?}", report.requests);
    assert_eq!(report.errors.total, 0, "{report:?}");
    assert_eq!(report.ok, report.requests);
    assert_eq!(report.status.get(&202), Some(&report.requests));
    assert_eq!(served.load(Ordering::Relaxed), report.requests, "the server saw every request once");
    assert_eq!(report.mode, load::LoopMode::Open);
    assert_eq!(report.latency_us.count, report.requests);
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.max);
    assert!(String::from_utf8_lossy(&out.stdout).contains("req/s"));
}

#[test]
fn closed_loop_stops_at_the_request_budget() {
    let (addr, served) = fast_server();
    let opts = LoadOptions {
        targets: vec![format!("http://{addr}/api/v2/logs")],
        connections: 8,
        threads: 2,
        requests: Some(1000),
        duration: Duration::from_secs(20),
        warmup: Duration::from_millis(100),
        payload: load::PayloadKind::Logs,
        body_size: "1k-16k".parse().unwrap(),
        compression: load::Compression::Zstd,
        ..LoadOptions::default()
    };
    let report = load::run(opts).unwrap();
    assert_eq!(report.requests, 1000, "{report:?}");
    assert_eq!(report.ok, 1000);
    assert!(served.load(Ordering::Relaxed) >= 1000, "warm-up requests come on top");
    assert!(report.duration_s < 15.0);
    assert!(report.sent_bytes > 1000 * 100 && report.received_bytes > 1000 * 50, "{report:?}");
}

#[test]
fn refuses_remote_targets() {
    let out = loadgen(&["--target", "http://192.0.2.1:9804/api/v2/series", "--duration", "1s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-remote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct VerifyRig {
    mock: MockIntake,
    relay: SocketAddr,
    ca_pem: String,
    tls_dir: PathBuf,
}

fn verify_rig(name: &str) -> VerifyRig {
    let pki = TestPki::generate(&[]);
    let tls_dir = std::env::temp_dir().join(format!("loadgen-test-pki-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&tls_dir).unwrap();
    pki.write_to(&tls_dir).unwrap();
    let mock = MockIntake::start(MockConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        pki.leaf_cert_pem.clone(),
        pki.leaf_key_pem.clone(),
    ))
    .unwrap();
    let relay = tls_forwarder(mock.addr(), &pki.ca_cert_pem);
    VerifyRig { mock, relay, ca_pem: pki.ca_cert_pem, tls_dir }
}

impl VerifyRig {
    fn run(&self, fault: Fault) -> Report {
        self.mock.set_behavior(Behavior { fault, ..Behavior::default() });
        let opts = LoadOptions {
            targets: vec![format!("http://{}/api/v2/series", self.relay)],
            connections: 4,
            requests: Some(300),
            duration: Duration::from_secs(20),
            compression: load::Compression::Deflate,
            verify: Some(VerifyOptions { url: format!("https://{}", self.mock.addr()), ca_pem: self.ca_pem.clone() }),
            ..LoadOptions::default()
        };
        load::run(opts).unwrap()
    }
}

#[test]
fn verify_matches_and_catches_lost_duplicated_and_corrupted_bodies() {
    let rig = verify_rig("library");

    let v = rig.run(Fault::None).verify.unwrap();
    assert!(v.matched && v.complete, "{v:?}");
    assert_eq!((v.bodies, v.mock_bodies, v.lost, v.duplicated, v.corrupted), (300, 300, 0, 0, 0));

    let v = rig.run(Fault::DropRecord).verify.unwrap();
    assert!(!v.matched && v.lost == 300, "{v:?}");

    let v = rig.run(Fault::DuplicateRecord).verify.unwrap();
    assert!(!v.matched && v.duplicated == 300 && v.lost == 0, "{v:?}");

    let v = rig.run(Fault::CorruptRecord).verify.unwrap();
    assert!(!v.matched && v.corrupted == 300 && v.lost == 300, "{v:?}");

    // A 503 is not a 2xx: its bodies reached the mock but are only
    // "unconfirmed", not a mismatch.
    rig.mock.set_behavior(Behavior { status: 503, ..Behavior::default() });
    let opts = LoadOptions {
        targets: vec![format!("http://{}/api/v2/series", rig.relay)],
        connections: 2,
        requests: Some(50),
        verify: Some(VerifyOptions { url: format!("https://{}", rig.mock.addr()), ca_pem: rig.ca_pem.clone() }),
        ..LoadOptions::default()
    };
    let report = load::run(opts).unwrap();
    let v = report.verify.unwrap();
    assert_eq!(report.status.get(&503), Some(&50));
    assert!(v.matched && v.unconfirmed == 50 && v.bodies == 0, "{v:?}");
    let _ = std::fs::remove_dir_all(&rig.tls_dir);
}

#[test]
fn agent_mix_open_loop_is_verified_end_to_end() {
    // The Agent's shape: open loop, random bodies of log-uniform sizes
    // (here 512 B .. 256 KiB, to keep the test short), a few connections on
    // each of two products, every body checked at the mock, those of the
    // warm-up too (they reach the mock as well).
    let rig = verify_rig("mix");
    let opts = LoadOptions {
        targets: vec![format!("http://{}/api/v2/series", rig.relay), format!("http://{}/api/v2/logs", rig.relay)],
        connections: 4,
        rate: Some(200.0),
        warmup: Duration::from_millis(500),
        duration: Duration::from_millis(1500),
        timeout: Duration::from_secs(5),
        payload: load::PayloadKind::Raw,
        body_size: "log-uniform:512..256k".parse().unwrap(),
        seed: 7,
        verify: Some(VerifyOptions { url: format!("https://{}", rig.mock.addr()), ca_pem: rig.ca_pem.clone() }),
        ..LoadOptions::default()
    };
    let report = load::run(opts).unwrap();
    // 200 req/s for 1.5 s: 300 requests, all answered 2xx and all at the mock.
    assert!((285..=315).contains(&report.requests), "{report:?}");
    assert_eq!(report.ok, report.requests, "{report:?}");
    let v = report.verify.unwrap();
    assert!(v.matched && v.complete, "{v:?}");
    // 100 warm-up bodies on top of the measured ones.
    assert!((report.ok + 90..=report.ok + 110).contains(&v.bodies), "{v:?}");
    assert_eq!(report.body_size, "log-uniform:512..262144");
    assert_eq!(report.seed, 7);
    // Mean body ~ (256k − 512) / ln(512) = 41 KiB: far from both bounds.
    let mean = report.sent_bytes as f64 / report.requests as f64;
    assert!((15_000.0..90_000.0).contains(&mean), "mean request {mean} B");
    let _ = std::fs::remove_dir_all(&rig.tls_dir);
}

#[test]
fn verify_through_the_binary_sets_the_exit_status() {
    let rig = verify_rig("binary");
    let target = format!("http://{}/api/v2/series", rig.relay);
    let mock_url = format!("https://{}", rig.mock.addr());
    let tls_dir = rig.tls_dir.to_str().unwrap();
    let args = ["--target", &target, "--requests", "200", "--verify", &mock_url, "--tls-dir", tls_dir];

    let out = loadgen(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verify: MATCH (200 bodies)"), "{stdout}");

    rig.mock.set_behavior(Behavior { fault: Fault::DropRecord, ..Behavior::default() });
    let out = loadgen(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("verify: MISMATCH lost=200 duplicated=0 corrupted=0"), "{stdout}");
    let _ = std::fs::remove_dir_all(&rig.tls_dir);
}

/// Throughput of loadgen itself against the fast server; run with
/// `cargo test --release -p loadgen --test loadgen -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn throughput_of_loadgen_itself() {
    let (addr, _) = fast_server();
    for (compression, payload) in [
        (load::Compression::None, load::PayloadKind::Series),
        (load::Compression::Zstd, load::PayloadKind::Series),
        (load::Compression::Deflate, load::PayloadKind::Series),
    ] {
        let opts = LoadOptions {
            targets: vec![format!("http://{addr}/api/v2/series")],
            connections: 64,
            threads: 1,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            compression,
            payload,
            ..LoadOptions::default()
        };
        let r = load::run(opts).unwrap();
        println!(
            "1 thread, 64 connections, 1 KiB {:?}/{:?}: {:.0} req/s, p50 {} µs, p99 {} µs, errors {}",
            payload, compression, r.req_per_s, r.latency_us.p50, r.latency_us.p99, r.errors.total
        );
    }
}
