#!/usr/bin/env bash
# Sets up a development environment from a fresh clone: a venv in .venv with leitstand installed
# editable, plus the dev tools. Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python >= 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
# The local cluster needs openssl (its PKI) and Go (it builds Kubernetes from modules).
if ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing openssl (apt)"; apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
# The dashboard's e2e test runs a real Prometheus (Debian's package) of its own, on a free loopback
# port with its own data folder; a system service the package may start is not used.
if ! command -v prometheus >/dev/null 2>&1; then
    echo "setup: installing prometheus (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v go >/dev/null 2>&1 || echo "setup: warning: Go not found; 'leitstand cluster build' will need Go >= 1.26" >&2
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.leitstand-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi
echo "setup: ready (.venv/bin/leitstand)"
