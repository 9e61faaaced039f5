#!/usr/bin/env bash
# Start (or stop) a 3-node RaftMQ cluster on this machine. With the defaults:
#   AMQP 127.0.0.1:5672, 5673, 5674; management API 15672-15674;
#   Prometheus /metrics 15692-15694; Raft 127.0.0.1:25672-25674.
# Data and logs in ./data/cluster/n1..n3 (nI.log); PIDs in ./data/cluster/nI.pid.
# CLUSTER_BASE_PORT=P moves every port: AMQP P..P+2, management P+10000.., metrics P+10020..,
# Raft P+20000..; CLUSTER_DATA=DIR moves the data (relative to the repository root).
#   deploy/local-cluster.sh start | stop | status | ports
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${CLUSTER_DATA:-data/cluster}
BASE=${CLUSTER_BASE_PORT:-5672}
BIN=.venv/bin
action=${1:-start}

case "$BASE" in ''|*[!0-9]*) echo "CLUSTER_BASE_PORT=$BASE: not a port number" >&2; exit 2 ;; esac
if [ "$BASE" -lt 1 ] || [ "$BASE" -gt 45533 ]; then
  echo "CLUSTER_BASE_PORT=$BASE: must be 1..45533 (Raft uses it + 20000..20002)" >&2; exit 2
fi
amqp() { echo $((BASE + $1 - 1)); }
mgmt() { echo $((BASE + 10000 + $1 - 1)); }
metrics() { echo $((BASE + 10020 + $1 - 1)); }
raft() { echo $((BASE + 20000 + $1 - 1)); }

pids() { for i in 1 2 3; do [ -f "$DIR/n$i.pid" ] && cat "$DIR/n$i.pid"; done; true; }

case "$action" in
ports)
  for i in 1 2 3; do
    echo "n$i amqp $(amqp $i) management $(mgmt $i) metrics $(metrics $i) raft $(raft $i) data $DIR/n$i"
  done
  ;;
start)
  mkdir -p "$DIR"
  [ -f "$DIR/secret" ] || head -c 24 /dev/urandom | base64 > "$DIR/secret"
  chmod 600 "$DIR/secret"
  members="127.0.0.1:$(raft 1) 127.0.0.1:$(raft 2) 127.0.0.1:$(raft 3)"
  for i in 1 2 3; do
    if [ -f "$DIR/n$i.pid" ] && kill -0 "$(cat "$DIR/n$i.pid")" 2>/dev/null; then
      echo "n$i already running (pid $(cat "$DIR/n$i.pid"))"; continue
    fi
    self="127.0.0.1:$(raft "$i")"
    peers=$(for m in $members; do [ "$m" != "$self" ] && printf '%s,' "$m"; done; true)
    RAFTMQ_CLUSTER_SECRET="$(cat "$DIR/secret")" nohup "$BIN/raftmq" serve \
      --node-id "n$i" --amqp-port "$(amqp "$i")" --metrics-port "$(metrics "$i")" \
      --management-port "$(mgmt "$i")" \
      --raft-address "$self" --peers "${peers%,}" --data-dir "$DIR/n$i" \
      > "$DIR/n$i.log" 2>&1 &
    echo $! > "$DIR/n$i.pid"
    echo "n$i: amqp://guest:guest@127.0.0.1:$(amqp "$i")/  api http://127.0.0.1:$(mgmt "$i")/api  metrics http://127.0.0.1:$(metrics "$i")/metrics  log $DIR/n$i.log"
  done
  # ready when every /healthz answers 200 (a leader elected, the state applied): commands
  # that follow `make cluster` then work at once
  if ! "$BIN/python" - "$(metrics 1)" "$(metrics 2)" "$(metrics 3)" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
for port in sys.argv[1:]:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"metrics port {port}: /healthz not 200 after 60 s")
        time.sleep(0.2)
PY
  then
    for i in 1 2 3; do echo "--- $DIR/n$i.log"; tail -5 "$DIR/n$i.log"; done >&2
    exit 1
  fi
  echo "ready: every node answers /healthz"
  echo "status: $BIN/raftmq cluster status --node 127.0.0.1:$(mgmt 1)"
  echo "stop:   make cluster-stop   (or: deploy/local-cluster.sh stop; same CLUSTER_DATA)"
  ;;
stop)
  for p in $(pids); do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0; for p in $(pids); do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.2
  done
  for p in $(pids); do kill -9 "$p" 2>/dev/null || true; done
  rm -f "$DIR"/n?.pid; echo "stopped"
  ;;
status)
  "$BIN/raftmq" cluster status --node "127.0.0.1:$(mgmt 1)" ;;
*) echo "usage: $0 start|stop|status|ports  (env: CLUSTER_BASE_PORT, CLUSTER_DATA)" >&2; exit 2 ;;
esac
