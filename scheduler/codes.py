"""Integer codes and dtypes shared by the array encoder (`state.py`), the compiled kernels and their
pure-Python twins.

Kernels cannot take Python enums or strings, so every categorical value crosses into compiled code
as one of the integers defined here. This module is the single place that defines them, and it
imports no Numba: the readable twins (`placement_reference.py`, `policy_reference.py`) read their
status and diagnosis codes from here, so the reference path runs where Numba is not installed.
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


MAX_DOMAIN_TRIES = 4
"""Domains tried per level when the greedy fill of the tightest one fails (fragmentation); a search
bound the kernel and its twin must share to decide alike."""

# Placement status: what `place_gang_kernel` (and its twin) return.
STATUS_OK = 0
STATUS_NO_MATCHING_NODES = 1
STATUS_INSUFFICIENT = 2
STATUS_NO_TOPOLOGY_DOMAIN = 3
STATUS_FRAGMENTED = 4
STATUS_BAD_POLICY_CHOICE = 5

# Slots of the placement diagnosis array (`diag`, length DIAG_SIZE) the kernels fill for messages.
DIAG_MATCHING_NODES = 0
DIAG_LACK_GPU = 1
DIAG_LACK_CPU = 2
DIAG_LACK_MEMORY = 3
DIAG_TOTAL_REPLICAS = 4
DIAG_LABELLED_NODES = 5
DIAG_BEST_LEVEL = 6
DIAG_BEST_DOMAIN = 7
DIAG_BEST_DOMAIN_REPLICAS = 8
DIAG_LEVEL_USED = 9
DIAG_DOMAIN_USED = 10
DIAG_SIZE = 11


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
