#!/usr/bin/env bash
# The embedded stack on one machine: the privacy gateway (background) and the research
# portal (foreground) over the datasets in $VAR/datasets. Ctrl-C stops both; only the
# processes started here are stopped.
set -euo pipefail
VAR=${VAR:-var}
BIN=${BIN:-.venv/bin}
export SANDBOX_GATEWAY_DATASETS_DIR=$VAR/datasets
export SANDBOX_GATEWAY_STATE_DIR=$VAR/gateway
export SANDBOX_GATEWAY_DATABASE_URL=${SANDBOX_GATEWAY_DATABASE_URL:-sqlite:///$VAR/gateway/gateway.db}
export SANDBOX_PORTAL_DATASETS_DIR=$VAR/datasets
export SANDBOX_PORTAL_STATE_DIR=$VAR/portal
export SANDBOX_PORTAL_DATABASE_URL=${SANDBOX_PORTAL_DATABASE_URL:-sqlite:///$VAR/portal/portal.db}
export SANDBOX_PORTAL_GATEWAY_TOKEN_FILE=$VAR/gateway/admin.token
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
"$BIN/sandboxctl" gateway serve &
pids+=($!)
for _ in $(seq 1 300); do
  [ -s "$VAR/gateway/admin.token" ] && "$BIN/python" -c "import httpx,sys; httpx.get('http://127.0.0.1:8700/v1/health').raise_for_status()" 2>/dev/null && break
  sleep 0.2
done
echo "gateway: http://127.0.0.1:8700 (service token in $VAR/gateway/admin.token)"
echo "portal:  http://127.0.0.1:8600 (create committee accounts with: sandboxctl portal create-user)"
"$BIN/sandboxctl" portal serve &
pids+=($!)
wait -n "${pids[@]}"
