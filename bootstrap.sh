#!/usr/bin/env bash
# Fresh Debian 12 (root) -> .venv with cma-harness installed and every host tool present.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
# Host tools (QEMU, cross compilers, foreign architectures): installed as root, else the exact fix is printed.
.venv/bin/cma-harness setup
