#!/usr/bin/env bash
# Start (or stop) a 3-node RaftMQ cluster on this machine:
#   AMQP 127.0.0.1:5672, 5673, 5674; management API 15672-15674;
#   Prometheus /metrics 15692-15694; Raft 127.0.0.1:25672-25674.
# Data and logs in ./data/cluster/n1..n3; PIDs in ./data/cluster/nI.pid.
#   deploy/local-cluster.sh start | stop | status
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=data/cluster
BIN=.venv/bin
action=${1:-start}

pids() { for i in 1 2 3; do [ -f "$DIR/n$i.pid" ] && cat "$DIR/n$i.pid"; done; true; }

case "$action" in
start)
  mkdir -p "$DIR"
  [ -f "$DIR/secret" ] || head -c 24 /dev/urandom | base64 > "$DIR/secret"
  chmod 600 "$DIR/secret"
  members="127.0.0.1:25672 127.0.0.1:25673 127.0.0.1:25674"
  for i in 1 2 3; do
    if [ -f "$DIR/n$i.pid" ] && kill -0 "$(cat "$DIR/n$i.pid")" 2>/dev/null; then
      echo "n$i already running (pid $(cat "$DIR/n$i.pid"))"; continue
    fi
    self="127.0.0.1:$((25671 + i))"
    peers=$(for m in $members; do [ "$m" != "$self" ] && printf '%s,' "$m"; done; true)
    RAFTMQ_CLUSTER_SECRET="$(cat "$DIR/secret")" nohup "$BIN/raftmq" serve \
      --node-id "n$i" --amqp-port $((5671 + i)) --metrics-port $((15691 + i)) \
      --management-port $((15671 + i)) \
      --raft-address "$self" --peers "${peers%,}" --data-dir "$DIR/n$i" \
      > "$DIR/n$i.log" 2>&1 &
    echo $! > "$DIR/n$i.pid"
    echo "n$i: amqp://guest:guest@127.0.0.1:$((5671 + i))/  api http://127.0.0.1:$((15671 + i))/api  metrics http://127.0.0.1:$((15691 + i))/metrics  log $DIR/n$i.log"
  done
  echo "status: $BIN/raftmq cluster status --node 127.0.0.1:15672"
  echo "stop:   make cluster-stop   (or: deploy/local-cluster.sh stop)"
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
  "$BIN/raftmq" cluster status --node 127.0.0.1:15672 ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
