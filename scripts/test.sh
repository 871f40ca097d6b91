#!/usr/bin/env bash
# The project's test command (README, .ci/run): static checks, the fast unit tier, then the
# end-to-end tier against the local cluster (built once into ~/.cache/leitstand, then cached).
# Set LEITSTAND_SKIP_E2E=1 to run only the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$HOME/.cache/leitstand/numba}

echo "== ruff"; ruff check .
# mypy and grimp cannot see through setuptools' editable finder (the mapped packages have no file
# origin, so imports of leitstand.* would silently become Any), so both check a throw-away tree that
# links the two folders under their installed names.
lint_root=$(mktemp -d); trap 'rm -rf "$lint_root"' EXIT
mkdir "$lint_root/leitstand"
ln -s "$PWD/scheduler" "$lint_root/leitstand/scheduler"; ln -s "$PWD/operator" "$lint_root/leitstand/operator"
echo "== mypy (strict on leitstand.scheduler)"
MYPYPATH="$lint_root" mypy -p leitstand.scheduler -p leitstand.operator
echo "== import-linter"
PYTHONPATH="$lint_root" lint-imports
echo "== unit, scenario, property and parity tests"
pytest -m "not e2e" -q
echo "== the compiled kernels run as plain Python too (NUMBA_DISABLE_JIT=1: coverage of the kernel source)"
NUMBA_DISABLE_JIT=1 pytest -q -p no:cacheprovider tests/parity tests/unit/test_placement.py tests/unit/test_policies.py \
    tests/property/test_placement_properties.py
if [ "${LEITSTAND_SKIP_E2E:-0}" != 1 ]; then
    echo "== local cluster build (cached; with Helm for the chart tests)"; leitstand cluster build --with-helm
    echo "== end-to-end tests against the local cluster"
    pytest -m e2e -q tests/e2e
fi
