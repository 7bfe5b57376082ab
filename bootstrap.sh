#!/usr/bin/env bash
# Fresh Debian 12 (root) -> .venv with cma-harness installed and the default target's host packages present.
# Installs only what `cma-harness run` needs (see `cma-harness setup --help`); the test suite's
# extras (the report test's browser, the stock ssh client) are installed by tox's own set-up.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# editable_mode=compat: the checkout goes on sys.path by a plain .pth line; setuptools' default
# editable finder is an import hook that costs every CLI start ~12 ms before QEMU can start.
.venv/bin/pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev]'
# Host packages for the default target (QEMU, cross compilers and their C libraries, foreign
# architectures), each toolchain proved by a static link: installed as root, else the exact fix.
.venv/bin/cma-harness setup
