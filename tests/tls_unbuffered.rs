//! `TlsSession` (rustls' unbuffered client API for the handshake, then
//! records sealed and opened in place by `upstream::records`) against a real rustls server
//! over loopback TCP, on the epoll backend: byte-exact data through a tiny
//! reader buffer, a server-requested key update mid-answer, close_notify vs.
//! bare TCP EOF, TLS 1.2, session resumption, and the allocations made per
//! request/answer exchange in steady state (counted on the client thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;

use fipsrelay::io::epoll::Epoll;
use fipsrelay::io::{Backend, Stream as _};
use fipsrelay::upstream::tls::TlsSession;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, HandshakeKind, ServerConfig, ServerConnection, SupportedProtocolVersion};

// ---- allocations counted on the threads that ask for it ----

struct Counting;

thread_local! {
    static COUNT: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| {
            if c.get() {
                ALLOCS.with(|a| a.set(a.get() + 1));
            }
        });
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| {
            if c.get() {
                ALLOCS.with(|a| a.set(a.get() + 1));
            }
        });
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- a rustls server driven by hand over a blocking socket ----

const NAME: &str = "metrics.agent.ddog-gov.com";

struct Pki {
    client: Arc<ClientConfig>,
    certs: Vec<CertificateDer<'static>>,
    key_pem: String,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let pki = loadgen::pki::TestPki::generate(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let client = fipsrelay::crypto::client_config(&fipsrelay::crypto::TrustSource::CaFile(ca)).unwrap();
    let certs = CertificateDer::pem_slice_iter(pki.leaf_cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
    Pki { client, certs, key_pem: pki.leaf_key_pem, _dir: dir }
}

fn server_config(pki: &Pki, version: &'static SupportedProtocolVersion) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(Arc::new(fipsrelay::crypto::fips_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.certs.clone(), key)
            .unwrap(),
    )
}

struct Server {
    conn: ServerConnection,
    sock: TcpStream,
}

impl Server {
    fn accept(listener: &TcpListener, config: &Arc<ServerConfig>) -> Server {
        let (sock, _) = listener.accept().unwrap();
        let mut s = Server { conn: ServerConnection::new(config.clone()).unwrap(), sock };
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        s.flush();
        s
    }

    fn flush(&mut self) {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock).unwrap();
        }
    }

    /// Like `flush`; false once the peer has gone.
    fn try_flush(&mut self) -> bool {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                return false;
            }
        }
        true
    }

    fn send(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).unwrap();
        self.flush();
    }

    fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            match self.conn.reader().read(&mut got[filled..]) {
                Ok(0) => panic!("client closed after {filled} of {n} bytes"),
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(self.conn.read_tls(&mut self.sock).unwrap() > 0, "client hung up");
                    self.conn.process_new_packets().unwrap();
                    self.flush();
                }
                Err(e) => panic!("server read: {e}"),
            }
        }
        got
    }
}

