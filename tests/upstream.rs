//! Upstream resilience end to end: health checks (active and passive),
//! balancing over healthy addresses, "all down" answered at once, and DNS
//! through `dns.nameservers` against a real UDP DNS server (loadgen's
//! `MockDns`): answers that change, fail, or are missing at start.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use loadgen::dns::MockDns;

const SERIES: &str = "/api/v2/series";
const METRICS_HOST: &str = "metrics.agent.ddog-gov.com";

fn post_series(relay: &Relay) -> u16 {
    relay.request(1, "POST", SERIES, &[("Content-Type", "application/json")], b"{\"series\":[]}").status
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

both_backends_both_protocols!(dead_address_goes_down_and_comes_back_up, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let mut intake = Intake::start(dir.path());
    let dead = refused_addr();
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with(&format!(
            "upstream.override_addr = \"{}, {dead}\"\nhealth.enabled = true\nhealth.interval = \"200ms\"\nhealth.rise = 2\nhealth.fall = 2",
            intake.addr()
        )));
    // Active checks take it down: one transition line with the reason and the count.
    let down = format!("upstream {METRICS_HOST} {dead} is DOWN: connect failed");
    assert!(eventually(Duration::from_secs(5), || relay.log().contains(&down)), "{}", relay.log());
    let log = relay.log();
    assert_eq!(count(&log, &down), 1, "one line per transition:\n{log}");
    assert!(log.contains(&format!("{down}: Connection refused (os error 111) (1 of 2 addresses up)")), "{log}");

    // Balancing uses the healthy address only: no request tries the dead one.
    let retries = count(&relay.log(), "trying the next one");
    for _ in 0..20 {
        assert_eq!(post_series(&relay), 202);
    }
    assert_eq!(count(&relay.log(), "trying the next one"), retries, "{}", relay.log());
    let metrics = relay.status_page("/metrics");
    assert!(
        metrics.contains(&format!("fipsrelay_upstream_address_up{{upstream=\"{METRICS_HOST}\",address=\"{dead}\"}} 0")),
        "{metrics}"
    );
    let status = relay.status_page("/");
    assert!(status.contains(&format!("{dead} DOWN")) && status.contains("1/2"), "{status}");

    // An intake appears at the dead address: `rise` good checks bring it back.
    let second = intake.sibling(dead);
    let up = format!("upstream {METRICS_HOST} {dead} is UP: 2 consecutive checks passed (2 of 2 addresses up)");
    assert!(eventually(Duration::from_secs(5), || relay.log().contains(&up)), "{}", relay.log());
    // The first intake goes away: everything moves to the address that came back.
    intake.mock.shutdown();
    for _ in 0..20 {
        assert_eq!(post_series(&relay), 202, "{}", relay.log());
    }
    assert_eq!(second.stats().requests, 20, "the address back up carries the traffic");
});

both_backends_both_protocols!(connect_failures_mark_an_address_down_at_once, |io: &str, protocol: Protocol| {
    // Both addresses pass the first active check at start; the next one is
    // an hour away. Then one intake goes away: only the data path can take
    // its address down, and it does on the first failed connect (fall = 1).
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut second = intake.sibling("127.0.0.1:0".parse().unwrap());
    let gone = second.addr();
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with(&format!(
            "upstream.override_addr = \"{gone}, {}\"\nhealth.enabled = true\nhealth.interval = \"1h\"\nhealth.fall = 1\nworkers.threads = 1",
            intake.addr()
        )));
    // The first active checks, one TLS handshake with each intake, pass.
    assert!(
        eventually(Duration::from_secs(5), || intake.mock.handshakes_completed() >= 1
            && second.handshakes_completed() >= 1),
        "{}",
        relay.log()
    );
    assert!(!relay.log().contains("is DOWN"), "{}", relay.log());
    second.shutdown();
    for _ in 0..10 {
        assert_eq!(post_series(&relay), 202);
    }
    let log = relay.log();
    let down = format!("upstream {METRICS_HOST} {gone} is DOWN: connect failed");
    assert_eq!(count(&log, &down), 1, "{log}");
    // Only the request that met the failure tried the next address.
    assert!(count(&log, "trying the next one") <= 1, "{log}");
    assert_eq!(intake.mock.stats().requests + second.stats().requests, 10);
});

