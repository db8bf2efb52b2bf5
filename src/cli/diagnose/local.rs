//! The host half of `diagnose`: is a fipsrelay serving on the listen ports
//! (or does something else hold them, such as the Datadog FIPS Proxy), and
//! does the Agent's `datadog.yaml` send to them (`fips.enabled`,
//! `fips.https: false`, `fips.port_range_start`, `fips.local_address`,
//! `site`).
//!
//! It only connects to the listen ports, asks the status port's
//! `/health/live` and `/health`, and reads files (the Agent's config,
//! `/proc/net/tcp*` and `/proc/*/fd` to name a port's holder). It changes
//! nothing.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, PORT_COUNT};
use crate::route::PRODUCTS;

/// Where the Agent's config is read from by default.
pub const AGENT_CONFIG_PATH: &str = "/etc/datadog-agent/datadog.yaml";

/// How long a listen port may take to accept or answer.
const LOCAL_TIMEOUT: Duration = Duration::from_millis(500);

/// The Agent's defaults for the keys checked (its `config` package).
const AGENT_DEFAULT_PORT_RANGE_START: i64 = 9803;
const AGENT_DEFAULT_LOCAL_ADDRESS: &str = "localhost";
const AGENT_DEFAULT_SITE: &str = "datadoghq.com";

/// The Agent config to check, and whether the operator named it.
#[derive(Debug, Clone)]
pub struct AgentConfigPath {
    pub path: PathBuf,
    /// `--agent-config` was given: a missing file is a failure, not a skip.
    pub explicit: bool,
}

impl AgentConfigPath {
    pub fn new(path: Option<PathBuf>) -> AgentConfigPath {
        match path {
            Some(path) => AgentConfigPath { path, explicit: true },
            None => AgentConfigPath { path: PathBuf::from(AGENT_CONFIG_PATH), explicit: false },
        }
    }
}

/// The host checks' lines and whether none failed.
#[derive(Debug, Clone)]
pub struct LocalReport {
    pub text: String,
    pub ok: bool,
}

/// Runs both host checks.
pub fn check(config: &Config, agent: &AgentConfigPath) -> LocalReport {
    let (mut text, listeners_ok) = listeners(config);
    let (agent_text, agent_ok) = match std::fs::read_to_string(&agent.path) {
        Ok(yaml) => agent_settings(config, &agent.path, &yaml),
        Err(e) if !agent.explicit && e.kind() == std::io::ErrorKind::NotFound => (
            format!(
                "SKIP agent: {} does not exist (no Agent on this host?); pass --agent-config PATH to check its settings\n",
                agent.path.display()
            ),
            true,
        ),
        Err(e) => (
            format!(
                "FAIL agent: cannot read {}: {e}; run diagnose as root (the file is usually mode 0640, group dd-agent), or pass --agent-config PATH\n",
                agent.path.display()
            ),
            false,
        ),
    };
    text.push_str(&agent_text);
    LocalReport { text, ok: listeners_ok && agent_ok }
}

/// What answers on one listen port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    /// Nothing listens (connection refused).
    Free,
    /// Something accepts connections.
    Bound,
    /// Neither: a timeout or another error.
    Unknown(String),
}

fn probe_port(addr: SocketAddr) -> Port {
    match TcpStream::connect_timeout(&addr, LOCAL_TIMEOUT) {
        Ok(_) => Port::Bound,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Port::Free,
        Err(e) => Port::Unknown(e.to_string()),
    }
}

