"""The pure-Python twins of the kernels run without Numba: importing them must not import it.

A fresh interpreter (the test process has long imported Numba) imports each reference module and
reports whether any `numba` module is in `sys.modules` afterwards.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
import importlib
importlib.import_module({module!r})
print(sorted(m for m in sys.modules if m == "numba" or m.startswith("numba.")))
"""


@pytest.mark.parametrize(
    "module",
    ["leitstand.scheduler.placement_reference", "leitstand.scheduler.policy_reference", "leitstand.scheduler.codes"],
)
def test_reference_module_imports_no_numba(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"{module} imported Numba: {out.stdout.strip()[:300]}"


def test_probe_sees_numba_when_a_kernel_module_is_imported() -> None:
    # The probe itself can fail: importing a kernel module does pull Numba in.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module="leitstand.scheduler.policy_kernels")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "'numba'" in out.stdout
