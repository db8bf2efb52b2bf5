//! The mock Datadog intake: a TLS HTTP/1.1 server, on its own thread and
//! tokio runtime, that reads every request to the end, hashes and counts the
//! decoded body, records who asked for what (SNI, Host, path, headers) and
//! answers as the current [`Behavior`] says — including the faults a real
//! intake or network shows (reset, truncated answer, slow answer). It serves
//! its own counters as JSON at `GET /mock/stats`, the digest of every recorded
//! body hash ([`crate::digest::BodyDigest`], fixed size however many requests)
//! at `GET /mock/digest` and zeroes everything on `POST /mock/reset` (none of
//! the three is counted as a request). Its memory is bounded: the digest is
//! fixed, and only the first [`MAX_RECORDS`] requests are kept one by one.
//! It is test tooling: it must
//! never be used as a real server, and it builds rustls configs with the ring
//! provider only.

mod request;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::CipherSuite;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::duration::{parse_duration, ParseDurationError};
use crate::hash::BodyHasher;
use request::{ReadError, RequestHead};

mod h2;

/// Path of the counters endpoint; requests to it are not recorded.
pub const STATS_PATH: &str = "/mock/stats";
/// `GET` here answers [`MockDigest`] as JSON; not recorded.
pub const DIGEST_PATH: &str = "/mock/digest";
/// `POST` here zeroes every counter and record ([`MockIntake::reset`]); not
/// recorded.
pub const RESET_PATH: &str = "/mock/reset";
/// Records kept for [`MockIntake::records`] (a few hundred bytes each); later
/// requests still count in [`MockStats`] and the digest but are not kept one
/// by one. Verification never depends on them.
pub const MAX_RECORDS: usize = 20_000;
/// Listen backlog.
const BACKLOG: u32 = 1024;
/// Read buffer per connection; bodies pass through it in pieces this big.
const IO_BUFFER: usize = 64 * 1024;
/// A TLS handshake that takes longer than this counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra bytes promised but never sent by [`Fault::CloseMidAnswer`].
const MISSING_ANSWER_BYTES: usize = 4096;

/// Which TLS cipher suites the mock accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CipherMode {
    /// TLS 1.2 and 1.3 with ring's default suites (AES-GCM and ChaCha20).
    #[default]
    Default,
    /// Only TLS13_CHACHA20_POLY1305_SHA256 and the TLS 1.2
    /// ECDHE_*_CHACHA20_POLY1305 suites: a client offering only AES-GCM fails
    /// the handshake.
    ChaChaOnly,
}

/// A misbehaviour applied after the whole request has been read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Close with SO_LINGER 0 (TCP RST), no answer.
    ResetAfterRequest,
    /// Send an answer head whose Content-Length exceeds what follows, send
    /// part of it, then close (no TLS close_notify).
    CloseMidAnswer,
    /// Wait this long before sending the answer head.
    SlowAnswer(Duration),
    /// Send the answer head, then close without the body.
    CloseAfterHead,
    /// Answer normally but do not record or count the request: a lost body,
    /// to prove that `loadgen --verify` notices.
    DropRecord,
    /// Answer normally and record the request twice: a duplicated body.
    DuplicateRecord,
    /// Answer normally but record the hash of the body with its first byte
    /// flipped: a corrupted body.
    CorruptRecord,
    /// Read the request head, then close with SO_LINGER 0 (TCP RST) without
    /// reading the body: the sender is cut mid-request.
    ResetMidRequest,
    /// Accept the TCP connection, then never read or write (until the mock
    /// stops or [`BLACKHOLE_HOLD`] passes): the TLS handshake never finishes.
    Blackhole,
    /// Read the ClientHello, answer with a fatal TLS alert
    /// (handshake_failure), close.
    TlsAlert,
    /// Read each request body at no more than this many bytes per second
    /// (per connection), then answer normally: a slow intake, for
    /// backpressure tests.
    SlowRead(u64),
    /// HTTP/2 only (HTTP/1.1 answers normally): after this many streams
    /// on a connection, a graceful GOAWAY (RFC 9113 §6.8: first with the
    /// highest stream id, then a PING, then the real last one); streams
    /// under way are answered, new ones must go to another connection.
    GoAway(u32),
    /// HTTP/2 only: after this many streams on a connection, GOAWAY at once
    /// with the last stream processed; streams the client sent after it are
    /// never processed (and must be sent again elsewhere).
    GoAwayAbrupt(u32),
    /// HTTP/2 only: the first stream of each connection is refused
    /// unprocessed with RST_STREAM REFUSED_STREAM (RFC 9113 §8.7).
    RefuseFirstStream,
    /// HTTP/2 only: after its first answer, a connection goes silent:
    /// nothing read, nothing written (no PING answered) until
    /// [`BLACKHOLE_HOLD`] passes.
    Freeze,
}

