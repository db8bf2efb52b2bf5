//! `fipsrelay migrate` on HAProxy configs shaped like the one the Datadog
//! Agent FIPS Proxy ships (tests/data/fips-proxy/shipped.cfg, and how it was
//! put together, in its header) and on hand-edited variants: another port
//! range, the site's own resolvers, extra servers, every product sent to a
//! TLS egress gateway, and broken lines. Each output must load through the
//! config module as `check-config` loads it, carry each setting the variant
//! changed, and account for every directive line of the input: carried,
//! not carried (with why), or done by fipsrelay without a setting.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use fipsrelay::cli::migrate;
use fipsrelay::config::{self, RawConfig};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fips-proxy").join(name)
}

/// `fipsrelay migrate --from PATH`: (exit code, stdout, stderr).
fn migrate_cli(path: &Path) -> (i32, String, String) {
    let out = Command::new(relay_bin())
        .arg("migrate")
        .arg("--from")
        .arg(path)
        .env_remove("FIPSRELAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The printed config, loaded as `check-config` loads a file: parsed (unknown
/// keys refused), no environment overrides, validated.
fn load(text: &str) -> RawConfig {
    let raw = config::parse_str(text).unwrap_or_else(|e| panic!("the output is not a valid config: {e}\n{text}"));
    let raw = config::apply_env(raw, &|_| None).unwrap();
    raw.validate().unwrap_or_else(|e| panic!("the output does not validate: {e}\n{text}"));
    raw
}

/// Runs the sample through the command and the library; checks the
/// output loads and every directive line is accounted for.
fn migrated(name: &str) -> (RawConfig, String, migrate::Migration) {
    let path = sample(name);
    let (code, stdout, stderr) = migrate_cli(&path);
    assert_eq!(code, 0, "{name}: {stderr}");
    assert!(stderr.contains("settings carried"), "{stderr}");
    let raw = load(&stdout);
    let m = migrate::read(&path, &|_| None).unwrap();
    assert_eq!(stdout, migrate::render(&m, &path), "the command prints what the library renders");
    every_line_accounted_for(&path, &m);
    (raw, stdout, m)
}

/// Nothing is dropped silently: each directive line of the input (not a
/// blank, a comment or a section header) is named by a carried key or a note.
fn every_line_accounted_for(path: &Path, m: &migrate::Migration) {
    const HEADERS: &[&str] = &["global", "defaults", "frontend", "backend", "listen", "resolvers"];
    let text = std::fs::read_to_string(path).unwrap();
    let named: Vec<usize> = m
        .carried
        .iter()
        .flat_map(|c| c.lines.iter())
        .chain(m.not_carried.iter().flat_map(|n| n.lines.iter()))
        .chain(m.built_in.iter().flat_map(|n| n.lines.iter()))
        .copied()
        .collect();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap().trim();
        let first = content.split_whitespace().next().unwrap_or("");
        if content.is_empty() || HEADERS.contains(&first) {
            continue;
        }
        assert!(named.contains(&(i + 1)), "{}: line {} ({content}) is in no key and no note", path.display(), i + 1);
    }
}

fn note<'a>(list: &'a [migrate::Note], what: &str) -> &'a migrate::Note {
    list.iter().find(|n| n.what.contains(what)).unwrap_or_else(|| panic!("no note about {what:?} in {list:#?}"))
}

