//! Egress through a real HTTP proxy (Debian's Squid, started per test with
//! a generated config): the relay's FIPS TLS session to the intake runs end
//! to end inside Squid's CONNECT tunnel. Squid resolves the intake names
//! through its hosts file (127.0.0.1), so the relay needs no DNS unless a
//! test says so; the mock intake's port is the CONNECT port
//! (`upstream.port`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::squid::{skip_squid, Squid, SquidConfig};
use common::*;
use loadgen::dns::MockDns;

const SERIES: &str = "/api/v2/series";
const METRICS_HOST: &str = "metrics.agent.ddog-gov.com";
const TRACE_HOST: &str = "trace.agent.ddog-gov.com";
const USER: &str = "fipsrelay";
const PASSWORD: &str = "pr0xy-S3cret-7f1c";

/// Every upstream host of the default config.
fn upstream_hosts() -> Vec<String> {
    let config = fipsrelay::config::RawConfig::default().validate().unwrap();
    fipsrelay::route::RouteTable::new(&config).upstreams.iter().map(|u| u.host.clone()).collect()
}

/// Squid with credentials, allowing CONNECT to the US1-FED intake domain
/// only (the allow-list in docs/configuration.md).
fn squid_config(intake: &Intake, tls: Option<(String, String)>) -> SquidConfig {
    SquidConfig {
        user: Some((USER.into(), PASSWORD.into())),
        allow: vec![".ddog-gov.com".into()],
        allow_port: intake.addr().port(),
        hosts: upstream_hosts(),
        tls,
    }
}

/// A credentials file `user:password`, mode 0600.
fn credentials(dir: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("proxy.credentials");
    std::fs::write(&p, format!("{USER}:{password}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Relay config lines for egress through `url`; the intake is reached by
/// name (no override address) on the mock's port.
fn proxy_lines(url: &str, intake: &Intake, creds: Option<&Path>, extra: &str) -> String {
    let mut s = format!(
        "upstream.override_addr = -\nupstream.port = {}\nupstream.proxy.url = \"{url}\"\n",
        intake.addr().port()
    );
    if let Some(c) = creds {
        s += &format!("upstream.proxy.credentials_file = \"{}\"\n", c.display());
    }
    s + extra
}

/// A mock intake, a Squid in front of it, and a credentials file.
struct Rig {
    dir: TestDir,
    intake: Intake,
    squid: Squid,
    creds: PathBuf,
}

impl Rig {
    fn new(password: &str) -> Rig {
        let dir = TestDir::new();
        let intake = Intake::start(dir.path());
        let squid = Squid::start(&squid_config(&intake, None));
        let creds = credentials(dir.path(), password);
        Rig { dir, intake, squid, creds }
    }

    /// A relay through Squid's http_port, plus `extra` lines.
    fn relay(&self, io: &str, protocol: Protocol, extra: &str) -> Relay {
        let lines = proxy_lines(&self.squid.url(), &self.intake, Some(&self.creds), &protocol.with(extra));
        Relay::start(self.dir.path(), io, self.intake.addr(), &self.intake.ca_file, &lines)
    }
}

fn post(relay: &Relay, offset: u16, path: &str, body: &[u8]) -> Response {
    relay.request(offset, "POST", path, &[("Content-Type", "application/json"), ("DD-API-KEY", FAKE_KEY)], body)
}

/// The access log's CONNECT targets (Squid logs a tunnel when it ends).
fn connect_targets(squid: &Squid) -> Vec<String> {
    squid
        .access_log()
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // time elapsed client code/status bytes method URL user hierarchy type
            assert!(f.len() >= 8, "unexpected access log line: {l}");
            format!("{} {} {}", f[5], f[6], f[7])
        })
        .collect()
}

both_backends_both_protocols!(
    requests_through_squid_arrive_byte_for_byte_with_the_intake_sni,
    |io: &str, protocol: Protocol| {
        if skip_squid() {
            return;
        }
        let rig = Rig::new(PASSWORD);
        let relay = rig.relay(io, protocol, "");
        let Rig { dir: _dir, intake, mut squid, .. } = rig;
        assert!(relay.log().contains("egress through an HTTP CONNECT proxy"), "{}", relay.log());

        let mut sent = Vec::new();
        for (i, len) in [0usize, 700, 64 * 1024, 1024 * 1024].into_iter().enumerate() {
            let body = payload(len, i as u64);
            assert_eq!(post(&relay, 1, SERIES, &body).status, 202, "{}", relay.log());
            sent.push(body_hash(&body));
        }
        let trace_body = payload(3000, 99);
        assert_eq!(post(&relay, 2, "/api/v0.2/traces", &trace_body).status, 202);

        let records = intake.mock.records();
        assert_eq!(records.len(), 5, "{records:?}");
        for (r, hash) in records.iter().take(4).zip(&sent) {
            assert_eq!(r.sni.as_deref(), Some(METRICS_HOST), "SNI is the intake's name, never the proxy's");
            assert_eq!(r.host.as_deref(), Some(METRICS_HOST));
            assert_eq!(r.path, SERIES);
            assert_eq!(r.body_hash, *hash);
            assert_eq!(r.header("dd-api-key"), Some(FAKE_KEY));
        }
        assert_eq!(records[4].sni.as_deref(), Some(TRACE_HOST));
        assert_eq!(records[4].body_hash, body_hash(&trace_body));
        // Pooled sessions run through the tunnel: fewer TLS sessions than
        // requests over HTTP/1.1. Over h2 the 64 KiB and 1 MiB bodies, past
        // the mock's 65,535-byte stream window, may take an HTTP/1.1 session
        // through the tunnel instead (relay::exchange: on a worker whose
        // HTTP/2 connection already knows the window; which worker takes
        // which request is the kernel's choice): up to 2 more.
        let most = if protocol.is_h2() { 5 } else { 3 };
        assert!(intake.mock.stats().connections <= most, "{:?}", intake.mock.stats());

        let metrics = relay.status_page("/metrics");
        assert!(
            metrics.contains(&format!("fipsrelay_proxy_info{{proxy=\"{}\",resolve=\"proxy\"}} 1", squid.url())),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("fipsrelay_upstream_via_proxy{{upstream=\"{METRICS_HOST}\"}} 1")),
            "{metrics}"
        );
        // One tunnel per intake session (the same count as above).
        let tunnels = relay.wait_metric("fipsrelay_proxy_tunnels_total", |v| v >= 2.0);
        assert!((2.0..=most as f64).contains(&tunnels), "{metrics}");
        assert!(metrics.contains("fipsrelay_proxy_connect_seconds_count"), "{metrics}");
        let status = relay.status_page("/");
        assert!(
            status.contains(&format!("egress: through proxy {}", squid.url())) && status.contains("user fipsrelay"),
            "{status}"
        );
        assert!(!status.contains(PASSWORD) && !metrics.contains(PASSWORD));

        // Squid saw CONNECT to the intake names, authenticated, and nothing else.
        drop(relay);
        squid.stop();
        let port = intake.addr().port();
        let targets = connect_targets(&squid);
        assert!(!targets.is_empty(), "{:?}", squid.access_log());
        for t in &targets {
            let ok = [METRICS_HOST, TRACE_HOST].iter().any(|h| *t == format!("CONNECT {h}:{port} {USER}"));
            assert!(ok, "unexpected access log entry {t:?}: {:?}", squid.access_log());
        }
        assert!(targets.iter().any(|t| t.contains(TRACE_HOST)));
    }
);