/// How long a blackholed connection is held before the mock lets it go.
pub const BLACKHOLE_HOLD: Duration = Duration::from_secs(60);

/// A TLS 1.2-framed fatal `handshake_failure` alert record.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseFaultError {
    #[error(
        "unknown fault {0:?}; use none, reset, close-mid-answer, close-after-head, slow:<duration>, \
         slow-read:<bytes per second, e.g. 64k>, drop-record, duplicate-record, corrupt-record, \
         reset-mid-request, blackhole, tls-alert, goaway:<streams>, goaway-abrupt:<streams>, \
         refuse-stream or freeze"
    )]
    Unknown(String),
    #[error("bad duration in fault: {0}")]
    Duration(#[from] ParseDurationError),
}

impl FromStr for Fault {
    type Err = ParseFaultError;

    /// `none`, `reset`, `close-mid-answer`, `close-after-head`, `slow:2s`,
    /// `drop-record`, `duplicate-record`, `corrupt-record`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Fault::None),
            "reset" => Ok(Fault::ResetAfterRequest),
            "close-mid-answer" => Ok(Fault::CloseMidAnswer),
            "close-after-head" => Ok(Fault::CloseAfterHead),
            "drop-record" => Ok(Fault::DropRecord),
            "duplicate-record" => Ok(Fault::DuplicateRecord),
            "corrupt-record" => Ok(Fault::CorruptRecord),
            "blackhole" => Ok(Fault::Blackhole),
            "reset-mid-request" => Ok(Fault::ResetMidRequest),
            "tls-alert" => Ok(Fault::TlsAlert),
            "refuse-stream" => Ok(Fault::RefuseFirstStream),
            "freeze" => Ok(Fault::Freeze),
            _ if s.starts_with("goaway:") || s.starts_with("goaway-abrupt:") => {
                let (n, abrupt) = match s.strip_prefix("goaway-abrupt:") {
                    Some(n) => (n, true),
                    None => (&s["goaway:".len()..], false),
                };
                match n.parse::<u32>() {
                    Ok(n) if n > 0 && abrupt => Ok(Fault::GoAwayAbrupt(n)),
                    Ok(n) if n > 0 => Ok(Fault::GoAway(n)),
                    _ => Err(ParseFaultError::Unknown(s.to_owned())),
                }
            }
            _ if s.starts_with("slow-read:") => {
                let rate = &s["slow-read:".len()..];
                let (digits, mult) = match rate.as_bytes().last() {
                    Some(b'k' | b'K') => (&rate[..rate.len() - 1], 1024),
                    Some(b'm' | b'M') => (&rate[..rate.len() - 1], 1024 * 1024),
                    _ => (rate, 1),
                };
                match digits.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Fault::SlowRead(n * mult)),
                    _ => Err(ParseFaultError::Unknown(s.to_owned())),
                }
            }
            _ => match s.strip_prefix("slow:") {
                Some(d) => Ok(Fault::SlowAnswer(parse_duration(d)?)),
                None => Err(ParseFaultError::Unknown(s.to_owned())),
            },
        }
    }
}

/// How the mock answers; change it at any time with
/// [`MockIntake::set_behavior`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behavior {
    /// Status of the answer (default 202).
    pub status: u16,
    /// JSON body of the answer (default `{}`).
    pub body: String,
    /// Added before answering (default 0).
    pub latency: Duration,
    pub fault: Fault,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior { status: 202, body: "{}".to_owned(), latency: Duration::ZERO, fault: Fault::None }
    }
}

