#!/bin/sh
# Helm post-renderer for the Datadog chart's FIPS sidecar running fipsrelay.
# The chart gives the fips-proxy container DD_FIPS_LOCAL_ADDRESS only, no
# probes, and mounts a file only at the HAProxy config path; this adds what
# fipsrelay needs (fips-proxy.yaml beside this script): the port range,
# exec probes, and optionally a fipsrelay.toml from a ConfigMap.
#   helm upgrade --install datadog datadog/datadog -f values.yaml \
#     --post-renderer ./packaging/deploy/helm-post-renderer/post-render.sh
# Needs kubectl (kubectl kustomize) where helm runs. Reads the rendered
# manifests on stdin, writes them patched on stdout.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/kustomization.yaml" "$here/fips-proxy.yaml" "$work/"
cat > "$work/chart.yaml"
kubectl kustomize "$work"
