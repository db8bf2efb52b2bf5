//! Interop with an intake nobody here wrote: Debian's nginx, TLS 1.2 only
//! and TLS 1.3 only, as the intake. Bodies from 0 B to 1 MiB (the large
//! ones are read straight into records), pooled sessions, and sessions
//! resumed when nginx closes them (`keepalive_requests 3`): nginx's access
//! log says which protocol each request came over and whether its TLS
//! session was resumed. A missing nginx fails these tests unless
//! FIPSRELAY_TEST_SKIP_NGINX=1 (setup.sh installs it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const NGINX: &str = "/usr/sbin/nginx";
/// Bytes of nginx's `GET /big` answer: four times a stream's window.
const BIG: usize = 4 << 20;

struct Nginx {
    child: Child,
    addr: SocketAddr,
    access_log: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skip() -> bool {
    if std::env::var("FIPSRELAY_TEST_SKIP_NGINX").as_deref() == Ok("1") {
        eprintln!("skipping: FIPSRELAY_TEST_SKIP_NGINX=1");
        return true;
    }
    assert!(Path::new(NGINX).exists(), "{NGINX} missing: run scripts/setup.sh, or set FIPSRELAY_TEST_SKIP_NGINX=1");
    false
}

/// nginx, one process, TLS with `protocol` only. Every request is passed
/// to a plain server block of the same nginx that answers 202: proxy_pass
/// reads the whole body first, so `$request_length` counts it.
fn start_nginx(dir: &Path, pki: &TestPki, protocol: &str) -> Nginx {
    start_nginx_with(dir, pki, protocol, false, 3)
}

/// As [`start_nginx`]; with `http2`, nginx offers h2 by ALPN
/// (`listen ... ssl http2`, Debian's nginx 1.22). After `keepalive`
/// requests nginx closes a connection: HTTP/1.1 sessions, or with GOAWAY
/// on HTTP/2.
fn start_nginx_with(dir: &Path, pki: &TestPki, protocol: &str, http2: bool, keepalive: usize) -> Nginx {
    let root = dir.join(format!("nginx-{protocol}{}", if http2 { "-h2" } else { "" }));
    let listen_opt = if http2 { " http2" } else { "" };
    std::fs::create_dir_all(&root).unwrap();
    // A large answer (`GET /big`), for the slow-reader test.
    std::fs::write(root.join("big.bin"), payload(BIG, 7)).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    pki.write_to(&root).unwrap();
    for attempt in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let access_log = root.join(format!("access-{attempt}.log"));
        let conf = root.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\npid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  log_format relay '$ssl_protocol $ssl_session_reused $request_length $status $server_protocol $connection $request_uri';\n\
                 access_log {log} relay;\n  client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
                 fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n\
                 client_max_body_size 8m;\n\
                 server {{\n    listen 127.0.0.1:{port} ssl{listen_opt};\n    ssl_certificate {r}/cert.pem;\n    ssl_certificate_key {r}/key.pem;\n\
                 ssl_protocols {protocol};\n    ssl_session_cache shared:relay:1m;\n    keepalive_requests {keepalive};\n\
                 location / {{ proxy_pass http://127.0.0.1:{sink}; proxy_http_version 1.1; }}\n\
                 location = /big {{ alias {r}/big.bin; }}\n  }}\n\
                 server {{\n    listen 127.0.0.1:{sink};\n    access_log off;\n    location / {{ return 202 '{{}}'; }}\n  }}\n}}\n",
                r = root.display(),
                log = access_log.display(),
            ),
        )
        .unwrap();
        let child = Command::new(NGINX)
            .args(["-e", &root.join("error.log").display().to_string(), "-p"])
            .arg(&root)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), access_log };
        // Ready: nginx's own process listens on both ports (nginx cannot bind
        // :0, so they were free a moment ago and may have been taken since:
        // then it exits, and the next attempt takes other ones).
        let pid = nginx.child.id() as i32;
        if eventually(Duration::from_secs(5), || {
            (listens_on(pid, port) && listens_on(pid, sink)) || nginx.child.try_wait().unwrap().is_some()
        }) && nginx.child.try_wait().unwrap().is_none()
        {
            return nginx;
        }
        let _ = nginx.child.kill();
        let _ = nginx.child.wait();
    }
    panic!("nginx did not start: {}", std::fs::read_to_string(root.join("error.log")).unwrap_or_default());
}