#[test]
fn the_shipped_shape_needs_no_key_and_says_why_for_each_directive() {
    let (raw, text, m) = migrated("shipped.cfg");
    assert!(
        config::changed_keys(&RawConfig::default(), &raw).is_empty(),
        "the stock FIPS Proxy config maps to fipsrelay's defaults:\n{text}"
    );
    assert!(text.contains("no key to set"), "{text}");
    // The stock values that fipsrelay replaces, each with the key that would keep it.
    let server = note(&m.built_in, "timeout server 5s (the FIPS Proxy's stock value)");
    assert!(server.why.contains("upstream.response_timeout = \"5s\""), "{server:?}");
    assert!(note(&m.built_in, "hold valid 10s").why.contains("dns.refresh = \"10s\""));
    let ca = note(&m.built_in, "ca-file /opt/datadog-fips-proxy/");
    assert_eq!(ca.lines.len(), 16, "one per backend: {ca:?}");
    assert!(note(&m.not_carried, "maxconn 4096").why.contains("limits.max_connections"));
    assert_eq!(note(&m.built_in, "bind ports 9803-9818").lines.len(), 15, "the stats port and 14 products");
    assert!(note(&m.built_in, "use_backend datadog-api").why.contains("routes this path"));

    // And the file loads through check-config itself.
    let dir = TestDir::new();
    let out = dir.path().join("fipsrelay.toml");
    std::fs::write(&out, &text).unwrap();
    let check = Command::new(relay_bin()).args(["check-config", "--config"]).arg(&out).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn another_port_range_and_timeouts_are_carried() {
    let (raw, text, m) = migrated("other-ports.cfg");
    assert_eq!(raw.listen.port_range_start, 19803);
    assert_eq!(raw.upstream.connect_timeout, "3s");
    assert_eq!(raw.upstream.response_timeout, "30s");
    assert_eq!(raw.limits.client_idle_timeout, "1m");
    assert_eq!(raw.limits.header_timeout, "20s");
    assert_eq!(raw.upstream.retries, 5);
    assert_eq!(config::changed_keys(&RawConfig::default(), &raw).len(), 6, "{text}");
    let start = m.carried.iter().find(|c| c.key == "listen.port_range_start").unwrap();
    assert_eq!(start.lines.len(), 15, "every bind line: {start:?}");
    assert!(start.caveat.as_deref().unwrap().contains("DD_FIPS_PORT_RANGE_START"), "{start:?}");
    // Each key says where it came from.
    assert!(text.contains("# line 17: timeout server 30s\nresponse_timeout = \"30s\""), "{text}");
}

#[test]
fn custom_resolvers_health_threads_and_ca_base_are_carried() {
    let (raw, text, _) = migrated("custom-resolvers.cfg");
    assert_eq!(raw.dns.nameservers, vec!["10.0.0.2:53".to_string(), "10.0.0.3:5353".to_string()], "{text}");
    assert_eq!((raw.dns.prefer.as_str(), raw.dns.refresh.as_str()), ("ipv6", "1m"));
    assert_eq!((raw.health.interval.as_str(), raw.health.down_interval.as_str()), ("5s", "1s"));
    assert_eq!((raw.health.rise, raw.health.fall), (3, 5));
    assert_eq!(raw.workers.threads, 4);
    assert_eq!(raw.upstream.ca_file.as_deref(), Some(Path::new("/etc/pki/fipsrelay/internal-ca.pem")));
}

#[test]
fn every_product_sent_to_an_egress_gateway_becomes_override_addr() {
    let (raw, text, m) = migrated("server-override-proxy.cfg");
    assert_eq!(raw.upstream.override_addr.as_deref(), Some("10.20.0.5:8443"), "{text}");
    assert_eq!(raw.upstream.ca_file.as_deref(), Some(Path::new("/etc/ssl/egress-ca.pem")));
    let validated = raw.validate().unwrap();
    assert_eq!(validated.override_addrs, vec!["10.20.0.5:8443".parse().unwrap()]);
    // SNI was the product's host everywhere: nothing to set, and said so.
    assert!(note(&m.built_in, "sni").why.contains("product's host"));
    // The resolvers section no server uses any more.
    assert!(note(&m.not_carried, "resolvers my-dns").why.contains("no server names it"));
}

#[test]
fn extra_servers_and_rules_are_listed_not_dropped() {
    let (raw, _, m) = migrated("extra-servers.cfg");
    assert!(config::changed_keys(&RawConfig::default(), &raw).is_empty());
    let mirror = note(&m.not_carried, "server 192.0.2.10:443");
    assert!(mirror.why.contains("extra server") && mirror.why.contains("logs"), "{mirror:?}");
    assert!(note(&m.not_carried, "backup").why.contains("no backup servers"));
    assert!(note(&m.not_carried, "option forwardfor").why.contains("X-Forwarded-For"));
    assert!(note(&m.not_carried, "http-request set-header X-Relay").why.contains("no rules"));
}

#[test]
fn broken_lines_are_named_with_their_line_and_the_rest_still_carried() {
    let (raw, text, m) = migrated("broken.cfg");
    assert_eq!(raw.upstream.connect_timeout, "7s");
    assert_eq!(raw.upstream.retries, 10, "capped at fipsrelay's limit:\n{text}");
    let why = |line: usize| {
        m.not_carried
            .iter()
            .find(|n| n.lines.contains(&line))
            .map(|n| n.why.clone())
            .unwrap_or_else(|| panic!("nothing about line {line}:\n{text}"))
    };
    assert!(why(2).contains("outside any section"));
    assert!(why(4).contains("not a directive"));
    assert!(why(5).contains("not a thread count"));
    assert!(why(8).contains("not an HAProxy time"));
    assert!(why(13).contains("not an IP address"));
    assert!(why(17).contains("unclosed quote"));
    assert!(why(19).contains("no login"));
    assert!(why(26).contains("no port"));
    assert!(why(30).contains("9808"), "the logs frontend off its offset: {}", why(30));
    assert!(why(34).contains("always verifies"));
    assert!(why(42).contains("no frontend uses it"));
    let every_address = note(&m.not_carried, "every address");
    assert!(every_address.why.contains("allow_non_local"), "{every_address:?}");
    assert!(note(&m.not_carried, "bind ... ssl").why.contains("fips.https: false"));
}

#[test]
fn a_missing_or_foreign_file_exits_2_with_the_fix() {
    let dir = TestDir::new();
    let (code, stdout, stderr) = migrate_cli(&dir.path().join("nope.cfg"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("nope.cfg") && stderr.contains("--from"), "{stderr}");

    let (code, _, stderr) = migrate_cli(dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("a directory"), "{stderr}");

    let toml = dir.path().join("fipsrelay.toml");
    std::fs::write(&toml, "[listen]\nport_range_start = 9803\n").unwrap();
    let (code, _, stderr) = migrate_cli(&toml);
    assert_eq!(code, 2);
    assert!(stderr.contains("not an HAProxy configuration"), "{stderr}");

    let binary = dir.path().join("binary.cfg");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let (code, _, stderr) = migrate_cli(&binary);
    assert_eq!(code, 2);
    assert!(stderr.contains("not text"), "{stderr}");
}

#[test]
fn the_local_address_from_the_environment_is_left_to_the_relay() {
    let text = "frontend metrics-forwarder\n    bind \"${DD_FIPS_LOCAL_ADDRESS}:9804\"\n    default_backend m\n\
                backend m\n    server s metrics.agent.ddog-gov.com:443 ssl check\n";
    let m = migrate::translate_str(text, &|_| None);
    assert!(note(&m.built_in, "DD_FIPS_LOCAL_ADDRESS").why.contains("reads DD_FIPS_LOCAL_ADDRESS"));
    assert!(m.carried.is_empty(), "{:?}", m.carried);
    // Expanded when this shell sets it, as HAProxy would.
    let m = migrate::translate_str(text, &|k| (k == "DD_FIPS_LOCAL_ADDRESS").then(|| "127.0.0.2".into()));
    assert_eq!(m.raw.listen.address, "127.0.0.2");
}

/// The samples other than broken.cfg are configurations HAProxy itself
/// accepts (`haproxy -c`), with their CA files pointed at a PEM that
/// exists here; broken.cfg is refused. Skipped without an haproxy binary.
#[test]
fn haproxy_accepts_the_samples_and_refuses_the_broken_one() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy)");
        return;
    }
    let dir = TestDir::new();
    let pki = loadgen::pki::TestPki::generate(&[]);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    for name in ["shipped", "other-ports", "custom-resolvers", "server-override-proxy", "extra-servers", "broken"] {
        let text = std::fs::read_to_string(sample(&format!("{name}.cfg"))).unwrap();
        let ca = ca.display().to_string();
        let text = text
            .replace("/opt/datadog-fips-proxy/embedded/ssl/certs/cacert.pem", &ca)
            .replace("/etc/ssl/egress-ca.pem", &ca)
            .replace("ca-base /etc/pki/fipsrelay", &format!("ca-base {}", dir.path().display()))
            .replace("internal-ca.pem", "ca.pem");
        let cfg = dir.path().join(format!("{name}.cfg"));
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new("haproxy").arg("-c").arg("-f").arg(&cfg).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if name == "broken" {
            assert!(!out.status.success(), "haproxy accepted broken.cfg:\n{said}");
        } else {
            assert!(out.status.success(), "haproxy refuses {name}.cfg:\n{said}");
        }
    }
}
