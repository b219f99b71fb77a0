#!/usr/bin/env bash
# One-time machine set-up for cachefs on Debian 12 (run as root by `make`): system packages,
# a virtualenv in .venv and the package (with its native extension) installed into it.
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: for its promtool, which checks and unit-tests the Helm chart's alert rules (tests/csi);
# the server it also ships is not wanted and is stopped below.
PKGS=(fuse3 libfuse3-dev pkg-config gcc python3-venv fio s3fs rclone libxxhash-dev libcurl4-openssl-dev prometheus)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "cachefs setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "cachefs setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true   # only promtool is used
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ -n "$(find native -newer "$stamp" -type f 2>/dev/null | head -1)" ]; then
  .venv/bin/pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
