//! The relay's life: a port in use fails the start; SIGTERM answers what is
//! in flight and closes the listeners at once, or answers 503 when the
//! drain times out; restart in place (SIGHUP) switches the I/O backend and
//! keeps idle connections; root drops to `run.user` and keeps serving.
//! Requests in flight through a stop or a restart, and the sessions opened
//! after the privilege drop, run on both upstream protocols.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn port_in_use_fails_the_start() {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // Another process holds the metrics port (offset 1) of an otherwise free range.
    for _ in 0..10 {
        let base = free_range();
        let port = base + 1;
        let Ok(_taken) = std::net::TcpListener::bind(("127.0.0.1", port)) else { continue };
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nport_range_start = {base}\n[workers]\nio = \"epoll\"\n[upstream]\noverride_addr = \"127.0.0.1:9\"\nca_file = \"{}\"\n[admin]\nenabled = false\n",
                intake.ca_file.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains(&format!("cannot bind 127.0.0.1:{port}: Address already in use")) {
            return;
        }
        assert!(err.contains("Address already in use"), "{err}");
    }
    panic!("no range where only our port was taken");
}

/// A relay (`io`, `extra` config lines) in front of an intake that answers
/// after `latency`, with one request in flight through it: the intake holds
/// it (the mock records a request on arrival, then waits), its answer is
/// the handle's.
struct InFlight {
    intake: Intake,
    relay: Relay,
    answer: std::thread::JoinHandle<Response>,
}

fn request_in_flight(dir: &std::path::Path, io: &str, latency: Duration, extra: &str) -> InFlight {
    let intake = Intake::start_with(dir, Behavior { latency, ..Behavior::default() }, CipherMode::Default);
    let relay = Relay::start(dir, io, intake.addr(), &intake.ca_file, extra);
    let addr = relay.addr(1);
    let answer = std::thread::spawn(move || Client::connect(addr).request("POST", "/api/v2/series", &[], b"{}"));
    assert!(eventually(Duration::from_secs(5), || intake.mock.stats().requests == 1), "{}", relay.log());
    InFlight { intake, relay, answer }
}

both_backends_both_protocols!(graceful_shutdown_answers_in_flight_requests, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), io, Duration::from_millis(800), &protocol.with(""));
    let addr = relay.addr(1);
    let idle = relay.connect(5); // an idle keep-alive connection must not hold the drain
    let status = relay.terminate(Duration::from_secs(15));
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 202, "in-flight request answered by the intake");
    assert!(status.success(), "exit status {status}");
    drop(idle);
    // No new connections after the stop.
    assert!(std::net::TcpStream::connect(addr).is_err());
});

both_backends_both_protocols!(drain_timeout_answers_503, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), io, Duration::from_secs(5), &protocol.with("shutdown.drain_timeout = \"300ms\""));
    let status = relay.terminate(Duration::from_secs(10));
    assert_eq!(in_flight.join().unwrap().status, 503);
    assert!(status.success(), "exit status {status}");
});

both_protocols!(drain_closes_the_listeners_at_once, |protocol: Protocol| {
    // A request in flight keeps the drain going; meanwhile new connects are
    // refused instead of queueing where nobody will accept them.
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), "epoll", Duration::from_millis(1500), &protocol.with(""));
    let addr = relay.addr(1);
    unsafe { libc::kill(relay.pid(), libc::SIGTERM) };
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("stopping: no new connections")));
    // Within 100 ms of that line, and while the request in flight still
    // holds the drain, connects are refused.
    let refused = eventually(Duration::from_millis(100), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    });
    assert!(refused, "a connect during the drain was accepted by the kernel");
    assert!(!in_flight.is_finished(), "the drain ended before the listeners closed");
    assert_eq!(in_flight.join().unwrap().status, 202);
    assert!(relay.wait_exit(Duration::from_secs(10)).success());
});

both_protocols!(sigterm_during_a_restart_in_place_stops_instead, |protocol: Protocol| {
    let dir = TestDir::new();
    let InFlight { intake: _intake, mut relay, answer: in_flight } =
        request_in_flight(dir.path(), "epoll", Duration::from_millis(1500), &protocol.with(""));
    let config = relay.log_path.with_extension("toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("threads = 2", "threads = 1")).unwrap();
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("restarting in place: finishing")));
    unsafe { libc::kill(relay.pid(), libc::SIGTERM) };
    assert_eq!(in_flight.join().unwrap().status, 202, "the request in flight is still answered");
    let status = relay.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let log = relay.log();
    assert!(log.contains("stop requested during the restart in place"), "{log}");
    assert_eq!(log.matches("fipsrelay starting").count(), 1, "nothing was exec'd: {log}");
});

