//! Egress through the site's HTTP proxy: a `CONNECT host:port` tunnel, then
//! the same FIPS TLS session to the intake as without a proxy, end to end
//! inside the tunnel (SNI and certificate check name the intake, never the
//! proxy).
//!
//! Owns the proxy's runtime state, shared by every worker and the health
//! checker: its TLS config (an `https://` proxy gets its own FIPS TLS
//! session first), the credentials (`upstream.proxy.credentials_file`,
//! swapped whole on reload), its addresses and its counters. It must never
//! put the password in a log line, an error or a page: [`Credentials`] has
//! no `Display` and its `Debug` hides the secret, and every error names the
//! credentials file, never its contents.
//!
//! What the proxy sees: the CONNECT line and `Host` (the intake name and
//! port, or its address with `resolve_locally`), `Proxy-Authorization` when
//! credentials are set, then only TLS records of the intake session.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ClientConfig;

use super::tls::{TlsError, TlsSession};
use crate::config::{ProxyConfig, ProxyScheme};
use crate::files::{self, FileError};
use crate::io::{Backend, Stream};

/// Bound on the proxy's answer head to a CONNECT.
pub const MAX_ANSWER_HEAD: usize = 8 * 1024;
/// Upper bounds (seconds) of the CONNECT latency histogram's buckets.
pub const CONNECT_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// `user:password` for `Proxy-Authorization: Basic`.
pub struct Credentials {
    user: String,
    /// `Basic <base64(user:password)>`: the secret.
    header: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"(hidden)").finish()
    }
}

impl Credentials {
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.header.zeroize();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("upstream.proxy.credentials_file {path}: cannot read it: {source}; create it with one line user:password, mode 0600")]
    Read { path: String, source: io::Error },
    #[error("upstream.proxy.credentials_file {path} is {what}, not a regular file; point it at a file with one line user:password, mode 0600")]
    NotAFile { path: String, what: &'static str },
    #[error("upstream.proxy.credentials_file {path} has mode {mode:04o}: others can read the proxy password; chmod 600 {path}")]
    Permissions { path: String, mode: u32 },
    #[error("upstream.proxy.credentials_file {path}: {problem}; write one line user:password")]
    Format { path: String, problem: &'static str },
}

/// Reads `user:password` (one line; a trailing newline is allowed). The
/// file must not be readable by group or others. No error quotes the file.
pub fn load_credentials(path: &Path) -> Result<Credentials, CredentialsError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = || path.display().to_string();
    let file_error = |e: FileError| match e {
        FileError::Open(source) | FileError::Read(source) => CredentialsError::Read { path: shown(), source },
        FileError::NotRegular(what) => CredentialsError::NotAFile { path: shown(), what },
        FileError::TooLarge { .. } => CredentialsError::Format { path: shown(), problem: "longer than 4096 bytes" },
    };
    let (f, meta) = files::open_regular(path).map_err(file_error)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialsError::Permissions { path: shown(), mode });
    }
    // The file's bytes hold the password: zeroed when dropped, on every path.
    let raw_text = zeroize::Zeroizing::new(files::read_opened(f, &meta, files::MAX_SECRET_BYTES).map_err(file_error)?);
    let text = std::str::from_utf8(&raw_text)
        .map_err(|_| CredentialsError::Format { path: shown(), problem: "not UTF-8 text" })?
        .trim_end_matches(['\n', '\r']);
    if text.starts_with('\u{feff}') {
        return Err(CredentialsError::Format { path: shown(), problem: "starts with a byte order mark" });
    }
    if text.contains(['\n', '\r']) {
        return Err(CredentialsError::Format { path: shown(), problem: "more than one line" });
    }
    let Some((user, password)) = text.split_once(':') else {
        return Err(CredentialsError::Format { path: shown(), problem: "no ':' between user and password" });
    };
    if user.is_empty() {
        return Err(CredentialsError::Format { path: shown(), problem: "the user is empty" });
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(CredentialsError::Format { path: shown(), problem: "holds control characters" });
    }
    let _password = password;
    use base64::Engine as _;
    let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));

    Ok(Credentials { user: user.to_string(), header })
}

