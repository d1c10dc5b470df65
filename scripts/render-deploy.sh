#!/usr/bin/env bash
# Renders the plain deploy bundle from its one source, the Helm chart deploy/helm/ackwatch:
#   - deploy/kubernetes/<kind>.yaml: `helm template` of the chart with deploy/helm/plain-values.yaml
#     (release "ackwatch", namespace "ackwatch");
#   - deploy/prometheus/ackwatch.rules.yml: the chart's files/ackwatch.rules.yml with each
#     runbook_url made absolute as the chart's PrometheusRule makes it (comments kept).
# With --check, renders into a temporary directory and fails when a committed file differs
# (scripts/check-deploy.sh, so CI). Helm is built from the Go module proxy into $ACKWATCH_CACHE
# on first use (scripts/helm.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
source "$here/helm.sh"
cd "$here/.."

check=false
[ "${1:-}" = "--check" ] && check=true
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

chart=deploy/helm/ackwatch
"$HELM" template ackwatch "$chart" --namespace ackwatch -f deploy/helm/plain-values.yaml \
  --output-dir "$out/rendered" >/dev/null
mkdir -p "$out/kubernetes" "$out/prometheus"
for f in "$out"/rendered/ackwatch/templates/*.yaml; do
  {
    echo "# Rendered from deploy/helm/ackwatch by scripts/render-deploy.sh: edit the chart, not this file."
    grep -v '^---$' "$f" | grep -v '^# Source: '
  } > "$out/kubernetes/$(basename "$f")"
done
base="$(grep -m1 '^    runbook_url = ' "$out/kubernetes/configmap.yaml" | sed 's/.*= "\(.*\)\/{kind}.md"/\1/')"
{
  echo "# Rendered from deploy/helm/ackwatch/files/ackwatch.rules.yml by scripts/render-deploy.sh: edit that file."
  sed "s#^\( *runbook_url: \"\)\([^\"]*\)\"#\1$base/\2\"#" "$chart/files/ackwatch.rules.yml"
} > "$out/prometheus/ackwatch.rules.yml"

if $check; then
  stale=()
  for f in "$out"/kubernetes/*.yaml "$out"/prometheus/ackwatch.rules.yml; do
    committed="deploy/${f#"$out"/}"
    cmp -s "$f" "$committed" || stale+=("$committed")
  done
  for f in deploy/kubernetes/*.yaml; do
    [ -f "$out/kubernetes/$(basename "$f")" ] || stale+=("$f (no template renders it)")
  done
  if [ ${#stale[@]} -gt 0 ]; then
    echo "render-deploy: stale, run scripts/render-deploy.sh: ${stale[*]}" >&2
    for f in "$out"/kubernetes/*.yaml "$out"/prometheus/ackwatch.rules.yml; do
      diff -u "deploy/${f#"$out"/}" "$f" >&2 || true
    done
    exit 1
  fi
  echo "render-deploy: deploy/kubernetes and deploy/prometheus/ackwatch.rules.yml match the chart"
else
  rm -f deploy/kubernetes/*.yaml
  cp "$out"/kubernetes/*.yaml deploy/kubernetes/
  cp "$out/prometheus/ackwatch.rules.yml" deploy/prometheus/ackwatch.rules.yml
  echo "render-deploy: wrote deploy/kubernetes/*.yaml and deploy/prometheus/ackwatch.rules.yml"
fi
