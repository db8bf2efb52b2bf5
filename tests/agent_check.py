#!/usr/bin/env python3
"""Datadog's own openmetrics check against a running relay, for tests/agent_check.rs.

Loads packaging/datadog-agent/fipsrelay.d/conf.yaml, points its instance at
ENDPOINT, and runs OpenMetricsBaseCheckV2 from datadog-checks-base with the
library's stub aggregator, which refuses a reserved tag name (host, service,
env, version, ...) as the Agent's tag rules do. It runs the check twice, as
the Agent does on two intervals: once, prints `scraped` and waits for a line
on stdin (the test sends traffic meanwhile), then again, and prints one JSON
object: each run's metrics (name, type, value, tags, flush_first_value),
histogram buckets and service checks, and the file's `logs` section.

Usage: agent_check.py CONF_YAML ENDPOINT
"""
import json
import sys
import time

import yaml
from datadog_checks.base import OpenMetricsBaseCheckV2
from datadog_checks.base.stubs import aggregator, datadog_agent


def submissions():
    types = aggregator.METRIC_ENUM_MAP_REV
    metrics = [
        {"name": m.name, "type": types[m.type], "value": m.value, "tags": sorted(m.tags),
         "flush_first_value": bool(m.flush_first_value)}
        for stubs in aggregator._metrics.values() for m in stubs
    ]
    buckets = [
        {"name": b.name, "value": b.value, "lower_bound": b.lower_bound, "upper_bound": b.upper_bound,
         "monotonic": bool(b.monotonic), "tags": sorted(b.tags)}
        for stubs in aggregator._histogram_buckets.values() for b in stubs
    ]
    checks = [
        {"name": c.name, "status": c.status, "tags": sorted(c.tags)}
        for stubs in aggregator._service_checks.values() for c in stubs
    ]
    return {"metrics": metrics, "buckets": buckets, "service_checks": checks}


def run(check):
    aggregator.reset()
    error = check.run()
    if error:
        # The library's error (a JSON list with the traceback): the test prints it.
        print(json.dumps({"error": json.loads(error)}), flush=True)
        sys.exit(1)
    return submissions()


def main():
    conf_path, endpoint = sys.argv[1], sys.argv[2]
    with open(conf_path) as f:
        conf = yaml.safe_load(f)
    instance = dict(conf["instances"][0])
    default_endpoint = instance["openmetrics_endpoint"]
    instance["openmetrics_endpoint"] = endpoint
    # The Agent started after the relay: its first scrape only sets the
    # counters' baselines (use_process_start_time), as on a host where the
    # relay was already running.
    datadog_agent._process_start_time = time.time()
    check = OpenMetricsBaseCheckV2("fipsrelay", conf.get("init_config") or {}, [instance])
    first = run(check)
    print("scraped", flush=True)
    sys.stdin.readline()
    second = run(check)
    print(json.dumps({"first": first, "second": second, "logs": conf.get("logs"),
                      "default_endpoint": default_endpoint}), flush=True)


if __name__ == "__main__":
    main()