/// Counters of tunnels opened through the proxy, shared by all workers
/// (a CONNECT happens once per new session, not per request).
#[derive(Default)]
pub struct ProxyStats {
    /// Tunnels established (2xx to CONNECT).
    pub tunnels: AtomicU64,
    /// Time from TCP connect to the 2xx answer, per [`CONNECT_BUCKETS`] (+Inf last).
    buckets: [AtomicU64; CONNECT_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    /// Failures by what went wrong: the proxy's status code ("407"), or
    /// "connect", "timeout", "tls", "closed", "bad_answer".
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl ProxyStats {
    fn tunnel_opened(&self, took: Duration) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let i = CONNECT_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(CONNECT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn failed(&self, what: String) {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
    }

    /// Per bucket (not cumulative), +Inf last.
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn failures(&self) -> Vec<(String, u64)> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The egress proxy as the relay runs it.
pub struct Proxy {
    pub config: ProxyConfig,
    /// `scheme://host:port`, for logs, pages and metrics.
    pub display: String,
    /// TLS to an `https://` proxy: the FIPS client config, trusting
    /// `upstream.proxy.ca_file` or the system store.
    tls: Option<Arc<ClientConfig>>,
    credentials: ArcSwapOption<Credentials>,
    /// The proxy's addresses: where every tunnel's TCP connect goes when
    /// intake hosts are resolved here (`resolve_locally`).
    addrs: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// The last failed lookup of the proxy's name (logged once).
    lookup_error: Mutex<Option<String>>,
    pub stats: ProxyStats,
}

/// Why the proxy cannot be set up at start (or for `diagnose`).
#[derive(Debug, thiserror::Error)]
pub enum ProxySetupError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("TLS to the https:// proxy (upstream.proxy.ca_file): {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl Proxy {
    /// The proxy of `config`: reads the credentials and, for an `https://`
    /// proxy, builds its FIPS TLS config (its CA file, or the system store).
    pub fn from_config(config: &ProxyConfig) -> Result<Proxy, ProxySetupError> {
        use crate::crypto::{client_config, TrustSource};
        let tls = match (&config.scheme, &config.ca_file) {
            (ProxyScheme::Http, _) => None,
            (ProxyScheme::Https, Some(p)) => Some(client_config(&TrustSource::CaFile(p.clone()))?),
            (ProxyScheme::Https, None) => Some(client_config(&TrustSource::System)?),
        };
        Ok(Proxy::new(config.clone(), tls)?)
    }

    /// `tls`: the client config for an `https://` proxy (ignored for http://).
    pub fn new(config: ProxyConfig, tls: Option<Arc<ClientConfig>>) -> Result<Proxy, CredentialsError> {
        let credentials = match &config.credentials_file {
            Some(p) => Some(Arc::new(load_credentials(p)?)),
            None => None,
        };
        let addrs = match config.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, config.port)],
            Err(_) => Vec::new(),
        };
        Ok(Proxy {
            display: config.display(),
            tls: if config.scheme == ProxyScheme::Https { tls } else { None },
            config,
            credentials: ArcSwapOption::new(credentials),
            addrs: ArcSwap::from_pointee(addrs),
            next: AtomicUsize::new(0),
            lookup_error: Mutex::new(None),
            stats: ProxyStats::default(),
        })
    }

    /// Re-reads the credentials file (config reload). On error the old
    /// credentials stay. `Ok(None)`: no credentials file is configured.
    pub fn reload_credentials(&self) -> Result<Option<String>, CredentialsError> {
        match &self.config.credentials_file {
            None => Ok(None),
            Some(p) => {
                let c = load_credentials(p)?;
                let user = c.user.clone();
                self.credentials.store(Some(Arc::new(c)));
                Ok(Some(user))
            }
        }
    }

    /// The user name sent to the proxy, if any (for pages; never the password).
    pub fn user(&self) -> Option<String> {
        self.credentials.load().as_ref().map(|c| c.user.clone())
    }

    /// Records a failed lookup of the proxy's name; true if it is a new error.
    pub fn note_lookup_error(&self, e: &str) -> bool {
        let mut last = self.lookup_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(e) {
            return false;
        }
        *last = Some(e.to_string());
        true
    }

    pub fn note_lookup_ok(&self) {
        *self.lookup_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the proxy's host is a name to resolve (not an IP literal).
    pub fn needs_lookup(&self) -> bool {
        self.config.host.parse::<std::net::IpAddr>().is_err()
    }

    /// Publishes the proxy's resolved addresses.
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.addrs.store(Arc::new(addrs));
    }

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// The next proxy address, round robin (`resolve_locally`).
    pub fn pick_addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        Some(addrs[self.next.fetch_add(1, Ordering::Relaxed) % addrs.len()])
    }

