//! Bounds toward the Agent: connections beyond `limits.max_connections` get
//! 503 at once, a slow head gets 408, an Agent that stops reading is dropped
//! after the idle timeout, and running out of descriptors backs off.
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

use std::time::Duration;

use common::*;

both_backends_both_protocols!(connections_beyond_the_limit_get_503_not_a_queue, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("workers.threads = 1\nlimits.max_connections = 2"),
    );
    let mut a = relay.connect(1);
    let mut b = relay.connect(1);
    assert_eq!(a.request("POST", "/api/v2/series", &[], b"a").status, 202);
    assert_eq!(b.request("POST", "/api/v2/series", &[], b"b").status, 202);
    // Two connections held open: the third is answered 503 at once and closed.
    let mut c = relay.connect(1);
    let r = c.request("POST", "/api/v2/series", &[], b"c");
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("limits.max_connections"));
    assert!(c.closed_by_peer());
    assert_eq!(intake.mock.records().len(), 2, "nothing from the refused connection is forwarded");
    // Once one closes, new connections are served again.
    drop(a);
    assert!(eventually(Duration::from_secs(5), || relay.request(1, "POST", "/api/v2/series", &[], b"d").status == 202));
    assert_eq!(b.request("POST", "/api/v2/series", &[], b"e").status, 202);
});

both_backends_both_protocols!(slowloris_head_gets_408_within_header_timeout, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("limits.header_timeout = \"700ms\""),
    );
    let mut c = relay.connect(1);
    c.write_raw(b"POST /api/v2/series HTTP/1.1\r\n");
    let started = std::time::Instant::now();
    // Trickle a header byte by byte: every read arrives well inside the idle timeout.
    let trickle = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in trickle {
        if std::io::Write::write_all(c.stream(), &[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50)); // the stimulus: a slow client
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let r = c.read_response(false).expect("an answer, not a hang");
    assert_eq!(r.status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.closed_by_peer());
    assert!(intake.mock.records().is_empty());
    // A normal request right after is served.
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
});

both_backends_both_protocols!(
    agent_that_stops_reading_is_dropped_after_the_idle_timeout,
    |io: &str, protocol: Protocol| {
        let dir = TestDir::new();
        let intake = Intake::start(dir.path());
        let relay = Relay::start(
            dir.path(),
            io,
            intake.addr(),
            &intake.ca_file,
            &protocol.with("limits.client_idle_timeout = \"1s\""),
        );
        // A 16 MB answer to a client that never reads it: the relay's writes stall.
        intake.mock.set_behavior(Behavior { body: "x".repeat(16 << 20), ..Behavior::default() });
        let mut stalled = relay.connect(1);
        send(stalled.stream(), "POST", "/api/v2/series", &[], b"{}").unwrap();
        assert!(
            eventually(Duration::from_secs(10), || relay.log().contains("the Agent stopped reading")),
            "the stalled write was not given up:\n{}",
            relay.log()
        );
        // The relay is not stuck: others are served.
        intake.mock.set_behavior(Behavior::default());
        assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
        drop(stalled);
    }
);

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

both_backends_both_protocols!(emfile_on_accept_backs_off_with_one_line_and_recovers, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with("workers.threads = 1"));
    let pid = relay.pid();
    // No descriptor left for the relay: the soft limit below what it holds
    // now (at exactly that, one that frees up now and then lets an accept
    // through, and that request gets 503 local_resources when its upstream
    // connect finds no descriptor).
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) }, 0);
    let tight = libc::rlimit { rlim_cur: open - 4, rlim_max: old.rlim_max };
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &tight, std::ptr::null_mut()) }, 0);
    // Three Agents connect (the kernel completes the handshakes) and send.
    let addr = relay.addr(1);
    let clients: Vec<_> = (0..3u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.request("POST", "/api/v2/series", &[], &[b'a' + i; 10]).status
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || relay.log().contains("accept failed; backing off")),
        "{}",
        relay.log()
    );
    // Backing off, not spinning: well under a CPU second per second (the
    // sleep is the measuring window).
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_seconds(pid) - before;
    assert!(spent < 0.5, "the relay spent {spent:.2} CPU s in 1 s of EMFILE");
    let log = relay.log();
    assert_eq!(log.matches("accept failed; backing off").count(), 1, "{log}");
    assert!(log.contains("Too many open files"), "{log}");
    // Descriptors again: every waiting connection is accepted and served.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) }, 0);
    for c in clients {
        assert_eq!(c.join().unwrap(), 202);
    }
    assert_eq!(intake.mock.stats().requests, 3);
});
