#!/usr/bin/env bash
# System packages the test suite needs, installed from Debian when missing (as root):
# PostgreSQL (the ledger and portal are tested on it too) and Chromium (browser tests,
# driven by Playwright with executable_path=/usr/bin/chromium).
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium fonts-noto-cjk)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "error: the tests need: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} from Debian" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
