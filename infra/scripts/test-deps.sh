#!/usr/bin/env bash
# System packages the test suite needs, installed from Debian when missing (as root):
# PostgreSQL (the ledger and portal are tested on it too), Chromium (browser tests, driven
# by Playwright with executable_path=/usr/bin/chromium), and for the sealed sandboxes a
# Docker engine, debootstrap (the offline base image), iptables and iproute2 (sandbox
# firewall and routes) and npm (JupyterHub's proxy); Java 17 for the local Spark Connect
# server the gateway's spark engine is tested against.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium fonts-noto-cjk)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v npm >/dev/null 2>&1 || need+=(npm)
ls -d /usr/lib/jvm/java-17-openjdk-* >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: the tests need: ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing ${need[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$(dirname "$0")/ensure-proxy.sh"
