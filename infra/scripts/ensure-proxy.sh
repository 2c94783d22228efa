#!/usr/bin/env bash
# JupyterHub's proxy, configurable-http-proxy, from the npm registry into $VAR/node.
set -euo pipefail
VAR=${VAR:-var}
BIN="$VAR/node/node_modules/.bin/configurable-http-proxy"
[ -x "$BIN" ] && exit 0
command -v npm >/dev/null 2>&1 || {
  [ "$(id -u)" = 0 ] || { echo "error: npm is missing (apt-get install npm)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
}
mkdir -p "$VAR/node"
npm install --silent --no-audit --no-fund --prefix "$VAR/node" configurable-http-proxy@5.3.0 >/dev/null
echo "installed configurable-http-proxy into $VAR/node" >&2
