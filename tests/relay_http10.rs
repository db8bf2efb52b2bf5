//! HTTP/1.0 clients (ApacheBench and friends): keep-alive announced and
//! kept, closed after the answer without it, answers without a length sent
//! close-delimited, and ApacheBench itself with and without `-k`. Relayed
//! answers run on both I/O backends and both upstream protocols; the
//! close-delimited ones pin HTTP/1.1 (only an HTTP/1.1 intake sends them).

mod common;

use std::time::Duration;

use common::*;

/// One HTTP/1.0 request as ApacheBench writes it; `keep_alive` adds
/// `Connection: Keep-Alive` (ab -k).
fn http10(method: &str, path: &str, keep_alive: bool, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: ApacheBench/2.3\r\n{extra}");
    if keep_alive {
        head.push_str("Connection: Keep-Alive\r\n");
    }
    if method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Everything the relay sends until it closes the connection; fails when it
/// is still open after `within` (an HTTP/1.0 client waiting for that close
/// would hang until limits.client_idle_timeout).
fn read_until_close(c: &mut Client, within: Duration) -> Vec<u8> {
    use std::io::Read;
    c.stream().set_read_timeout(Some(within)).unwrap();
    let mut all = Vec::new();
    match c.reader.read_to_end(&mut all) {
        Ok(_) => all,
        Err(e) => panic!("the relay did not close within {within:?} ({e}); got {:?}", String::from_utf8_lossy(&all)),
    }
}

/// Splits a raw answer into its head (lowercased) and body.
fn split_answer(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete answer head") + 4;
    (String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase(), raw[end..].to_vec())
}

/// Answers of the relay's own that close the connection, whatever the
/// client asked: an HTTP/1.0 keep-alive client is told so (`Connection:
/// close`) and the close follows at once.
fn assert_closes_at_once(c: &mut Client, request: &[u8], status: u16, what: &str) {
    c.write_raw(request);
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!((r.status, r.header("connection")), (status, Some("close")), "{what}");
    read_until_close(c, Duration::from_secs(5));
}

both_backends_both_protocols!(http10_keep_alive_is_announced_and_kept, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    // Relayed answers, the intake's own errors among them, on one connection.
    let mut c = relay.connect(1);
    for (i, status) in [202u16, 202, 500, 403, 202].into_iter().enumerate() {
        intake.mock.set_behavior(Behavior { status, ..Behavior::default() });
        c.write_raw(&http10("POST", "/api/v2/series", true, "", format!("{{\"n\":{i}}}").as_bytes()));
        let r = c.read_response(false).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "request {i}");
        assert_eq!(r.header("content-length"), Some("2"), "request {i}");
    }
    intake.mock.set_behavior(Behavior::default());
    c.write_raw(&http10("GET", "/api/v1/validate", true, &format!("DD-API-KEY: {FAKE_KEY}\r\n"), b""));
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));
    c.write_raw(&http10("HEAD", "/api/v2/series", true, "", b""));
    let r = c.read_response(true).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));

    // Expect: 100-continue is ignored for HTTP/1.0 (RFC 9110 §10.1.1): no
    // interim answer it cannot read, the final one keeps the connection.
    let expect = http10("POST", "/api/v2/series", true, "Expect: 100-continue\r\n", b"hello");
    c.write_raw(&expect[..expect.len() - 5]);
    c.stream().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut early = [0u8; 64];
    match std::io::Read::read(&mut c.reader, &mut early) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("the relay answered before the body: {other:?} {:?}", String::from_utf8_lossy(&early)),
    }
    c.stream().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_raw(b"hello");
    let mut status_line = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut status_line).unwrap();
    assert_eq!(status_line, "HTTP/1.1 202 Accepted\r\n", "no 100 Continue for HTTP/1.0");
    let mut fields = String::new();
    while !fields.ends_with("\r\n\r\n") {
        assert!(std::io::BufRead::read_line(&mut c.reader, &mut fields).unwrap() > 0, "head cut: {fields}");
    }
    assert!(fields.contains("Connection: keep-alive\r\n"), "{fields}");
    let mut body = [0u8; 2];
    std::io::Read::read_exact(&mut c.reader, &mut body).unwrap();
    // And the next request on the same connection is served.
    c.write_raw(&http10("POST", "/api/v2/series", true, "", b"after"));
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (202, Some("keep-alive")));
    let records = intake.mock.records();
    assert_eq!(records.len(), 9);
    assert_eq!(records[7].body_hash, body_hash(b"hello"));
    assert_eq!(records[7].header("expect"), None);
    assert_eq!(records[8].body_hash, body_hash(b"after"));

    // Status port pages, a 404 and a 405 among them, on one connection.
    let mut s = relay.connect(0);
    for (method, path, status) in
        [("GET", "/health", 200u16), ("GET", "/metrics", 200), ("GET", "/nope", 404), ("DELETE", "/", 405)]
    {
        s.write_raw(&http10(method, path, true, "", b""));
        let r = s.read_response(false).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "{method} {path}");
    }
    s.write_raw(&http10("HEAD", "/", true, "", b""));
    let r = s.read_response(true).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));

    // The relay's own answers keep the connection too once the request's
    // body is read (it reads and drops it): a POST with a body on the status
    // port, admin answers, and the 5xx of an upstream that is not there.
    let mut s = relay.connect(0);
    let post_status = http10("POST", "/health", true, "", b"{}");
    assert_keeps(&mut s, &post_status, 405, "POST with a body on the status port");
    assert_keeps(&mut s, &http10("POST", "/admin/reload", true, "", b""), 401, "admin API without a token");
    let token = std::fs::read_to_string(intake.ca_file.with_file_name("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    assert_keeps(&mut s, &http10("POST", "/admin/log-level", true, &auth, b"debug"), 405, "admin wrong method");
    assert_keeps(&mut s, &http10("GET", "/admin/nope", true, &auth, b""), 404, "admin unknown route");
    assert_keeps(&mut s, &http10("GET", "/health", true, "", b""), 200, "status after the admin answers");
    let mut appsec = relay.connect(11);
    let unconfigured = http10("POST", "/api/v2/appsec", true, "", b"{}");
    assert_keeps(&mut appsec, &unconfigured, 503, "appsec has no upstream");
    assert_keeps(&mut appsec, &unconfigured, 503, "appsec again, same connection");
    drop(intake);
    let mut gone = relay.connect(1);
    let series = http10("POST", "/api/v2/series", true, "", b"{}");
    assert_keeps(&mut gone, &series, 502, "intake gone");
    assert_keeps(&mut gone, &series, 502, "intake gone, the Agent's retry on the same connection");
    // Answers after which the relay still closes say so: a malformed request.
    let malformed =
        b"POST /api/v2/series HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    assert_closes_at_once(&mut relay.connect(1), malformed, 400, "malformed request");
});

