"""Integer codes and dtypes shared by the array encoder (`state.py`) and the compiled kernels.

Kernels cannot take Python enums or strings, so every categorical value crosses into compiled code
as one of the integers defined here. This module is the single place that defines them.
"""

from __future__ import annotations

import enum

import numpy as np

GPU_DTYPE = np.int32
"""Per-GPU free capacity, milli-GPU (0..1000)."""
RESOURCE_DTYPE = np.int64
"""CPU milli-cores and memory MiB, per node."""
INDEX_DTYPE = np.int32
"""Node, GPU, domain and category indices."""

NONE = -1
"""Category code for an absent label (no GPU model, no jurisdiction, no topology label)."""


class PolicyCode(enum.IntEnum):
    """Placement policies; the names are the CLI's `--policy` values (case-insensitive)."""

    LEITSTAND = 0
    RANDOM = 1
    DOTPROD = 2
    GPUCLUSTERING = 3
    GPUPACKING = 4
    BESTFIT = 5
    FGD = 6

    @classmethod
    def parse(cls, name: str) -> PolicyCode:
        """`"fgd"`, `"BestFit"`, `"06-FGD"` → code; ValueError listing the valid names otherwise."""
        key = name.strip().split("-", 1)[-1].replace("_", "").replace(" ", "").upper()
        try:
            return cls[key]
        except KeyError:
            valid = ", ".join(p.display_name for p in cls)
            raise ValueError(f"unknown placement policy {name!r}; choose one of: {valid}") from None

    @property
    def display_name(self) -> str:
        return _DISPLAY[self]


_DISPLAY = {
    PolicyCode.LEITSTAND: "leitstand",
    PolicyCode.RANDOM: "Random",
    PolicyCode.DOTPROD: "DotProd",
    PolicyCode.GPUCLUSTERING: "GpuClustering",
    PolicyCode.GPUPACKING: "GpuPacking",
    PolicyCode.BESTFIT: "BestFit",
    PolicyCode.FGD: "FGD",
}