fn spawn_server(
    pki: &Pki,
    version: &'static SupportedProtocolVersion,
    script: impl FnOnce(TcpListener, Arc<ServerConfig>) + Send + 'static,
) -> (std::net::SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(pki, version);
    (addr, std::thread::spawn(move || script(listener, config)))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn connect(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> TlsSession<<Epoll as Backend>::Stream> {
    let io = Epoll::connect(addr).await.unwrap();
    TlsSession::connect(io, config, NAME).await.unwrap()
}

/// Reads exactly `n` plaintext bytes through a buffer of capacity `cap`.
async fn read_exact<S: fipsrelay::io::Stream>(s: &mut TlsSession<S>, n: usize, cap: usize) -> Vec<u8> {
    let mut all = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(cap);
    while all.len() < n {
        buf.clear();
        let k = s.read_plain(&mut buf).await.unwrap();
        assert!(k > 0 && k == buf.len() && buf.len() <= cap);
        assert_eq!(buf.capacity(), cap, "read_plain must not grow the caller's buffer");
        all.extend_from_slice(&buf);
    }
    assert_eq!(all.len(), n, "more plaintext than the peer sent");
    all
}

#[test]
fn tiny_reader_buffer_key_update_and_close_notify_tls13() {
    let pki = pki();
    let request = pattern(40_000, 1);
    let answer = pattern(50_000, 2);
    let (req, ans) = (request.clone(), answer.clone());
    let (addr, server) = spawn_server(&pki, &rustls::version::TLS13, move |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        assert_eq!(s.recv_exact(req.len()), req);
        s.send(&ans[..20_000]);
        // Asks the client to update its keys too: its answer must go out.
        s.conn.refresh_traffic_keys().unwrap();
        s.send(&ans[20_000..]);
        let again = s.recv_exact(30_000);
        assert_eq!(again, pattern(30_000, 3));
        s.conn.send_close_notify();
        s.flush();
        // Wait for the client's close_notify, then EOF.
        let mut sink = [0u8; 64];
        while s.conn.read_tls(&mut s.sock).unwrap_or(0) > 0 {
            if s.conn.process_new_packets().unwrap().peer_has_closed() {
                break;
            }
        }
        let _ = s.conn.reader().read(&mut sink);
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        assert!(s.describe().contains("TLSv1_3"), "{}", s.describe());
        s.write_plain(&request).await.unwrap();
        assert_eq!(read_exact(&mut s, 7, 7).await, answer[..7]);
        assert_eq!(read_exact(&mut s, answer.len() - 7, 1000).await, answer[7..]);
        // Our own key update (what the confidentiality limit triggers):
        // the rest of the data goes under the new key.
        s.write_plain(&pattern(30_000, 3)[..10_000]).await.unwrap();
        s.update_keys().unwrap();
        s.write_plain(&pattern(30_000, 3)[10_000..]).await.unwrap();
        let mut buf = Vec::with_capacity(100);
        assert_eq!(s.read_plain(&mut buf).await.unwrap(), 0, "close_notify reads as Ok(0)");
        assert!(!s.is_reusable_now());
        s.close().await;
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
fn tcp_eof_without_close_notify_is_unexpected_eof() {
    let pki = pki();
    let (addr, server) = spawn_server(&pki, &rustls::version::TLS13, |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        s.recv_exact(5);
        s.send(b"partial");
        // Dropped without close_notify.
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        s.write_plain(b"hello").await.unwrap();
        assert_eq!(read_exact(&mut s, 7, 64).await, b"partial");
        let mut buf = Vec::with_capacity(64);
        let e = s.read_plain(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    })
    .unwrap();
    server.join().unwrap();
}

/// Two sessions with one client config: the second is resumed (TLS 1.2:
/// session id or ticket; TLS 1.3: the tickets read with the first answer).
fn resumption(version: &'static SupportedProtocolVersion, tag: &str) {
    let pki = pki();
    let (addr, server) = spawn_server(&pki, version, |l, cfg| {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = Server::accept(&l, &cfg);
            let got = s.recv_exact(3000);
            s.send(&got);
            kinds.push(s.conn.handshake_kind());
            s.conn.send_close_notify();
            s.flush();
        }
        assert_eq!(kinds, [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]);
    });
    let tag = tag.to_string();
    Epoll::block_on(async move {
        for i in 0..2u8 {
            let mut s = connect(addr, pki.client.clone()).await;
            assert!(s.describe().contains(&tag), "{}", s.describe());
            let data = pattern(3000, i);
            s.write_plain(&data).await.unwrap();
            assert_eq!(read_exact(&mut s, data.len(), 16 * 1024).await, data);
            s.close().await;
        }
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
fn resumption_tls12() {
    resumption(&rustls::version::TLS12, "TLSv1_2");
}

#[test]
fn resumption_tls13() {
    resumption(&rustls::version::TLS13, "TLSv1_3");
}

async fn exchange<S: fipsrelay::io::Stream>(s: &mut TlsSession<S>, data: &[u8], buf: &mut Vec<u8>) {
    s.write_plain(data).await.unwrap();
    buf.clear();
    while buf.len() < data.len() {
        s.read_plain(buf).await.unwrap();
    }
    assert_eq!(&buf[..], data);
}

/// One 1 KiB request and a 1 KiB answer on an established session: what
/// this exchange allocates on the client thread. Nothing: records are
/// sealed and opened in the session's own buffers (`upstream::records`),
/// not in rustls' record layer (which made one `Vec` per record each way).
#[test]
fn steady_state_allocates_nothing_per_exchange() {
    let pki = pki();
    const ROUNDS: usize = 50;
    let (addr, server) = spawn_server(&pki, &rustls::version::TLS13, |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        for _ in 0..ROUNDS + 5 {
            let got = s.recv_exact(1024);
            s.send(&got);
        }
        // Open until the client has looked at the idle session.
        assert_eq!(s.recv_exact(1), b".");
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        let data = pattern(1024, 9);
        let mut buf = Vec::with_capacity(16 * 1024);
        for _ in 0..5 {
            exchange(&mut s, &data, &mut buf).await; // tickets and first-use allocations
        }
        ALLOCS.with(|a| a.set(0));
        COUNT.with(|c| c.set(true));
        for _ in 0..ROUNDS {
            exchange(&mut s, &data, &mut buf).await;
        }
        COUNT.with(|c| c.set(false));
        let allocs = ALLOCS.with(|a| a.get());
        println!("allocations per 1 KiB request + 1 KiB answer: {:.2}", allocs as f64 / ROUNDS as f64);
        assert_eq!(allocs, 0, "{allocs} allocations over {ROUNDS} exchanges");
        assert!(s.is_reusable_now());
        s.write_plain(b".").await.unwrap();
    })
    .unwrap();
    server.join().unwrap();
}

/// A session that has read nothing since its handshake still has the TLS 1.3
/// session tickets waiting on the socket: that is not a dead session. Once
/// the server closes, the same check says dead.
#[test]
fn pending_tickets_are_not_death_but_fin_is() {
    let pki = pki();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (flushed_tx, flushed) = std::sync::mpsc::channel();
    let (addr, server) = spawn_server(&pki, &rustls::version::TLS13, move |l, cfg| {
        let s = Server::accept(&l, &cfg);
        // Handshake done, tickets written: the client's address.
        flushed_tx.send(s.sock.peer_addr().unwrap()).unwrap();
        let _ = rx.recv(); // hold the connection open until told
        drop(s);
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        // The tickets arrive: bytes wait unread on the client's socket.
        let client = flushed.recv().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while unread_bytes(client) == 0 {
            assert!(std::time::Instant::now() < deadline, "no session ticket reached the client");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(s.is_reusable_now(), "unread session tickets must not mark the session dead");
        assert!(s.is_reusable_now(), "and the check is repeatable");
        tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while s.is_reusable_now() {
            assert!(std::time::Instant::now() < deadline, "a closed session must be seen as dead");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .unwrap();
    server.join().unwrap();
}

/// Bytes received and not read yet on the TCP socket bound to `local`
/// (the kernel's rx_queue in /proc/net/tcp), 0 if there is none.
fn unread_bytes(local: std::net::SocketAddr) -> u64 {
    let std::net::SocketAddr::V4(v4) = local else { panic!("an IPv4 address: {local}") };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&want.as_str()))
        .and_then(|f| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())
        .unwrap_or(0)
}

/// Interop with a TLS stack nobody here wrote: `openssl s_server` (OpenSSL,
/// not rustls or aws-lc) answers GET in `-www` mode, over TLS 1.2 and 1.3
/// with each AES-GCM suite, and echoes lines reversed in `-rev` mode. (The
/// peer-requested key update is tested against rustls above: s_server
/// takes its key-update command from its own stdin only.)
#[test]
fn openssl_s_server_interop_tls12_and_tls13() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is not installed: scripts/setup.sh installs it");
    }
    let gen = loadgen::pki::TestPki::generate(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &gen.leaf_cert_pem).unwrap();
    std::fs::write(&key, &gen.leaf_key_pem).unwrap();
    std::fs::write(&ca, &gen.ca_cert_pem).unwrap();
    let client = fipsrelay::crypto::client_config(&fipsrelay::crypto::TrustSource::CaFile(ca)).unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("TLSv1_3", &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"], "TLS13_AES_128_GCM_SHA256"),
        ("TLSv1_3", &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], "TLS13_AES_256_GCM_SHA384"),
        (
            "TLSv1_2",
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            "TLSv1_2",
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
    ];
    for (version, args, suite) in cases {
        for mode in ["-www", "-rev"] {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut server = std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-accept", &format!("127.0.0.1:{port}"), mode])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .args(*args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while TcpStream::connect(addr).is_err() {
                assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let client = client.clone();
            let result = Epoll::block_on(async move {
                let io = Epoll::connect(addr).await.unwrap();
                let mut s = TlsSession::connect(io, client, NAME).await.unwrap();
                let described = s.describe();
                let mut got = Vec::new();
                let mut buf = Vec::with_capacity(4096);
                if mode == "-www" {
                    s.write_plain(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
                    loop {
                        buf.clear();
                        match s.read_plain(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => got.extend_from_slice(&buf),
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                } else {
                    // Two echoed lines (s_server -rev reverses each line).
                    for line in [&b"hello\n"[..], b"after\n"] {
                        s.write_plain(line).await.unwrap();
                        buf.clear();
                        while !buf.ends_with(b"\n") {
                            s.read_plain(&mut buf).await.unwrap();
                        }
                        got.extend_from_slice(&buf);
                    }
                }
                (described, got)
            })
            .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            let (described, got) = result;
            assert!(described.contains(version) && described.contains(suite), "{described}");
            let text = String::from_utf8_lossy(&got);
            if mode == "-www" {
                assert!(text.starts_with("HTTP/1.0 200 ok"), "{suite}: {text}");
            } else {
                assert!(text.starts_with("olleh\n") && text.ends_with("retfa\n"), "{suite}: {text:?}");
            }
        }
    }
}

/// Key updates the server asks for, several in a row, get one answer and
/// the data flows under the new keys both ways; a flood of records without
/// data (40 key updates in a row) cuts the session instead of spinning.
#[test]
fn requested_key_updates_coalesce_and_a_flood_is_cut() {
    let pki = pki();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (addr, server) = spawn_server(&pki, &rustls::version::TLS13, move |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        assert_eq!(s.recv_exact(5), b"hello");
        for _ in 0..3 {
            s.conn.refresh_traffic_keys().unwrap();
        }
        s.send(b"three");
        assert_eq!(s.recv_exact(5), b"after", "our records under the updated key");
        // The client may cut the session (and close) as soon as it has
        // read enough of the flood: these writes may meet a closed socket.
        for _ in 0..40 {
            s.conn.refresh_traffic_keys().unwrap();
            if !s.try_flush() {
                break;
            }
        }
        s.conn.writer().write_all(b"late").unwrap();
        s.try_flush();
        // Open until the client has seen the flood.
        let _ = done_rx.recv();
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        s.write_plain(b"hello").await.unwrap();
        assert_eq!(read_exact(&mut s, 5, 64).await, b"three");
        s.write_plain(b"after").await.unwrap();
        let mut buf = Vec::with_capacity(64);
        let e = s.read_plain(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("too many TLS records without data"), "{e}");
        done_tx.send(()).unwrap();
    })
    .unwrap();
    server.join().unwrap();
}

/// Plaintext read straight from a socket into lent record buffers (how the
/// relay reads an Agent body: several records in one vectored read,
/// sealed where they lie, one write) reaches the peer as sent, for TLS 1.2
/// and 1.3, mixed with ordinary writes; an empty read sends nothing; more
/// than the lent room is refused and the session is not used again.
fn lent_records(version: &'static SupportedProtocolVersion) {
    let pki = pki();
    // More than one lending's worth (8 records), and a short last record.
    let body = 9 * 16 * 1024 + 5000;
    let total = body + 700;
    let (addr, server) = spawn_server(&pki, version, move |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        let got = s.recv_exact(total);
        // Within rustls' buffer limit per send.
        for piece in got.chunks(16 * 1024) {
            s.send(piece);
        }
        s.conn.send_close_notify();
        s.flush();
    });
    let data = pattern(total, 9);
    let (mut agent, local) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    };
    let sent = data[..body].to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        // In pieces that do not fall on record boundaries.
        for piece in sent.chunks(7000) {
            agent.write_all(piece).unwrap();
        }
        agent
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        let mut down = Epoll::stream(local).unwrap();
        let mut left = body;
        let mut reads = 0;
        while left > 0 {
            let mut lent = s.lend_records(left, 8).unwrap();
            assert!(lent.reads.total <= 8 * 16 * 1024 && lent.reads.total <= left);
            let (n, buf) = down.read_strided(std::mem::take(&mut lent.buf), lent.reads).await;
            lent.buf = buf;
            let n = n.unwrap();
            assert!(n > 0 && n <= lent.reads.total);
            s.seal_lent_records(lent, n).unwrap();
            s.flush().await.unwrap();
            left -= n;
            reads += 1;
        }
        assert!(reads >= 2, "a body over 8 records takes more than one lending");
        // Nothing read: nothing goes out; then a plain write.
        let lent = s.lend_records(100, 8).unwrap();
        s.seal_lent_records(lent, 0).unwrap();
        s.write_plain(&data[body..]).await.unwrap();
        assert_eq!(read_exact(&mut s, total, 16 * 1024).await, data);
        // More than the lent room is refused; the session is done.
        let lent = s.lend_records(10, 8).unwrap();
        assert!(s.seal_lent_records(lent, 11).is_err());
        assert!(s.write_plain(b"x").await.is_err(), "a session whose lent records failed is not used again");
    })
    .unwrap();
    drop(writer.join().unwrap());
    server.join().unwrap();
}

#[test]
fn lent_records_tls12() {
    lent_records(&rustls::version::TLS12);
}

#[test]
fn lent_records_tls13() {
    lent_records(&rustls::version::TLS13);
}

/// An HTTP/2 connection's frames, laid out in record places, written by an
/// exchange without waiting: what a full socket does not take waits in the
/// session (moved, not copied) for the connection's task to flush, and
/// nothing jumps ahead of it.
fn laid_out_writes_without_waiting(version: &'static SupportedProtocolVersion) {
    use fipsrelay::h2::out::{Output, Put};
    use fipsrelay::upstream::tls::WrittenNow;
    let pki = pki();
    // Far more than a loopback socket takes before its peer reads.
    let (first, big, small) = (20_000, 32 << 20, 40_000);
    let data = pattern(first + big + small, 3);
    let expected = data.clone();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (addr, server) = spawn_server(&pki, version, move |l, cfg| {
        let mut s = Server::accept(&l, &cfg);
        wait.recv().unwrap();
        let got = s.recv_exact(expected.len());
        s.send(if got == expected { b"same" } else { b"diff" });
        s.conn.send_close_notify();
        s.flush();
    });
    Epoll::block_on(async move {
        let mut s = connect(addr, pki.client.clone()).await;
        let mut out = Output::new(s.record_slots(), 0);
        // An empty socket takes a small write whole.
        out.put(&data[..first]);
        assert_eq!(s.try_write_laid_out(&mut out).unwrap(), WrittenNow::All);
        assert!(!s.has_unwritten());
        out.clear();
        out.put(&data[first..first + big]);
        assert_eq!(s.try_write_laid_out(&mut out).unwrap(), WrittenNow::Left, "the socket is full");
        assert!(s.has_unwritten());
        out.clear();
        // Ciphertext waits: the next frames are left for the task's write.
        out.put(&data[first + big..]);
        assert_eq!(s.try_write_laid_out(&mut out).unwrap(), WrittenNow::NotNow);
        assert_eq!(out.len(), small, "left as it was");
        go.send(()).unwrap();
        s.flush().await.unwrap();
        assert!(!s.has_unwritten());
        s.write_laid_out(&mut out).await.unwrap();
        assert_eq!(read_exact(&mut s, 4, 16).await, b"same", "every byte, in order");
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
fn laid_out_writes_without_waiting_tls12() {
    laid_out_writes_without_waiting(&rustls::version::TLS12);
}

#[test]
fn laid_out_writes_without_waiting_tls13() {
    laid_out_writes_without_waiting(&rustls::version::TLS13);
}
