//! What an operator reads: the status port's summary, metrics and health,
//! and a log that never holds a credential, on every path that logs.
//! Every scenario runs on both I/O backends and both upstream protocols.

mod common;

use std::time::Duration;

use common::*;

both_backends_both_protocols!(status_port_serves_summary_metrics_health, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    for _ in 0..3 {
        assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{}").status, 202);
    }
    let v = relay.wait_metric("fipsrelay_requests_total{product=\"traces\",class=\"2xx\"}", |v| v == 3.0);
    assert_eq!(v, 3.0);
    let metrics = relay.status_page("/metrics");
    assert!(metrics.contains("fipsrelay_request_duration_seconds_count{product=\"traces\"} 3"), "{metrics}");
    assert!(metrics.contains("fipsrelay_request_body_bytes_total{product=\"traces\"} 6"));
    assert!(metrics.contains("fipsrelay_upstream_sessions_open{upstream=\"trace.agent.ddog-gov.com\"}"));
    let summary = relay.status_page("/");
    let module = "AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated";
    assert!(summary.contains(&format!("fips: enabled ({module})")), "{summary}");
    assert!(metrics.contains(
        "fipsrelay_fips_module_info{module_version=\"3.1.0\",certificate=\"5314\",status=\"validated\",linkage=\"static\"} 1"
    ), "{metrics}");
    assert!(relay.log().contains(&format!("fips=\"{module}\"")), "{}", relay.log());
    let backend = if io == "uring" { "io: io_uring" } else { "io: epoll" };
    assert!(summary.contains(backend), "{summary}");
    let traces = summary_row(&summary, &relay.port(2).to_string());
    assert_eq!(&traces[1..4], ["traces", "3", "0"], "{summary}");
    assert_eq!(traces.last().map(String::as_str), Some("trace.agent.ddog-gov.com"), "{summary}");
    let health = relay.status_page("/health");
    assert!(health.contains("\"status\":\"ok\"") && health.contains("\"fips\":true"), "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let m = &health["fips_module"];
    assert_eq!(m["version"], "3.1.0", "{health}");
    assert_eq!(m["certificate"], 5314, "{health}");
    assert_eq!(m["status"], "validated", "{health}");
    assert_eq!(m["linkage"], "static", "{health}");
    assert_eq!(m["validated"], true, "{health}");
    assert_eq!(relay.request(0, "POST", "/admin", &[], b"x").status, 405);
    assert_eq!(relay.request(0, "GET", "/nope", &[], b"").status, 404);
});

// /metrics stays lean: no series that cannot change in this configuration,
// a product's series once it has had a request, an error cause's once
// counted (docs/operations.md, "Which series appear").
both_backends_both_protocols!(metrics_series_appear_with_use, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
    let samples = |page: &str| page.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    let idle = samples(&relay.status_page("/metrics"));
    for absent in [
        "fipsrelay_requests_total",
        "fipsrelay_upstream_errors_total",
        "fipsrelay_request_duration_seconds",
        "fipsrelay_upstream_sessions_open",
    ] {
        assert!(!idle.iter().any(|l| l.starts_with(absent)), "{absent} at idle:\n{}", idle.join("\n"));
    }
    // Health, panic, FIPS module and process series are there from the start.
    for present in [
        "fipsrelay_upstream_address_up{upstream=\"trace.agent.ddog-gov.com\"",
        "fipsrelay_upstream_panic{upstream=\"snmp-traps-intake.ddog-gov.com\"} 0",
        "fipsrelay_fips_module_info{module_version=",
        "fipsrelay_build_info{relay_version=",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(idle.iter().any(|l| l.starts_with(present)), "{present} missing at idle:\n{}", idle.join("\n"));
    }

    assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"{}").status, 202);
    // appsec has no upstream by default: 503, counted under its cause.
    assert_eq!(relay.request(11, "POST", "/api/v2/appsecevts", &[], b"{}").status, 503);
    relay.wait_metric("fipsrelay_requests_total{product=\"traces\",class=\"2xx\"}", |v| v == 1.0);
    relay.wait_metric("fipsrelay_upstream_errors_total{product=\"appsec\",cause=\"unconfigured\"}", |v| v == 1.0);
    let used = samples(&relay.status_page("/metrics"));
    let text = used.join("\n");
    let errors: Vec<&String> = used.iter().filter(|l| l.starts_with("fipsrelay_upstream_errors_total")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(!text.contains("class=\"1xx\""), "{text}");
    assert!(text.contains("fipsrelay_request_duration_seconds_count{product=\"traces\"} 1"), "{text}");
    // Ports the test never used have no series; neither do the hosts behind them.
    assert!(!text.contains("product=\"metrics\"") && !text.contains("product=\"logs\""), "{text}");
    assert!(text.contains("fipsrelay_upstream_sessions_open{upstream=\"trace.agent.ddog-gov.com\"}"), "{text}");
    assert!(!text.contains("fipsrelay_upstream_sessions_open{upstream=\"metrics.agent.ddog-gov.com\"}"), "{text}");
    // HTTP/2 series only where HTTP/2 can be spoken.
    assert_eq!(
        text.contains("fipsrelay_upstream_h2_streams_total{upstream=\"trace.agent.ddog-gov.com\"}"),
        protocol.is_h2(),
        "{text}"
    );
    assert_eq!(text.contains("fipsrelay_upstream_h2_http1_fallback"), protocol.is_h2(), "{text}");
});

