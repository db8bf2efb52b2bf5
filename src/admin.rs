//! The admin API on the status port: `POST /admin/drain`, `PUT
//! /admin/log-level`, `POST /admin/reload`, each behind a bearer token.
//!
//! Owns: the token file (read at start, or created with mode 0600 from the
//! FIPS random generator), the constant-time token check, routing of
//! `/admin/*` requests, the commands workers send to the control loop, and
//! the config reload plan (apply `log.level`, refuse anything that needs a
//! restart). Workers only parse, authenticate and forward a command; the
//! control loop (`control::signals`) applies it. Nothing here runs on the data path,
//! and neither the token nor an `Authorization` value is ever logged.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Config, ConfigError, RawConfig, Source};
use crate::files::{self, FileError};
use crate::http1::MAX_HEADERS;

/// Largest request body an admin route accepts; larger gets 413.
pub const MAX_BODY: u64 = 4096;
/// Random bytes in a created token (hex-encoded in the file).
pub const TOKEN_BYTES: usize = 32;
/// A token read from the file must be at least this long.
pub const MIN_TOKEN_LEN: usize = 16;
/// Every admin route starts with this.
pub const PREFIX: &[u8] = b"/admin/";

/// Why the admin token could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path} has mode {mode:04o}: group or others may read or write the admin token; run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("admin.token_file {path} is {what}, not a regular file; point admin.token_file at a file (mode 0600) or remove it so fipsrelay creates one")]
    NotAFile { path: String, what: &'static str },
    #[error(
        "cannot read admin.token_file {path}: {source}; make it readable by the user fipsrelay starts as (mode 0600)"
    )]
    Read { path: String, source: io::Error },
    #[error("admin.token_file {path} does not exist and cannot be created: {source}; create it beforehand (mode 0600, holding one random token), make its directory writable for the user fipsrelay starts as, set admin.token_file to a writable path, or set admin.enabled = false")]
    Create { path: String, source: io::Error },
    #[error("admin.token_file {path} holds no usable token: {problem}; write one (for example `openssl rand -hex 32`) or delete the file so fipsrelay creates one")]
    Bad { path: String, problem: &'static str },
    #[error("cannot create an admin token: the FIPS random generator failed")]
    Random,
}

/// The admin bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(********)")
    }
}

impl AdminToken {
    /// The token a previous process handed over (restart in place).
    pub fn from_handover(bytes: Vec<u8>) -> AdminToken {
        AdminToken(bytes.trim_ascii().to_vec())
    }

    /// The secret, only for handing it to the next process.
    pub fn secret(&self) -> &[u8] {
        &self.0
    }

    /// Whether `presented` is the token, in time independent of where they
    /// differ. A length mismatch is rejected without looking at the content.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, presented).is_ok()
    }
}

/// What happened to the token file at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Read,
    Created,
}

/// Reads the token from `path`, or creates the file (mode 0600, a fresh
/// random token) when it does not exist. Refuses a file that group or others
/// may read or write.
pub fn load_or_create_token(path: &Path) -> Result<(AdminToken, TokenSource), TokenError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(_) => read_token(path).map(|t| (t, TokenSource::Read)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut raw = [0u8; TOKEN_BYTES];
            aws_lc_rs::rand::fill(&mut raw).map_err(|_| TokenError::Random)?;
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
            match created {
                Ok(mut f) => {
                    f.write_all(format!("{hex}\n").as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|source| TokenError::Create { path: shown, source })?;
                    Ok((AdminToken(hex.into_bytes()), TokenSource::Created))
                }
                // Someone else created it in between: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(path).map(|t| (t, TokenSource::Read)),
                Err(source) => Err(TokenError::Create { path: shown, source }),
            }
        }
        Err(source) => Err(TokenError::Read { path: shown, source }),
    }
}

/// What [`load_or_create_token`] would refuse, without creating anything:
/// an existing file must hold a usable token and be private; a missing one
/// is created at start.
pub fn check_token_file(path: &Path) -> Result<(), TokenError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => read_token(path).map(|_| ()),
    }
}

