//! The deployment examples work as written: every YAML and JSON file under
//! packaging/deploy parses, every container probe in them (and in the YAML
//! blocks of README.md and docs/) is an exec probe running `fipsrelay
//! probe`, never httpGet (the kubelet sends httpGet from the node's network
//! namespace, where 127.0.0.1 is not the pod's), the ECS task that lists
//! FARGATE tells the Agent so, and the Helm post-renderer, run through
//! `kubectl kustomize` over manifests shaped like the chart's output, gives
//! the chart's fips-proxy containers the port range and the exec probes and
//! leaves every other workload alone; with `kubernetes-validate` (PyPI)
//! installed, that output and the sidecar pass Kubernetes' own schemas,
//! strictly. Without kubectl, or the validator, that part says so and skips.
//!
//! The stand-in chart output follows the Datadog chart's own templates
//! (DataDog/helm-charts charts/datadog/templates/_container-fips-proxy.yaml,
//! daemonset.yaml, cluster-agent-deployment.yaml,
//! agent-clusterchecks-deployment.yaml): the chart is not rendered here,
//! helm is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every document of a YAML or JSON file (JSON is YAML).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        return vec![serde_yaml::to_value(v).unwrap()];
    }
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display())))
        .collect()
}

use serde::Deserialize;

/// Every mapping under `v` that holds `key`, with its path.
fn find<'a>(v: &'a Value, key: &str, path: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let name = k.as_str().unwrap_or("?");
                let here = format!("{path}.{name}");
                if name == key {
                    out.push((here.clone(), child));
                }
                find(child, key, here, out);
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                find(child, key, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks every probe under `doc`; returns how many there were.
fn exec_probes_only(doc: &Value, origin: &str) -> usize {
    let mut n = 0;
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let mut found = Vec::new();
        find(doc, key, String::new(), &mut found);
        for (path, probe) in found {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                assert!(probe.get(handler).is_none(), "{origin} {path}: a {handler} probe; use exec `fipsrelay probe`");
            }
            let cmd: Vec<&str> = probe["exec"]["command"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{origin} {path}: not an exec probe"))
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(&cmd[..2], ["/usr/bin/fipsrelay", "probe"], "{origin} {path}");
            let live = key == "livenessProbe";
            assert_eq!(cmd.contains(&"live"), live, "{origin} {path}: liveness asks /health/live, the rest /health");
            // The kubelet's default exec timeout (1 s) is below the probe's own 2 s.
            assert!(probe["timeoutSeconds"].as_u64().unwrap_or(1) >= 3, "{origin} {path}: timeoutSeconds >= 3");
            n += 1;
        }
    }
    let mut gets = Vec::new();
    find(doc, "httpGet", String::new(), &mut gets);
    assert!(gets.is_empty(), "{origin}: httpGet at {:?}", gets.iter().map(|g| &g.0).collect::<Vec<_>>());
    n
}

