"""The package layout that keeps `operator/` from shadowing the standard library (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_dir_is_a_namespace_portion() -> None:
    assert (REPO / "operator").is_dir()
    assert not (REPO / "operator" / "__init__.py").exists(), "operator/__init__.py would shadow stdlib operator"
    assert (REPO / "scheduler" / "__init__.py").exists()


def test_stdlib_operator_imports_cleanly_from_repo_root() -> None:
    code = (
        "import operator, dataclasses, collections, sysconfig;"
        "print(operator.__file__);"
        "assert operator.__file__.startswith(sysconfig.get_paths()['stdlib']), operator.__file__;"
        "assert callable(operator.itemgetter)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_both_packages_import_under_the_leitstand_name() -> None:
    code = "import leitstand.scheduler.model, leitstand.operator.cli; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_no_module_is_named_like_a_stdlib_module() -> None:
    stdlib = set(sys.stdlib_module_names)
    ours = [
        path
        for top in ("scheduler", "operator")
        for path in (REPO / top).rglob("*.py")
        if path.stem in stdlib and path.stem != "__init__"
    ]
    # the top-level folder names themselves are mapped to leitstand.* and never imported bare
    assert ours == [], f"rename these modules, they shadow the standard library: {ours}"
    assert sysconfig.get_paths()["stdlib"]
