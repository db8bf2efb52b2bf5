//! The relay under overload: the status port answers probes and scrapes
//! while every Agent slot is taken (its own reserve, bounded too), an
//! over-limit connection gets 503 at once instead of being held, the relay
//! out of descriptors answers 503 `local_resources` without marking the
//! intake down, the start warns (or raises the soft limit) when
//! `RLIMIT_NOFILE` cannot hold the limits, and the admin API stays on
//! loopback unless `admin.allow_non_local` says otherwise.
//! Every scenario runs on both I/O backends.

mod common;

use std::io::BufReader;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Status-port connections a worker serves apart from the Agent limit
/// (`config::STATUS_CONNECTIONS_PER_WORKER`).
const STATUS_RESERVE: usize = 16;

/// Opens `n` connections to `addr` and sends nothing.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))).collect()
}

/// What a connection that sends nothing reads, and how long it took: the
/// relay's answer, or None if it said nothing within `wait`.
fn unprompted_answer(addr: SocketAddr, wait: Duration) -> (Option<Response>, Duration) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    let r = read_response(&mut BufReader::new(s), false).ok();
    (r, started.elapsed())
}

both_backends!(status_port_answers_while_every_agent_slot_is_taken, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // 2 workers × 50 Agent connections; 150 idle Agents fill both.
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        "workers.threads = 2\nlimits.max_connections = 50",
    );
    let agents = idle_connections(relay.addr(1), 150);
    // Both workers full (each got more than 50 of the 150, all but surely):
    // the relay holds 100, the other 50 were refused at once.
    let held = relay.wait_metric("fipsrelay_open_connections{product=\"metrics\"}", |v| v == 100.0);
    assert_eq!(held, 100.0, "{}", relay.log());

    // Probes and scrapes still answer, each on a fresh connection.
    for path in ["/health/live", "/health", "/metrics", "/"] {
        let r = relay.request(0, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path} under overload: {}", String::from_utf8_lossy(&r.body));
    }

    // One more Agent: 503 at once, without sending a byte (not after
    // limits.header_timeout, 10 s), then closed.
    let (r, took) = unprompted_answer(relay.addr(1), Duration::from_secs(8));
    let r = r.unwrap_or_else(|| panic!("no answer in {took:?}; the over-limit connection was held"));
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("limits.max_connections"), "{:?}", r.body);
    assert!(took < Duration::from_secs(2), "503 after {took:?}");
    // One that sends its request gets the same 503 and nothing is forwarded.
    let r = relay.request(1, "POST", "/api/v2/series", &[], b"refused");
    assert_eq!(r.status, 503);
    assert!(intake.mock.records().is_empty());
    assert!(
        relay.wait_metric_sum("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"overloaded\"}", |v| v
            >= 51.0)
            >= 51.0
    );
    let log = relay.log();
    assert!(log.contains("answered 503 at once"), "{log}");

    // The status port's reserve is bounded too: 64 idle status connections
    // fill both workers' 16; the next one gets 503 at once.
    let probes = idle_connections(relay.addr(0), 4 * STATUS_RESERVE);
    let (r, took) = unprompted_answer(relay.addr(0), Duration::from_secs(8));
    let r = r.unwrap_or_else(|| panic!("no answer in {took:?}"));
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("status port"), "{:?}", String::from_utf8_lossy(&r.body));
    assert!(took < Duration::from_secs(2), "503 after {took:?}");
    drop(probes);
    assert!(eventually(Duration::from_secs(5), || health_status(relay.addr(0)) == Some(200)));

    // Agents leave: new ones are served again.
    drop(agents);
    assert!(eventually(Duration::from_secs(5), || relay.request(1, "POST", "/api/v2/series", &[], b"ok").status == 202));
});

/// Sets the relay's soft `RLIMIT_NOFILE` (the hard one stays); returns the old limits.
fn set_soft_nofile(pid: i32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) }, 0);
    let tight = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: old.rlim_max };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &tight, std::ptr::null_mut()) }, 0);
    old
}

both_backends_both_protocols!(out_of_descriptors_is_the_relays_side_not_the_intakes, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // Passive marking on, one failure enough to take the address down: a
    // connect that failed for the relay's own lack of descriptors must not.
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("workers.threads = 1\nhealth.enabled = true\nhealth.fall = 1"),
    );
    let pid = relay.pid();
    let mut agent = relay.connect(1);
    relay.wait_metric("fipsrelay_open_connections{product=\"metrics\"}", |v| v == 1.0);
    // No descriptor left: the soft limit below what the relay holds now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let old = set_soft_nofile(pid, open - 3);
    let r = agent.request("POST", "/api/v2/series", &[], b"no socket");
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 503, "{body}");
    assert!(body.contains("local_resources"), "{body}");
    // Descriptors again: the same connection is served, the address never went down.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) }, 0);
    assert_eq!(agent.request("POST", "/api/v2/series", &[], b"served").status, 202);
    let counted = relay
        .wait_metric("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"local_resources\"}", |v| v >= 1.0);
    assert_eq!(counted, 1.0);
    let metrics = relay.status_page("/metrics");
    let downs: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("fipsrelay_upstream_transitions_total") && l.contains("to=\"down\""))
        .collect();
    assert!(!downs.is_empty(), "{metrics}");
    assert!(downs.iter().all(|l| l.ends_with(" 0")), "the intake was marked down: {downs:?}");
    let log = relay.log();
    assert!(!log.contains("is DOWN"), "{log}");
    let line = log.lines().find(|l| l.contains("local_resources")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("side=relay") || line.contains("side=\"relay\""), "{line}");
    assert!(line.contains("LimitNOFILE"), "{line}");
    assert_eq!(intake.mock.records().len(), 1);
});

