#!/usr/bin/env bash
# Debian's Alertmanager for tests, on a free 127.0.0.1 port, gossip off, storage in DIR.
#   scripts/alertmanager.sh start DIR   starts it, waits for /-/ready, prints its base URL
#   scripts/alertmanager.sh stop DIR
#   scripts/alertmanager.sh restart DIR starts a stopped one again: same port, same storage
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:?usage: alertmanager.sh start|stop|restart DIR}"
dir="${2:?usage: alertmanager.sh start|stop|restart DIR}"

# Runs the Alertmanager of DIR in the background and waits until it is ready.
launch() {
  port="$(cat "$dir/port")"
  nohup prometheus-alertmanager --config.file="$dir/alertmanager.yml" --storage.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >>"$dir/alertmanager.log" 2>&1 &
  echo $! > "$dir/pid"
  url="http://127.0.0.1:$port"
  echo "$url" > "$dir/url"
  for _ in $(seq 1 60); do
    if curl -fsS "$url/-/ready" >/dev/null 2>&1; then echo "$url"; exit 0; fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "alertmanager died; see $dir/alertmanager.log" >&2; tail -5 "$dir/alertmanager.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "alertmanager not ready within 30 s; see $dir/alertmanager.log" >&2; exit 1
}

case "$cmd" in
start)
  command -v prometheus-alertmanager >/dev/null || { echo "prometheus-alertmanager missing: run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$dir/data"
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' > "$dir/port"
  cat > "$dir/alertmanager.yml" <<CFG
route:
  receiver: "null"
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
CFG
  # The example's inhibition rules, as shipped (tests/alerts.rs checks the world alert's).
  sed -n '/^inhibit_rules:/,/^receivers:/p' "$here/../deploy/alertmanager/alertmanager.example.yml" \
    | sed '$d' >> "$dir/alertmanager.yml"
  launch
  ;;
stop)
  [ -f "$dir/pid" ] || exit 0
  pid=$(cat "$dir/pid"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  ;;
restart)
  [ -f "$dir/port" ] || { echo "no alertmanager was started in $dir" >&2; exit 1; }
  launch
  ;;
*) echo "usage: alertmanager.sh start|stop|restart DIR" >&2; exit 2 ;;
esac
