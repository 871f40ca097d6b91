"""Gang placement: find a topology-valid home for every replica of a job, or say why there is none.

What it holds: the placement API (`GangRequest`, `GangPlacement`, `Unplaceable`, `place_gang`,
`apply_placement`, `replica_placements`) and the one dispatch point between the compiled kernels
(`placement_kernels.py`) and their pure-Python twin (`placement_reference.py`).

Who calls it: the scheduling cycle (`cycle.py`), the simulators, victim search, `leitstand bench core`.

What it must not do: modify the state in `place_gang` (the kernels charge tentatively and undo),
raise for an unschedulable gang (that is an `Unplaceable` with a stable code and a message a human
can act on), or hold policy logic (the policy's score and GPU choice come from `policy_kernels.py`).

Stable codes: "NoMatchingNodes" (pool / jurisdiction / GPU model / schedulable leave no node),
"Insufficient" (the matching nodes together lack GPUs, CPU or memory), "NoTopologyDomain" (no domain
of the required level holds the whole gang), "Fragmented" (enough room in aggregate, but the greedy
fill failed in every domain tried), "InvalidRequest", "PolicyError" (the policy chose a GPU that
does not fit: a bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler import placement_kernels as K
from leitstand.scheduler.codes import NONE, PolicyCode
from leitstand.scheduler.model import GPU_MILLI, NODE_LEVEL, Job, ReplicaPlacement
from leitstand.scheduler.placement_reference import place_gang_reference
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
    """Try one domain of this level first, then coarser levels, then anywhere (or the required level)."""
    gpu_models: tuple[str, ...] = ()
    """For messages only (the constraint itself is in `node_mask`)."""
    node_pool: str | None = None
    """For messages only."""
    jurisdiction: str | None = None
    """For messages only."""

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
            gpu_models=tuple(sorted(job.gpu_models)),
            node_pool=job.node_pool,
            jurisdiction=job.jurisdiction,
        )


@dataclass(frozen=True, slots=True)
class GangPlacement:
    nodes: NDArray[np.int32]
    """Node index per replica."""
    gpus: NDArray[np.int32]
    """GPU indices per replica, shape (replicas, max(gpus, 1)); -1 where unused (CPU-only)."""
    level: int = NONE
    """Topology level of the domain that holds the gang; NONE when placed "anywhere"."""
    domain: int = NONE
    """Domain id (at `level`) that holds the gang; NONE when placed "anywhere"."""


@dataclass(frozen=True, slots=True)
class Unplaceable:
    code: str
    """Stable machine-readable code (module docstring lists them)."""
    message: str
    """What is missing, in words a tenant can act on."""


NO_MATCHING_NODES = "NoMatchingNodes"
INSUFFICIENT = "Insufficient"
NO_TOPOLOGY_DOMAIN = "NoTopologyDomain"
FRAGMENTED = "Fragmented"
INVALID_REQUEST = "InvalidRequest"
POLICY_ERROR = "PolicyError"

_MASK64 = (1 << 64) - 1


def rand_base(seed: int, nonce: int) -> int:
    """The 64-bit base of the per-node random numbers a policy sees (`rand_u64`) for one call."""
    from leitstand.scheduler.placement_reference import mix64

    return int(mix64((mix64(seed & _MASK64) ^ (nonce & _MASK64)) & _MASK64))


def _shape(request: GangRequest) -> str:
    if request.gpus == 0:
        unit = "CPU-only pod" + ("s" if request.replicas != 1 else "")
    elif request.gpu_milli >= GPU_MILLI:
        unit = f"{request.gpus} GPU" + ("s" if request.gpus != 1 else "")
    else:
        unit = f"{request.gpus} × {request.gpu_milli}m GPU slice" + ("s" if request.gpus != 1 else "")
    extras = []
    if request.cpu_milli:
        extras.append(f"{request.cpu_milli}m CPU")
    if request.memory_mib:
        extras.append(f"{request.memory_mib} MiB")
    tail = f" (+{', '.join(extras)} each)" if extras else ""
    return f"{request.replicas} × {unit}{tail}"


def _constraints(request: GangRequest) -> str:
    parts = []
    if request.gpu_models:
        parts.append("GPU model " + "|".join(sorted(request.gpu_models)))
    if request.node_pool is not None:
        parts.append(f"node pool {request.node_pool!r}")
    if request.jurisdiction is not None:
        parts.append(f"jurisdiction {request.jurisdiction!r}")
    return ", ".join(parts)


def _level_name(state: ClusterState, level: int) -> str:
    return str((*state.topology.levels, NODE_LEVEL)[level])


def _unplaceable(state: ClusterState, request: GangRequest, status: int, diag: NDArray[np.int64]) -> Unplaceable:
    shape = _shape(request)
    where = _constraints(request)
    of = f" of {where}" if where else ""
    if status == K.STATUS_NO_MATCHING_NODES:
        return Unplaceable(
            NO_MATCHING_NODES,
            f"no schedulable node matches {where or 'the request'}; check the node pool, jurisdiction and GPU model",
        )
    matching = int(diag[K.DIAG_MATCHING_NODES])
    total = int(diag[K.DIAG_TOTAL_REPLICAS])
    if status == K.STATUS_INSUFFICIENT:
        lacks = []
        if diag[K.DIAG_LACK_GPU]:
            lacks.append(f"{diag[K.DIAG_LACK_GPU]} nodes with too few free GPUs")
        if diag[K.DIAG_LACK_CPU]:
            lacks.append(f"{diag[K.DIAG_LACK_CPU]} nodes with too little free CPU")
        if diag[K.DIAG_LACK_MEMORY]:
            lacks.append(f"{diag[K.DIAG_LACK_MEMORY]} nodes with too little free memory")
        scope = f"the {matching} matching nodes{of}"
        if request.required_level >= 0:
            scope = (
                f"the {int(diag[K.DIAG_LABELLED_NODES])} matching nodes{of} with a "
                f"{_level_name(state, request.required_level)} label"
            )
        return Unplaceable(
            INSUFFICIENT,
            f"{shape} does not fit: {scope} hold {total} of {request.replicas} replicas"
            + (f" ({'; '.join(lacks)})" if lacks else ""),
        )
    if status == K.STATUS_NO_TOPOLOGY_DOMAIN:
        level = _level_name(state, request.required_level)
        if diag[K.DIAG_LABELLED_NODES] == 0:
            return Unplaceable(
                NO_TOPOLOGY_DOMAIN,
                f"no matching node{of} carries a {level} label, and the job requires one {level}",
            )
        best = int(diag[K.DIAG_BEST_DOMAIN])
        fits = int(diag[K.DIAG_BEST_DOMAIN_REPLICAS])
        need = f"{request.replicas * request.gpus} free GPUs{of} for {shape}" if request.gpus else shape
        largest = ""
        if best >= 0:
            name = state.domain_names[request.required_level][best]
            room = f"{fits * request.gpus} GPUs" if request.gpus else f"{fits} replicas"
            largest = f" (largest: room for {fits} of {request.replicas} replicas, {room}, in {level} {name})"
        return Unplaceable(NO_TOPOLOGY_DOMAIN, f"no {level} has {need}{largest}")
    if status == K.STATUS_FRAGMENTED:
        return Unplaceable(
            FRAGMENTED,
            f"{shape}: the matching nodes{of} hold {total} replicas in aggregate, but free GPUs are "
            "fragmented so no domain tried took every replica; wait for jobs to end or relax the "
            "topology requirement",
        )
    return Unplaceable(POLICY_ERROR, f"placement policy chose GPUs that do not fit {shape} (a bug)")


@dataclass(slots=True)
class _ScoreCache:
    """Policy scores of one request shape: `score[n]` is valid while `stamp[n] == node_version[n]`."""

    policy: PolicyContext | None
    score: NDArray[np.int64]
    stamp: NDArray[np.int64]


_NO_CACHE = _ScoreCache(None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
_MAX_CACHED_SHAPES = 64


def _score_cache(state: ClusterState, request: GangRequest, policy: PolicyContext) -> _ScoreCache:
    key = ("score", int(policy.code), request.gpus, request.gpu_milli, request.cpu_milli, request.memory_mib)
    entry = state.score_cache.get(key)
    if not isinstance(entry, _ScoreCache) or entry.score.shape[0] != state.n_nodes:
        if len(state.score_cache) >= _MAX_CACHED_SHAPES:
            state.score_cache.clear()
        entry = _ScoreCache(policy, np.zeros(state.n_nodes, np.int64), np.zeros(state.n_nodes, np.int64))
        state.score_cache[key] = entry
    if entry.policy is not policy:
        # a new context object (e.g. one per cycle) keeps the scores if it scores the same way
        if entry.policy is None or _policy_fingerprint(entry.policy) != _policy_fingerprint(policy):
            entry.stamp[:] = 0
        entry.policy = policy
    return entry


def _policy_fingerprint(policy: PolicyContext) -> tuple[object, ...]:
    """What a node's score depends on besides the node and the request (not node_rank: ties only)."""
    return (
        int(policy.code),
        policy.typ_cpu.tobytes(),
        policy.typ_milli.tobytes(),
        policy.typ_num.tobytes(),
        policy.typ_model_ok.tobytes(),
        policy.typ_model_ok.shape,
        policy.typ_weight.tobytes(),
    )


