"""Gang placement: find a topology-valid home for every replica of a job, or say why there is none.

STUB by the lead (first-fit, pure Python) so the cycle and simulators can be written against the API;
the placement engineer replaces the body with the Numba kernels (`placement_kernels.py`) and their
reference twin (`placement_reference.py`) behind the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import Job, ReplicaPlacement
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState

Engine = Literal["numba", "reference"]


@dataclass(frozen=True, slots=True)
class GangRequest:
    """A gang in array terms: `replicas` × (`gpus` devices of `gpu_milli` each, CPU, memory)."""

    replicas: int
    gpus: int
    gpu_milli: int
    cpu_milli: int
    memory_mib: int
    node_mask: NDArray[np.bool_]
    required_level: int = NONE
    """0..L-1 for a labelled level, L for the node level, NONE for no requirement."""
    preferred_level: int = NONE

    @classmethod
    def for_job(cls, state: ClusterState, job: Job, *, excluded_pools: tuple[str, ...] = ()) -> GangRequest:
        levels = state.topology
        return cls(
            replicas=job.replicas,
            gpus=job.gpus,
            gpu_milli=job.gpu_milli if job.gpus > 0 else 0,
            cpu_milli=job.cpu_milli,
            memory_mib=job.memory_mib,
            node_mask=state.node_mask(
                node_pool=job.node_pool,
                jurisdiction=job.jurisdiction,
                gpu_models=job.gpu_models,
                excluded_pools=excluded_pools,
            ),
            required_level=levels.level_index(job.required_level) if job.required_level else NONE,
            preferred_level=levels.level_index(job.preferred_level) if job.preferred_level else NONE,
        )


@dataclass(frozen=True, slots=True)
class GangPlacement:
    nodes: NDArray[np.int32]
    """Node index per replica."""
    gpus: NDArray[np.int32]
    """GPU indices per replica, shape (replicas, max(gpus, 1)); -1 where unused (CPU-only)."""


@dataclass(frozen=True, slots=True)
class Unplaceable:
    code: str
    message: str


def place_gang(
    state: ClusterState, request: GangRequest, policy: PolicyContext, *, engine: Engine = "numba"
) -> GangPlacement | Unplaceable:
    """Choose nodes and GPUs for all replicas, or none. Does not modify `state`."""
    work = state.copy()
    width = max(request.gpus, 1)
    nodes = np.full(request.replicas, NONE, dtype=np.int32)
    gpus = np.full((request.replicas, width), NONE, dtype=np.int32)
    for r in range(request.replicas):
        for n in range(work.n_nodes):
            if not request.node_mask[n]:
                continue
            if work.cpu_free_milli[n] < request.cpu_milli or work.memory_free_mib[n] < request.memory_mib:
                continue
            fitting = [g for g in range(int(work.gpu_count[n])) if work.gpu_free_milli[n, g] >= request.gpu_milli]
            if len(fitting) < request.gpus:
                continue
            chosen = fitting[: request.gpus]
            work.allocate(n, chosen, request.gpu_milli, request.cpu_milli, request.memory_mib)
            nodes[r] = n
            gpus[r, : len(chosen)] = chosen
            break
        else:
            return Unplaceable("Insufficient", "not enough free GPUs, CPU or memory for every replica")
    return GangPlacement(nodes=nodes, gpus=gpus)


def apply_placement(state: ClusterState, request: GangRequest, placement: GangPlacement) -> None:
    """Charge a placement to `state` (the cycle calls this once it commits to a binding)."""
    for r in range(request.replicas):
        used = [int(g) for g in placement.gpus[r] if g >= 0]
        state.allocate(int(placement.nodes[r]), used, request.gpu_milli, request.cpu_milli, request.memory_mib)


def replica_placements(state: ClusterState, placement: GangPlacement) -> tuple[ReplicaPlacement, ...]:
    """Translate array indices back to node names for a `Binding`."""
    return tuple(
        ReplicaPlacement(
            node=state.node_names[int(n)], gpu_indices=tuple(int(g) for g in placement.gpus[r] if g >= 0)
        )
        for r, n in enumerate(placement.nodes)
    )