/// `upstream` is the relay's upstream protocol: http1, or the default
/// (auto), which offers h2 by ALPN and falls back to HTTP/1.1 here.
fn interop(io: &str, upstream: Protocol, protocol: &str) {
    if skip() {
        return;
    }
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    let nginx = start_nginx(dir.path(), &pki, protocol);
    let ca = dir.path().join(format!("nginx-{protocol}/ca.pem"));
    let relay = Relay::start(dir.path(), io, nginx.addr, &ca, &upstream.with(""));
    let sizes = [0usize, 1024, 65_536, 1 << 20, 700, 3 * 16_384 + 1, 5, 200_000, 1];
    let mut agent = relay.connect(1);
    for (i, &len) in sizes.iter().enumerate() {
        let body = payload(len, i as u64);
        let r = agent.request("POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], &body);
        assert_eq!(r.status, 202, "request {i} ({len} B): {}\n{}", String::from_utf8_lossy(&r.body), relay.log());
    }
    // Every request reached nginx whole, over the one protocol; nginx closed
    // each session after 3 requests and the relay's next ones resumed.
    let mut lines = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&nginx.access_log).unwrap_or_default().lines().map(String::from).collect();
            lines.len() == sizes.len()
        }),
        "nginx logged {lines:?}"
    );
    for (line, &len) in lines.iter().zip(&sizes) {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f[0], f[3]), (protocol, "202"), "{line}");
        assert!(f[2].parse::<usize>().unwrap() > len, "the whole body arrived: {line}");
    }
    assert!(lines.iter().any(|l| l.split(' ').nth(1) == Some("r")), "a resumed session: {lines:?}");
}

both_backends_both_protocols!(nginx_tls12_intake, |io: &str, upstream: Protocol| interop(io, upstream, "TLSv1.2"));
both_backends_both_protocols!(nginx_tls13_intake, |io: &str, upstream: Protocol| interop(io, upstream, "TLSv1.3"));

/// HTTP/2 to an nginx that speaks it: four Agent connections at once, each
/// sending bodies from 0 B to 1 MiB (Content-Length and chunked) and a GET;
/// every request arrives whole. Content-Length bodies longer than nginx's
/// 64 KiB stream window go over HTTP/1.1 (relay::exchange, "Bodies longer
/// than the HTTP/2 window"); the rest, a 384 KiB chunked body among them
/// (past the window, so through HTTP/2 flow control), over HTTP/2, sharing
/// a few connections (at most `h2_max_connections` = 2 per worker and
/// host, 2 workers; every request here goes to the metrics host).
fn h2_interop(io: &str, protocol: &str) {
    h2_interop_with(io, protocol, 1000, &[0usize, 1024, 65_536, 1 << 20, 700, 3 * 16_384 + 1, 5, 200_000, 1], true)
}