    /// Opens a tunnel to `authority` (`host:port`) through the proxy at
    /// `addr`: TCP connect, TLS to an `https://` proxy, CONNECT and its
    /// answer; each step bounded by `timeout`.
    pub async fn open_tunnel<B: Backend>(
        &self,
        addr: SocketAddr,
        authority: &str,
        timeout: Duration,
    ) -> Result<Hop<B::Stream>, ProxyError> {
        let started = Instant::now();
        let result = self.tunnel::<B>(addr, authority, timeout).await;
        match &result {
            Ok(_) => self.stats.tunnel_opened(started.elapsed()),
            Err(e) => self.stats.failed(e.label()),
        }
        result
    }

    async fn tunnel<B: Backend>(
        &self,
        addr: SocketAddr,
        authority: &str,
        timeout: Duration,
    ) -> Result<Hop<B::Stream>, ProxyError> {
        let proxy = self.config.authority();
        let timed_out = |step: &'static str| ProxyError::Timeout { proxy: proxy.clone(), addr, step, after: timeout };
        let tcp = match crate::rt::timeout(timeout, B::connect(addr)).await {
            Err(_) => return Err(timed_out("TCP connect")),
            Ok(Err(source)) => return Err(ProxyError::Connect { proxy, addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay();
        let mut hop = match &self.tls {
            None => Hop::Tcp(tcp),
            Some(tls) => {
                match crate::rt::timeout(timeout, TlsSession::connect(tcp, tls.clone(), &self.config.host)).await {
                    Err(_) => return Err(timed_out("TLS handshake")),
                    Ok(Err(source)) => return Err(ProxyError::Tls { proxy, source }),
                    Ok(Ok(s)) => Hop::Tls(Box::new(s)),
                }
            }
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(c) = self.credentials.load().as_ref() {
            request.push_str("Proxy-Authorization: ");
            request.push_str(&c.header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let with_credentials = self.credentials.load().is_some();
        let exchange = async {
            let (res, mut sent) = hop.write_all(request.into_bytes()).await;
            {
                // It held the encoded password.
                use zeroize::Zeroize;
                sent.zeroize();
            }
            res.map_err(|e| ProxyError::Closed { proxy: proxy.clone(), detail: format!("sending CONNECT: {e}") })?;
            read_connect_answer(&mut hop, &proxy, authority, with_credentials).await
        };
        match crate::rt::timeout(timeout, exchange).await {
            Err(_) => Err(timed_out("CONNECT answer")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(hop),
        }
    }
}

/// Reads the proxy's answer head to CONNECT; `Ok` on 2xx with nothing after
/// the head (the intake speaks only after our ClientHello).
async fn read_connect_answer<S: Stream>(
    hop: &mut Hop<S>,
    proxy: &str,
    authority: &str,
    with_credentials: bool,
) -> Result<(), ProxyError> {
    let mut buf = Vec::with_capacity(MAX_ANSWER_HEAD);
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut fields);
        match answer.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = answer.code.unwrap_or(0);
                let reason = answer.reason.unwrap_or("").trim().to_string();
                if (200..300).contains(&status) {
                    if buf.len() > head_len {
                        return Err(ProxyError::BadAnswer {
                            proxy: proxy.into(),
                            detail: format!(
                                "{} bytes after its {status} answer, before the TLS handshake",
                                buf.len() - head_len
                            ),
                        });
                    }
                    return Ok(());
                }
                return Err(ProxyError::Refused {
                    proxy: proxy.into(),
                    status,
                    reason: printable(&reason),
                    fix: refusal_fix(status, authority, with_credentials),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(ProxyError::BadAnswer {
                    proxy: proxy.into(),
                    detail: format!("unparsable answer to CONNECT: {e}"),
                })
            }
        }
        if buf.len() == buf.capacity() {
            return Err(ProxyError::BadAnswer {
                proxy: proxy.into(),
                detail: format!("answer head to CONNECT over {MAX_ANSWER_HEAD} bytes"),
            });
        }
        let (res, b) = hop.read(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                return Err(ProxyError::Closed {
                    proxy: proxy.into(),
                    detail: "closed the connection before answering CONNECT".into(),
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ProxyError::Closed {
                    proxy: proxy.into(),
                    detail: format!("reading the CONNECT answer: {e}"),
                })
            }
        }
    }
}

/// The reason phrase as logged: printable ASCII only, bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(80).collect()
}

/// What the operator should do about a proxy's refusal.
fn refusal_fix(status: u16, authority: &str, with_credentials: bool) -> String {
    match status {
        407 if with_credentials => {
            "the proxy rejected the credentials: check upstream.proxy.credentials_file (user:password)".into()
        }
        407 => "the proxy wants credentials: set upstream.proxy.credentials_file (user:password, mode 0600)".into(),
        403 => format!("the proxy's policy refuses CONNECT {authority}: allow the intake hosts (e.g. .ddog-gov.com, port 443) in its ACLs"),
        502..=504 => format!("the proxy could not reach {authority}: check the proxy's DNS and its egress to the intake"),
        405 | 501 => "the proxy does not allow CONNECT: enable CONNECT to the intake's port 443".into(),
        _ => "check the proxy's configuration and logs".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to proxy {proxy} ({addr}): {source}; check upstream.proxy.url and that the proxy runs")]
    Connect { proxy: String, addr: SocketAddr, source: io::Error },
    #[error("proxy {proxy} ({addr}): {step} timed out after {after:?}")]
    Timeout { proxy: String, addr: SocketAddr, step: &'static str, after: Duration },
    #[error("TLS with proxy {proxy} failed: {source}; check upstream.proxy.ca_file")]
    Tls { proxy: String, source: TlsError },
    #[error("proxy {proxy} answered {status} {reason}: {fix}")]
    Refused { proxy: String, status: u16, reason: String, fix: String },
    #[error("proxy {proxy} {detail}")]
    Closed { proxy: String, detail: String },
    #[error("proxy {proxy} sent a bad answer: {detail}")]
    BadAnswer { proxy: String, detail: String },
}

impl ProxyError {
    /// The metric label of the failure.
    pub fn label(&self) -> String {
        match self {
            ProxyError::Connect { .. } => "connect".into(),
            ProxyError::Timeout { .. } => "timeout".into(),
            ProxyError::Tls { .. } => "tls".into(),
            ProxyError::Refused { status, .. } => status.to_string(),
            ProxyError::Closed { .. } => "closed".into(),
            ProxyError::BadAnswer { .. } => "bad_answer".into(),
        }
    }
}

/// The stream an intake session runs over: the TCP connection itself (no
/// proxy, or an `http://` proxy after CONNECT), or the TLS session to an
/// `https://` proxy.
pub enum Hop<S: Stream> {
    Tcp(S),
    Tls(Box<TlsSession<S>>),
}

impl<S: Stream> Stream for Hop<S> {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Hop::Tcp(s) => s.read(buf).await,
            Hop::Tls(t) => {
                let res = t.read_plain(&mut buf).await;
                (res, buf)
            }
        }
    }

    /// Only the plain hop reads a bounded amount; relayed bodies are read
    /// from Agent sockets, never from a hop.
    async fn read_max(&mut self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Hop::Tcp(s) => s.read_max(buf, max).await,
            Hop::Tls(_) => (Err(io::Error::new(io::ErrorKind::Unsupported, "bounded read through a TLS hop")), buf),
        }
    }

    async fn read_strided(&mut self, buf: Vec<u8>, reads: crate::io::Strided) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Hop::Tcp(s) => s.read_strided(buf, reads).await,
            Hop::Tls(_) => (Err(io::Error::new(io::ErrorKind::Unsupported, "vectored read through a TLS hop")), buf),
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Hop::Tcp(s) => s.write_all(buf).await,
            Hop::Tls(t) => {
                let res = t.write_plain(&buf).await;
                (res, buf)
            }
        }
    }

    fn poll_read_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<u8>,
    ) -> std::task::Poll<io::Result<usize>> {
        match self {
            Hop::Tcp(s) => s.poll_read_ready(cx, buf),
            Hop::Tls(t) => t.poll_read_plain_ready(cx, buf),
        }
    }