/// The cells of the status page's row that starts with `first` (columns
/// are two spaces or more apart).
fn summary_row(page: &str, first: &str) -> Vec<String> {
    let line =
        page.lines().find(|l| l.split("  ").next() == Some(first)).unwrap_or_else(|| panic!("no {first} row: {page}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
}

// The summary labels each product by its port and name, its columns line
// up, and the upstream sessions are counted for the protocol in use: under
// the default (HTTP/2 to an intake offering h2) the h2 columns are not zero.
both_backends_both_protocols!(
    status_page_labels_ports_and_counts_sessions_per_protocol,
    |io: &str, protocol: Protocol| {
        let dir = TestDir::new();
        let intake = Intake::start(dir.path());
        let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, &protocol.with(""));
        for _ in 0..4 {
            assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
        }
        relay.wait_metric("fipsrelay_requests_total{product=\"metrics\",class=\"2xx\"}", |v| v == 4.0);
        let page = relay.status_page("/");
        let header = page.lines().find(|l| l.starts_with("port  ")).unwrap_or_else(|| panic!("{page}"));
        let metrics_line = page.lines().find(|l| l.starts_with(&format!("{}  metrics ", relay.port(1)))).unwrap();
        // Aligned: a right-aligned cell ends where its header does.
        let requests_end = header.find("requests").unwrap() + "requests".len();
        assert!(metrics_line[..requests_end].ends_with(" 4"), "requests right-aligned under the header:\n{page}");
        for (offset, name) in [(0, "status"), (1, "metrics"), (15, "network_devices_netflow")] {
            let row = summary_row(&page, &relay.port(offset).to_string());
            assert_eq!(row[1], name, "{page}");
        }
        assert!(!page.contains("metrics (1)"), "products are labelled by port, not offset: {page}");
        let host = summary_row(&page, "metrics.agent.ddog-gov.com");
        let column = |name: &str| {
            let header = summary_row(&page, "upstream");
            let i = header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name} column: {page}"));
            host[i].clone()
        };
        let n = |name: &str| column(name).parse::<u64>().unwrap_or_else(|_| panic!("{name}: {page}"));
        if protocol.is_h2() {
            assert_eq!(column("speaks"), "h2", "{page}");
            assert!(n("h2 conns") >= 1, "{page}");
            assert!(n("h2 streams") >= 4, "{page}");
            assert_eq!(n("h1 open"), 0, "{page}");
        } else {
            assert_eq!(column("speaks"), "http/1.1", "{page}");
            assert_eq!((n("h2 conns"), n("h2 streams")), (0, 0), "{page}");
            assert!(n("h1 open") >= 1 && n("h1 idle") >= 1, "{page}");
        }
    }
);