fn h2_interop_with(io: &str, protocol: &str, keepalive: usize, sizes: &[usize], chunked: bool) {
    if skip() {
        return;
    }
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    let nginx = start_nginx_with(dir.path(), &pki, "TLSv1.3", true, keepalive);
    let ca = dir.path().join("nginx-TLSv1.3-h2/ca.pem");
    let relay = Relay::start(dir.path(), io, nginx.addr, &ca, &format!("upstream.protocol = \"{protocol}\""));
    let agents = 4;
    std::thread::scope(|scope| {
        for a in 0..agents {
            let relay = &relay;
            scope.spawn(move || {
                let mut agent = relay.connect(1);
                for (i, &len) in sizes.iter().enumerate() {
                    let body = payload(len, (a * 100 + i) as u64);
                    let r = agent.request("POST", "/api/v2/series", &[("DD-API-KEY", FAKE_KEY)], &body);
                    assert_eq!(r.status, 202, "agent {a} request {i} ({len} B): {}", String::from_utf8_lossy(&r.body));
                }
                let r = agent.request("GET", "/api/v1/metadata", &[("DD-API-KEY", FAKE_KEY)], b"");
                assert_eq!(r.status, 202, "GET");
                if !chunked {
                    return;
                }
                // A chunked body (no length: it stays on HTTP/2), decoded
                // into DATA frames, past nginx's window.
                let mut chunked =
                    b"POST /api/v2/series?chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for k in 0..24u64 {
                    chunked.extend_from_slice(b"4000\r\n");
                    chunked.extend_from_slice(&payload(16_384, 1000 + k));
                    chunked.extend_from_slice(b"\r\n");
                }
                chunked.extend_from_slice(b"0\r\n\r\n");
                agent.write_raw(&chunked);
                let r = agent.read_response(false).unwrap();
                assert_eq!(r.status, 202, "chunked");
            });
        }
    });
    let expected = agents * (sizes.len() + 1 + chunked as usize);
    let mut lines = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&nginx.access_log).unwrap_or_default().lines().map(String::from).collect();
            lines.len() == expected
        }),
        "nginx logged {} of {expected}: {lines:?}\n{}",
        lines.len(),
        relay.log()
    );
    let mut conns = std::collections::BTreeSet::new();
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        // Request lengths: up to 65,536 B of body + a head, or 200,000 B
        // and more.
        let long = f[2].parse::<usize>().unwrap() > 100_000 && !f[6].ends_with("?chunked");
        let over = if long { "HTTP/1.1" } else { "HTTP/2.0" };
        assert_eq!((f[3], f[4]), ("202", over), "{line}");
        if !long {
            conns.insert(f[5].to_string());
        }
    }
    for &len in sizes {
        assert!(
            lines.iter().filter(|l| l.split(' ').nth(2).unwrap().parse::<usize>().unwrap() > len).count() >= agents,
            "bodies of {len} B arrived whole: {lines:?}"
        );
    }
    // The status page and /metrics say what the relay speaks.
    assert!(relay.status_page("/").contains(&format!("upstream protocol: {protocol}")));
    let open =
        relay.wait_metric("fipsrelay_upstream_h2_connections{upstream=\"metrics.agent.ddog-gov.com\"}", |v| v >= 1.0);
    assert!(open <= 4.0, "{open} HTTP/2 connections");
    let page = relay.status_page("/");
    assert!(
        page.lines().any(|l| l.starts_with("metrics.agent.ddog-gov.com") && l.split("  ").any(|c| c.trim() == "h2")),
        "the host speaks h2: {page}"
    );
    if keepalive < expected {
        // nginx ended connections with GOAWAY: each request was still
        // processed exactly once (nginx logged `expected` lines, no more).
        assert!(conns.len() >= expected / keepalive, "{conns:?}");
        // Streams in flight when a GOAWAY came were sent again: 0-11 of 40
        // in the runs so far, as the timing falls (so it is printed, not
        // asserted; what must hold is above).
        let replays = relay.log().matches("sent again on another connection").count();
        eprintln!("{io}: {replays} of {expected} requests replayed after a GOAWAY");
        return;
    }
    assert!(
        conns.len() <= 4,
        "{expected} requests over {} connections: {conns:?}\n{lines:?}\n{}",
        conns.len(),
        relay.log()
    );
}

both_backends!(nginx_h2_intake, |io: &str| h2_interop(io, "h2"));
both_backends!(nginx_h2_intake_by_auto, |io: &str| h2_interop(io, "auto"));
// nginx sends GOAWAY after 3 requests a connection: the streams above its
// last stream id are sent again on a new connection, and the Agent sees
// only 202s. (Bodies the Agent buffer holds whole, as Agent payloads of a
// few KiB are; a larger body already sent gets 502, which the Agent retries.)
both_backends!(nginx_h2_goaway_every_3_requests, |io: &str| h2_interop_with(
    io,
    "h2",
    3,
    &[0, 5, 700, 1024, 1, 3000, 20, 512, 1024, 9],
    false
));