/// One GET on the status port: (status line, body), or why not.
fn get(addr: SocketAddr, path: &str) -> Result<(String, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, LOCAL_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(LOCAL_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(4096);
    let _ = s.take(64 * 1024).read_to_end(&mut answer);
    if answer.is_empty() {
        return Err("no answer".into());
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("").to_string();
    Ok((status, body))
}

/// The relay's listen ports: a fipsrelay answering on the status port and
/// every product port bound; or all free (no relay running: a note); or
/// ports held by something else (a failure: the relay cannot start).
fn listeners(config: &Config) -> (String, bool) {
    let mut s = String::new();
    let ip = config.listen_address;
    let range = format!("{ip}:{}-{}", config.port(0), config.port(PORT_COUNT - 1));
    let ports: Vec<(u16, &str, Port)> = PRODUCTS
        .iter()
        .map(|p| (config.port(p.offset), p.name, probe_port(SocketAddr::new(ip, config.port(p.offset)))))
        .collect();
    let status_addr = SocketAddr::new(ip, config.port(0));
    let relay = match get(status_addr, "/health/live") {
        Ok((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .filter(|v| v["live"] == true && v["version"].is_string())
            .map(|v| v["version"].as_str().unwrap_or("").to_string()),
        Err(_) => None,
    };
    let others: Vec<String> = ports
        .iter()
        .filter(|(_, _, p)| *p == Port::Bound)
        .map(|(port, name, _)| {
            format!("{port} ({name}{})", holder(ip, *port).map(|h| format!(", held by {h}")).unwrap_or_default())
        })
        .collect();
    let unknown: Vec<String> = ports
        .iter()
        .filter_map(|(port, _, p)| match p {
            Port::Unknown(e) => Some(format!("{port}: {e}")),
            _ => None,
        })
        .collect();
    let ok = match relay {
        Some(version) => {
            let ready = match get(status_addr, "/health") {
                Ok((status, _)) if status.contains(" 200") => "ready".to_string(),
                Ok((status, body)) => format!("NOT ready ({status} {body})"),
                Err(e) => format!("/health did not answer: {e}"),
            };
            let free: Vec<String> = ports
                .iter()
                .filter(|(_, _, p)| *p != Port::Bound)
                .map(|(port, name, _)| format!("{port} ({name})"))
                .collect();
            if free.is_empty() {
                let _ =
                    writeln!(s, "PASS relay: fipsrelay {version} answers on {range} ({ready}); every port is bound");
                true
            } else {
                let _ = writeln!(
                    s,
                    "FAIL relay: fipsrelay {version} answers on {status_addr} ({ready}), but nothing listens on {}; its log says why (journalctl -u fipsrelay)",
                    free.join(", ")
                );
                false
            }
        }
        None if others.is_empty() && unknown.is_empty() => {
            let _ = writeln!(
                s,
                "NOTE relay: nothing listens on {range}: no relay is running (start it: systemctl start fipsrelay); the ports are free for it"
            );
            true
        }
        None => {
            let what = match get(status_addr, "/") {
                Ok((status, _)) => format!("port {} answers {status:?}, not as fipsrelay", config.port(0)),
                Err(_) => format!("port {} does not answer as fipsrelay", config.port(0)),
            };
            let _ = writeln!(
                s,
                "FAIL relay: {what}; ports in use by another program: {}{}; fipsrelay cannot bind them. If it is the Datadog FIPS Proxy, stop it (systemctl disable --now datadog-fips-proxy); else move one of them (listen.port_range_start, DD_FIPS_PORT_RANGE_START)",
                others.join(", "),
                if unknown.is_empty() { String::new() } else { format!("; no answer from {}", unknown.join(", ")) }
            );
            false
        }
    };
    (s, ok)
}

/// The process listening on `ip:port`, as `name (pid N)`, when `/proc`
/// tells (other users' processes need root).
fn holder(ip: IpAddr, port: u16) -> Option<String> {
    let inode = listening_inode(ip, port)?;
    let link = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

/// The inode of the socket listening on `port` (on `ip` or a wildcard
/// address), from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_inode(ip: IpAddr, port: u16) -> Option<u64> {
    let port_hex = format!("{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((addr_hex, p)) = f[1].split_once(':') else { continue };
            let any = addr_hex.bytes().all(|b| b == b'0');
            let mine = match ip {
                IpAddr::V4(v4) => addr_hex == format!("{:08X}", u32::from_le_bytes(v4.octets())),
                IpAddr::V6(_) => false,
            };
            if p == port_hex && (any || mine || ip.is_ipv6()) {
                return f[9].parse().ok();
            }
        }
    }
    None
}

/// The Agent's FIPS settings against the relay's listen config.
fn agent_settings(config: &Config, path: &Path, yaml: &str) -> (String, bool) {
    let mut s = String::new();
    let doc: serde_yaml::Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(s, "FAIL agent: {} is not valid YAML: {e}", path.display());
            return (s, false);
        }
    };
    let fips = &doc["fips"];
    let flag = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::Bool(b) => Some(*b),
        serde_yaml::Value::String(t) => t.trim().parse().ok(),
        _ => None,
    };
    let enabled = flag(&fips["enabled"]).unwrap_or(false);
    let https = flag(&fips["https"]).unwrap_or(true);
    let port = match &fips["port_range_start"] {
        serde_yaml::Value::Number(n) => n.as_i64(),
        serde_yaml::Value::String(t) => t.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(AGENT_DEFAULT_PORT_RANGE_START);
    let address = fips["local_address"].as_str().unwrap_or(AGENT_DEFAULT_LOCAL_ADDRESS).trim().to_string();
    let site = doc["site"].as_str().unwrap_or(AGENT_DEFAULT_SITE).trim().trim_end_matches('.').to_ascii_lowercase();
    let file = path.display();
    let mut problems = Vec::new();
    if !enabled {
        problems.push(format!(
            "fips.enabled is not true, so the Agent sends straight to the intake, not through the relay: set fips.enabled: true in {file}"
        ));
    }
    if https {
        problems.push(format!(
            "fips.https is {} (the Agent's default is true): the Agent would speak TLS to the relay, which listens in plaintext on loopback: set fips.https: false",
            if fips["https"].is_null() { "not set" } else { "true" }
        ));
    }
    if port != i64::from(config.port_range_start) {
        problems.push(format!(
            "fips.port_range_start is {port}{}, the relay's listen.port_range_start is {}: the Agent would send to ports the relay does not serve: make them equal (fips.port_range_start: {}, or set the relay's DD_FIPS_PORT_RANGE_START={port})",
            if fips["port_range_start"].is_null() { " (the Agent's default)" } else { "" },
            config.port_range_start,
            config.port_range_start
        ));
    }
    let address_matches = match address.parse::<IpAddr>() {
        Ok(ip) => ip == config.listen_address,
        // The Agent resolves a name; localhost is loopback.
        Err(_) => address.eq_ignore_ascii_case("localhost") && config.listen_address.is_loopback(),
    };
    if !address_matches {
        problems.push(format!(
            "fips.local_address is {address}{}, the relay listens on {}: set fips.local_address: {} (or the relay's listen.address)",
            if fips["local_address"].is_null() { " (the Agent's default)" } else { "" },
            config.listen_address,
            config.listen_address
        ));
    }
    if site != config.site {
        problems.push(format!(
            "site is {site}{}, the relay's upstream.site is {}: the Agent's API key belongs to its site: make them equal",
            if doc["site"].is_null() { " (the Agent's default)" } else { "" },
            config.site
        ));
    }
    if problems.is_empty() {
        let _ = writeln!(
            s,
            "PASS agent: {file}: fips.enabled true, fips.https false, fips.port_range_start {port}, fips.local_address {address}, site {site}: the Agent sends to this relay (DD_FIPS_* variables in the Agent's environment would override the file)"
        );
        (s, true)
    } else {
        for p in &problems {
            let _ = writeln!(s, "FAIL agent: {p}");
        }
        (s, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(toml: &str) -> Config {
        crate::config::parse_str(toml).unwrap().validate().unwrap()
    }

    #[test]
    fn a_matching_agent_config_passes() {
        let yaml = "api_key: x\nsite: ddog-gov.com\nfips:\n  enabled: true\n  https: false\n  port_range_start: 9803\n  local_address: 127.0.0.1\n";
        let (text, ok) = agent_settings(&relay(""), Path::new("datadog.yaml"), yaml);
        assert!(ok && text.starts_with("PASS agent"), "{text}");
        // "localhost" is loopback; strings for booleans and numbers, as env-style files have them.
        let yaml = "site: ddog-gov.com\nfips:\n  enabled: \"true\"\n  https: \"false\"\n  port_range_start: \"10000\"\n  local_address: localhost\n";
        let (text, ok) = agent_settings(&relay("[listen]\nport_range_start = 10000\n"), Path::new("d.yaml"), yaml);
        assert!(ok, "{text}");
    }

    #[test]
    fn each_mismatch_is_named_with_its_fix() {
        // The Agent's defaults: FIPS off, https on, localhost, 9803, datadoghq.com.
        let (text, ok) =
            agent_settings(&relay("[listen]\nport_range_start = 10000\n"), Path::new("d.yaml"), "api_key: x\n");
        assert!(!ok);
        for want in [
            "fips.enabled is not true",
            "fips.https is not set (the Agent's default is true)",
            "fips.port_range_start is 9803 (the Agent's default), the relay's listen.port_range_start is 10000",
            "site is datadoghq.com (the Agent's default), the relay's upstream.site is ddog-gov.com",
        ] {
            assert!(text.contains(want), "{want}:\n{text}");
        }
        assert_eq!(text.lines().count(), 4, "localhost matches 127.0.0.1:\n{text}");
        let yaml = "site: ddog-gov.com\nfips:\n  enabled: true\n  https: false\n  local_address: 10.0.0.5\n";
        let (text, ok) = agent_settings(&relay(""), Path::new("d.yaml"), yaml);
        assert!(!ok && text.contains("fips.local_address is 10.0.0.5, the relay listens on 127.0.0.1"), "{text}");
        let (text, ok) = agent_settings(&relay(""), Path::new("d.yaml"), "fips: [unclosed\n");
        assert!(!ok && text.contains("not valid YAML"), "{text}");
    }

    #[test]
    fn a_missing_default_agent_config_is_skipped_a_named_one_fails() {
        let c = relay("[listen]\nport_range_start = 3\n");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("datadog.yaml");
        let skipped = check(&c, &AgentConfigPath { path: missing.clone(), explicit: false });
        assert!(skipped.text.contains("SKIP agent"), "{}", skipped.text);
        let named = check(&c, &AgentConfigPath { path: missing, explicit: true });
        assert!(!named.ok && named.text.contains("FAIL agent: cannot read"), "{}", named.text);
    }
}
