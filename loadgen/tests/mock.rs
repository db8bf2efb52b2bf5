//! End-to-end checks of the mock intake over real sockets and real TLS: a
//! rustls client (ring provider) trusting a CA generated at test time talks
//! to `MockIntake` and checks what it records, counts and answers.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::client::{encode_chunked, read_response, send};
use loadgen::hash::body_hash;
use loadgen::mock::{Behavior, CipherMode, Fault, MockConfig, MockIntake, MockStats};
use loadgen::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

const SNI: &str = "metrics.agent.ddog-gov.com";

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

fn start(pki: &TestPki, cipher: CipherMode) -> MockIntake {
    let mut cfg = MockConfig::new("127.0.0.1:0".parse().unwrap(), pki.leaf_cert_pem.clone(), pki.leaf_key_pem.clone());
    cfg.cipher = cipher;
    MockIntake::start(cfg).unwrap()
}

fn client_config(pki: &TestPki, aes_gcm_only: bool) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if aes_gcm_only {
        provider.cipher_suites.retain(|s| !format!("{:?}", s.suite()).contains("CHACHA20"));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_cert_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn connect(mock: &MockIntake, config: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(mock.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from(SNI).unwrap()).unwrap();
    BufReader::new(StreamOwned::new(conn, tcp))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect()
}

#[test]
fn records_length_and_chunked_bodies_on_one_connection() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::Default);
    let mut tls = connect(&mock, client_config(&pki, false));

    let first = body(3 * 1024 * 1024 + 17, 7);
    send(
        tls.get_mut(),
        "POST",
        "/api/v2/series?api_key=x",
        &[("Host", SNI), ("DD-API-KEY", "secret"), ("Content-Encoding", "zstd")],
        &first,
    )
    .unwrap();
    let answer = read_response(&mut tls, false).unwrap();
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body, b"{}");
    assert_eq!(answer.header("content-type"), Some("application/json"));

    let second = body(100_000, 13);
    send(
        tls.get_mut(),
        "POST",
        "/api/beta/sketches",
        &[("Host", SNI), ("Transfer-Encoding", "chunked"), ("Expect", "100-continue")],
        &encode_chunked(&second, 4093),
    )
    .unwrap();
    let answer = read_response(&mut tls, false).unwrap();
    assert_eq!(answer.status, 202);

    let records = mock.records();
    assert_eq!(records.len(), 2);
    let (a, b) = (&records[0], &records[1]);
    assert_eq!(a.sni.as_deref(), Some(SNI));
    assert_eq!(a.host.as_deref(), Some(SNI));
    assert_eq!(a.method, "POST");
    assert_eq!(a.path, "/api/v2/series?api_key=x");
    assert_eq!(a.body_len, first.len() as u64);
    assert_eq!(a.body_hash, body_hash(&first));
    assert_eq!(a.header("dd-api-key"), Some("secret"));
    assert_eq!(a.header("content-encoding"), Some("zstd"));
    assert_eq!(b.sni.as_deref(), Some(SNI));
    assert_eq!(b.path, "/api/beta/sketches");
    assert_eq!(b.body_len, second.len() as u64);
    assert_eq!(b.body_hash, body_hash(&second));
    assert_eq!(a.connection_id, b.connection_id, "keep-alive");
    assert_eq!(mock.connections_accepted(), 1);
    assert_eq!(mock.handshakes_completed(), 1);

    // Counters over the same listener; the stats request is not counted.
    send(tls.get_mut(), "GET", "/mock/stats", &[("Host", SNI)], b"").unwrap();
    let answer = read_response(&mut tls, false).unwrap();
    assert_eq!(answer.status, 200);
    let stats: MockStats = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(stats, mock.stats());
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.hash_count, 2);
    assert_eq!(stats.body_bytes, (first.len() + second.len()) as u64);
    assert_eq!(stats.hash_sum, body_hash(&first).wrapping_add(body_hash(&second)));
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.by_host.get(SNI), Some(&2));
    assert_eq!(stats.by_path.get("/api/v2/series"), Some(&1));
    assert_eq!(stats.by_path.get("/api/beta/sketches"), Some(&1));
    assert_eq!(mock.records().len(), 2);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    for key in ["requests", "body_bytes", "hash_count", "hash_sum", "connections", "by_host", "by_path"] {
        assert!(json.get(key).is_some(), "stats JSON lacks {key}");
    }
}

#[test]
fn behavior_changes_apply_and_connection_close_is_honoured() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::Default);
    mock.set_behavior(Behavior { status: 503, body: r#"{"errors":["busy"]}"#.into(), ..Behavior::default() });
    let mut tls = connect(&mock, client_config(&pki, false));
    send(tls.get_mut(), "POST", "/api/v2/logs", &[("Connection", "close")], b"[]").unwrap();
    let answer = read_response(&mut tls, false).unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, br#"{"errors":["busy"]}"#);
    assert_eq!(answer.header("connection"), Some("close"));
    // The server closes (with close_notify): next read sees a clean end.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut tls, &mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(mock.records()[0].host.as_deref(), Some("localhost"));
}

#[test]
fn malformed_request_gets_400() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::Default);
    let mut tls = connect(&mock, client_config(&pki, false));
    tls.get_mut().write_all(b"POST /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n").unwrap();
    let answer = read_response(&mut tls, false).unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(mock.records().is_empty());
}

#[test]
fn chacha_only_refuses_aes_gcm_only_client() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::ChaChaOnly);

    let mut tls = connect(&mock, client_config(&pki, true));
    let err = send(tls.get_mut(), "GET", "/", &[], b"").and_then(|_| read_response(&mut tls, false));
    assert!(err.is_err(), "handshake must fail");
    wait_until("the failed handshake", || mock.handshake_failures() == 1);
    assert_eq!(mock.handshakes_completed(), 0);

    // A client that also offers ChaCha20 gets through.
    let mut tls = connect(&mock, client_config(&pki, false));
    send(tls.get_mut(), "POST", "/api/v2/series", &[], b"x").unwrap();
    assert_eq!(read_response(&mut tls, false).unwrap().status, 202);
    assert_eq!(mock.handshakes_completed(), 1);
    assert_eq!(mock.connections_accepted(), 2);
}

#[test]
fn reset_after_request_sends_no_answer() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::Default);
    mock.set_behavior(Behavior { fault: Fault::ResetAfterRequest, ..Behavior::default() });
    let mut tls = connect(&mock, client_config(&pki, false));
    send(tls.get_mut(), "POST", "/api/v0.2/traces", &[], &body(50_000, 3)).unwrap();
    let err = read_response(&mut tls, false).unwrap_err();
    assert!(
        matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof),
        "want reset or EOF, got {err}"
    );
    let records = mock.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].body_len, 50_000);
}

#[test]
fn truncating_faults_are_read_errors() {
    let pki = TestPki::generate(&[]);
    let mock = start(&pki, CipherMode::Default);
    for fault in [Fault::CloseMidAnswer, Fault::CloseAfterHead] {
        mock.set_behavior(Behavior { fault, body: r#"{"status":"ok"}"#.into(), ..Behavior::default() });
        let mut tls = connect(&mock, client_config(&pki, false));
        send(tls.get_mut(), "POST", "/api/v2/series", &[], b"{}").unwrap();
        let err = read_response(&mut tls, false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{fault:?}: {err}");
    }
    assert_eq!(mock.stats().requests, 2);
}

#[test]
fn shutdown_closes_the_listener() {
    let pki = TestPki::generate(&[]);
    let mut mock = start(&pki, CipherMode::Default);
    let addr = mock.addr();
    let started = Instant::now();
    mock.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(addr).is_err());
}