both_backends_both_protocols!(all_addresses_down_answers_503_at_once, |io: &str, protocol: Protocol| {
    // The intake accepts and never answers: each handshake needs the whole
    // 2 s connect timeout to fail. Once the address is down, the relay must
    // not wait for that any more.
    let dir = TestDir::new();
    let intake = Intake::start_with(
        dir.path(),
        Behavior { fault: Fault::Blackhole, ..Behavior::default() },
        CipherMode::Default,
    );
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("upstream.connect_timeout = \"2s\"\nhealth.enabled = true\nhealth.interval = \"200ms\"\nhealth.timeout = \"300ms\"\nhealth.fall = 1"));
    let down = format!(
        "upstream {METRICS_HOST} {} is DOWN: TLS handshake timeout after 300ms (0 of 1 addresses up)",
        intake.addr()
    );
    assert!(eventually(Duration::from_secs(5), || relay.log().contains(&down)), "{}", relay.log());
    // Panic mode: one request at a time still tries (and here waits out the
    // connect timeout, never longer); the others get 503 at once.
    let mut fast_503 = 0;
    for _ in 0..6 {
        let started = Instant::now();
        let status = post_series(&relay);
        let took = started.elapsed();
        assert!(matches!(status, 502..=504), "{status}");
        assert!(took < Duration::from_millis(2700), "{status} took {took:?}: longer than upstream.connect_timeout");
        if status == 503 && took < Duration::from_millis(500) {
            fast_503 += 1;
        }
    }
    assert!(fast_503 >= 3, "{fast_503} fast 503s of 6");
    let v =
        relay.wait_metric("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"upstream_down\"}", |v| v >= 3.0);
    assert!(v >= 3.0, "{v}");
    let summary = relay.status_page("/");
    assert!(summary.contains("PANIC MODE"), "{summary}");
    let panic = relay.wait_metric(&format!("fipsrelay_upstream_panic{{upstream=\"{METRICS_HOST}\"}}"), |v| v == 1.0);
    assert_eq!(panic, 1.0);
    assert_eq!(intake.mock.stats().requests, 0);

    // The intake recovers: the address comes back and requests flow.
    intake.mock.set_behavior(Behavior::default());
    let up = relay.wait_metric(&format!("fipsrelay_upstream_address_up{{upstream=\"{METRICS_HOST}\""), |v| v == 1.0);
    assert_eq!(up, 1.0, "{}", relay.log());
    assert_eq!(post_series(&relay), 202);
    let downs = relay.wait_metric(
        &format!(
            "fipsrelay_upstream_transitions_total{{upstream=\"{METRICS_HOST}\",address=\"{}\",to=\"down\"}}",
            intake.addr()
        ),
        |v| v >= 1.0,
    );
    assert_eq!(downs, 1.0);
    let ups = relay.wait_metric(
        &format!(
            "fipsrelay_upstream_transitions_total{{upstream=\"{METRICS_HOST}\",address=\"{}\",to=\"up\"}}",
            intake.addr()
        ),
        |v| v >= 1.0,
    );
    assert_eq!(ups, 1.0);
    assert_eq!(
        relay.wait_metric(&format!("fipsrelay_upstream_panic{{upstream=\"{METRICS_HOST}\"}}"), |v| v == 0.0),
        0.0
    );
});

both_protocols!(health_checks_disabled_never_mark_down, |protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let dead = refused_addr();
    let relay = Relay::start(
        dir.path(),
        "epoll",
        dead,
        &intake.ca_file,
        &protocol.with("health.enabled = false\nhealth.interval = \"100ms\"\nhealth.fall = 1"),
    );
    // The stimulus: four check intervals in which no check may run.
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..4 {
        assert_eq!(post_series(&relay), 502);
    }
    assert!(!relay.log().contains("is DOWN"), "{}", relay.log());
});

/// Every upstream host the default config uses.
fn upstream_hosts() -> Vec<String> {
    let config = fipsrelay::config::RawConfig::default().validate().unwrap();
    fipsrelay::route::RouteTable::new(&config).upstreams.iter().map(|u| u.host.clone()).collect()
}