/// Reads the token from the file `path`, refusing what [`load_or_create_token`]
/// refuses; creates nothing (`fipsrelay reload` reads it this way).
pub fn read_token(path: &Path) -> Result<AdminToken, TokenError> {
    let shown = || path.display().to_string();
    let file_error = |e: FileError| match e {
        FileError::Open(source) | FileError::Read(source) => TokenError::Read { path: shown(), source },
        FileError::NotRegular(what) => TokenError::NotAFile { path: shown(), what },
        FileError::TooLarge { .. } => TokenError::Bad { path: shown(), problem: "longer than 4096 bytes" },
    };
    let (f, meta) = files::open_regular(path).map_err(file_error)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Permissions { path: shown(), mode });
    }
    let text = files::read_opened(f, &meta, files::MAX_SECRET_BYTES).map_err(file_error)?;
    let token = text.trim_ascii();
    if token.is_empty() {
        return Err(TokenError::Bad { path: shown(), problem: "the file is empty" });
    }
    if !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(TokenError::Bad { path: shown(), problem: "it must be one line of visible ASCII characters" });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::Bad { path: shown(), problem: "shorter than 16 characters" });
    }
    Ok(AdminToken(token.to_vec()))
}

/// What workers need to serve `/admin/*`: the token (None = admin disabled)
/// and the way to the control loop.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    pub token: Option<AdminToken>,
    pub commands: mpsc::UnboundedSender<AdminCommand>,
}

/// The answer to an admin request: status and a short plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminReply {
    pub status: u16,
    pub body: String,
}

impl AdminReply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        AdminReply { status, body: body.into() }
    }
}

/// What a worker asks of the control loop.
#[derive(Debug)]
pub enum AdminCommand {
    /// Stop accepting and drain, like SIGTERM. Sent after the 202 was written.
    Drain { peer: SocketAddr },
    /// Replace the log filter with `directive`.
    SetLogLevel { peer: SocketAddr, directive: String, reply: oneshot::Sender<AdminReply> },
    /// Re-read the config file and apply what can change at runtime.
    Reload { peer: SocketAddr, reply: oneshot::Sender<AdminReply> },
}

/// Sends a command that needs an answer to the control loop and waits for it.
pub async fn ask_control(
    access: &AdminAccess,
    command: impl FnOnce(oneshot::Sender<AdminReply>) -> AdminCommand,
) -> AdminReply {
    let (tx, rx) = oneshot::channel();
    if access.commands.send(command(tx)).is_err() {
        return AdminReply::new(503, "the relay is shutting down; nothing was changed");
    }
    match crate::rt::timeout(CONTROL_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => AdminReply::new(503, "the relay is shutting down; nothing was changed"),
        Err(_) => AdminReply::new(503, "the control loop did not answer in time; check the log"),
    }
}

/// How long a worker waits for the control loop to answer a command.
pub const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a status-port request target is an admin route.
pub fn is_admin_target(target: &[u8]) -> bool {
    target.starts_with(PREFIX)
}

/// Whether `/admin/*` may answer `peer`: always from loopback (all of
/// 127.0.0.0/8, `::1`, and their IPv4-mapped forms on a dual-stack
/// listener); from anywhere else only with `admin.allow_non_local`.
pub fn peer_allowed(peer: std::net::IpAddr, allow_non_local: bool) -> bool {
    allow_non_local || peer.to_canonical().is_loopback()
}

/// The 403 a non-loopback peer gets while `admin.allow_non_local` is off.
pub fn non_local_refused(peer: std::net::IpAddr) -> AdminReply {
    AdminReply::new(
        403,
        format!(
            "forbidden: the admin API answers only loopback peers, and {peer} is not one; call it on this host, or set admin.allow_non_local = true (the bearer token then crosses the network in cleartext)"
        ),
    )
}

