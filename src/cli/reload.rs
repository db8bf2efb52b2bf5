//! `fipsrelay reload`: asks the running relay to reload its config through
//! its admin API (`POST /admin/reload` on the status port, with the token
//! from `admin.token_file`; the port and the token file come from the config,
//! resolved as for `run` and `probe`), and reports the relay's answer. A
//! restart in place is answered (202) before the new process runs: the
//! command then polls `GET /health` until the new process is ready, bounded.
//!
//! It only asks and reports: the relay decides what a reload does. It must
//! never print the token, and never wait past its bounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::admin::{self, TokenError};
use crate::config::{Config, Source};

/// The most of an answer read.
const MAX_ANSWER: u64 = 64 * 1024;
/// How long the relay may take to answer the reload: its control loop
/// answers within `admin::CONTROL_TIMEOUT`, after the checks a restart in
/// place needs.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one health request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Between two health requests while a restart in place runs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How a reload ended, when the relay took it.
#[derive(Debug)]
pub enum Outcome {
    /// Applied in place (200): the relay's answer.
    Applied(String),
    /// Restarted in place (202), and the new process is ready.
    Restarted { answer: String, after: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the admin API is off (admin.enabled = false in {config}), and `fipsrelay reload` needs it; set admin.enabled = true, or send SIGHUP (`systemctl kill -s HUP fipsrelay`; its outcome is then only in the log)")]
    AdminDisabled { config: Source },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("no relay answers on {addr} (the status port: listen.port_range_start in {config}): {cause}; is it running (`systemctl status fipsrelay`)? If the port was changed in the config, the running relay still listens on the old one: `systemctl restart fipsrelay`")]
    NotRunning { addr: SocketAddr, config: Source, cause: std::io::Error },
    #[error("asking {addr} to reload: {cause}; the outcome may be in the log (`journalctl -u fipsrelay`)")]
    Exchange { addr: SocketAddr, cause: std::io::Error },
    #[error("the relay refused the token in admin.token_file ({status}): {body}; the running relay reads the token once, at start: use the file it started with, or `systemctl restart fipsrelay`")]
    Unauthorized { status: String, body: String },
    #[error("the relay did not reload ({status}): {body}")]
    Refused { status: String, body: String },
    #[error("the relay is restarting in place ({answer}) but was not ready again within {}s: {last}; check the log (`journalctl -u fipsrelay`)", waited.as_secs())]
    NotReady { answer: String, waited: Duration, last: String },
}

/// One answer: the status line, its code, the body.
struct Answer {
    status: String,
    code: u16,
    body: String,
}

/// Sends `request` to `addr` (the request ends with `Connection: close`)
/// and reads the whole answer, bounded by `timeout` as a whole.
fn exchange(addr: SocketAddr, request: &str, timeout: Duration) -> std::io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::with_capacity(4096);
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("").to_string();
    let status = if status.is_empty() { "no answer".to_string() } else { status };
    Ok(Answer { status, code, body })
}

/// `GET /health`: the answer and the process's `uptime_seconds`.
fn health(addr: SocketAddr) -> std::io::Result<(Answer, Option<u64>)> {
    let a =
        exchange(addr, &format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"), HEALTH_TIMEOUT)?;
    let uptime = serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v.get("uptime_seconds").and_then(|u| u.as_u64()));
    Ok((a, uptime))
}

/// How long a restart in place may take by default beyond the drain.
pub const RESTART_ALLOWANCE: Duration = Duration::from_secs(30);

/// Asks the relay `config` describes to reload; after a restart in place,
/// waits at most `wait` for the new process to be ready (default: the
/// drain, `shutdown.drain_timeout`, plus [`RESTART_ALLOWANCE`]).
pub fn run(config: &Config, source: &Source, wait: Option<Duration>) -> Result<Outcome, ReloadError> {
    let wait = wait.unwrap_or(config.drain_timeout + RESTART_ALLOWANCE);
    if !config.admin_enabled {
        return Err(ReloadError::AdminDisabled { config: source.clone() });
    }
    let addr = SocketAddr::new(config.listen_address, config.port(0));
    // The uptime before: a process that answers later with a smaller one is a new one.
    let (_, uptime_before) = health(addr).map_err(|cause| match cause.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut => {
            ReloadError::NotRunning { addr, config: source.clone(), cause }
        }
        _ => ReloadError::Exchange { addr, cause },
    })?;
    let token = admin::read_token(&config.admin_token_file)?;
    let secret = String::from_utf8_lossy(token.secret()).into_owned();
    let request = format!(
        "POST /admin/reload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {secret}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let asked = Instant::now();
    let answer = exchange(addr, &request, ANSWER_TIMEOUT).map_err(|cause| ReloadError::Exchange { addr, cause })?;
    match answer.code {
        200 => Ok(Outcome::Applied(answer.body)),
        202 => wait_ready(addr, answer.body, asked, uptime_before, wait),
        401 => Err(ReloadError::Unauthorized { status: answer.status, body: answer.body }),
        _ => Err(ReloadError::Refused { status: answer.status, body: answer.body }),
    }
}

/// Polls `/health` until the process that answers 200 is the new one: the
/// old one stopped answering 200 meanwhile (it drains), or it reports less
/// uptime than the old one would have now.
fn wait_ready(
    addr: SocketAddr,
    answer: String,
    asked: Instant,
    uptime_before: Option<u64>,
    wait: Duration,
) -> Result<Outcome, ReloadError> {
    let mut went_away = false;
    let mut last;
    loop {
        std::thread::sleep(POLL_INTERVAL);
        let elapsed = asked.elapsed();
        match health(addr) {
            Ok((a, uptime)) if a.code == 200 => {
                let younger = match (uptime_before, uptime) {
                    (Some(before), Some(now)) => now < before + elapsed.as_secs(),
                    _ => false,
                };
                if went_away || younger {
                    return Ok(Outcome::Restarted { answer, after: elapsed });
                }
                last = format!("GET /health answered {} from the previous process", a.status);
            }
            Ok((a, _)) => {
                went_away = true;
                last = format!("GET /health answered {}", a.status);
            }
            Err(e) => {
                went_away = true;
                last = format!("GET /health: {e}");
            }
        }
        if elapsed >= wait {
            return Err(ReloadError::NotReady { answer, waited: wait, last });
        }
    }
}
