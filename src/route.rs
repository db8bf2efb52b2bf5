//! The port → product → upstream host table (DESIGN §1) and request routing.
//!
//! A [`RouteTable`] is built once from the config: every product port gets a
//! [`ProductRoute`], every distinct upstream host gets an [`UpstreamId`]. Routing
//! a request is a port lookup plus two path-prefix checks on the metrics port.
//! This module never touches sockets.

use crate::config::{Config, PORT_COUNT};

/// One product served on one port offset.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub offset: u16,
    pub name: &'static str,
    /// Host prefix before `.<site>`; `None` for the status port and appsec.
    pub prefix: Option<&'static str>,
}

/// The port map from the Agent's own source (DESIGN §1).
pub const PRODUCTS: [Product; PORT_COUNT as usize] = [
    Product { offset: 0, name: "status", prefix: None },
    Product { offset: 1, name: "metrics", prefix: Some("metrics.agent") },
    Product { offset: 2, name: "traces", prefix: Some("trace.agent") },
    Product { offset: 3, name: "profiles", prefix: Some("intake.profile") },
    Product { offset: 4, name: "processes", prefix: Some("process") },
    Product { offset: 5, name: "logs", prefix: Some("agent-http-intake.logs") },
    Product { offset: 6, name: "dbm_metrics", prefix: Some("dbm-metrics-intake") },
    Product { offset: 7, name: "dbm_samples", prefix: Some("dbquery-intake") },
    Product { offset: 8, name: "network_devices_metadata", prefix: Some("ndm-intake") },
    Product { offset: 9, name: "snmp_traps", prefix: Some("snmp-traps-intake") },
    Product { offset: 10, name: "instrumentation_telemetry", prefix: Some("instrumentation-telemetry-intake") },
    Product { offset: 11, name: "appsec", prefix: None },
    Product { offset: 12, name: "orchestrator", prefix: Some("orchestrator") },
    Product { offset: 13, name: "runtime_security", prefix: Some("runtime-security-http-intake.logs") },
    Product { offset: 14, name: "compliance", prefix: Some("cspm-intake") },
    Product { offset: 15, name: "network_devices_netflow", prefix: Some("ndmflow-intake") },
];

pub const STATUS_OFFSET: u16 = 0;
pub const METRICS_OFFSET: u16 = 1;
pub const APPSEC_OFFSET: u16 = 11;

/// Index into [`RouteTable::upstreams`].
pub type UpstreamId = usize;

/// One upstream host the relay opens TLS sessions to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Host name sent as `Host` and (unless `upstream.server_name`) as SNI.
    pub host: String,
    /// Products that use it, for the status page.
    pub products: Vec<&'static str>,
}

/// What a port does.
#[derive(Debug, Clone)]
pub enum ProductRoute {
    Status,
    /// Relayed; the metrics port also routes `/api/v1/validate` and `/support/flare`.
    Forward {
        default: UpstreamId,
        validate: Option<UpstreamId>,
        flare: Option<UpstreamId>,
    },
    /// Known port with no upstream configured (appsec by default): 503.
    Unconfigured {
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<ProductRoute>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut upstreams: Vec<Upstream> = Vec::new();
        let mut intern = |host: String, product: &'static str| -> UpstreamId {
            if let Some(i) = upstreams.iter().position(|u| u.host == host) {
                if !upstreams[i].products.contains(&product) {
                    upstreams[i].products.push(product);
                }
                return i;
            }
            upstreams.push(Upstream { host, products: vec![product] });
            upstreams.len() - 1
        };
        let site = &config.site;
        let mut routes = Vec::with_capacity(PRODUCTS.len());
        for p in PRODUCTS.iter() {
            let route = match (p.offset, p.prefix) {
                (STATUS_OFFSET, _) => ProductRoute::Status,
                (APPSEC_OFFSET, _) => match &config.appsec_host {
                    Some(h) => {
                        ProductRoute::Forward { default: intern(h.clone(), p.name), validate: None, flare: None }
                    }
                    None => ProductRoute::Unconfigured {
                        reason: "no upstream is configured for appsec events; set upstream.appsec_host",
                    },
                },
                (METRICS_OFFSET, Some(prefix)) => {
                    let default = intern(format!("{prefix}.{site}"), p.name);
                    let validate = Some(intern(format!("api.{site}"), "metrics (validate)"));
                    let flare = Some(intern(format!("flare.{site}"), "metrics (flare)"));
                    ProductRoute::Forward { default, validate, flare }
                }
                (_, Some(prefix)) => ProductRoute::Forward {
                    default: intern(format!("{prefix}.{site}"), p.name),
                    validate: None,
                    flare: None,
                },
                (_, None) => unreachable!("every product but status and appsec has a prefix"),
            };
            routes.push(route);
        }
        RouteTable { upstreams, routes }
    }

    /// The upstream for a request on port `offset` with request target `path`.
    pub fn upstream_for(&self, offset: u16, path: &[u8]) -> Option<UpstreamId> {
        match self.routes.get(offset as usize)? {
            ProductRoute::Forward { default, validate, flare } => {
                if let Some(v) = validate {
                    if path_has_prefix(path, b"/api/v1/validate") {
                        return Some(*v);
                    }
                }
                if let Some(f) = flare {
                    if path_has_prefix(path, b"/support/flare") {
                        return Some(*f);
                    }
                }
                Some(*default)
            }
            _ => None,
        }
    }
}