/// The admin routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Drain,
    LogLevel,
    Reload,
    /// A known route with the wrong method; the one it takes.
    WrongMethod {
        allow: &'static str,
    },
    NotFound,
}

impl Route {
    /// A short name for the log.
    pub fn name(self) -> &'static str {
        match self {
            Route::Drain => "drain",
            Route::LogLevel => "log-level",
            Route::Reload => "reload",
            Route::WrongMethod { .. } => "wrong-method",
            Route::NotFound => "unknown",
        }
    }
}

/// An admin request as read from its (validated) head.
#[derive(Debug)]
pub struct AdminRequest {
    pub route: Route,
    /// The path without its query, for the log.
    pub path: String,
    /// A bearer token was presented and it is the right one.
    pub authorized: bool,
}

/// Reads method, path and `Authorization` from the head `http1::parse_request`
/// rendered (same fields as received) and checks the token.
pub fn inspect(head: &[u8], token: &AdminToken) -> AdminRequest {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return AdminRequest { route: Route::NotFound, path: String::new(), authorized: false };
    }
    let path = req.path.unwrap_or("").split('?').next().unwrap_or("").to_string();
    let method = req.method.unwrap_or("");
    let route = match (path.as_str(), method) {
        ("/admin/drain", "POST") => Route::Drain,
        ("/admin/drain", _) => Route::WrongMethod { allow: "POST" },
        ("/admin/log-level", "PUT") => Route::LogLevel,
        ("/admin/log-level", _) => Route::WrongMethod { allow: "PUT" },
        ("/admin/reload", "POST") => Route::Reload,
        ("/admin/reload", _) => Route::WrongMethod { allow: "POST" },
        _ => Route::NotFound,
    };
    let mut values = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let authorized = match (values.next(), values.next()) {
        (Some(h), None) => bearer(h.value).is_some_and(|t| token.matches(t)),
        _ => false,
    };
    AdminRequest { route, path, authorized }
}