#[test]
fn every_deploy_file_parses_and_every_probe_is_fipsrelay_probe() {
    let mut probes = 0;
    let mut parsed = 0;
    for path in files(&root().join("packaging/deploy")) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["yaml", "yml", "json"].contains(&ext) {
            continue;
        }
        for doc in documents(&path) {
            parsed += 1;
            probes += exec_probes_only(&doc, &path.display().to_string());
        }
    }
    assert!(parsed >= 6, "{parsed} documents under packaging/deploy");
    // Sidecar 2, operator 2, the Helm post-renderer's patch 2.
    assert_eq!(probes, 6, "probes found under packaging/deploy");

    // ECS: the exec health check, and Fargate told to the Agent.
    let ecs = &documents(&root().join("packaging/deploy/ecs-task-definition.json"))[0];
    let defs = ecs["containerDefinitions"].as_sequence().unwrap();
    let by = |n: &str| defs.iter().find(|c| c["name"].as_str() == Some(n)).unwrap();
    let health: Vec<&str> =
        by("fips-proxy")["healthCheck"]["command"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(health, ["CMD", "/usr/bin/fipsrelay", "probe"]);
    let compat: Vec<&str> =
        ecs["requiresCompatibilities"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let fargate = by("datadog-agent")["environment"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("ECS_FARGATE"))
        .and_then(|e| e["value"].as_str());
    assert_eq!(
        fargate == Some("true"),
        compat.contains(&"FARGATE"),
        "ECS_FARGATE=true for the Agent exactly when the task runs on Fargate ({compat:?})"
    );

    // The sidecar and the operator: the sidecar's port range is set where
    // the Agent's is (the operator and the chart give the sidecar none).
    let op = &documents(&root().join("packaging/deploy/datadog-agent-operator.yaml"))[0];
    let fips = &op["spec"]["override"]["nodeAgent"]["containers"]["fips-proxy"];
    let start =
        fips["env"].as_sequence().unwrap().iter().find(|e| e["name"].as_str() == Some("DD_FIPS_PORT_RANGE_START"));
    assert_eq!(
        start.and_then(|e| e["value"].as_str()).map(str::to_string),
        op["spec"]["global"]["fips"]["port"].as_u64().map(|p| p.to_string())
    );
}

/// README.md and docs/*.md: every ```yaml block parses and holds no httpGet probe.
#[test]
fn no_yaml_in_the_docs_uses_an_http_probe() {
    let mut docs = vec![root().join("README.md")];
    docs.extend(files(&root().join("docs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    let mut blocks = 0;
    for path in docs {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut inside: Option<String> = None;
        for line in text.lines() {
            match (&mut inside, line.trim_start()) {
                (None, l) if l.starts_with("```yaml") || l.starts_with("```yml") => inside = Some(String::new()),
                (Some(block), l) if l.starts_with("```") => {
                    blocks += 1;
                    let origin = format!("{} (yaml block {blocks})", path.display());
                    for d in serde_yaml::Deserializer::from_str(block) {
                        let doc = Value::deserialize(d).unwrap_or_else(|e| panic!("{origin}: {e}"));
                        exec_probes_only(&doc, &origin);
                    }
                    inside = None;
                }
                (Some(block), _) => {
                    block.push_str(line);
                    block.push('\n');
                }
                _ => {}
            }
        }
    }
    assert!(blocks > 0, "no yaml block found in README.md and docs/");
}

/// The chart's fips-proxy container as `_container-fips-proxy.yaml` renders
/// it with the chart's defaults (fips.port 9803, portRange 15, local_address
/// 127.0.0.1), in the workloads that carry it, plus one that does not.
const CHART_OUTPUT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: datadog
  labels: {app.kubernetes.io/component: agent}
spec:
  selector: {matchLabels: {app: datadog}}
  template:
    metadata: {labels: {app: datadog}}
    spec:
      containers:
        - name: agent
          image: gcr.io/datadoghq/agent:7
          env: [{name: DD_FIPS_PORT_RANGE_START, value: "9803"}]
        - name: fips-proxy
          image: "registry.example.com/fipsrelay:0.1.0"
          imagePullPolicy: IfNotPresent
          ports: [{name: port-0, containerPort: 9803, protocol: TCP}]
          env: [{name: DD_FIPS_LOCAL_ADDRESS, value: "127.0.0.1"}]
          resources: {}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: datadog-cluster-agent
  labels: {app.kubernetes.io/component: cluster-agent}
spec:
  selector: {matchLabels: {app: datadog-cluster-agent}}
  template:
    metadata: {labels: {app: datadog-cluster-agent}}
    spec:
      containers:
        - name: cluster-agent
          image: gcr.io/datadoghq/cluster-agent:7
        - name: fips-proxy
          image: "registry.example.com/fipsrelay:0.1.0"
          env: [{name: DD_FIPS_LOCAL_ADDRESS, value: "127.0.0.1"}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: datadog-kube-state-metrics
  labels: {app.kubernetes.io/component: metrics}
spec:
  selector: {matchLabels: {app: ksm}}
  template:
    metadata: {labels: {app: ksm}}
    spec:
      containers:
        - name: kube-state-metrics
          image: registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.13.0
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: datadog-installinfo
  labels: {app.kubernetes.io/component: agent}
data: {install_info: "x"}
"#;

#[test]
fn the_helm_post_renderer_gives_the_sidecars_port_range_and_exec_probes() {
    if Command::new("kubectl").args(["version", "--client"]).output().is_err() {
        eprintln!("SKIPPED: kubectl is not installed (the post-renderer runs kubectl kustomize)");
        return;
    }
    let script = root().join("packaging/deploy/helm-post-renderer/post-render.sh");
    let mut child =
        Command::new(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(CHART_OUTPUT.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let by_name = |n: &str| docs.iter().find(|d| d["metadata"]["name"].as_str() == Some(n)).unwrap().clone();
    let containers = |d: &Value| d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap().clone();
    let mut probes = 0;
    for workload in ["datadog", "datadog-cluster-agent"] {
        let d = by_name(workload);
        let cs = containers(&d);
        let fips = cs.iter().find(|c| c["name"].as_str() == Some("fips-proxy")).unwrap();
        let env: Vec<(&str, &str)> = fips["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert!(env.contains(&("DD_FIPS_PORT_RANGE_START", "9803")), "{workload}: {env:?}");
        assert!(env.contains(&("DD_FIPS_LOCAL_ADDRESS", "127.0.0.1")), "{workload}: the chart's own env stays");
        assert_eq!(fips["image"].as_str(), Some("registry.example.com/fipsrelay:0.1.0"));
        probes += exec_probes_only(&d, workload);
        // The other containers are not touched, and no container is added.
        assert_eq!(cs.len(), 2, "{workload}");
        for c in cs.iter().filter(|c| c["name"].as_str() != Some("fips-proxy")) {
            assert!(c.get("readinessProbe").is_none() && c.get("livenessProbe").is_none(), "{workload}: {c:?}");
        }
    }
    assert_eq!(probes, 4);
    let ksm = by_name("datadog-kube-state-metrics");
    assert_eq!(containers(&ksm).len(), 1, "a workload without the sidecar gets none: {ksm:?}");
    assert_eq!(by_name("datadog-installinfo")["data"]["install_info"].as_str(), Some("x"));
    assert_eq!(docs.len(), 4);

    // Kubernetes' own schemas, strictly (unknown fields refused), when the
    // validator is installed (PyPI: kubernetes-validate).
    if Command::new("kubernetes-validate").arg("--version").output().is_err() {
        eprintln!("SKIPPED the schema check: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let check = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&rendered)
        .arg(root().join("packaging/deploy/kubernetes-sidecar.yaml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");
}