/// `path` is `prefix` or continues it with `/` or `?`.
fn path_has_prefix(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/') | Some(b'?'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn table() -> RouteTable {
        RouteTable::new(&RawConfig::default().validate().unwrap())
    }

    fn host(t: &RouteTable, offset: u16, path: &str) -> Option<String> {
        t.upstream_for(offset, path.as_bytes()).map(|i| t.upstreams[i].host.clone())
    }

    #[test]
    fn port_map_matches_design() {
        let t = table();
        assert_eq!(host(&t, 1, "/api/v2/series").unwrap(), "metrics.agent.ddog-gov.com");
        assert_eq!(host(&t, 2, "/api/v0.2/traces").unwrap(), "trace.agent.ddog-gov.com");
        assert_eq!(host(&t, 3, "/api/v2/profile").unwrap(), "intake.profile.ddog-gov.com");
        assert_eq!(host(&t, 4, "/api/v1/collector").unwrap(), "process.ddog-gov.com");
        assert_eq!(host(&t, 5, "/api/v2/logs").unwrap(), "agent-http-intake.logs.ddog-gov.com");
        assert_eq!(host(&t, 6, "/api/v2/dbm").unwrap(), "dbm-metrics-intake.ddog-gov.com");
        assert_eq!(host(&t, 7, "/api/v2/databasequery").unwrap(), "dbquery-intake.ddog-gov.com");
        assert_eq!(host(&t, 8, "/api/v2/ndm").unwrap(), "ndm-intake.ddog-gov.com");
        assert_eq!(host(&t, 9, "/api/v2/ndmtraps").unwrap(), "snmp-traps-intake.ddog-gov.com");
        assert_eq!(host(&t, 10, "/api/v2/apmtelemetry").unwrap(), "instrumentation-telemetry-intake.ddog-gov.com");
        assert_eq!(host(&t, 11, "/x"), None);
        assert_eq!(host(&t, 12, "/api/v2/orch").unwrap(), "orchestrator.ddog-gov.com");
        assert_eq!(host(&t, 13, "/api/v2/secdump").unwrap(), "runtime-security-http-intake.logs.ddog-gov.com");
        assert_eq!(host(&t, 14, "/api/v2/compliance").unwrap(), "cspm-intake.ddog-gov.com");
        assert_eq!(host(&t, 15, "/api/v2/ndmflow").unwrap(), "ndmflow-intake.ddog-gov.com");
        assert_eq!(host(&t, 0, "/"), None);
        assert_eq!(host(&t, 16, "/"), None);
    }

    #[test]
    fn metrics_port_special_paths() {
        let t = table();
        assert_eq!(host(&t, 1, "/api/v1/validate?api_key=x").unwrap(), "api.ddog-gov.com");
        assert_eq!(host(&t, 1, "/api/v1/validate").unwrap(), "api.ddog-gov.com");
        assert_eq!(host(&t, 1, "/support/flare/12345").unwrap(), "flare.ddog-gov.com");
        assert_eq!(host(&t, 1, "/api/v1/validatex").unwrap(), "metrics.agent.ddog-gov.com");
        // Only the metrics port routes these paths elsewhere.
        assert_eq!(host(&t, 5, "/api/v1/validate").unwrap(), "agent-http-intake.logs.ddog-gov.com");
    }

    #[test]
    fn appsec_host_configurable() {
        let mut raw = RawConfig::default();
        raw.upstream.appsec_host = Some("appsecevts-intake.ddog-gov.com".into());
        let t = RouteTable::new(&raw.validate().unwrap());
        assert_eq!(host(&t, 11, "/api/v2/x").unwrap(), "appsecevts-intake.ddog-gov.com");
    }
}