/// The soft and hard `Max open files` of process `pid`.
fn nofile_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

both_backends!(start_warns_when_the_limits_cannot_fit_rlimit_nofile, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // 2 workers × 4096 (the default) cannot fit 256 descriptors, hard limit
    // included: the relay starts, and says so with the figures and the fix.
    let relay = Relay::start_limited(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        "workers.threads = 2",
        &[],
        Some((256, 256)),
    );
    let log = relay.log();
    let line = log.lines().find(|l| l.contains("RLIMIT_NOFILE is too low")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("limits.max_connections") && line.contains("LimitNOFILE"), "{line}");
    assert!(line.contains("16512"), "the descriptors needed: {line}");
    assert_eq!(nofile_of(relay.pid()), (256, 256));
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"x").status, 202);
    drop(relay);

    // A soft limit below the need and a hard one above: raised as far as
    // needed, 2 × (16 + 16 + 2 × 50) + 64 = 328, and no warning.
    let relay = Relay::start_limited(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        "workers.threads = 2\nlimits.max_connections = 50",
        &[],
        Some((200, 4096)),
    );
    let log = relay.log();
    assert!(log.contains("raised the RLIMIT_NOFILE soft limit"), "{log}");
    assert!(!log.contains("RLIMIT_NOFILE is too low"), "{log}");
    assert_eq!(nofile_of(relay.pid()), (328, 4096));
});

/// An IPv4 address of this host that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below; only AF_INET entries are read as sockaddr_in.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

/// One request to the status port at `ip`; the peer the relay sees is `ip`.
fn status_request(ip: IpAddr, relay: &Relay, method: &str, path: &str, token: &str, body: &[u8]) -> Response {
    let mut c = Client::connect(SocketAddr::new(ip, relay.port(0)));
    let auth = format!("Bearer {token}");
    c.request(method, path, &[("Authorization", &auth)], body)
}

both_backends!(admin_api_stays_on_loopback_unless_its_own_opt_in, |io: &str| {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipping: this host has no non-loopback IPv4 address to be a non-loopback peer from");
        return;
    };
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // The listeners on every address, so the test reaches the status port
    // from `ip`: a peer that is not loopback.
    let exposed = "listen.address = \"0.0.0.0\"\nlisten.allow_non_local = true";
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, exposed);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_string();
    let r = status_request(ip, &relay, "PUT", "/admin/log-level", &token, b"debug");
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 403, "{body}");
    assert!(body.contains("admin.allow_non_local") && body.contains(&ip.to_string()), "{body}");
    let log = relay.log();
    assert!(log.contains("admin request refused: not from loopback"), "{log}");
    assert!(!log.contains(&token), "the token reached the log");
    assert!(log.contains("the admin API does not (admin.allow_non_local = false)"), "{log}");
    // The read-only pages still answer there; the admin API answers on loopback.
    assert_eq!(status_request(ip, &relay, "GET", "/health", &token, b"").status, 200);
    let lo: IpAddr = [127, 0, 0, 1].into();
    assert_eq!(status_request(lo, &relay, "PUT", "/admin/log-level", &token, b"info").status, 200);
    drop(relay);

    // Its own opt-in: answered, and the start says so, naming the key.
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &format!("{exposed}\nadmin.allow_non_local = true"),
    );
    let r = status_request(ip, &relay, "PUT", "/admin/log-level", &token, b"info");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let log = relay.log();
    let line = log.lines().find(|l| l.contains("admin.allow_non_local = true")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARN") && line.contains("cleartext"), "{line}");
});

both_backends!(a_bad_admin_allow_non_local_stops_the_start_with_the_key, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let base = free_range();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, render_config(base, io, intake.addr(), &intake.ca_file, "admin.allow_non_local = \"yes\""))
        .unwrap();
    let log_path = dir.path().join("bad.log");
    match spawn_relay(&config, &log_path, base, &[], Duration::from_secs(20)) {
        Started::Exited(status) => assert!(!status.success()),
        Started::Ready(mut child) => {
            let _ = child.kill();
            panic!("started with admin.allow_non_local = \"yes\"");
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The key is known (not "unknown field"): the error says what it takes.
    assert!(log.contains("allow_non_local") && log.contains("expected a boolean"), "{log}");
    assert!(!log.contains("unknown field"), "{log}");
});