both_backends_both_protocols!(
    wrong_credentials_get_502_and_a_log_line_without_the_password,
    |io: &str, protocol: Protocol| {
        if skip_squid() {
            return;
        }
        let wrong = "not-the-Passw0rd-4411";
        let rig = Rig::new(wrong);
        let mut relay = rig.relay(io, protocol, "upstream.appsec_host = \"appsec.example.com\"");
        let Rig { dir, intake, squid, .. } = rig;
        for _ in 0..2 {
            assert_eq!(post(&relay, 1, SERIES, b"{}").status, 502, "never a 4xx to the Agent");
        }
        let want = format!(
        "proxy 127.0.0.1:{} answered 407 Proxy Authentication Required: the proxy rejected the credentials: check upstream.proxy.credentials_file",
        squid.port
    );
        assert!(eventually(Duration::from_secs(3), || relay.log().contains(&want)), "{}", relay.log());
        assert!(!relay.log().contains(wrong) && !relay.log().contains(PASSWORD), "{}", relay.log());
        assert_eq!(relay.wait_metric("fipsrelay_proxy_connect_failures_total{reason=\"407\"}", |v| v >= 2.0), 2.0);
        assert!(
            relay.wait_metric("fipsrelay_upstream_errors_total{product=\"metrics\",cause=\"proxy\"}", |v| v >= 2.0)
                >= 2.0
        );
        assert_eq!(intake.mock.stats().requests, 0);

        // The credentials are fixed and the relay reloaded (SIGHUP): the next
        // request goes through without a restart.
        credentials(dir.path(), PASSWORD);
        unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
        assert!(
            eventually(Duration::from_secs(5), || relay.log().contains("proxy credentials re-read (user fipsrelay)")),
            "{}",
            relay.log()
        );
        assert_eq!(post(&relay, 1, SERIES, b"{}").status, 202, "{}", relay.log());

        // The proxy's policy refuses a host outside the allow-list: 502 again,
        // with the fix.
        assert_eq!(post(&relay, 11, "/api/v2/appsecevts", b"{}").status, 502);
        assert!(
            eventually(Duration::from_secs(3), || relay
                .log()
                .contains("answered 403 Forbidden: the proxy's policy refuses CONNECT appsec.example.com")),
            "{}",
            relay.log()
        );
        assert!(!relay.log().contains(PASSWORD));
        relay.terminate(Duration::from_secs(10));
    }
);