#[derive(Clone, Debug)]
pub struct MockConfig {
    pub listen: SocketAddr,
    /// Leaf first, then intermediates.
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub behavior: Behavior,
    pub cipher: CipherMode,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (the h2 crate's default, no
    /// limit, when `None`).
    pub h2_max_streams: Option<u32>,
    /// HTTP/2 receive windows announced, per stream and per connection
    /// (the h2 crate's 65,535 bytes each when `None`).
    pub h2_stream_window: Option<u32>,
    pub h2_connection_window: Option<u32>,
    /// Offer only `http/1.1` by ALPN (an intake without HTTP/2).
    pub http1_only: bool,
}

impl MockConfig {
    /// Default behavior and ciphers.
    pub fn new(listen: SocketAddr, cert_chain_pem: String, key_pem: String) -> Self {
        MockConfig {
            listen,
            cert_chain_pem,
            key_pem,
            behavior: Behavior::default(),
            cipher: CipherMode::Default,
            h2_max_streams: None,
            h2_stream_window: None,
            h2_connection_window: None,
            http1_only: false,
        }
    }
}

/// One request as the intake received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Server name the client sent in the TLS ClientHello.
    pub sni: Option<String>,
    pub host: Option<String>,
    pub method: String,
    /// Request target as received (path and query).
    pub path: String,
    /// Decoded body length (after de-chunking).
    pub body_len: u64,
    /// [`crate::hash::body_hash`] of the decoded body.
    pub body_hash: u64,
    /// All request headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Same for every request on one TCP connection; starts at 1.
    pub connection_id: u64,
    /// The request came over HTTP/2 (ALPN h2), not HTTP/1.1.
    pub http2: bool,
}

impl RequestRecord {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Totals, as served at [`STATS_PATH`]. Requests to the stats path are not
/// counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    pub requests: u64,
    pub body_bytes: u64,
    pub hash_count: u64,
    /// Wrapping sum of the body hashes (order-independent fingerprint).
    pub hash_sum: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests per Host header (the SNI when there is no Host, else "").
    pub by_host: BTreeMap<String, u64>,
    /// Requests per path, query string removed.
    pub by_path: BTreeMap<String, u64>,
}

/// What the mock recorded, as served at [`DIGEST_PATH`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockDigest {
    /// Requests counted since start or the last reset.
    pub requests: u64,
    /// Digest of the [`crate::hash::body_hash`] of every recorded body.
    pub digest: crate::digest::BodyDigest,
}

