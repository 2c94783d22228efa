#!/usr/bin/env bash
# The embedded stack on one machine: the privacy gateway and, when this is Linux and we are
# root, the project's Docker engine and the sandbox hub (background), and the research
# portal (foreground), over the datasets in $VAR/datasets. Ctrl-C stops everything started
# here — and only that.
set -euo pipefail
VAR=${VAR:-var}
BIN=${BIN:-.venv/bin}
export VAR
export SANDBOX_GATEWAY_DATASETS_DIR=$VAR/datasets
export SANDBOX_GATEWAY_STATE_DIR=$VAR/gateway
export SANDBOX_GATEWAY_DATABASE_URL=${SANDBOX_GATEWAY_DATABASE_URL:-sqlite:///$VAR/gateway/gateway.db}
export SANDBOX_PORTAL_DATASETS_DIR=$VAR/datasets
export SANDBOX_PORTAL_STATE_DIR=$VAR/portal
export SANDBOX_PORTAL_DATABASE_URL=${SANDBOX_PORTAL_DATABASE_URL:-sqlite:///$VAR/portal/portal.db}
export SANDBOX_PORTAL_GATEWAY_TOKEN_FILE=$VAR/gateway/admin.token
export SANDBOX_PORTAL_SECRETS_DIR=$VAR/secrets SANDBOX_HUB_SECRETS_DIR=$VAR/secrets
export SANDBOX_HUB_STATE_DIR=$VAR/hub
pids=()
docker_started=
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  [ -n "$docker_started" ] && infra/scripts/docker.sh stop
}
trap stop EXIT
trap 'exit 130' INT TERM
# Sandboxes reach the gateway through their network's host address: listen on all
# addresses; the hub's firewall admits sandboxes to this port and the hub's API only.
hub=
if [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ]; then
  out=$(infra/scripts/docker.sh start)
  export SANDBOX_HUB_DOCKER_HOST=$(echo "$out" | head -1)
  [ "$(echo "$out" | tail -1)" = started ] && docker_started=1
  infra/scripts/ensure-proxy.sh
  "$BIN/sandboxctl" image build --docker-host "$SANDBOX_HUB_DOCKER_HOST"
  export SANDBOX_GATEWAY_HOST=0.0.0.0 SANDBOX_PORTAL_HUB_URL=http://127.0.0.1:8000
  hub=1
else
  echo "note: sandboxes need root on Linux (a Docker engine and a firewall); serving without them" >&2
fi
"$BIN/sandboxctl" gateway serve &
pids+=($!)
for _ in $(seq 1 300); do
  [ -s "$VAR/gateway/admin.token" ] && "$BIN/python" -c "import httpx,sys; httpx.get('http://127.0.0.1:8700/v1/health').raise_for_status()" 2>/dev/null && break
  sleep 0.2
done
echo "gateway: http://127.0.0.1:8700 (service token in $VAR/gateway/admin.token)"
if [ -n "$hub" ]; then
  "$BIN/sandboxctl" hub serve &
  pids+=($!)
  echo "hub:     http://127.0.0.1:8000 (researchers sign in through the portal)"
fi
echo "portal:  http://127.0.0.1:8600 (create committee accounts with: sandboxctl portal create-user)"
"$BIN/sandboxctl" portal serve &
pids+=($!)
wait -n "${pids[@]}"