both_backends_both_protocols!(
    squid_stopped_gives_502_or_503_and_traffic_recovers_when_it_is_back,
    |io: &str, protocol: Protocol| {
        if skip_squid() {
            return;
        }
        let rig = Rig::new(PASSWORD);
        let relay = rig.relay(
            io,
            protocol,
            "health.enabled = true\nhealth.interval = \"300ms\"\nhealth.fall = 1\nhealth.rise = 1",
        );
        let Rig { dir: _dir, mut squid, .. } = rig;
        assert_eq!(post(&relay, 1, SERIES, b"{}").status, 202, "{}", relay.log());
        squid.stop();
        for _ in 0..4 {
            let status = post(&relay, 1, SERIES, b"{}").status;
            assert!(status == 502 || status == 503, "got {status}: {}", relay.log());
        }
        assert!(relay.log().contains(&format!("cannot connect to proxy 127.0.0.1:{}", squid.port)), "{}", relay.log());
        squid.restart();
        assert!(
            eventually(Duration::from_secs(5), || post(&relay, 1, SERIES, b"{}").status == 202),
            "traffic did not come back through the proxy: {}",
            relay.log()
        );
    }
);

both_backends_both_protocols!(
    no_proxy_hosts_go_direct_and_resolve_locally_connects_to_addresses,
    |io: &str, protocol: Protocol| {
        if skip_squid() {
            return;
        }
        let mut rig = Rig::new(PASSWORD);
        let port = rig.intake.addr().port();
        let zone = rig.dir.path().join("zone.txt");
        let text: String = upstream_hosts().iter().map(|h| format!("{h} A 127.0.0.1 60\n")).collect();
        std::fs::write(&zone, text).unwrap();
        let dns = MockDns::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let dns_lines = format!("dns.nameservers = [\"{}\"]\ndns.timeout = \"1s\"\n", dns.local_addr());

        // Metrics bypasses the proxy (resolved here, straight to the intake);
        // traces go through it by name.
        let relay = rig.relay(io, protocol, &format!("upstream.proxy.no_proxy = [\"{METRICS_HOST}\"]\n{dns_lines}"));
        assert_eq!(post(&relay, 1, SERIES, b"{}").status, 202, "{}", relay.log());
        assert_eq!(post(&relay, 2, "/api/v0.2/traces", b"{}").status, 202, "{}", relay.log());
        let status = relay.status_page("/");
        assert!(status.contains(&format!("direct (no_proxy): {METRICS_HOST}")), "{status}");
        let metrics = relay.status_page("/metrics");
        assert!(
            metrics.contains(&format!("fipsrelay_upstream_via_proxy{{upstream=\"{METRICS_HOST}\"}} 0")),
            "{metrics}"
        );
        drop(relay);

        // resolve_locally: the relay resolves the name and CONNECTs to the address.
        let relay = rig.relay(io, protocol, &format!("upstream.proxy.resolve_locally = true\n{dns_lines}"));
        assert_eq!(post(&relay, 1, SERIES, b"{}").status, 202, "{}", relay.log());
        let records = rig.intake.mock.records();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.sni.is_some() && r.sni == r.host), "{records:?}");
        drop(relay);

        rig.squid.stop();
        let targets = connect_targets(&rig.squid);
        assert!(targets.iter().all(|t| !t.contains(METRICS_HOST)), "metrics went through the proxy: {targets:?}");
        assert!(targets.contains(&format!("CONNECT {TRACE_HOST}:{port} {USER}")), "{targets:?}");
        // With resolve_locally the proxy sees the address, not the name. Squid's
        // dstdomain ACL matches an IP's reverse name: ".ddog-gov.com" refuses it
        // unless the hosts file names it, which it does here.
        assert!(targets.contains(&format!("CONNECT 127.0.0.1:{port} {USER}")), "{targets:?}");
    }
);

