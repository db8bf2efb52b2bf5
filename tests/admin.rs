//! The admin API on the status port: bearer token (created 0600, refused when
//! loose), drain, runtime log level, config reload (SIGHUP too), and the
//! token never reaching the log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn token_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string()
}

/// The config file the harness wrote for `relay`.
fn config_path(relay: &Relay) -> PathBuf {
    relay.log_path.with_extension("toml")
}

fn admin(relay: &Relay, method: &str, route: &str, auth: Option<&str>, body: &[u8]) -> Response {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    relay.request(0, method, route, &headers, body)
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

both_backends_both_protocols!(admin_api_end_to_end, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut relay =
        Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with("shutdown.drain_timeout = \"2s\""));

    // The token file was created, 0600, with a 32-byte hex token.
    let mode = std::fs::metadata(dir.path().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let token = token_of(dir.path());
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert!(relay.log().contains("admin API token created"), "{}", relay.log());

    // No token, a wrong token, another scheme: 401, and nothing happens.
    let wrong = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for (method, route, auth, body) in [
        ("POST", "/admin/drain", None, &b""[..]),
        ("PUT", "/admin/log-level", Some(wrong), b"debug"),
        ("POST", "/admin/reload", Some(&token[..63]), b""),
    ] {
        let r = admin(&relay, method, route, auth, body);
        assert_eq!(r.status, 401, "{method} {route}: {}", text(&r));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = relay.request(0, "POST", "/admin/drain", &[("Authorization", &format!("Basic {token}"))], b"");
    assert_eq!(r.status, 401);
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("admin request refused")));
    assert!(relay.log().contains("/admin/drain"), "the refusal names the route: {}", relay.log());
    assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"x").status, 202, "still relaying");
    assert!(!relay.log().contains("upstream session opened"), "still at info: {}", relay.log());

    // Runtime log level: invalid → 400, debug → 200, then debug lines appear.
    let r = admin(&relay, "PUT", "/admin/log-level", Some(&token), b"info,fipsrelay=loud");
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("not a log level or filter"), "{}", text(&r));
    let r = admin(&relay, "PUT", "/admin/log-level", Some(&token), b"debug\n");
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).starts_with("log level set to debug"), "{}", text(&r));
    assert!(relay.log().contains("log level changed through the admin API"), "{}", relay.log());
    assert!(relay.log().contains("peer=127.0.0.1:"), "{}", relay.log());
    assert_eq!(relay.request(5, "POST", "/api/v2/logs", &[], b"x").status, 202);
    assert!(
        eventually(Duration::from_secs(5), || relay.log().contains("upstream session opened")),
        "no debug line after PUT /admin/log-level debug: {}",
        relay.log()
    );

    // Bodies: Content-Length up to 4 KiB; more is 413, chunked is 400.
    let big = [("Authorization", format!("Bearer {token}")), ("Content-Length", "5000".to_string())];
    let big: Vec<(&str, &str)> = big.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(relay.request(0, "PUT", "/admin/log-level", &big, b"").status, 413);
    let auth = format!("Bearer {token}");
    let chunked = [("Authorization", auth.as_str()), ("Transfer-Encoding", "chunked")];
    assert_eq!(relay.request(0, "PUT", "/admin/log-level", &chunked, &encode_chunked(b"debug", 5)).status, 400);
    // Unknown route, wrong method; the status pages stay read-only.
    assert_eq!(admin(&relay, "POST", "/admin/nope", Some(&token), b"").status, 404);
    let r = admin(&relay, "GET", "/admin/reload", Some(&token), b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(admin(&relay, "POST", "/metrics", Some(&token), b"").status, 405);
    assert_eq!(relay.request(0, "GET", "/health", &[], b"").status, 200);

    // Reload: log.level applies; a restart-only key is refused with its name; a bad file is 400.
    let config = config_path(&relay);
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"warn\"\n")).unwrap();
    let r = admin(&relay, "POST", "/admin/reload", Some(&token), b"");
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).contains("log.level = \"warn\" applied"), "{}", text(&r));
    // A restart-only key whose new value cannot work: checked before the
    // restart in place, refused with the reason, nothing applied.
    let ca = std::fs::read_to_string(&config).unwrap();
    let ca_line = ca.lines().find(|l| l.starts_with("ca_file")).unwrap().to_string();
    std::fs::write(&config, original.replace(&ca_line, "ca_file = \"/nonexistent/ca.pem\"")).unwrap();
    let r = admin(&relay, "POST", "/admin/reload", Some(&token), b"");
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("nothing applied") && text(&r).contains("/nonexistent/ca.pem"), "{}", text(&r));
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"loud\"\n")).unwrap();
    let r = admin(&relay, "POST", "/admin/reload", Some(&token), b"");
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("log.level"), "{}", text(&r));
    // SIGHUP does the same reload (back to info) and logs the outcome.
    std::fs::write(&config, original.replace("[log]\n", "[log]\nlevel = \"info\"\n")).unwrap();
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(5), || relay.log().contains("trigger=\"SIGHUP\"")
            || relay.log().contains("trigger=SIGHUP")),
        "{}",
        relay.log()
    );
    assert_eq!(relay.request(0, "GET", "/health", &[], b"").status, 200, "SIGHUP did not stop the relay");

    // Drain: 202 first, then the relay exits 0 within the drain timeout.
    let r = admin(&relay, "POST", "/admin/drain", Some(&token), b"");
    assert_eq!(r.status, 202, "{}", text(&r));
    assert!(text(&r).contains("draining"), "{}", text(&r));
    let status = relay.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}: {}", relay.log());
    let log = relay.log();
    assert!(log.contains("drain requested through the admin API"), "{log}");
    assert!(!log.contains(&token) && !log.contains(wrong), "a token reached the log: {log}");
});