    /// Only the plain hop writes without waiting (through a TLS hop the
    /// connection's task writes).
    fn try_write_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        match self {
            Hop::Tcp(s) => s.try_write_now(buf),
            Hop::Tls(_) => Ok(None),
        }
    }

    fn try_read_now(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        match self {
            Hop::Tcp(s) => s.try_read_now(buf),
            Hop::Tls(t) => t.read_plain_now(buf),
        }
    }

    /// Only a plain hop arms; the TLS hop to an `https://` proxy checks
    /// liveness by reading what it holds.
    fn arm(&mut self, buf: &mut Vec<u8>) {
        if let Hop::Tcp(s) = self {
            s.arm(buf)
        }
    }

    fn is_armed(&self) -> bool {
        matches!(self, Hop::Tcp(s) if s.is_armed())
    }

    async fn disarm(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        match self {
            Hop::Tcp(s) => s.disarm(buf).await,
            Hop::Tls(_) => Ok(None),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Hop::Tcp(s) => s.shutdown_write(),
            Hop::Tls(t) => t.shutdown_write(),
        }
    }

    fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Hop::Tcp(s) => s.set_nodelay(),
            Hop::Tls(t) => t.set_nodelay(),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Hop::Tcp(s) => s.raw_fd(),
            Hop::Tls(t) => t.raw_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("proxy.credentials");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn credentials_are_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "relay:pa55:word\n", 0o600);
        let c = load_credentials(&p).unwrap();
        assert_eq!(c.user(), "relay");
        // base64("relay:pa55:word")
        assert_eq!(c.header, "Basic cmVsYXk6cGE1NTp3b3Jk");
        assert!(!format!("{c:?}").contains("pa55"), "{c:?}");

        let p = write(dir.path(), "relay:pa55\n", 0o644);
        let e = load_credentials(&p).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600") && !e.contains("pa55"), "{e}");
        // Secrets unlike anything in a temporary path (".tmpwjoDiQ" holds "pw").
        for (text, why) in
            [("nocolon\n", "no ':'"), (":Zq9secret\n", "user is empty"), ("a:b\nc:Xy7d\n", "more than one line")]
        {
            let p = write(dir.path(), text, 0o600);
            let e = load_credentials(&p).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains("Zq9secret") && !e.contains("Xy7d"), "{text:?}: {e}");
        }
        let e = load_credentials(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("upstream.proxy.credentials_file") && e.contains("missing"), "{e}");
    }

    #[test]
    fn refusals_tell_the_fix() {
        assert!(refusal_fix(407, "h:443", true).contains("credentials_file"));
        assert!(refusal_fix(407, "h:443", false).contains("set upstream.proxy.credentials_file"));
        assert!(refusal_fix(403, "h:443", false).contains("ACL"));
        assert!(refusal_fix(503, "h:443", false).contains("could not reach h:443"));
        let e = ProxyError::Refused {
            proxy: "127.0.0.1:3128".into(),
            status: 407,
            reason: "Proxy Authentication Required".into(),
            fix: refusal_fix(407, "h:443", true),
        };
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:3128 answered 407 Proxy Authentication Required: the proxy rejected the credentials: check upstream.proxy.credentials_file (user:password)"
        );
        assert_eq!(e.label(), "407");
    }

    #[test]
    fn stats_bucket_connect_latency() {
        let s = ProxyStats::default();
        s.tunnel_opened(Duration::from_micros(800));
        s.tunnel_opened(Duration::from_millis(30));
        s.tunnel_opened(Duration::from_secs(9));
        let b = s.buckets();
        assert_eq!((b[0], b[5], b[CONNECT_BUCKETS.len()]), (1, 1, 1));
        assert_eq!(s.tunnels.load(Ordering::Relaxed), 3);
        s.failed("407".into());
        s.failed("407".into());
        assert_eq!(s.failures(), vec![("407".to_string(), 2)]);
    }
}
