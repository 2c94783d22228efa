#!/usr/bin/env bash
# The embedded stack on one machine: the privacy gateway, a federation of three site nodes
# (the demo dataset split by patient) with its key service, and, when this is Linux and we
# are root, the project's Docker engine and the sandbox hub (background), and the research
# portal, over the datasets in $VAR/datasets; with SANDBOX_DEMO=1 (`make run`), demo
# accounts and an approved demo project. Ctrl-C stops everything started here — and only
# that.
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
export SANDBOX_KEYS_STATE_DIR=$VAR/keyservice SANDBOX_KEYS_DATABASE_URL=sqlite:///$VAR/keyservice/keys.db
export SANDBOX_KEYS_GATEWAY_KEY_FILE=$VAR/gateway/public-key.pem
# The portal's public grant key (written when the portal starts): grants on federated
# datasets carry its signed authorization, which the gateway, sites and key service check.
export SANDBOX_GATEWAY_PORTAL_KEY_FILE=$VAR/portal/grant-public-key.pem
export SANDBOX_KEYS_PORTAL_KEY_FILE=$VAR/portal/grant-public-key.pem
export SANDBOX_SITE_PORTAL_KEY_FILE=$VAR/portal/grant-public-key.pem
SITES=(north south east)
pids=()
docker_started=
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  [ -n "$docker_started" ] && infra/scripts/docker.sh stop
}
trap stop EXIT
trap 'exit 130' INT TERM
wait_for() {  # URL: until it answers (up to a minute)
  for _ in $(seq 1 300); do
    "$BIN/python" -c "import httpx,sys; httpx.get('$1').raise_for_status()" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "error: $1 did not answer" >&2
  return 1
}
# Federated demo: each patient of the demo dataset at one of three sites.
fed=$VAR/federated/emr-visits
[ -s "$fed/metadata.json" ] || "$BIN/sandboxctl" site split "$VAR/datasets/emr-visits" \
  --sites "$(IFS=,; echo "${SITES[*]}")" --out "$fed" --catalog-dir "$VAR/datasets" >/dev/null
sites_json=
for i in "${!SITES[@]}"; do
  sites_json+="${sites_json:+, }\"${SITES[$i]}\": \"http://127.0.0.1:$((8731 + i))\""
done
cat > "$VAR/federated/federation.json" <<EOF
{"keys_url": "http://127.0.0.1:8720",
 "datasets": {"emr-visits-federated": {"metadata": "$fed/metadata.json", "sites": {$sites_json}}}}
EOF
export SANDBOX_GATEWAY_FEDERATION_FILE=$VAR/federated/federation.json
# The gateway and the hub API listen on loopback only; sandboxes reach them through their
# network's host address, which the hub's firewall forwards to loopback (docs/adr/0009).
hub=
if [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ]; then
  out=$(infra/scripts/docker.sh start)
  export SANDBOX_HUB_DOCKER_HOST=$(echo "$out" | head -1)
  [ "$(echo "$out" | tail -1)" = started ] && docker_started=1
  infra/scripts/ensure-proxy.sh
  export SANDBOX_HUB_PROXY_COMMAND=$VAR/node/node_modules/.bin/configurable-http-proxy
  "$BIN/sandboxctl" image build --docker-host "$SANDBOX_HUB_DOCKER_HOST" \
    --datasets-dir "$VAR/datasets" --work-dir "$VAR/image"
  export SANDBOX_PORTAL_HUB_URL=http://127.0.0.1:8000
  hub=1
else
  echo "note: sandboxes need root on Linux (a Docker engine and a firewall); serving without them" >&2
fi
"$BIN/sandboxctl" gateway serve &
pids+=($!)
wait_for http://127.0.0.1:8700/v1/health
echo "gateway: http://127.0.0.1:8700 (service token in $VAR/gateway/admin.token)"
"$BIN/sandboxctl" keys serve &
pids+=($!)
for i in "${!SITES[@]}"; do
  site=${SITES[$i]} port=$((8731 + i))
  "$BIN/sandboxctl" site serve --site "$site" --dataset-dir "$fed/$site" \
    --state-dir "$VAR/sites/$site" --gateway-key "$VAR/gateway/public-key.pem" --port "$port" &
  pids+=($!)
  wait_for "http://127.0.0.1:$port/v1/health"
  "$BIN/python" -c "import httpx; print(httpx.get('http://127.0.0.1:$port/v1/public-key').text, end='')" \
    > "$VAR/sites/$site.pem"
  "$BIN/sandboxctl" keys register-site "$site" "$VAR/sites/$site.pem" >/dev/null
done
wait_for http://127.0.0.1:8720/v1/health
echo "federation: emr-visits-federated at ${SITES[*]} (:8731-:$((8730 + ${#SITES[@]}))), key service :8720 (operator token in $VAR/keyservice/operator.token)"
if [ -n "$hub" ]; then
  "$BIN/sandboxctl" hub serve &
  pids+=($!)
  wait_for http://127.0.0.1:8000/hub/api/
  echo "hub:     http://127.0.0.1:8000 (researchers sign in through the portal)"
fi
echo "portal:  http://127.0.0.1:8600 (more accounts with: sandboxctl portal create-user)"
"$BIN/sandboxctl" portal serve &
pids+=($!)
# Demo mode (`make run` only): accounts for every role and a project approved through the
# portal, whose sandbox the hub starts. A refusal leaves the stack serving without them.
if [ "${SANDBOX_DEMO:-}" = 1 ]; then
  wait_for http://127.0.0.1:8600/login
  "$BIN/sandboxctl" demo seed --var "$VAR" \
    || echo "note: no demo accounts (see the reason above); the stack serves without them" >&2
fi
wait -n "${pids[@]}"