#[derive(Debug, thiserror::Error)]
pub enum MockConfigError {
    #[error("the mock's certificate chain is not valid PEM: {0}")]
    CertPem(#[source] rustls::pki_types::pem::Error),
    #[error("the mock's certificate chain PEM holds no certificate")]
    NoCert,
    #[error("the mock's private key is not valid PEM: {0}")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    #[error("rustls refused the mock's TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

impl From<MockConfigError> for io::Error {
    fn from(e: MockConfigError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Builds the server config for `cfg`, ring provider only.
pub fn server_config(cfg: &MockConfig) -> Result<rustls::ServerConfig, MockConfigError> {
    let certs = CertificateDer::pem_slice_iter(cfg.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(MockConfigError::CertPem)?;
    if certs.is_empty() {
        return Err(MockConfigError::NoCert);
    }
    let key = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes()).map_err(MockConfigError::KeyPem)?;
    let mut provider = rustls::crypto::ring::default_provider();
    if cfg.cipher == CipherMode::ChaChaOnly {
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // h2 for clients that offer it (the relay's upstream.protocol h2 or
    // auto); a client that offers no ALPN speaks HTTP/1.1.
    config.alpn_protocols =
        if cfg.http1_only { vec![b"http/1.1".to_vec()] } else { vec![b"h2".to_vec(), b"http/1.1".to_vec()] };
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

#[derive(Default)]
struct Recorded {
    records: Vec<RequestRecord>,
    stats: MockStats,
    digest: crate::digest::BodyDigest,
}

/// State shared by the handle and the server tasks.
#[derive(Default)]
struct Shared {
    behavior: RwLock<Behavior>,
    recorded: Mutex<Recorded>,
    connections: AtomicU64,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    h2_max_streams: Option<u32>,
    h2_windows: (Option<u32>, Option<u32>),
}

impl Shared {
    fn behavior(&self) -> Behavior {
        self.behavior.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> MockStats {
        let mut stats = self.recorded().stats.clone();
        stats.connections = self.connections.load(Ordering::Relaxed);
        stats
    }

    /// Records a request as `fault` says: normally, not at all
    /// ([`Fault::DropRecord`]) or twice ([`Fault::DuplicateRecord`]).
    fn record_with(&self, fault: Fault, record: RequestRecord) {
        match fault {
            Fault::DropRecord => {}
            Fault::DuplicateRecord => {
                self.record(record.clone());
                self.record(record);
            }
            _ => self.record(record),
        }
    }

    fn record(&self, record: RequestRecord) {
        let mut guard = self.recorded();
        let recorded = &mut *guard;
        let stats = &mut recorded.stats;
        stats.requests += 1;
        stats.body_bytes += record.body_len;
        stats.hash_count += 1;
        stats.hash_sum = stats.hash_sum.wrapping_add(record.body_hash);
        recorded.digest.insert(record.body_hash);
        let host = record.host.clone().or_else(|| record.sni.clone()).unwrap_or_default();
        *stats.by_host.entry(host).or_default() += 1;
        let path = record.path.split('?').next().unwrap_or_default();
        match stats.by_path.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                stats.by_path.insert(path.to_owned(), 1);
            }
        }
        if recorded.records.len() < MAX_RECORDS {
            recorded.records.push(record);
        }
    }

    fn digest(&self) -> MockDigest {
        let recorded = self.recorded();
        MockDigest { requests: recorded.stats.requests, digest: recorded.digest.clone() }
    }

    fn reset(&self) {
        *self.recorded() = Recorded::default();
        self.connections.store(0, Ordering::Relaxed);
        self.handshakes.store(0, Ordering::Relaxed);
        self.handshake_failures.store(0, Ordering::Relaxed);
    }
}

/// Handle to a running mock intake. Dropping it stops the server.
pub struct MockIntake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockIntake {
    /// Binds `cfg.listen` (port 0 picks one; see [`MockIntake::addr`]) and
    /// serves on a background thread with its own tokio runtime.
    pub fn start(cfg: MockConfig) -> io::Result<MockIntake> {
        let tls = server_config(&cfg)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-intake")
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            bind(cfg.listen)?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behavior: RwLock::new(cfg.behavior),
            h2_max_streams: cfg.h2_max_streams,
            h2_windows: (cfg.h2_stream_window, cfg.h2_connection_window),
            ..Shared::default()
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("mock-intake".into()).spawn(move || {
            runtime.block_on(accept_loop(listener, acceptor, task_shared, stop_rx));
            // Drops every connection task.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(MockIntake { addr, shared, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies to requests whose body finishes reading after this call
    /// ([`Fault::CorruptRecord`]: whose head finishes reading after it).
    pub fn set_behavior(&self, behavior: Behavior) {
        *self.shared.behavior.write().unwrap_or_else(|e| e.into_inner()) = behavior;
    }

    /// Requests received so far, oldest first (at most [`MAX_RECORDS`]).
    pub fn records(&self) -> Vec<RequestRecord> {
        self.shared.recorded().records.clone()
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// The digest of every recorded body (what `GET /mock/digest` serves).
    pub fn digest(&self) -> MockDigest {
        self.shared.digest()
    }

    /// Zeroes every counter and drops every record (what `POST /mock/reset`
    /// does).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// TCP connections accepted.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn handshakes_completed(&self) -> u64 {
        self.shared.handshakes.load(Ordering::Relaxed)
    }

    /// Handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection and joins the server thread.
    /// Idempotent; records and stats stay readable.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockIntake {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut next_connection_id = 1u64;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let id = next_connection_id;
                    next_connection_id += 1;
                    tokio::spawn(serve_connection(tcp, acceptor.clone(), Arc::clone(&shared), id));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

type Conn = BufReader<TlsStream<TcpStream>>;

/// What to do with the connection after one exchange.
enum Next {
    KeepAlive,
    /// Send close_notify and close.
    Close,
    /// Drop the connection as it is (no close_notify).
    Abort,
}

async fn serve_connection(mut tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>, id: u64) {
    let _ = tcp.set_nodelay(true);
    // Connection-level faults act before TLS.
    match shared.behavior().fault {
        Fault::Blackhole => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(BLACKHOLE_HOLD).await;
            drop(tcp);
            return;
        }
        Fault::TlsAlert => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            let mut hello = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.read(&mut hello)).await;
            let _ = tcp.write_all(&HANDSHAKE_FAILURE_ALERT).await;
            let _ = tcp.shutdown().await;
            return;
        }
        _ => {}
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared.handshakes.fetch_add(1, Ordering::Relaxed);
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        h2::serve(tls, shared, sni, id).await;
        return;
    }
    let mut conn = BufReader::with_capacity(IO_BUFFER, tls);
    loop {
        match serve_one(&mut conn, &shared, &sni, id).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => {
                let _ = conn.shutdown().await;
                return;
            }
            Ok(Next::Abort) | Err(_) => return,
        }
    }
}

/// Reads one request to the end and answers it.
async fn serve_one(conn: &mut Conn, shared: &Shared, sni: &Option<String>, connection_id: u64) -> io::Result<Next> {
    let head = match request::read_head(conn).await {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(Next::Close),
        Err(ReadError::Malformed(why)) => return bad_request(conn, &why).await,
        Err(ReadError::Io(e)) => return Err(e),
    };
    let framing = match head.framing() {
        Ok(f) => f,
        Err(ReadError::Malformed(why)) => return bad_request(conn, &why).await,
        Err(ReadError::Io(e)) => return Err(e),
    };
    if head.expects_continue() {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        conn.flush().await?;
    }
    let control_path = matches!(head.target.split('?').next(), Some(STATS_PATH | DIGEST_PATH | RESET_PATH));
    if shared.behavior().fault == Fault::ResetMidRequest && !control_path {
        conn.get_ref().get_ref().0.set_zero_linger()?;
        return Ok(Next::Abort);
    }
    // Decided before the body is read, since it changes how it is hashed.
    let corrupt = shared.behavior().fault == Fault::CorruptRecord;
    let mut hasher = BodyHasher::new();
    let mut sink = request::HashSink::new(&mut hasher, corrupt);
    if let Fault::SlowRead(rate) = shared.behavior().fault {
        if !control_path {
            sink = sink.throttled(rate);
        }
    }
    let body_len = match request::read_body(conn, framing, &mut sink).await {
        Ok(n) => n,
        Err(ReadError::Malformed(why)) => return bad_request(conn, &why).await,
        Err(ReadError::Io(e)) => return Err(e),
    };
    let keep_alive = head.keep_alive();
    let is_head = head.method == "HEAD";

    let control = match (head.method.as_str(), head.target.split('?').next()) {
        ("GET", Some(STATS_PATH)) => Some(serde_json::to_string(&shared.stats()).map_err(io::Error::other)?),
        ("GET", Some(DIGEST_PATH)) => Some(serde_json::to_string(&shared.digest()).map_err(io::Error::other)?),
        ("POST", Some(RESET_PATH)) => {
            shared.reset();
            Some("{}".to_owned())
        }
        _ => None,
    };
    if let Some(json) = control {
        write_answer(conn, 200, json.as_bytes(), false, !keep_alive).await?;
        return Ok(if keep_alive { Next::KeepAlive } else { Next::Close });
    }

    let behavior = shared.behavior();
    shared.record_with(behavior.fault, record(head, sni, body_len, hasher.finish(), connection_id));

    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    let body = behavior.body.as_bytes();
    match behavior.fault {
        // Connection-level faults act at accept; a session already open answers normally.
        Fault::None
        | Fault::DropRecord
        | Fault::DuplicateRecord
        | Fault::CorruptRecord
        | Fault::Blackhole
        | Fault::TlsAlert
        | Fault::SlowRead(_)
        | Fault::GoAway(_)
        | Fault::GoAwayAbrupt(_)
        | Fault::RefuseFirstStream
        | Fault::Freeze
        | Fault::ResetMidRequest => {}
        Fault::SlowAnswer(delay) => tokio::time::sleep(delay).await,
        Fault::ResetAfterRequest => {
            conn.get_ref().get_ref().0.set_zero_linger()?;
            return Ok(Next::Abort);
        }
        Fault::CloseAfterHead => {
            let head = answer_head(behavior.status, body.len(), false);
            conn.write_all(&head).await?;
            conn.flush().await?;
            return Ok(Next::Abort);
        }
        Fault::CloseMidAnswer => {
            let head = answer_head(behavior.status, body.len() + MISSING_ANSWER_BYTES, false);
            conn.write_all(&head).await?;
            conn.write_all(body).await?;
            conn.flush().await?;
            return Ok(Next::Abort);
        }
    }
    write_answer(conn, behavior.status, body, is_head, !keep_alive).await?;
    Ok(if keep_alive { Next::KeepAlive } else { Next::Close })
}

fn record(head: RequestHead, sni: &Option<String>, body_len: u64, body_hash: u64, connection_id: u64) -> RequestRecord {
    RequestRecord {
        sni: sni.clone(),
        host: head.header("host").map(str::to_owned),
        method: head.method,
        path: head.target,
        body_len,
        body_hash,
        headers: head.headers,
        connection_id,
        http2: false,
    }
}

async fn bad_request(conn: &mut Conn, why: &str) -> io::Result<Next> {
    let body = serde_json::json!({ "error": why }).to_string();
    write_answer(conn, 400, body.as_bytes(), false, true).await?;
    Ok(Next::Close)
}

fn answer_head(status: u16, content_length: usize, close: bool) -> Vec<u8> {
    let mut head =
        format!("HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n", crate::wire::reason_phrase(status));
    if status != 204 && status != 304 {
        head.push_str(&format!("Content-Length: {content_length}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

async fn write_answer(conn: &mut Conn, status: u16, body: &[u8], head_request: bool, close: bool) -> io::Result<()> {
    let mut answer = answer_head(status, body.len(), close);
    if !head_request && status != 204 && status != 304 {
        answer.extend_from_slice(body);
    }
    conn.write_all(&answer).await?;
    conn.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_from_str() {
        assert_eq!("none".parse(), Ok(Fault::None));
        assert_eq!("reset".parse(), Ok(Fault::ResetAfterRequest));
        assert_eq!("close-mid-answer".parse(), Ok(Fault::CloseMidAnswer));
        assert_eq!("close-after-head".parse(), Ok(Fault::CloseAfterHead));
        assert_eq!("slow:2s".parse(), Ok(Fault::SlowAnswer(Duration::from_secs(2))));
        assert_eq!("drop-record".parse(), Ok(Fault::DropRecord));
        assert_eq!("duplicate-record".parse(), Ok(Fault::DuplicateRecord));
        assert_eq!("slow-read:64k".parse(), Ok(Fault::SlowRead(65536)));
        assert_eq!("slow-read:2m".parse(), Ok(Fault::SlowRead(2 * 1024 * 1024)));
        assert_eq!("slow-read:1000".parse(), Ok(Fault::SlowRead(1000)));
        assert!("slow-read:0".parse::<Fault>().is_err());
        assert!("slow-read:fast".parse::<Fault>().is_err());
        assert_eq!("corrupt-record".parse(), Ok(Fault::CorruptRecord));
        assert!("slow:2".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
        assert_eq!("goaway:3".parse(), Ok(Fault::GoAway(3)));
        assert_eq!("goaway-abrupt:10".parse(), Ok(Fault::GoAwayAbrupt(10)));
        assert!("goaway:0".parse::<Fault>().is_err());
        assert!("goaway-abrupt:x".parse::<Fault>().is_err());
        assert_eq!("refuse-stream".parse(), Ok(Fault::RefuseFirstStream));
        assert_eq!("freeze".parse(), Ok(Fault::Freeze));
    }
}