def _validate(state: ClusterState, request: GangRequest) -> str | None:
    if request.replicas < 0 or request.gpus < 0 or request.cpu_milli < 0 or request.memory_mib < 0:
        return "replicas, gpus, CPU and memory must be >= 0"
    if request.gpus > 0 and not 0 < request.gpu_milli <= GPU_MILLI:
        return f"gpu_milli must be in 1..{GPU_MILLI} when gpus > 0 (got {request.gpu_milli})"
    if request.node_mask.shape != (state.n_nodes,):
        return f"node_mask has shape {request.node_mask.shape}, expected ({state.n_nodes},)"
    top = state.n_levels
    for name, level in (("required", request.required_level), ("preferred", request.preferred_level)):
        if not NONE <= level <= top:
            return f"{name}_level {level} out of range -1..{top}"
    return None


def place_gang(
    state: ClusterState,
    request: GangRequest,
    policy: PolicyContext,
    *,
    engine: Engine = "numba",
    nonce: int = 0,
    score_cache: bool = True,
) -> GangPlacement | Unplaceable:
    """Choose nodes and GPUs for all replicas, or none. Does not modify `state` (its score cache aside).

    `nonce` varies the per-node random numbers Random sees (`rand_u64`; other policies get a
    fixed stream and must not read it) between calls; with the same state, request, policy and
    nonce the result is deterministic.
    `score_cache`: reuse policy scores of nodes unchanged since they were last scored for the same
    request shape and policy (never for Random); the result is identical either way.
    """
    problem = _validate(state, request)
    if problem is not None:
        return Unplaceable(INVALID_REQUEST, problem)
    width = max(request.gpus, 1)
    nodes = np.full(request.replicas, NONE, dtype=np.int32)
    gpus = np.full((request.replicas, width), NONE, dtype=np.int32)
    if request.replicas == 0:
        return GangPlacement(nodes=nodes, gpus=gpus)
    diag = np.zeros(K.DIAG_SIZE, dtype=np.int64)
    use_cache = score_cache and policy.code != PolicyCode.RANDOM
    cache = _score_cache(state, request, policy) if use_cache else _NO_CACHE
    kernel = K.place_gang_kernel if engine == "numba" else place_gang_reference
    status = kernel(
        *state.kernel_arrays(),
        np.ascontiguousarray(request.node_mask, dtype=np.bool_),
        np.ascontiguousarray(policy.node_rank, dtype=np.int64),
        request.replicas,
        request.gpus,
        request.gpu_milli if request.gpus else 0,
        request.cpu_milli,
        request.memory_mib,
        request.required_level,
        request.preferred_level,
        int(policy.code),
        policy.typ_cpu,
        policy.typ_milli,
        policy.typ_num,
        policy.typ_model_ok,
        policy.typ_weight,
        np.uint64(rand_base(policy.seed, nonce) if policy.code == PolicyCode.RANDOM else 0),
        state.node_version,
        cache.score,
        cache.stamp,
        use_cache,
        nodes,
        gpus,
        diag,
    )
    if status != K.STATUS_OK:
        return _unplaceable(state, request, int(status), diag)
    return GangPlacement(
        nodes=nodes,
        gpus=gpus,
        level=int(diag[K.DIAG_LEVEL_USED]),
        domain=int(diag[K.DIAG_DOMAIN_USED]),
    )


def apply_placement(state: ClusterState, request: GangRequest, placement: GangPlacement) -> None:
    """Charge a placement to `state` (the cycle calls this once it commits to a binding)."""
    for r in range(request.replicas):
        used = [int(g) for g in placement.gpus[r] if g >= 0]
        state.allocate(int(placement.nodes[r]), used, request.gpu_milli, request.cpu_milli, request.memory_mib)


def release_placement(state: ClusterState, request: GangRequest, placement: GangPlacement) -> None:
    """Give back what `apply_placement` charged (a job ended, or a what-if is rolled back)."""
    for r in range(request.replicas):
        used = [int(g) for g in placement.gpus[r] if g >= 0]
        state.release(int(placement.nodes[r]), used, request.gpu_milli, request.cpu_milli, request.memory_mib)


def replica_placements(state: ClusterState, placement: GangPlacement) -> tuple[ReplicaPlacement, ...]:
    """Translate array indices back to node names for a `Binding`."""
    return tuple(
        ReplicaPlacement(node=state.node_names[int(n)], gpu_indices=tuple(int(g) for g in placement.gpus[r] if g >= 0))
        for r, n in enumerate(placement.nodes)
    )