/// One logfmt line as (key, value) pairs: `key=bare` or `key="quoted"`, with
/// `\"`, `\\`, `\n`, `\r`, `\t` and `\u{..}` escapes inside quotes.
fn parse_logfmt(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' || c == '"' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next() != Some('=') {
            return Err(format!("no key=value at {key:?}"));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next().ok_or(format!("{key}: unterminated quotes"))? {
                    '"' => break,
                    '\\' => match chars.next().ok_or(format!("{key}: dangling escape"))? {
                        '"' => value.push('"'),
                        '\\' => value.push('\\'),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'u' => {
                            let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                            let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            value.push(c.ok_or(format!("{key}: bad \\u escape"))?);
                        }
                        other => return Err(format!("{key}: unknown escape \\{other}")),
                    },
                    c => value.push(c),
                }
            }
            if chars.peek().is_some_and(|&c| c != ' ') {
                return Err(format!("{key}: text right after the closing quote"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if c == '"' || c == '=' {
                    return Err(format!("{key}: unquoted value holds {c:?}"));
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

// The text log is logfmt: every line of a live relay parses, starts with
// ts, level and msg, and values with spaces (the FIPS module) or from a
// multi-line error (a TOML error on reload) come back whole.
both_backends!(text_log_lines_are_logfmt, |io: &str| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "");
    assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{}").status, 202);
    assert_eq!(relay.request(11, "POST", "/api/v2/appsec", &[], b"{}").status, 503);
    let mut bad = std::net::TcpStream::connect(relay.addr(1)).unwrap();
    std::io::Write::write_all(
        &mut bad,
        b"POST /api/v2/series HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut bad, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A config the reload refuses: its TOML error names the line.
    let config = relay.log_path.with_extension("toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\nbogus_key = 1\n")).unwrap();
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(5), || relay.log().contains("config reload refused")), "{}", relay.log());

    let log = relay.log();
    let module = "AWS-LC FIPS 3.1.0 static, FIPS 140-3 certificate #5314, validated";
    let mut seen_fips = false;
    let mut seen_reload = false;
    for line in log.lines() {
        let pairs = parse_logfmt(line).unwrap_or_else(|e| panic!("not logfmt ({e}): {line}"));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&keys[..3], ["ts", "level", "msg"], "{line}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&pairs[1].1.as_str()), "{line}");
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        if get("msg") == Some("fipsrelay starting") {
            assert_eq!(get("fips"), Some(module), "{line}");
            assert!(line.contains(&format!("fips=\"{module}\"")), "{line}");
            seen_fips = true;
        }
        if get("msg") == Some("config reload refused") {
            let outcome = get("outcome").unwrap_or_else(|| panic!("no outcome: {line}"));
            assert!(outcome.contains("TOML parse error at line ") && outcome.contains("(`bogus_key = 1`)"), "{line}");
            assert!(outcome.contains("unknown field `bogus_key`") && !outcome.contains("|;"), "{line}");
            seen_reload = true;
        }
    }
    assert!(seen_fips && seen_reload, "{log}");
});

both_backends_both_protocols!(credentials_never_reach_the_log, |io: &str, protocol: Protocol| {
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let mut relay = Relay::start(
        dir.path(),
        io,
        intake.addr(),
        &intake.ca_file,
        &protocol.with("log.level = \"trace\"\nupstream.response_timeout = \"300ms\""),
    );
    let key_headers = [("DD-API-KEY", FAKE_KEY), ("Authorization", "Bearer 5f2c8a1e9b7d4c3a6e0f1b2d3c4a5e6f")];
    let validate = format!("/api/v1/validate?api_key={FAKE_KEY}");
    // Success, intake errors, timeouts, faults, malformed requests, appsec.
    assert_eq!(relay.request(1, "GET", &validate, &key_headers, b"").status, 202);
    intake.mock.set_behavior(Behavior { status: 403, ..Behavior::default() });
    relay.request(1, "GET", &validate, &key_headers, b"");
    intake.mock.set_behavior(Behavior { latency: Duration::from_secs(2), ..Behavior::default() });
    assert_eq!(relay.request(1, "GET", &validate, &key_headers, b"").status, 504);
    intake.mock.set_behavior(Behavior { fault: Fault::ResetAfterRequest, ..Behavior::default() });
    relay.request(1, "POST", &validate, &key_headers, FAKE_KEY.as_bytes());
    let mut c = relay.connect(1);
    c.write_raw(
        format!("GET {validate} HTTP/1.1\r\nDD-API-KEY: {FAKE_KEY}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .as_bytes(),
    );
    let _ = c.read_response(false);
    let mut c = relay.connect(1);
    c.write_raw(format!("GET {validate} HTTP/1.1\nDD-API-KEY: {FAKE_KEY}\n\n").as_bytes());
    let _ = c.read_response(false);
    relay.request(11, "POST", &validate, &key_headers, b"x");
    drop(intake);
    relay.request(1, "POST", &validate, &key_headers, b"x");
    // Stopped, the relay has logged all it ever will, the stop included.
    relay.terminate(Duration::from_secs(10));
    let log = relay.log();
    assert!(log.lines().count() > 8, "the error paths must have logged:\n{log}");
    assert!(!log.contains(FAKE_KEY), "API key leaked into the log:\n{log}");
    assert!(!log.contains(&FAKE_KEY[..20]), "API key prefix leaked into the log:\n{log}");
});
