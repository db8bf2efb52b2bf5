//! 10,000 concurrent idle Agent connections: all accepted, all still served,
//! and the memory each costs the relay (reported in the test log) shows that
//! an idle connection holds no large buffer.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// Raises this process's open-file limit (the relay inherits it); returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The variants each hold 10,000 sockets in this process: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

both_backends_both_protocols!(ten_thousand_idle_connections_are_cheap_and_served, |io: &str, protocol: Protocol| {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let limit = raise_nofile();
    let n: usize = 10_000.min(limit.saturating_sub(1_000) as usize);
    assert!(n >= 2_000, "open-file limit {limit} too low for this test");
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("workers.threads = 2\nlimits.max_connections = 20000"),
    );
    // Warm up the upstream pool, then take the baseline.
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"warm").status, 202);
    relay.wait_idle("metrics");
    let base = fipsrelay::procstat::rss_kib(relay.pid());

    let mut clients: Vec<Client> = (0..n).map(|_| relay.connect(1)).collect();
    let relay_port = relay.port(1);
    assert!(
        eventually(Duration::from_secs(20), || {
            let m = relay.status_page("/metrics");
            m.lines()
                .find(|l| l.starts_with("fipsrelay_open_connections{product=\"metrics\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|v| v >= n)
        }),
        "the relay did not accept all {n} connections on port {relay_port}"
    );
    let connected = fipsrelay::procstat::rss_kib(relay.pid());

    // Every connection is still served (one request each, in turn, so the
    // upstream pool stays small), then sits idle again with the others.
    for (i, c) in clients.iter_mut().enumerate() {
        send(c.stream(), "POST", "/api/v2/series", &[], format!("{{\"n\":{i}}}").as_bytes()).unwrap();
        let r = c.read_response(false).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(r.status, 202, "connection {i}: {}", String::from_utf8_lossy(&r.body));
    }
    // Every answer is out; the relay's work on them is done once it has
    // counted each request.
    relay.wait_metric("fipsrelay_requests_total{product=\"metrics\",class=\"2xx\"}", |v| v >= (n + 1) as f64);
    let idle_after = fipsrelay::procstat::rss_kib(relay.pid());
    let per_conn = |kib: u64| (kib.saturating_sub(base) as f64 * 1024.0 / n as f64) as u64;
    eprintln!(
        "{io} {protocol:?}: {n} idle connections: relay RSS {base} KiB before, {connected} KiB connected ({} B/conn), {idle_after} KiB after one request each ({} B/conn)",
        per_conn(connected),
        per_conn(idle_after)
    );
    assert_eq!(intake.mock.records().len(), n + 1);
    // An idle connection holds its small read buffer and bookkeeping, no 16 KiB buffer.
    assert!(per_conn(idle_after) < 12 * 1024, "{} bytes per idle connection", per_conn(idle_after));
    // Close with RST (linger 0): 10,000 sockets in TIME-WAIT would crowd the
    // ephemeral ports other tests bind near.
    for c in &clients {
        let _ = socket2::SockRef::from(c.reader.get_ref()).set_linger(Some(Duration::ZERO));
    }
    drop(clients);
    let _ = std::io::stderr().flush();
});

/// Context switches (voluntary and not) of the relay's threads named
/// `prefix*`, summed: each wake-up of a sleeping thread is one.
fn switches(pid: i32, prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

// Idle means asleep (DESIGN §2): with kept-alive Agent connections and
// pooled intake sessions but no traffic, a worker thread is not woken at
// all (it published its stats once after the last request, and sleeps
// until the pooled sessions' idle timeout); before, each woke 5 times a
// second to publish.
both_backends_both_protocols!(idle_workers_sleep, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with("workers.threads = 2"));
    let mut agents: Vec<Client> = (0..8).map(|_| relay.connect(1)).collect();
    for a in &mut agents {
        assert_eq!(a.request("POST", "/api/v2/series", &[], b"{}").status, 202);
    }
    // The last publish after the requests (at most 200 ms later).
    std::thread::sleep(Duration::from_millis(600));
    let before = switches(relay.pid(), "fipsrelay-w");
    // The window in which nothing may happen (a stimulus, not a wait).
    std::thread::sleep(Duration::from_secs(2));
    let woken = switches(relay.pid(), "fipsrelay-w") - before;
    eprintln!("{io}: worker wake-ups in 2 s of idle: {woken}");
    assert!(woken <= 2, "idle workers woke {woken} times in 2 s");
    // Still serving.
    assert_eq!(agents[0].request("POST", "/api/v2/series", &[], b"{}").status, 202);
});
