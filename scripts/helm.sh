# Sourced: sets HELM to a helm binary built from the Go module proxy (never a downloaded
# release binary) into $ACKWATCH_CACHE, building it on first use (a few minutes on 2 cores).
HELM_VERSION=v4.3.2
HELM="$ACKWATCH_CACHE/helm-$HELM_VERSION/helm"
if [ ! -x "$HELM" ] || [ ! -f "$ACKWATCH_CACHE/helm-$HELM_VERSION/.complete" ]; then
  command -v go >/dev/null || { echo "helm: go not found (this machine kind ships Go)" >&2; exit 1; }
  echo "helm: building helm $HELM_VERSION from the Go module proxy into $ACKWATCH_CACHE/helm-$HELM_VERSION" >&2
  mkdir -p "$ACKWATCH_CACHE/helm-$HELM_VERSION"
  (cd / && GOBIN="$ACKWATCH_CACHE/helm-$HELM_VERSION" GOFLAGS=-mod=mod go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
  touch "$ACKWATCH_CACHE/helm-$HELM_VERSION/.complete"
fi
export HELM
