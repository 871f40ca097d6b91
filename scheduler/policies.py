"""Placement policies: the per-cluster context a policy's kernels need, built once (per seed).

`PolicyContext.build(state, policy)` is called by the cycle and the simulators; `placement.py` hands
the context's arrays to `policy_kernels.node_score_kernel` / `choose_gpus_kernel`. The context holds:

- `code`: which policy (`codes.PolicyCode`);
- `node_rank[N]`: tie-break priority, smallest wins among equal scores. The FGD protocol uses a fixed
  random order per seed (Go's `rand.Perm`); a live cluster uses name order (the default);
- the typical-task table (`typ_cpu`, `typ_milli`, `typ_num`, `typ_model_ok`, `typ_weight`) that
  FGD and leitstand measure fragmentation against. The simulator derives it from the trace
  (`typical_tasks_from_shapes`); without one, `default_typical_tasks` describes a DGX-style cluster;
- `seed`: for Random's draws.

Nothing here places anything or mutates the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import GPU_MILLI
from leitstand.scheduler.state import ClusterState


@dataclass(frozen=True, slots=True)
class TaskShape:
    """One request shape of the typical-task table: `count` tasks asked for it."""

    cpu_milli: int
    gpu_milli: int
    """Per GPU; 0 for a CPU-only shape."""
    gpus: int
    count: int
    gpu_models: frozenset[str] = frozenset()
    """Allowed GPU models; empty means any."""


@dataclass(frozen=True, slots=True)
class TypicalTasks:
    """The typical-task table as the kernels read it (T shapes, M model codes)."""

    cpu_milli: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    gpus: NDArray[np.int64]
    model_ok: NDArray[np.bool_]
    """[T, M + 1]: column m allows model code m; the last column is read for nodes without a model."""
    weight: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.cpu_milli.shape[0])


def typical_tasks_from_shapes(
    shapes: Iterable[TaskShape], model_codes: Mapping[str, int], *, coverage: float = 0.95
) -> TypicalTasks:
    """FGD's typical tasks: the most frequent shapes until `coverage` of all tasks is reached.

    Shapes are taken by count, descending (ties: larger CPU, milli, GPU count, then model list
    first); the weight of a kept shape is its count over the kept total. CPU-only shapes count.
    """
    ordered = sorted(
        shapes,
        key=lambda s: (s.count, s.cpu_milli, s.gpu_milli, s.gpus, "|".join(sorted(s.gpu_models))),
        reverse=True,
    )
    total = sum(s.count for s in ordered)
    kept: list[TaskShape] = []
    cumulative = 0
    for shape in ordered:
        if total and cumulative >= coverage * total:
            break
        kept.append(shape)
        cumulative += shape.count
    n_models = max(model_codes.values(), default=-1) + 1
    model_ok = np.zeros((len(kept), n_models + 1), dtype=np.bool_)
    for t, shape in enumerate(kept):
        if not shape.gpu_models:
            model_ok[t, :] = True
            continue
        for name in shape.gpu_models:
            code = model_codes.get(name)
            if code is not None:
                model_ok[t, code] = True
    kept_total = sum(s.count for s in kept)
    return TypicalTasks(
        cpu_milli=np.array([max(s.cpu_milli, 0) for s in kept], dtype=np.int64),
        gpu_milli=np.array([s.gpu_milli if s.gpus > 0 else 0 for s in kept], dtype=np.int64),
        gpus=np.array([s.gpus if s.gpu_milli > 0 else 0 for s in kept], dtype=np.int64),
        model_ok=model_ok,
        weight=np.array([s.count / kept_total for s in kept], dtype=np.float64),
    )


DEFAULT_SHAPES: tuple[TaskShape, ...] = (
    # Whole-GPU training/inference replicas: 8 CPU cores per GPU.
    TaskShape(cpu_milli=8_000, gpu_milli=GPU_MILLI, gpus=1, count=30),
    TaskShape(cpu_milli=16_000, gpu_milli=GPU_MILLI, gpus=2, count=10),
    TaskShape(cpu_milli=32_000, gpu_milli=GPU_MILLI, gpus=4, count=8),
    TaskShape(cpu_milli=64_000, gpu_milli=GPU_MILLI, gpus=8, count=12),
    # Common slices (MIG/time-sliced notebooks and inference): half, quarter, eighth GPU.
    TaskShape(cpu_milli=4_000, gpu_milli=500, gpus=1, count=15),
    TaskShape(cpu_milli=2_000, gpu_milli=250, gpus=1, count=15),
    TaskShape(cpu_milli=1_000, gpu_milli=125, gpus=1, count=5),
    # CPU-only side tasks (data loaders, controllers).
    TaskShape(cpu_milli=4_000, gpu_milli=0, gpus=0, count=5),
)
"""The typical-task mix assumed when nothing better is known: a DGX-style cluster with mostly whole
GPUs (1/2/4/8 per replica), a share of slices, and a few CPU-only tasks. Weights are the counts."""


def default_typical_tasks(model_codes: Mapping[str, int]) -> TypicalTasks:
    return typical_tasks_from_shapes(DEFAULT_SHAPES, model_codes, coverage=1.0)


@dataclass(frozen=True, slots=True)
class PolicyContext:
    code: PolicyCode
    node_rank: NDArray[np.int64]
    """Tie-break priority per node: among equal scores the node with the smallest rank wins."""
    typ_cpu: NDArray[np.int64]
    typ_milli: NDArray[np.int64]
    typ_num: NDArray[np.int64]
    typ_model_ok: NDArray[np.bool_]
    typ_weight: NDArray[np.float64]
    seed: int = 0

    @classmethod
    def build(
        cls,
        state: ClusterState,
        policy: str | PolicyCode = PolicyCode.LEITSTAND,
        *,
        typical: TypicalTasks | None = None,
        node_rank: NDArray[np.int64] | None = None,
        seed: int = 0,
    ) -> PolicyContext:
        """Context for `state`: `policy` by code or name; typical tasks default to `DEFAULT_SHAPES`."""
        code = policy if isinstance(policy, PolicyCode) else PolicyCode.parse(policy)
        table = typical if typical is not None else default_typical_tasks(state.model_codes)
        width = len(state.model_codes) + 1
        if table.model_ok.shape[1] < width:
            raise ValueError(
                f"typical-task model table has {table.model_ok.shape[1]} columns; the cluster needs {width}"
            )
        if node_rank is None:
            rank = np.arange(state.n_nodes, dtype=np.int64)
        else:
            rank = np.asarray(node_rank, dtype=np.int64)
            if rank.shape != (state.n_nodes,):
                raise ValueError(f"node_rank has shape {rank.shape}; expected ({state.n_nodes},)")
        # Keep exactly M + 1 columns so that a node without a model (code -1) reads the last column.
        model_ok = np.ascontiguousarray(
            np.concatenate([table.model_ok[:, : width - 1], table.model_ok[:, -1:]], axis=1)
        )
        return cls(
            code=code,
            node_rank=rank,
            typ_cpu=table.cpu_milli,
            typ_milli=table.gpu_milli,
            typ_num=table.gpus,
            typ_model_ok=model_ok,
            typ_weight=table.weight,
            seed=seed,
        )
