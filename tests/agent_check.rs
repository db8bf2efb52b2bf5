//! The Agent watches the relay: Datadog's own openmetrics check
//! (`OpenMetricsBaseCheckV2` from `datadog-checks-base`, with its stub
//! aggregator) runs the shipped `packaging/datadog-agent/fipsrelay.d/conf.yaml`
//! against a live relay, before and after traffic, and the metrics arrive
//! under the right names, types and tags. The stub refuses a reserved tag
//! name (`version`, `host`, `service`, `env`, ...) as the Agent does.
//!
//! Needs the library in the venv that `scripts/setup.sh` makes
//! (`$FIPSRELAY_AGENT_CHECK_VENV`, by default `~/.cache/fipsrelay/agent-check-venv`);
//! without it the test says SKIPPED and why.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The venv's python, if it has the check library; otherwise why not.
fn check_python() -> Result<PathBuf, String> {
    let venv = match std::env::var_os("FIPSRELAY_AGENT_CHECK_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
            cache.join("fipsrelay/agent-check-venv")
        }
    };
    let python = venv.join("bin/python");
    if !python.exists() {
        return Err(format!("{} is missing; scripts/setup.sh makes it (pip, PyPI)", python.display()));
    }
    let probe = Command::new(&python)
        .args(["-c", "import datadog_checks.base.checks.openmetrics.v2, yaml, requests_unixsocket"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot import datadog-checks-base: {}; scripts/setup.sh installs it",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(python)
}

/// One submission: (name, type) and its tags as a map.
struct Sent {
    name: String,
    kind: String,
    value: f64,
    tags: BTreeMap<String, String>,
    flush_first_value: bool,
}

fn sent(run: &Value) -> Vec<Sent> {
    run["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Sent {
            name: m["name"].as_str().unwrap().to_string(),
            kind: m["type"].as_str().unwrap().to_string(),
            value: m["value"].as_f64().unwrap(),
            tags: m["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let (k, v) = t.as_str().unwrap().split_once(':').unwrap_or((t.as_str().unwrap(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            flush_first_value: m["flush_first_value"].as_bool().unwrap(),
        })
        .collect()
}

/// The one submission of `name` whose tags include `tags`.
fn find<'a>(run: &'a [Sent], name: &str, tags: &[(&str, &str)]) -> &'a Sent {
    let hits: Vec<&Sent> = run
        .iter()
        .filter(|s| s.name == name && tags.iter().all(|(k, v)| s.tags.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(hits.len(), 1, "{name} {tags:?}: {} submissions", hits.len());
    hits[0]
}

both_backends!(datadog_check_reads_the_relay, |io: &str| {
    let python = match check_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: Datadog's check library is not installed: {why}");
            return;
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let conf = root.join("packaging/datadog-agent/fipsrelay.d/conf.yaml");
    let dir = TestDir::new();
    let intake = Intake::start(dir.path());
    let relay = Relay::start(dir.path(), io, intake.addr(), &intake.ca_file, "health.enabled = true");
    let endpoint = format!("http://127.0.0.1:{}/metrics", relay.port(0));

    let mut check = Command::new(&python)
        .arg(root.join("tests/agent_check.py"))
        .arg(&conf)
        .arg(&endpoint)
        // The stub's refusal of reserved tag names must stay on.
        .env_remove("DDEV_SKIP_GENERIC_TAGS_CHECK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = check.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = check.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).expect("the check's first run");
    assert_eq!(line, "scraped", "the check's first run failed: {line}");

    // Traffic between the two runs: answers on two ports, and a port with
    // no upstream (appsec by default) answering 503 `unconfigured`.
    for _ in 0..3 {
        assert_eq!(relay.request(1, "POST", "/api/v2/series", &[], b"{\"series\":[]}").status, 202);
    }
    assert_eq!(relay.request(2, "POST", "/api/v0.2/traces", &[], b"[]").status, 202);
    assert_eq!(relay.request(11, "POST", "/api/v2/appsecevts", &[], b"{}").status, 503);
    relay.wait_metric("fipsrelay_requests_total{product=\"metrics\",class=\"2xx\"}", |v| v == 3.0);
    relay.wait_metric("fipsrelay_upstream_errors_total{product=\"appsec\",cause=\"unconfigured\"}", |v| v == 1.0);
    stdin.write_all(b"\n").unwrap();
    let line = rx.recv_timeout(Duration::from_secs(120)).expect("the check's second run");
    let status = check.wait().unwrap();
    let out: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(status.success() && out.get("error").is_none(), "{line}");

    // The file as shipped: the default status port, and the relay's journal.
    assert_eq!(out["default_endpoint"], "http://127.0.0.1:9803/metrics");
    assert_eq!(
        out["logs"],
        serde_json::json!([{"type": "journald", "include_units": ["fipsrelay.service"], "source": "fipsrelay", "service": "fipsrelay"}])
    );
    assert!(root.join("packaging/fipsrelay.service").exists(), "the unit the logs config names");

    let (first, second) = (sent(&out["first"]), sent(&out["second"]));
    let reserved = ["host", "hostname", "host_name", "service", "env", "version", "source", "cluster", "cluster_name"];
    for s in first.iter().chain(&second) {
        assert!(s.name.starts_with("fipsrelay."), "{} outside the namespace", s.name);
        for k in s.tags.keys() {
            assert!(!reserved.contains(&k.as_str()), "{} carries the reserved tag {k}", s.name);
        }
    }
    // Exactly the allow-list, as the relay's series exist after traffic
    // (no proxy configured: no proxy series).
    let names: BTreeSet<(&str, &str)> = second.iter().map(|s| (s.name.as_str(), s.kind.as_str())).collect();
    let want: BTreeSet<(&str, &str)> = [
        ("fipsrelay.requests.count", "monotonic_count"),
        ("fipsrelay.upstream_errors.count", "monotonic_count"),
        ("fipsrelay.refused_requests.count", "monotonic_count"),
        ("fipsrelay.request_body_bytes.count", "monotonic_count"),
        ("fipsrelay.response_body_bytes.count", "monotonic_count"),
        ("fipsrelay.request_duration_seconds.count", "monotonic_count"),
        ("fipsrelay.request_duration_seconds.sum", "monotonic_count"),
        ("fipsrelay.open_connections", "gauge"),
        ("fipsrelay.upstream.addresses_up", "gauge"),
        ("fipsrelay.upstream.panic", "gauge"),
        ("fipsrelay.upstream.sessions_open", "gauge"),
        ("fipsrelay.upstream.h2_connections", "gauge"),
        ("fipsrelay.fips_module_info", "gauge"),
        ("fipsrelay.build_info", "gauge"),
        ("fipsrelay.uptime_seconds", "gauge"),
        ("fipsrelay.process.cpu_seconds.count", "monotonic_count"),
        ("fipsrelay.process.resident_memory_bytes", "gauge"),
        ("fipsrelay.process.open_fds", "gauge"),
        ("fipsrelay.process.max_fds", "gauge"),
    ]
    .into_iter()
    .collect();
    assert_eq!(names, want);
    assert!(out["second"]["buckets"].as_array().unwrap().is_empty(), "latency buckets are not collected");

    // At the first run nothing had been asked: no per-product series yet.
    assert!(!first.iter().any(|s| s.name == "fipsrelay.requests.count"), "requests before any request");
    assert!(first.iter().all(|s| !s.flush_first_value), "the first run sets baselines only");
    // After: counters with their product and status class; those that
    // appeared between the runs count from their first value.
    let ok = find(&second, "fipsrelay.requests.count", &[("product", "metrics"), ("class", "2xx")]);
    assert_eq!((ok.value, ok.flush_first_value), (3.0, true));
    assert_eq!(find(&second, "fipsrelay.requests.count", &[("product", "traces"), ("class", "2xx")]).value, 1.0);
    let failed = find(&second, "fipsrelay.upstream_errors.count", &[("product", "appsec"), ("cause", "unconfigured")]);
    assert_eq!((failed.value, failed.flush_first_value), (1.0, true));
    assert_eq!(second.iter().filter(|s| s.name == "fipsrelay.upstream_errors.count").count(), 1);
    assert_eq!(find(&second, "fipsrelay.request_duration_seconds.count", &[("product", "metrics")]).value, 3.0);
    assert!(find(&second, "fipsrelay.request_duration_seconds.sum", &[("product", "metrics")]).value > 0.0);
    assert_eq!(find(&second, "fipsrelay.request_body_bytes.count", &[("product", "metrics")]).value, 39.0);
    // Gauges: health per host, sessions per host in use, the module.
    let host = [("upstream", "metrics.agent.ddog-gov.com")];
    assert_eq!(find(&second, "fipsrelay.upstream.addresses_up", &host).value, 1.0);
    assert_eq!(find(&second, "fipsrelay.upstream.panic", &host).value, 0.0);
    assert!(find(&second, "fipsrelay.upstream.h2_connections", &host).value >= 1.0);
    assert!(!second.iter().any(|s| s.name == "fipsrelay.upstream.sessions_open"
        && s.tags.get("upstream").map(String::as_str) == Some("ndm-intake.ddog-gov.com")));
    let module = find(&second, "fipsrelay.fips_module_info", &[]);
    assert_eq!(module.value, 1.0);
    for (k, v) in [("module_version", "3.1.0"), ("certificate", "5314"), ("status", "validated"), ("linkage", "static")]
    {
        assert_eq!(module.tags.get(k).map(String::as_str), Some(v), "{:?}", module.tags);
    }
    let build = find(&second, "fipsrelay.build_info", &[]);
    let backend = if io == "uring" { "io_uring" } else { "epoll" };
    assert_eq!(build.tags.get("io").map(String::as_str), Some(backend), "{:?}", build.tags);
    assert!(find(&second, "fipsrelay.process.resident_memory_bytes", &[]).value > 1e6);
    // The check's own health: it reached the endpoint.
    let checks = out["second"]["service_checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "fipsrelay.openmetrics.health" && c["status"] == 0), "{checks:?}");
});

/// Without Python: the shipped conf.d scrapes the status port of the shipped
/// config, collects the relay's journal, and allow-lists only names the
/// relay serves.
#[test]
fn shipped_conf_matches_the_shipped_config() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let conf: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("packaging/datadog-agent/fipsrelay.d/conf.yaml")).unwrap(),
    )
    .unwrap();
    let relay = fipsrelay::config::parse_str(&std::fs::read_to_string(root.join("packaging/fipsrelay.toml")).unwrap())
        .unwrap()
        .validate()
        .unwrap();
    let instance = &conf["instances"][0];
    assert_eq!(
        instance["openmetrics_endpoint"].as_str(),
        Some(format!("http://{}:{}/metrics", relay.listen_address, relay.port_range_start).as_str())
    );
    assert_eq!(instance["namespace"].as_str(), Some("fipsrelay"));
    assert_eq!(conf["logs"][0]["include_units"][0].as_str(), Some("fipsrelay.service"));
    // Each allow-listed name is one the relay writes (metrics.rs' constants).
    let src = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let prefix = instance["raw_metric_prefix"].as_str().unwrap();
    for entry in instance["metrics"].as_sequence().unwrap() {
        let raw = entry.as_mapping().unwrap().keys().next().unwrap().as_str().unwrap();
        let served = [
            format!("\"{prefix}{raw}\""),
            format!("\"{prefix}{raw}_total\""),
            format!("\"{raw}\""),
            format!("\"{raw}_total\""),
        ];
        assert!(served.iter().any(|n| src.contains(n.as_str())), "{raw}: no such series in src/metrics.rs");
    }
}
