#!/usr/bin/env bash
# Make sure a Python >= 3.11 that can create virtual environments exists. On Debian as
# root, install it from the distribution when it is missing; elsewhere say what is needed.
set -euo pipefail
PY=${PYTHON:-python3}
usable() {
  command -v "$PY" >/dev/null 2>&1 &&
    "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
usable && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing python3 and python3-venv from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  usable && exit 0
fi
echo "error: need Python >= 3.11 with the venv module ('apt-get install python3-venv' on Debian)" >&2
exit 1