/// `auto` against an intake without h2 speaks HTTP/1.1; `h2` is refused
/// (nginx ends the handshake with `no_application_protocol`): 502, and the
/// log says why.
fn h2_fallback(io: &str) {
    if skip() {
        return;
    }
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    let nginx = start_nginx(dir.path(), &pki, "TLSv1.3");
    let ca = dir.path().join("nginx-TLSv1.3/ca.pem");
    let auto = Relay::start(dir.path(), io, nginx.addr, &ca, "upstream.protocol = \"auto\"");
    let mut agent = auto.connect(1);
    for i in 0..3 {
        let r = agent.request("POST", "/api/v2/series", &[], &payload(2000, i));
        assert_eq!(r.status, 202, "{}", auto.log());
    }
    // What the host speaks, on the status page and in /metrics.
    let fallback =
        auto.wait_metric("fipsrelay_upstream_h2_http1_fallback{upstream=\"metrics.agent.ddog-gov.com\"}", |v| v == 1.0);
    assert_eq!(fallback, 1.0);
    let page = auto.status_page("/");
    assert!(
        page.lines().any(|l| l.starts_with("metrics.agent.ddog-gov.com") && l.contains("http/1.1 (by ALPN)")),
        "{page}"
    );
    drop(auto);
    let only = Relay::start(dir.path(), io, nginx.addr, &ca, "upstream.protocol = \"h2\"");
    let r = only.request(1, "POST", "/api/v2/series", &[], b"x");
    assert_eq!(r.status, 502);
    assert!(eventually(Duration::from_secs(5), || only.log().contains("NoApplicationProtocol")), "{}", only.log());
    let lines: Vec<String> =
        std::fs::read_to_string(&nginx.access_log).unwrap_or_default().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.split(' ').nth(4) == Some("HTTP/1.1")), "{lines:?}");
}

both_backends!(nginx_without_h2, h2_fallback);

/// An Agent that stops reading a 4 MiB answer does not slow the other
/// Agents' requests, which share its HTTP/2 connections (one worker): its
/// stream holds at most its window, and only it waits.
fn h2_slow_reader(io: &str) {
    if skip() {
        return;
    }
    let dir = TestDir::new();
    let pki = TestPki::generate(&[]);
    let nginx = start_nginx_with(dir.path(), &pki, "TLSv1.3", true, 1000);
    let ca = dir.path().join("nginx-TLSv1.3-h2/ca.pem");
    let relay = Relay::start(dir.path(), io, nginx.addr, &ca, "upstream.protocol = \"h2\"\nworkers.threads = 1");
    // A small receive buffer, so the relay's writes to this Agent stall
    // within a few KiB (loopback buffers would otherwise take it all).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    sock.connect(&relay.addr(1).into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut slow = Client { reader: std::io::BufReader::new(stream) };
    slow.write_raw(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    // nginx sends what the stream's window allows and the relay's write to
    // this Agent gets stuck: the answer's bytes fill the Agent's receive
    // buffer and stop coming.
    assert!(receive_queue_stalls(slow.stream()), "the large answer never reached the slow Agent");
    // Meanwhile, another Agent's requests go through: were they held behind
    // the stalled stream, each would end in upstream.response_timeout (504).
    let mut fast = relay.connect(1);
    for i in 0..50 {
        let r = fast.request("POST", "/api/v2/series", &[], &payload(2048, i));
        assert_eq!(r.status, 202, "{}", relay.log());
    }
    // The slow Agent reads at last and gets all of it.
    let r = slow.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == payload(BIG, 7), "the large answer arrived whole ({} bytes)", r.body.len());
}

both_backends!(nginx_h2_slow_reader_stalls_only_itself, h2_slow_reader);

/// Waits (at most 10 s) until bytes wait unread on `s` and their count
/// holds still from one poll to the next (20 ms): the sender has stopped,
/// a window or this receive buffer full. False if nothing ever arrived.
fn receive_queue_stalls(s: &std::net::TcpStream) -> bool {
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a valid socket writes one c_int.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(s), libc::FIONREAD, &mut n) };
        n
    };
    let mut last = 0;
    eventually(Duration::from_secs(10), || {
        let was = std::mem::replace(&mut last, queued());
        last > 0 && last == was
    })
}
