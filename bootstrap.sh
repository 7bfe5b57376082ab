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
# Headless Chromium: the HTML report's browser test (tests/guest/test_report_browser.py) renders with it.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
            || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
    else
        echo "bootstrap: chromium is missing; as root: apt-get install -y chromium" >&2
    fi
fi
# Host tools (QEMU, cross compilers, foreign architectures): installed as root, else the exact fix is printed.
.venv/bin/cma-harness setup
