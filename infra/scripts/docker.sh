#!/usr/bin/env bash
# The project's own Docker engine: `docker.sh start` starts dockerd with a data root and
# socket under $VAR/docker (installing Debian's docker.io when missing and root), unless
# one of ours already runs; `docker.sh stop` stops it only if this project started it.
# `start` prints two lines: the DOCKER_HOST to use, then "started" or "running".
# The engine makes no default bridge: sandboxes get internal networks of their own.
set -euo pipefail
VAR=${VAR:-var}
DIR=$(mkdir -p "$VAR/docker" && cd "$VAR/docker" && pwd)
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
HOST="unix://$SOCK"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { curl -sf --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1; }

case "${1:-start}" in
start)
  if running && answers; then echo "$HOST"; echo running; exit 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: no Docker engine (apt-get install docker.io, or run as root)" >&2; exit 1
    fi
    echo "installing docker.io from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io iptables >/dev/null
  fi
  if [ "$(id -u)" != 0 ]; then echo "error: starting dockerd needs root" >&2; exit 1; fi
  mkdir -p "$DIR/root" "$DIR/exec"
  rm -f "$SOCK"
  # setsid: the engine outlives the shell that started it until `docker.sh stop`.
  setsid dockerd --host "$HOST" --data-root "$DIR/root" --exec-root "$DIR/exec" \
    --pidfile "$PIDFILE" --bridge none --userland-proxy=false \
    --default-address-pool base=172.30.0.0/16,size=28 \
    >"$DIR/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    answers && { echo "$HOST"; echo started; exit 0; }
    sleep 0.25
  done
  echo "error: dockerd did not answer on $SOCK; see $DIR/dockerd.log" >&2
  tail -5 "$DIR/dockerd.log" >&2 || true
  exit 1
  ;;
stop)
  running || exit 0
  pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  ;;
*)
  echo "usage: docker.sh start|stop" >&2; exit 2 ;;
esac