/// Writes the zone atomically (write, then rename): `line(host)` per host.
fn write_zone(path: &Path, line: impl Fn(&str) -> String) {
    let text: String = upstream_hosts().iter().map(|h| line(h) + "\n").collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Relay config lines for resolving through the mock DNS at `dns`, intake port `port`.
fn dns_config(dns: SocketAddr, port: u16, extra: &str) -> String {
    format!("upstream.override_addr = -\nupstream.port = {port}\ndns.nameservers = [\"{dns}\"]\ndns.timeout = \"1s\"\n{extra}")
}

both_protocols!(dns_answer_change_moves_traffic_and_a_failing_dns_keeps_the_last_answer, |protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let port = intake.addr().port();
    let second = intake.sibling(SocketAddr::from(([127, 0, 0, 2], port)));
    let zone = dir.path().join("zone.txt");
    write_zone(&zone, |h| format!("{h} A 127.0.0.1 1"));
    let dns = MockDns::start("127.0.0.1:0".parse().unwrap(), zone.clone()).unwrap();
    // dns.refresh is 30 s: only the 1 s TTL can make the relay see a change in time.
    let relay = Relay::start(
        dir.path(),
        "epoll",
        intake.addr(),
        &intake.ca_file,
        &protocol.with(&dns_config(dns.local_addr(), port, "dns.refresh = \"30s\"")),
    );
    assert!(relay.log().contains("resolving upstream hosts"), "{}", relay.log());
    for _ in 0..3 {
        assert_eq!(post_series(&relay), 202);
    }
    assert_eq!(intake.mock.stats().requests, 3);
    assert_eq!(second.stats().requests, 0);

    // The answer changes: traffic follows within a few TTLs, and pooled
    // sessions to the address that left the answer are not reused.
    write_zone(&zone, |h| format!("{h} A 127.0.0.2 1"));
    let moved = format!("127.0.0.2:{port}");
    assert!(
        eventually(Duration::from_secs(6), || relay
            .log()
            .lines()
            .any(|l| l.contains("upstream resolved") && l.contains(METRICS_HOST) && l.contains(&moved))),
        "{}",
        relay.log()
    );
    for _ in 0..5 {
        assert_eq!(post_series(&relay), 202);
    }
    assert_eq!(second.stats().requests, 5, "every request after the change goes to the new address");
    assert_eq!(intake.mock.stats().requests, 3);

    // DNS fails: the last good answer is kept and requests still flow.
    write_zone(&zone, |h| format!("{h} SERVFAIL"));
    assert!(
        eventually(Duration::from_secs(6), || relay.log().contains("cannot resolve upstream host")),
        "{}",
        relay.log()
    );
    for _ in 0..3 {
        assert_eq!(post_series(&relay), 202);
    }
    assert_eq!(second.stats().requests, 8);
    let status = relay.status_page("/");
    assert!(status.contains("(DNS: "), "the status page shows the DNS error: {status}");
});

both_protocols!(starts_without_dns_answers_503_then_serves_once_resolved, |protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // A UDP port with nobody on it yet: every lookup fails.
    let dns_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let relay = Relay::start(
        dir.path(),
        "epoll",
        intake.addr(),
        &intake.ca_file,
        &protocol.with(&dns_config(dns_addr, intake.addr().port(), "dns.refresh = \"2s\"")),
    );
    assert!(relay.log().contains("not every upstream host resolved at start"), "{}", relay.log());
    assert_eq!(post_series(&relay), 503);
    let v =
        relay.wait_metric("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"unresolved\"}", |v| v >= 1.0);
    assert!(v >= 1.0);

    // The name server comes up: the relay resolves on its next retry.
    let zone = dir.path().join("zone.txt");
    write_zone(&zone, |h| format!("{h} A 127.0.0.1 60"));
    let _dns = MockDns::start(dns_addr, zone).unwrap();
    assert!(eventually(Duration::from_secs(8), || post_series(&relay) == 202), "{}", relay.log());
    assert_eq!(intake.mock.stats().requests, 1);
});

both_protocols!(dns_prefer_picks_the_address_family, |protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let port = intake.addr().port();
    // Hosts without IPv6 on loopback cannot run this test.
    let v6_listen = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    if std::net::TcpListener::bind(v6_listen).is_err() {
        eprintln!("no ::1 here: skipping");
        return;
    }
    let v6 = intake.sibling(v6_listen);
    let zone = dir.path().join("zone.txt");
    write_zone(&zone, |h| format!("{h} A 127.0.0.1 60\n{h} AAAA ::1 60"));
    let dns = MockDns::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    for (prefer, want_v6) in [("ipv6", true), ("ipv4", false)] {
        let relay = Relay::start(
            dir.path(),
            "epoll",
            intake.addr(),
            &intake.ca_file,
            &protocol.with(&dns_config(dns.local_addr(), port, &format!("dns.prefer = \"{prefer}\""))),
        );
        let (v4_before, v6_before) = (intake.mock.stats().requests, v6.stats().requests);
        for _ in 0..3 {
            assert_eq!(post_series(&relay), 202, "{}", relay.log());
        }
        let (v4_got, v6_got) = (intake.mock.stats().requests - v4_before, v6.stats().requests - v6_before);
        assert_eq!((v4_got, v6_got), if want_v6 { (0, 3) } else { (3, 0) }, "dns.prefer = {prefer}");
        // Only the preferred family is kept when the host has both.
        let status = relay.status_page("/");
        let line = status.lines().find(|l| l.starts_with(METRICS_HOST)).unwrap().to_string();
        assert!(line.contains("1/1"), "{line}");
    }
});