both_protocols!(https_proxy_gets_its_own_fips_tls_checked_against_its_ca, |protocol: Protocol| {
    if skip_squid() {
        return;
    }
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    // The proxy's certificate comes from another CA than the intake's.
    let proxy_pki = TestPki::generate_for(&["127.0.0.1"]);
    let proxy_ca = dir.path().join("proxy-ca.pem");
    std::fs::write(&proxy_ca, &proxy_pki.ca_cert_pem).unwrap();
    let squid =
        Squid::start(&squid_config(&intake, Some((proxy_pki.leaf_cert_pem.clone(), proxy_pki.leaf_key_pem.clone()))));
    let creds = credentials(dir.path(), PASSWORD);
    // A relay through Squid's https_port, trusting `proxy_ca` for the proxy.
    let relay_trusting = |proxy_ca: &Path| {
        let extra = format!("upstream.proxy.ca_file = \"{}\"", proxy_ca.display());
        let lines = proxy_lines(&squid.tls_url(), &intake, Some(&creds), &protocol.with(&extra));
        Relay::start(dir.path(), "epoll", intake.addr(), &intake.ca_file, &lines)
    };
    let relay = relay_trusting(&proxy_ca);
    for len in [10, 200_000] {
        let body = payload(len, 7);
        assert_eq!(post(&relay, 1, SERIES, &body).status, 202, "{}", relay.log());
        let r = intake.mock.records().pop().unwrap();
        assert_eq!((r.sni.as_deref(), r.body_hash), (Some(METRICS_HOST), body_hash(&body)));
    }
    drop(relay);

    // Trusting the intake's CA for the proxy fails the proxy's handshake: 502.
    let relay = relay_trusting(&intake.ca_file);
    assert_eq!(post(&relay, 1, SERIES, b"{}").status, 502);
    assert!(
        eventually(Duration::from_secs(3), || relay.log().contains("TLS with proxy 127.0.0.1:")),
        "{}",
        relay.log()
    );
});

#[test]
fn diagnose_prints_the_proxy_hop_as_its_own_step() {
    if skip_squid() {
        return;
    }
    let Rig { dir, intake, squid, creds } = Rig::new(PASSWORD);
    let config = dir.path().join("diagnose.toml");
    let text = render_config(
        free_range(),
        "epoll",
        intake.addr(),
        &intake.ca_file,
        &proxy_lines(&squid.url(), &intake, Some(&creds), ""),
    );
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(relay_bin()).arg("diagnose").arg("--config").arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let want = format!(
        "proxy:       {} (127.0.0.1:{}): CONNECT {METRICS_HOST}:{} answered 2xx",
        squid.url(),
        squid.port,
        intake.addr().port()
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(!stdout.contains(PASSWORD));

    // check-config shows the proxy and the credentials file, not the password.
    let out =
        std::process::Command::new(relay_bin()).arg("check-config").arg("--config").arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("# egress: through proxy {} (from upstream.proxy.url)", squid.url())), "{stdout}");
    assert!(stdout.contains(&format!("#   {METRICS_HOST:<40} CONNECT {METRICS_HOST}:")), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");

    // Wrong credentials: the proxy step fails, with the fix.
    credentials(dir.path(), "wrong");
    let out = std::process::Command::new(relay_bin()).arg("diagnose").arg("--config").arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("cause 1: proxy ") && stdout.contains("answered 407"), "{stdout}");
    assert_eq!(stdout.matches("answered 407").count(), 1, "one cause, said once: {stdout}");
}

// A proxy that accepts and never answers CONNECT: the request gets 502
// within `upstream.connect_timeout`, and the log names the step.
both_backends_both_protocols!(a_proxy_that_never_answers_connect_times_out_into_502, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        // Hold what it accepts (bounded: the test ends within seconds).
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            if let Ok((c, _)) = silent.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with(&proxy_lines(&url, &intake, None, "upstream.connect_timeout = \"500ms\"")),
    );
    let started = std::time::Instant::now();
    assert_eq!(post(&relay, 1, SERIES, b"{}").status, 502);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        eventually(Duration::from_secs(3), || relay.log().contains("CONNECT answer timed out after 500ms")),
        "{}",
        relay.log()
    );
    assert_eq!(relay.wait_metric("fipsrelay_proxy_connect_failures_total{reason=\"timeout\"}", |v| v >= 1.0), 1.0);
    drop(relay);
    held.join().unwrap();
});