both_protocols!(restart_in_place_can_switch_the_io_backend_and_keep_idle_connections, |protocol: Protocol| {
    if skip_uring() || fipsrelay::io::probe_uring().is_err() {
        eprintln!("io_uring unavailable: skipping");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, &protocol.with(""));
    let config = relay.log_path.with_extension("toml");
    let mut idle = relay.connect(1);
    assert_eq!(idle.request("POST", "/api/v2/series", &[], b"0").status, 202);
    for (n, (from, to, shown)) in
        [("epoll", "uring", "io: io_uring"), ("uring", "epoll", "io: epoll")].iter().enumerate()
    {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace(&format!("io = \"{from}\""), &format!("io = \"{to}\""))).unwrap();
        unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
        assert!(
            eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == n + 2),
            "{}",
            relay.log()
        );
        assert!(relay.status_page("/").contains(shown), "{}", relay.status_page("/"));
        // The same Agent connection, handed over from one backend to the other.
        assert_eq!(idle.request("POST", "/api/v2/series", &[], b"1").status, 202, "{}", relay.log());
    }
    assert_eq!(intake.mock.stats().requests, 3);
});

both_backends_both_protocols!(root_drops_to_run_user_and_keeps_serving, |io: &str, protocol: Protocol| {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: privilege drop not testable here");
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with("run.user = \"nobody\""));
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().to_string();
    let nobody = "65534";
    assert!(field("Uid:").split_whitespace().skip(1).all(|u| u == nobody), "{}", field("Uid:"));
    assert!(field("Gid:").split_whitespace().skip(1).all(|g| g == nobody), "{}", field("Gid:"));
    assert!(field("CapEff:").ends_with("0000000000000000"), "{}", field("CapEff:"));
    assert!(field("CapPrm:").ends_with("0000000000000000"), "{}", field("CapPrm:"));
    assert!(relay.log().contains("dropped root privileges"));
    // Still relays over FIPS TLS as nobody, new sessions included.
    for i in 0..3 {
        let r = relay.request(1 + i, "POST", "/", &[], b"x");
        assert_eq!(r.status, 202);
    }
});

#[test]
fn unknown_run_user_fails_the_start() {
    let dir = TestDir::new();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[listen]\nport_range_start = 31003\n[run]\nuser = \"no-such-user-fipsrelay\"\n").unwrap();
    let out = std::process::Command::new(relay_bin()).args(["run", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if unsafe { libc::geteuid() } == 0 {
        assert!(!out.status.success());
        assert!(err.contains("run.user") && err.contains("no such user"), "{err}");
    }
}

both_protocols!(restart_in_place_after_dropping_root_keeps_the_admin_token, |protocol: Protocol| {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: privilege drop not testable here");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay =
        Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, &protocol.with("run.user = \"nobody\""));
    // The packaged layout: config and CA readable by run.user, the token root's alone.
    let config = relay.log_path.with_extension("toml");
    for (p, mode) in [(dir.path(), 0o755), (config.as_path(), 0o644), (intake.ca_file.as_path(), 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let token_file = intake.ca_file.with_file_name("admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[limits]\n", "[limits]\nmax_body_bytes = 1000\n")).unwrap();
    let bearer = format!("Bearer {token}");
    let r = relay.request(0, "POST", "/admin/reload", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        eventually(Duration::from_secs(10), || relay.log().matches("fipsrelay ready").count() == 2),
        "{}",
        relay.log()
    );
    // The new process runs as nobody, applies the new limit, and still knows
    // the token it could not read from the root-owned file.
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uid.split_whitespace().skip(1).all(|u| u == "65534"), "{uid}");
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(2000, 1)).status, 413);
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], &payload(500, 1)).status, 202);
    let r = relay.request(0, "PUT", "/admin/log-level", &[("Authorization", &bearer)], b"info");
    assert_eq!(r.status, 200, "{}\n{}", String::from_utf8_lossy(&r.body), relay.log());
    assert!(!relay.log().contains(&token), "the token reached the log");
});