/// An answer of the relay's own that keeps an HTTP/1.0 keep-alive
/// connection: `Connection: keep-alive`, and the connection stays usable.
fn assert_keeps(c: &mut Client, request: &[u8], status: u16, what: &str) {
    c.write_raw(request);
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!((r.status, r.header("connection")), (status, Some("keep-alive")), "{what}");
}

both_backends_both_protocols!(http10_without_keep_alive_is_closed_after_the_answer, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    for (offset, method, path, status) in [
        (1u16, "POST", "/api/v2/series", 202u16),
        (1, "GET", "/api/v1/validate", 202),
        (1, "HEAD", "/api/v2/series", 202),
        (0, "GET", "/health", 200),
        (0, "GET", "/nope", 404),
    ] {
        let mut c = relay.connect(offset);
        c.write_raw(&http10(method, path, false, "", if method == "POST" { b"{}" } else { b"" }));
        let r = c.read_response(method == "HEAD").unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!((r.status, r.header("connection")), (status, Some("close")), "{method} {path}");
        let rest = read_until_close(&mut c, Duration::from_secs(5));
        assert!(rest.is_empty(), "{method} {path}: bytes after the answer: {:?}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(intake.mock.stats().requests, 3);
});

/// A TLS intake that answers with raw bytes, framing and all, for the
/// answers the mock intake cannot send: [`unframed_answer`] decides them.
struct RawIntake {
    addr: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
}

impl RawIntake {
    fn start(dir: &std::path::Path) -> RawIntake {
        let pki = TestPki::generate(&[]);
        let ca_file = dir.join("raw-ca.pem");
        std::fs::write(&ca_file, &pki.ca_cert_pem).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = MockConfig::new(addr, pki.leaf_cert_pem.clone(), pki.leaf_key_pem.clone());
        let tls = std::sync::Arc::new(loadgen::mock::server_config(&cfg).unwrap());
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(tls).unwrap();
                    let _ = serve_raw(rustls::StreamOwned::new(conn, sock));
                });
            }
        });
        RawIntake { addr, ca_file }
    }
}

/// One TLS session of the raw intake: requests with Content-Length bodies,
/// each answered by [`unframed_answer`]; a close-delimited answer ends the
/// session with close_notify.
fn serve_raw(mut tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let more = |tls: &mut rustls::StreamOwned<_, _>, buf: &mut Vec<u8>| -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = Read::read(tls, &mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !more(&mut tls, &mut buf)? {
                return Ok(());
            }
        };
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        req.parse(&buf[..head_len]).map_err(std::io::Error::other)?;
        let target = req.path.unwrap_or("/").to_string();
        let len: usize = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| std::str::from_utf8(h.value).unwrap().trim().parse().unwrap());
        while buf.len() < head_len + len {
            if !more(&mut tls, &mut buf)? {
                return Ok(());
            }
        }
        buf.drain(..head_len + len);
        let (answer, close) = unframed_answer(&target);
        tls.write_all(&answer)?;
        tls.flush()?;
        if close {
            tls.conn.send_close_notify();
            return tls.flush();
        }
    }
}