/// Runs `fipsrelay run` with the harness config plus `extra`; returns its
/// exit status and stderr once it exits, or None when it started (then
/// killed). A start that fails because another process took one of its
/// ports is tried again on another range.
fn start_once(dir: &Path, intake: &Intake, extra: &str) -> (Option<std::process::ExitStatus>, String) {
    let (config, log) = (dir.join("once.toml"), dir.join("once.log"));
    for _ in 0..20 {
        let base = free_range();
        std::fs::write(&config, render_config(base, "epoll", intake.addr(), &intake.ca_file, extra)).unwrap();
        let started = spawn_relay(&config, &log, base, &[], Duration::from_secs(20));
        let text = std::fs::read_to_string(&log).unwrap();
        match started {
            Started::Ready(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, text);
            }
            Started::Exited(_) if !range_is_free(base) => continue,
            Started::Exited(status) => return (Some(status), text),
        }
    }
    panic!("no free port range found");
}

#[test]
fn a_loose_token_file_stops_the_start() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (exit, log) = start_once(dir.path(), &intake, "");
    let exit = exit.unwrap_or_else(|| panic!("started with a 0644 token file: {log}"));
    assert!(!exit.success());
    assert!(log.contains("admin.token_file"), "{log}");
    assert!(log.contains(&format!("chmod 600 {}", token_file.display())), "{log}");

    // A token file that cannot be created names the key too.
    let missing = dir.path().join("no-such-dir/admin.token");
    let (exit, log) = start_once(dir.path(), &intake, &format!("admin.token_file = \"{}\"", missing.display()));
    assert!(!exit.expect("must not start").success());
    assert!(log.contains("admin.token_file") && log.contains("cannot be created"), "{log}");
}

both_protocols!(admin_disabled_answers_404_and_touches_no_token_file, |protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay =
        Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, &protocol.with("admin.enabled = false"));
    assert!(!dir.path().join("admin.token").exists());
    let r = relay.request(0, "POST", "/admin/drain", &[("Authorization", "Bearer whatever-token-0123")], b"");
    assert_eq!(r.status, 404, "{}", text(&r));
    assert_eq!(relay.request(0, "GET", "/health", &[], b"").status, 200);
});