/// The credentials of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Renders an admin answer into `out`. Admin answers always close the connection.
pub fn render(reply: &AdminReply, extra: &[(&str, &str)], client: crate::http1::ClientConn, out: &mut Vec<u8>) {
    let body = if reply.body.ends_with('\n') { reply.body.clone() } else { format!("{}\n", reply.body) };
    out.clear();
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            reply.status,
            reason(reply.status),
            body.len()
        )
        .as_bytes(),
    );
    for (name, value) in extra {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(client.connection_field().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

fn reason(status: u16) -> &'static str {
    match status {
        409 => "Conflict",
        other => crate::http1::reason(other),
    }
}

/// What a reload will do, decided before anything is applied.
#[derive(Debug)]
pub enum ReloadPlan {
    /// The file does not load or validate: 400 with the config error.
    Invalid(String),
    /// Keys other than `log.level` changed: restart in place with `config`.
    Restart { config: Box<Config>, keys: Vec<String> },
    /// Apply `log_level` (None: `RUST_LOG` overrides it) and keep `config`.
    Apply { config: Box<Config>, log_level: Option<String> },
}

/// Keys a running relay can change without a restart.
pub const RUNTIME_KEYS: &[&str] = &["log.level"];

/// Decides a reload: `running` is the config in effect (as written, after
/// environment overrides), `loaded` the file read again.
pub fn plan_reload(running: &RawConfig, loaded: Result<Config, ConfigError>, rust_log_set: bool) -> ReloadPlan {
    let new = match loaded {
        Ok(c) => c,
        Err(e) => return ReloadPlan::Invalid(e.to_string()),
    };
    let restart: Vec<String> =
        config::changed_keys(running, &new.raw).into_iter().filter(|k| !RUNTIME_KEYS.contains(&k.as_str())).collect();
    if !restart.is_empty() {
        return ReloadPlan::Restart { config: Box::new(new), keys: restart };
    }
    let log_level = (!rust_log_set).then(|| new.log_level.clone());
    ReloadPlan::Apply { config: Box::new(new), log_level }
}

impl ReloadPlan {
    /// The answer for a plan that applies nothing (400); None otherwise.
    pub fn refusal(&self) -> Option<AdminReply> {
        match self {
            ReloadPlan::Invalid(e) => Some(AdminReply::new(400, format!("config not reloaded: {e}"))),
            ReloadPlan::Restart { .. } | ReloadPlan::Apply { .. } => None,
        }
    }
}

/// How a reload ends.
#[derive(Debug)]
pub enum Reload {
    /// Answered (applied in place, or refused).
    Done(AdminReply),
    /// Needs a restart in place with `config`, for these reasons.
    Restart { config: Box<Config>, reasons: Vec<String> },
}

/// Re-reads the config the relay was started with and applies what can
/// change at runtime. Lives in the control loop.
pub struct Reloader {
    source: Source,
    running: RawConfig,
}

impl Reloader {
    pub fn new(source: Source, running: RawConfig) -> Self {
        Reloader { source, running }
    }

    /// Reloads (admin API or SIGHUP). `binary_replaced`: the file the relay
    /// was started from is another one now (a package upgrade), which needs
    /// a restart in place even with the same config.
    pub fn reload(&mut self, binary_replaced: bool) -> Reload {
        let path: Option<PathBuf> = match &self.source {
            Source::File(p) => Some(p.clone()),
            Source::Defaults => None,
        };
        let loaded = config::load(path.as_deref(), &|k| std::env::var(k).ok()).map(|(c, _)| c);
        let plan = plan_reload(&self.running, loaded, crate::logging::filter_from_env());
        if let Some(refused) = plan.refusal() {
            return Reload::Done(refused);
        }
        let (config, log_level) = match plan {
            ReloadPlan::Restart { config, keys } => {
                let mut reasons: Vec<String> = keys.into_iter().map(|k| format!("{k} changed")).collect();
                if binary_replaced {
                    reasons.push("the binary was replaced".into());
                }
                return Reload::Restart { config, reasons };
            }
            ReloadPlan::Apply { config, .. } if binary_replaced => {
                return Reload::Restart { config, reasons: vec!["the binary was replaced".into()] };
            }
            ReloadPlan::Apply { config, log_level } => (config, log_level),
            ReloadPlan::Invalid(_) => unreachable!("refusal() covers it"),
        };
        let applied = match log_level {
            None => "log.level not applied: RUST_LOG is set and overrides it".to_string(),
            Some(level) => match crate::logging::set_filter(&level) {
                Ok(now) => format!("log.level = {now:?} applied"),
                Err(e) => return Reload::Done(AdminReply::new(500, format!("config not reloaded: {e}"))),
            },
        };
        self.running = config.raw;
        Reload::Done(AdminReply::new(200, format!("config reloaded from {}: {applied}", self.source)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str, auth: Option<&str>) -> Vec<u8> {
        let mut h = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            h.push_str(&format!("Authorization: {a}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    #[test]
    fn token_file_is_created_0600_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let (token, how) = load_or_create_token(&path).unwrap();
        assert_eq!(how, TokenSource::Created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 2 * TOKEN_BYTES);
        assert!(token.matches(text.trim().as_bytes()));
        let (again, how) = load_or_create_token(&path).unwrap();
        assert_eq!(how, TokenSource::Read);
        assert!(again.matches(text.trim().as_bytes()));
        assert!(!format!("{again:?}").contains(text.trim()));
    }

    #[test]
    fn loose_or_bad_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("admin.token_file") && e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create_token(&path).is_ok());
        std::fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_token(&path).unwrap_err().to_string().contains("shorter than 16"));
        let e = load_or_create_token(&dir.path().join("no/such/dir/t")).unwrap_err().to_string();
        assert!(e.contains("admin.token_file") && e.contains("cannot be created"), "{e}");
    }

    #[test]
    fn routes_and_bearer_check() {
        let token = AdminToken(b"s3cret-token-0123456789".to_vec());
        let ok = "Bearer s3cret-token-0123456789";
        let r = inspect(&head("POST", "/admin/drain", Some(ok)), &token);
        assert_eq!((r.route, r.authorized), (Route::Drain, true));
        let r = inspect(&head("PUT", "/admin/log-level?x=1", Some("bearer  s3cret-token-0123456789 ")), &token);
        assert_eq!((r.route, r.authorized, r.path.as_str()), (Route::LogLevel, true, "/admin/log-level"));
        assert_eq!(
            inspect(&head("GET", "/admin/reload", Some(ok)), &token).route,
            Route::WrongMethod { allow: "POST" }
        );
        assert_eq!(inspect(&head("POST", "/admin/nope", Some(ok)), &token).route, Route::NotFound);
        for bad in [None, Some("Bearer s3cret-token-012345678"), Some("Basic s3cret-token-0123456789"), Some("Bearer")]
        {
            assert!(!inspect(&head("POST", "/admin/reload", bad), &token).authorized, "{bad:?}");
        }
        let mut two = head("POST", "/admin/reload", Some(ok));
        two.truncate(two.len() - 2);
        two.extend_from_slice(format!("Authorization: {ok}\r\n\r\n").as_bytes());
        assert!(!inspect(&two, &token).authorized, "two Authorization fields");
        assert!(is_admin_target(b"/admin/drain") && !is_admin_target(b"/admin") && !is_admin_target(b"/metrics"));
    }

    #[test]
    fn only_loopback_peers_reach_the_admin_api_unless_allowed() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.45.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(peer_allowed(ip(local), false), "{local}");
        }
        for remote in ["192.0.2.2", "10.0.0.1", "::ffff:192.0.2.2", "2001:db8::1", "0.0.0.0"] {
            assert!(!peer_allowed(ip(remote), false), "{remote}");
            assert!(peer_allowed(ip(remote), true), "{remote}");
        }
        let reply = non_local_refused(ip("192.0.2.2"));
        assert_eq!(reply.status, 403);
        assert!(reply.body.contains("192.0.2.2") && reply.body.contains("admin.allow_non_local"), "{}", reply.body);
    }

    #[test]
    fn reload_plan_applies_log_level_and_restarts_for_the_rest() {
        let running = RawConfig::default();
        let mut raw = running.clone();
        raw.log.level = "debug".into();
        match plan_reload(&running, raw.validate(), false) {
            ReloadPlan::Apply { log_level, .. } => assert_eq!(log_level.as_deref(), Some("debug")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan_reload(&running, raw.validate(), true), ReloadPlan::Apply { log_level: None, .. }));
        raw.listen.port_range_start = 9903;
        match plan_reload(&running, raw.validate(), false) {
            ReloadPlan::Restart { config, keys } => {
                assert_eq!(keys, ["listen.port_range_start"]);
                assert_eq!(config.port_range_start, 9903);
            }
            other => panic!("{other:?}"),
        }
        raw.upstream.connect_timeout = "soon".into();
        let reply = plan_reload(&running, raw.validate(), false).refusal().unwrap();
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("upstream.connect_timeout"), "{}", reply.body);
    }

    #[test]
    fn answers_say_how_the_connection_goes_on_and_carry_extra_headers() {
        use crate::http1::ClientConn;
        let mut out = Vec::new();
        render(&AdminReply::new(401, "no"), &[("WWW-Authenticate", "Bearer")], ClientConn::CLOSE, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer\r\n") && text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno\n") && text.contains("Content-Length: 3\r\n"), "{text}");
        render(&AdminReply::new(200, "ok"), &[], ClientConn { http10: true, close: false }, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("Connection: keep-alive\r\n\r\nok\n"), "{text}");
        render(&AdminReply::new(200, "ok"), &[], ClientConn { http10: false, close: false }, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Connection:") && text.ends_with("\r\n\r\nok\n"), "{text}");
    }
}