/// 100 kB: the body spans TLS records and relay reads.
fn unframed_body() -> Vec<u8> {
    payload(100_000, 77)
}

/// Targets ending in `chunked`: a chunked answer (with a trailer), the
/// session kept; anything else: no length, the body ends at the close.
fn unframed_answer(target: &str) -> (Vec<u8>, bool) {
    let body = unframed_body();
    if target.ends_with("chunked") {
        let mut a =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut chunked = encode_chunked(&body, 7_001);
        chunked.truncate(chunked.len() - 2);
        chunked.extend_from_slice(b"X-Checksum: 1\r\n\r\n");
        a.extend_from_slice(&chunked);
        (a, false)
    } else {
        let mut a = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        a.extend_from_slice(&body);
        (a, true)
    }
}

both_backends!(http10_answers_without_a_length_are_close_delimited, |io: &str| {
    // HTTP/1.1 to the intake: the raw intake speaks only HTTP/1.1.
    let dir = TestDir::new();
    let intake = RawIntake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr, &intake.ca_file, "upstream.protocol = \"http1\"");
    // HTTP/1.0, with keep-alive or not: the body as it is meant (chunks
    // decoded, trailer dropped), no length and no transfer coding, then the close.
    for keep_alive in [true, false] {
        for path in ["/api/v2/series?answer=chunked", "/api/v2/series?answer=close"] {
            let mut c = relay.connect(1);
            c.write_raw(&http10("POST", path, keep_alive, "", b"{}"));
            let (head, body) = split_answer(&read_until_close(&mut c, Duration::from_secs(10)));
            assert!(head.starts_with("http/1.1 200 ok\r\n"), "{path}: {head}");
            assert!(head.contains("\r\nconnection: close\r\n"), "{path}: {head}");
            assert!(!head.contains("transfer-encoding") && !head.contains("content-length"), "{path}: {head}");
            assert!(!head.contains("x-checksum"), "{path}: {head}");
            assert_eq!(body.len(), unframed_body().len(), "{path} keep-alive {keep_alive}");
            assert!(body == unframed_body(), "{path}: body differs");
        }
    }
    // HTTP/1.1 is unchanged: chunked passes through and the connection stays;
    // close-delimited is announced and closed.
    let mut c = relay.connect(1);
    for _ in 0..2 {
        let r = c.request("POST", "/api/v2/series?answer=chunked", &[], b"{}");
        assert_eq!((r.status, r.header("transfer-encoding"), r.header("connection")), (200, Some("chunked"), None));
        assert!(r.body == unframed_body());
    }
    let r = c.request("POST", "/api/v2/series?answer=close", &[], b"{}");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(r.body == unframed_body());
    assert!(read_until_close(&mut c, Duration::from_secs(5)).is_empty());
});

/// Runs ApacheBench against `url` with `args`, bounded by `limit`; its output.
fn run_ab(args: &[&str], url: &str, limit: Duration) -> String {
    use std::io::Read;
    let mut child = std::process::Command::new("/usr/bin/ab")
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ab");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("ab {args:?} did not finish within {limit:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "ab {args:?} failed ({status}):\n{out}\n{err}");
    out
}

/// The number ab prints after `label` ("Complete requests:      200").
fn ab_count(out: &str, label: &str) -> Option<u64> {
    out.lines().find_map(|l| l.strip_prefix(label)).and_then(|v| v.trim().parse().ok())
}

both_backends_both_protocols!(apachebench_http10_with_and_without_keep_alive, |io: &str, protocol: Protocol| {
    if !std::path::Path::new("/usr/bin/ab").exists() {
        eprintln!("/usr/bin/ab missing (Debian package apache2-utils; scripts/setup.sh installs it): skipping");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let body = dir.path().join("series.json");
    std::fs::write(&body, br#"{"series":[{"metric":"ab.test","points":[[1700000000,1]],"type":"gauge"}]}"#).unwrap();
    let body = body.to_str().unwrap();
    let url = format!("http://127.0.0.1:{}/api/v2/series", relay.port(1));
    let base = ["-n", "200", "-c", "4", "-s", "10", "-p", body, "-T", "application/json"];
    for keep_alive in [false, true] {
        let mut args = base.to_vec();
        if keep_alive {
            args.push("-k");
        }
        let out = run_ab(&args, &url, Duration::from_secs(60));
        assert_eq!(ab_count(&out, "Complete requests:"), Some(200), "-k {keep_alive}:\n{out}");
        assert_eq!(ab_count(&out, "Failed requests:"), Some(0), "-k {keep_alive}:\n{out}");
        assert_eq!(ab_count(&out, "Non-2xx responses:"), None, "-k {keep_alive}:\n{out}");
        let kept = ab_count(&out, "Keep-Alive requests:").unwrap_or(0);
        assert_eq!(kept, if keep_alive { 200 } else { 0 }, "-k {keep_alive}:\n{out}");
    }
    assert_eq!(intake.mock.stats().requests, 400);
});
