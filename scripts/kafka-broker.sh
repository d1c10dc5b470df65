#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker+controller) for tests, on
# 127.0.0.1 only, from the jars scripts/setup.sh fetched.
#   scripts/kafka-broker.sh start DIR   starts it with its log dir in DIR, waits until it answers
#                                       metadata requests, prints the bootstrap address
#   scripts/kafka-broker.sh stop DIR    stops it (and removes nothing; DIR is the caller's)
#   scripts/kafka-broker.sh kill DIR    kills it with SIGKILL (no shutdown, no flush: a crash or a
#                                       lost host, as an outage test wants it)
#   scripts/kafka-broker.sh restart DIR starts a stopped broker again: same ports, same data
#   scripts/kafka-broker.sh start-secured DIR
#                                       like start, but clients authenticate (SASL/PLAIN, users
#                                       admin/admin-secret and monitor/monitor-secret) and ACLs
#                                       are enforced (StandardAuthorizer; admin is a super user).
#                                       Prints the SASL address; DIR/internal holds a PLAINTEXT
#                                       address for the test's own set-up (a super user too).
#                                       Unlike start's, it auto-creates topics (Kafka's default)
#   scripts/kafka-broker.sh acl DIR ARGS...
#                                       Kafka's kafka-acls (AclCommand) with ARGS, against DIR's
#                                       broker, e.g. --add --allow-principal User:monitor ...
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
usage="usage: kafka-broker.sh start|start-secured|stop|kill|restart|acl DIR"
cmd="${1:?$usage}"
dir="${2:?$usage}"
java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
           -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$KAFKA_LIBS/*")

# Runs the broker of DIR in the background and waits until it answers metadata requests.
launch() {
  nohup java "${java_opts[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/stdout.log" 2>&1 &
  echo $! > "$dir/pid"
  bootstrap="$(cat "$dir/bootstrap")"
  probe="$bootstrap"; [ -f "$dir/internal" ] && probe="$(cat "$dir/internal")"
  for _ in $(seq 1 120); do
    if kcat -L -b "$probe" -m 2 >/dev/null 2>&1; then
      grep -h -m1 -o "Kafka version: .*" "$dir/server.log" >&2 || true
      echo "$bootstrap"
      exit 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "kafka broker died; see $dir/stdout.log and $dir/server.log" >&2; tail -20 "$dir/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka broker did not answer metadata requests within 60 s; see $dir/server.log" >&2
  exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "$cmd" in
start|start-secured)
  [ -f "$KAFKA_LIBS/.complete" ] || { echo "kafka jars missing: run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$dir/data"
  port=$(free_port); cport=$(free_port); iport=$(free_port)
  while [ "$cport" = "$port" ]; do cport=$(free_port); done
  while [ "$iport" = "$port" ] || [ "$iport" = "$cport" ]; do iport=$(free_port); done
  # The test broker creates no topic by itself (a test that forgets one fails plainly); the
  # secured one does, as Kafka does by default, so that `check` is seen to create nothing.
  auto_create=false
  if [ "$cmd" = start ]; then
    listeners="listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  else
    # Clients on SASL_PLAINTEXT; the broker itself and the controller on PLAINTEXT, whose
    # ANONYMOUS principal is a super user like admin (loopback only, for tests).
    listeners="listeners=SASL_PLAINTEXT://127.0.0.1:$port,PLAINTEXT://127.0.0.1:$iport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$port,PLAINTEXT://127.0.0.1:$iport
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"admin-secret\" user_admin=\"admin-secret\" user_monitor=\"monitor-secret\";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS"
    auto_create=true
    echo "127.0.0.1:$iport" > "$dir/internal"
  fi
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=$auto_create
log.cleaner.backoff.ms=1000
PROPS
  cat > "$dir/log4j2.properties" <<LOG
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
LOG
  cluster_id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; exit 1; }
  echo "127.0.0.1:$port" > "$dir/bootstrap"
  launch
  ;;
stop)
  [ -f "$dir/pid" ] || exit 0
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  ;;
kill)
  [ -f "$dir/pid" ] || { echo "no broker was started in $dir" >&2; exit 1; }
  pid=$(cat "$dir/pid")
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "broker $pid in $dir survived SIGKILL" >&2; exit 1
  ;;
restart)
  [ -f "$dir/server.properties" ] || { echo "no broker was started in $dir" >&2; exit 1; }
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then echo "broker in $dir is running" >&2; exit 1; fi
  launch
  ;;
acl)
  [ -f "$dir/server.properties" ] || { echo "no broker was started in $dir" >&2; exit 1; }
  address="$(cat "$dir/bootstrap")"; [ -f "$dir/internal" ] && address="$(cat "$dir/internal")"
  shift 2
  java "${java_opts[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "$address" "$@"
  ;;
*) echo "usage: kafka-broker.sh start|start-secured|stop|kill|restart|acl DIR" >&2; exit 2 ;;
esac
