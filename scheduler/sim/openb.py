"""Loading the Alibaba GPU-sharing trace ("openb", FGD / ATC'23) into the core's value types.

Node CSV (`sn,cpu_milli,memory_mib,gpu,model`) → `model.Node`s in name order; pod CSV
(`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`) → a `PodTable` (struct of arrays,
name order). The FGD protocol's per-task rules are applied here, once: a task with `num_gpu = 0`
has no GPU request (milli 0, spec ignored); otherwise milli is clamped to 0..1000.

Called by `leitstand.scheduler.sim.inflation` and the CLI; reads files, never writes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.model import GPU_MILLI, Node, NodeName


@dataclass(frozen=True, slots=True)
class PodTable:
    """Tasks of one pod file, sorted by name. `gpu_spec[i]` is the raw `|` list ("" = any model)."""

    names: tuple[str, ...]
    cpu_milli: NDArray[np.int64]
    memory_mib: NDArray[np.int64]
    num_gpu: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    """Per-GPU share, 0 for CPU-only tasks."""
    gpu_spec: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def gpu_request_milli(self) -> NDArray[np.int64]:
        """Total GPU milli of each task (per-GPU milli × count)."""
        return self.gpu_milli * self.num_gpu


def load_nodes(path: str | Path) -> list[Node]:
    """Nodes of an openb node list, sorted by name (the order the protocol's tie ranks refer to)."""
    nodes: list[Node] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            nodes.append(
                Node(
                    name=NodeName(row["sn"]),
                    gpus=int(row["gpu"] or 0),
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    gpu_model=(row.get("model") or "").strip() if int(row["gpu"] or 0) > 0 else "",
                )
            )
    nodes.sort(key=lambda node: node.name)
    return nodes


def load_pods(path: str | Path) -> PodTable:
    """Every row of a pod list (whatever its phase), sorted by name, with the protocol's GPU rules."""
    rows: list[tuple[str, int, int, int, int, str]] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            num = int(row["num_gpu"] or 0)
            milli = int(row["gpu_milli"] or 0)
            spec = (row.get("gpu_spec") or "").strip()
            if num <= 0:
                num, milli, spec = 0, 0, ""
            else:
                milli = min(max(milli, 0), GPU_MILLI)
            rows.append((row["name"], int(row["cpu_milli"]), int(row["memory_mib"]), num, milli, spec))
    rows.sort(key=lambda r: r[0])
    return PodTable(
        names=tuple(r[0] for r in rows),
        cpu_milli=np.array([r[1] for r in rows], dtype=np.int64),
        memory_mib=np.array([r[2] for r in rows], dtype=np.int64),
        num_gpu=np.array([r[3] for r in rows], dtype=np.int64),
        gpu_milli=np.array([r[4] for r in rows], dtype=np.int64),
        gpu_spec=tuple(r[5] for r in rows),
    )


def workload_name(pods_path: str | Path) -> str:
    """`openb_pod_list_default.csv` → "default" (the name the FGD results use, minus the prefix)."""
    stem = Path(pods_path).stem
    prefix = "openb_pod_list_"
    return stem[len(prefix) :] if stem.startswith(prefix) else stem
