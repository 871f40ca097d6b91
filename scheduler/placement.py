"""Gang placement: find a topology-valid home for every replica of a job, or say why there is none.

What it holds: the placement API (`GangRequest`, `GangPlacement`, `Unplaceable`, `place_gang`,
`apply_placement`, `replica_placements`) and the one dispatch point between the compiled kernels
(`placement_kernels.py`) and their pure-Python twin (`placement_reference.py`).

Who calls it: the scheduling cycle (`cycle.py`), the simulators, victim search, `leitstand bench core`.

What it must not do: modify the state in `place_gang` (the kernels charge tentatively and undo),
raise for an unschedulable gang (that is an `Unplaceable` with a stable code and a message a human
can act on), or hold policy logic (the policy's score and GPU choice come from `policy_kernels.py`).

Stable codes: "NoMatchingNodes" (pool / jurisdictions / GPU model / allowed nodes / schedulable
leave no node), "NeverFits" (not even an empty cluster could hold the gang: a replica larger than
every eligible node, a gang larger than all eligible nodes together or than the largest domain of
its required level; no eviction can help), "Insufficient" (the matching nodes together lack free
GPUs, CPU or memory now), "NoTopologyDomain" (no domain of the required level holds the whole gang
now), "Fragmented" (enough room in aggregate, but the greedy fill failed in every domain tried),
"InvalidRequest", "PolicyError" (the policy chose a GPU that does not fit: a bug). "NeverFits" is
worked out from static capacities only when the kernel has failed, never on the success path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler import placement_kernels as K
from leitstand.scheduler.codes import NONE, PolicyCode
from leitstand.scheduler.model import GPU_MILLI, NODE_LEVEL, Job, NodeName, ReplicaPlacement
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
    jurisdictions: frozenset[str] = frozenset()
    """For messages only."""
    allowed_nodes: frozenset[NodeName] | None = None
    """For messages only (the job's node selector / affinity / tolerations; None = every node)."""

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
                jurisdictions=job.jurisdictions,
                gpu_models=job.gpu_models,
                excluded_pools=excluded_pools,
                allowed_nodes=job.allowed_nodes,
                shared=True,
            ),
            required_level=levels.level_index(job.required_level) if job.required_level else NONE,
            preferred_level=levels.level_index(job.preferred_level) if job.preferred_level else NONE,
            gpu_models=tuple(sorted(job.gpu_models)),
            node_pool=job.node_pool,
            jurisdictions=job.jurisdictions,
            allowed_nodes=job.allowed_nodes,
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
NEVER_FITS = "NeverFits"
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


def _label_constraints(request: GangRequest) -> list[str]:
    parts = []
    if request.gpu_models:
        parts.append("GPU model " + "|".join(sorted(request.gpu_models)))
    if request.node_pool is not None:
        parts.append(f"node pool {request.node_pool!r}")
    if request.jurisdictions:
        parts.append("jurisdiction " + "|".join(sorted(request.jurisdictions)))
    return parts


def _constraints(request: GangRequest) -> str:
    parts = _label_constraints(request)
    if request.allowed_nodes is not None:
        count = len(request.allowed_nodes)
        parts.append(f"node selector/affinity/tolerations ({count} allowed node{'s' if count != 1 else ''})")
    return ", ".join(parts)


def _no_matching_nodes(state: ClusterState, request: GangRequest) -> Unplaceable:
    """Which constraint leaves no node: the job's node constraints on their own, or with the labels."""
    where = _constraints(request)
    if request.allowed_nodes is None:
        return Unplaceable(
            NO_MATCHING_NODES,
            f"no schedulable node matches {where or 'the request'}; check the node pool, jurisdiction and GPU model",
        )
    known = state.named_mask(request.allowed_nodes)
    if not known.any():
        return Unplaceable(
            NO_MATCHING_NODES,
            f"no schedulable node matches {where}: the job's node constraints exclude every node; "
            "check its node selector, required node affinity and tolerations against the nodes' labels "
            "and taints",
        )
    allowed = int((known & state.schedulable).sum())
    if allowed == 0:
        count = int(known.sum())
        return Unplaceable(
            NO_MATCHING_NODES,
            f"no schedulable node matches {where}: the {count} node{'s' if count != 1 else ''} the job's "
            "node selector/affinity/tolerations allow are unschedulable (cordoned or not Ready); wait for "
            "one to return, or widen the node constraints",
        )
    labels = ", ".join(_label_constraints(request)) or "a node pool open to its queue"
    return Unplaceable(
        NO_MATCHING_NODES,
        f"no schedulable node matches {where}: none of the {allowed} schedulable node{'s' if allowed != 1 else ''} "
        f"the job's node selector/affinity/tolerations allow has {labels}; relax one or the other",
    )


def _level_name(state: ClusterState, level: int) -> str:
    return str((*state.topology.levels, NODE_LEVEL)[level])


def _request_text(state: ClusterState, request: GangRequest) -> tuple[str, str, Unplaceable | None]:
    """(`_shape`, `_constraints`, `never_fits`) of `request`: what a failure's message says of the
    request itself. They depend only on the request and the state's static arrays, so they are kept
    per request object in `state.fit_cache` (a cycle asks with the same request objects cycle after
    cycle; a failing placement spent ~5 µs making them again)."""
    key = ("text", id(request))
    known = state.fit_cache.get(key)
    if known is not None and known[0] is request:  # (the entry holds the request: its id is not reused)
        return known[1]  # type: ignore[no-any-return]
    text = (_shape(request), _constraints(request), never_fits(state, request))
    if len(state.fit_cache) >= _MAX_FIT_CACHE:
        state.fit_cache.clear()
    state.fit_cache[key] = (request, text)
    return text


def _insufficient_text(state: ClusterState, request: GangRequest, diag: NDArray[np.int64]) -> str:
    """An Insufficient failure's message up to what the nodes lack (`_lacking`)."""
    shape, where, _ = _request_text(state, request)
    of = f" of {where}" if where else ""
    scope = f"the {int(diag[K.DIAG_MATCHING_NODES])} matching nodes{of}"
    if request.required_level >= 0:
        scope = (
            f"the {int(diag[K.DIAG_LABELLED_NODES])} matching nodes{of} with a "
            f"{_level_name(state, request.required_level)} label"
        )
    return f"{shape} does not fit: {scope} hold {int(diag[K.DIAG_TOTAL_REPLICAS])} of {request.replicas} replicas"


def _lacking(cpu: int, memory: int, gpu: int) -> str:
    """The end of an Insufficient failure's message: how many matching nodes lack what (`_said` order)."""
    lacks = []
    if gpu:
        lacks.append(f"{gpu} nodes with too few free GPUs")
    if cpu:
        lacks.append(f"{cpu} nodes with too little free CPU")
    if memory:
        lacks.append(f"{memory} nodes with too little free memory")
    return f" ({'; '.join(lacks)})" if lacks else ""


def _unplaceable(state: ClusterState, request: GangRequest, status: int, diag: NDArray[np.int64]) -> Unplaceable:
    if status == K.STATUS_NO_MATCHING_NODES:
        return _no_matching_nodes(state, request)
    shape, where, never = _request_text(state, request)
    of = f" of {where}" if where else ""
    if status in (K.STATUS_INSUFFICIENT, K.STATUS_NO_TOPOLOGY_DOMAIN) and never is not None:
        return never
    total = int(diag[K.DIAG_TOTAL_REPLICAS])
    if status == K.STATUS_INSUFFICIENT:
        lacking = _lacking(*_said(diag))
        return Unplaceable(INSUFFICIENT, _insufficient_text(state, request, diag) + lacking)
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


_MAX_FIT_CACHE = 1024

MAX_GANG_REPLICAS = 100_000
"""More replicas than this in one gang are refused before anything is sized by them (a 100,000-GPU
factory holds at most 100,000 one-GPU replicas; a gang that cannot fit is told NeverFits first)."""


def never_fits(state: ClusterState, request: GangRequest) -> Unplaceable | None:
    """`NeverFits` when not even an EMPTY cluster could hold the gang inside `request.node_mask`; else None.

    The gang never fits when no eligible node holds one replica (GPUs, CPU or memory capacity),
    when all eligible nodes together hold fewer than `replicas`, or, with a required level, when
    no eligible node carries that level's label or its largest domain holds fewer. Per node the
    count is the kernel's on an idle node (GPUs: 0 if the node has fewer GPUs than a replica asks,
    else ⌊gpu_count · ⌊1000 / gpu_milli⌋ / gpus⌋; CPU and memory: capacity // request), which is an
    upper bound of what any placement can use, so a gang that could fit is never called NeverFits.
    No eviction can help such a gang; the cycle's victim searches skip it.

    Reads only static arrays (GPU counts, CPU and memory capacities, domains) and the mask, so the
    diagnosis is memoised per request shape and mask in `state.fit_cache`. Meant for the failure
    path (`place_gang` calls it when the kernel reports Insufficient or NoTopologyDomain): O(eligible
    nodes) numpy work on a cache miss, hashing the mask's bytes on a hit.
    """
    if request.replicas <= 0:
        return None
    mask = np.ascontiguousarray(request.node_mask, dtype=np.bool_)
    key = (
        request.replicas,
        request.gpus,
        request.gpu_milli if request.gpus else 0,
        request.cpu_milli,
        request.memory_mib,
        request.required_level,
        mask.tobytes(),
    )
    cache = state.fit_cache
    if key in cache:
        found: tuple[str, str] | None = cache[key]
    else:
        found = _empty_cluster_ceiling(state, request, mask)
        if len(cache) >= _MAX_FIT_CACHE:
            cache.clear()
        cache[key] = found
    if found is None:
        return None
    detail, hint = found
    where = _constraints(request)
    eligible = f"; eligible: nodes of {where}" if where else ""
    return Unplaceable(NEVER_FITS, f"never fits, not even on an empty cluster: {detail}{eligible}; {hint}")


def _empty_cluster_ceiling(
    state: ClusterState, request: GangRequest, mask: NDArray[np.bool_]
) -> tuple[str, str] | None:
    """(what does not fit, what to change) when the gang exceeds the idle eligible nodes; else None."""
    nodes = np.flatnonzero(mask)
    if nodes.size == 0:
        return None  # NoMatchingNodes says why
    replicas, gpus = request.replicas, request.gpus
    gpu_count = state.gpu_count[nodes].astype(np.int64)
    cpu = state.cpu_capacity_milli[nodes]
    memory = state.memory_capacity_mib[nodes]
    room = np.full(nodes.size, replicas, dtype=np.int64)
    if gpus > 0:
        per_gpu = GPU_MILLI // max(request.gpu_milli, 1)  # replica slices one GPU holds (1 for whole GPUs)
        np.minimum(room, np.where(gpu_count >= gpus, gpu_count * per_gpu // gpus, 0), out=room)
    if request.cpu_milli > 0:
        np.minimum(room, cpu // request.cpu_milli, out=room)
    if request.memory_mib > 0:
        np.minimum(room, memory // request.memory_mib, out=room)
    whole = gpus > 0 and request.gpu_milli >= GPU_MILLI
    shape = _shape(request)

    if int(room.max()) == 0:
        hint = "no eviction can make room; ask for less per replica or for other nodes"
        if gpus > 0 and int(gpu_count.max()) < gpus:
            what = f"{gpus} GPU{'s' if gpus != 1 else ''}" if whole else f"slices of {gpus} distinct GPUs"
            return f"asks {what} per replica; the largest eligible node has {int(gpu_count.max())}", hint
        if request.cpu_milli > int(cpu.max()):
            return (
                f"asks {_cores(request.cpu_milli)} CPU per replica; the largest eligible node has "
                f"{_cores(int(cpu.max()))}",
                hint,
            )
        if request.memory_mib > int(memory.max()):
            return (
                f"asks {request.memory_mib} MiB memory per replica; the largest eligible node has "
                f"{int(memory.max())} MiB",
                hint,
            )
        return f"no eligible node has the GPUs, CPU and memory of one replica of {shape} at once", hint

    total = int(room.sum())
    if total < replicas:
        n = int(nodes.size)
        scope = f"all {n} eligible node{'s' if n != 1 else ''} together"
        room_text = f"room for {total} of {replicas} replicas even when empty"
        if whole:
            detail = (
                f"{shape} needs {replicas * gpus} GPUs; {scope} have {int(gpu_count.sum())} GPUs ({room_text})"
            )
        else:
            detail = f"{shape}: {scope} have {room_text}"
        return detail, "no eviction can make room; ask for fewer replicas or for more nodes"

    level = request.required_level
    if level < 0:
        return None
    name = _level_name(state, level)
    hint = f"no eviction can make room; ask for fewer replicas or relax the required {name}"
    column = state.domain[nodes, level].astype(np.int64)
    labelled = column >= 0
    if not labelled.any():
        return f"the job requires one {name}, and no eligible node carries a {name} label", hint
    ids = column[labelled]
    n_domains = int(state.domain_count[level])
    dom_room = np.bincount(ids, weights=room[labelled], minlength=n_domains).astype(np.int64)
    dom_gpus = np.bincount(ids, weights=gpu_count[labelled], minlength=n_domains).astype(np.int64)
    if int(dom_room.max()) >= replicas:
        return None
    best = int(np.lexsort((-dom_gpus, -dom_room))[0])  # most room, then most GPUs, then lowest id
    domain_name = state.domain_names[level][best]
    room_text = f"room for {int(dom_room[best])} of {replicas} replicas even when empty"
    if whole:
        detail = (
            f"{shape} needs {replicas * gpus} GPUs in one {name}; the largest {name} ({domain_name}) has "
            f"{int(dom_gpus[best])} GPUs on eligible nodes ({room_text})"
        )
    else:
        detail = f"{shape} needs one {name}; the largest {name} ({domain_name}) has {room_text}"
    return detail, hint


def _cores(milli: int) -> str:
    return f"{milli / 1000:g} cores"


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
    remember_failure: bool = False,
) -> GangPlacement | Unplaceable:
    """Choose nodes and GPUs for all replicas, or none. Does not modify `state` (its caches aside).

    `nonce` varies the per-node random numbers Random sees (`rand_u64`; other policies get a
    fixed stream and must not read it) between calls; with the same state, request, policy and
    nonce the result is deterministic.
    `score_cache`: reuse policy scores of nodes unchanged since they were last scored for the same
    request shape and policy (never for Random); the result is identical either way.
    `remember_failure` (with `score_cache` and the compiled engine): a one-replica request that fits
    no node is remembered with the node stamps it was judged at, and asked again (the same object)
    only the nodes changed since are judged (`_insufficient_again`); the result is identical either
    way. For callers that ask with the same request objects again and again, as allocate does every
    cycle for the shapes that wait; a victim search's per-domain requests would only fill the memo.
    """
    remember = remember_failure and score_cache and engine == "numba"
    if remember:
        # Only requests remembered here are found: validated then, the same object since.
        known = _insufficient_again(state, request)
        if known is not None:
            return known
    problem = _validate(state, request)
    if problem is not None:
        return Unplaceable(INVALID_REQUEST, problem)
    remember = remember and _one_replica_test(request)
    width = max(request.gpus, 1)
    if request.replicas > MAX_GANG_REPLICAS or width > state.max_node_gpus:
        # Sized by the request, the answer's arrays would take gigabytes for a gang of 2^31 replicas
        # (or GPUs): say why it cannot be placed before any of them exists.
        never = never_fits(state, request)
        if never is not None:
            return never
        if request.replicas > MAX_GANG_REPLICAS:
            return Unplaceable(INVALID_REQUEST, f"a gang of {request.replicas} replicas is more than one "
                                                f"placement handles ({MAX_GANG_REPLICAS}); split the job")
    nodes = np.empty(request.replicas, dtype=np.int32)  # empty + fill: np.full's Python wrapper costs more
    nodes.fill(NONE)
    gpus = np.empty((request.replicas, width), dtype=np.int32)
    gpus.fill(NONE)
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
        failure = _unplaceable(state, request, int(status), diag)
        if remember and status == K.STATUS_INSUFFICIENT and failure.code == INSUFFICIENT:
            _remember_insufficient(state, request, diag, failure)
        return failure
    return GangPlacement(
        nodes=nodes,
        gpus=gpus,
        level=int(diag[K.DIAG_LEVEL_USED]),
        domain=int(diag[K.DIAG_DOMAIN_USED]),
    )


_MAX_FAILURES = 256
"""Failures kept in `ClusterState.fail_cache` at most (then it starts over)."""


def _one_replica_test(request: GangRequest) -> bool:
    """Is the kernel's verdict on `request` a per-node test? One replica, no required level, and not
    several slices per replica: a node holds it exactly when it passes the kernel's first test."""
    return (
        request.replicas == 1
        and request.required_level == NONE
        and not (request.gpus > 1 and request.gpu_milli < GPU_MILLI)
    )


@dataclass(slots=True)
class _Insufficient:
    """A one-replica request that fit no node, as judged at `stamps` (`place_gang`'s failure memo)."""

    request: GangRequest
    """The very request (kept so that its `id()`, the key, is not reused)."""
    stamps: NDArray[np.int64]
    """`node_version` of every node when it was last judged."""
    mask: NDArray[np.bool_]
    lack: NDArray[np.int8]
    """Per matching node what it lacks (bit 0 CPU, 1 memory, 2 GPUs), as the kernel counts it."""
    counts: NDArray[np.int64]
    """Matching nodes lacking CPU, memory, GPUs (the diagnosis' three counts)."""
    diag: NDArray[np.int64]
    """The kernel's diagnosis, its three counts those `failure` says (`counts` may have moved on in
    a call that found room)."""
    failure: Unplaceable
    said: list[int]
    """The three counts of `diag` as ints (`_said`), compared with `counts` on every ask."""
    text: str
    """`failure`'s message up to what the nodes lack (`_insufficient_text`): the same for every
    count, so a failure with new counts only writes the end anew (`_lacking`)."""


def _remember_insufficient(
    state: ClusterState, request: GangRequest, diag: NDArray[np.int64], failure: Unplaceable
) -> None:
    """Keep the kernel's Insufficient verdict on a one-replica request with what each node lacks
    (judged by `still_insufficient_kernel` from no stamps at all: every node once)."""
    known = _Insufficient(
        request,
        np.full(state.n_nodes, -1, dtype=np.int64),  # (stamps start at 1: every node is judged)
        np.ascontiguousarray(request.node_mask, dtype=np.bool_),
        np.zeros(state.n_nodes, dtype=np.int8),
        np.zeros(3, dtype=np.int64),
        diag.copy(),
        failure,
        _said(diag),
        _insufficient_text(state, request, diag),
    )
    if not _judge(state, request, known) or known.counts.tolist() != known.said:
        return  # not the kernel's own verdict: do not remember what cannot be redone
    cache = state.fail_cache
    if len(cache) >= _MAX_FAILURES:
        cache.clear()
    cache[id(request)] = known


def _judge(state: ClusterState, request: GangRequest, known: _Insufficient) -> bool:
    return bool(
        K.still_insufficient_kernel(
            state.node_version,
            known.stamps,
            known.mask,
            state.cpu_free_milli,
            state.memory_free_mib,
            state.gpu_whole_free,
            state.gpu_max_free_milli,
            request.gpus,
            request.gpu_milli if request.gpus else 0,
            request.cpu_milli,
            request.memory_mib,
            known.lack,
            known.counts,
        )
    )


def _insufficient_again(state: ClusterState, request: GangRequest) -> Unplaceable | None:
    """The remembered failure of `request` (this object) when it still fits no node, else None.

    Only nodes whose stamp changed since are judged (`still_insufficient_kernel`: a ~1 µs loop and
    one small call, where the full placement call costs ~20 µs); what they lack updates the counts,
    and a failure with the new counts is made when they changed. A node's stamp changes with every
    change of its free resources (`ClusterState.node_version`, unique across copies), so a node
    with the stamp it was judged at still lacks what it lacked."""
    known: _Insufficient | None = state.fail_cache.get(id(request))
    if known is None or known.request is not request or known.stamps.shape[0] != state.n_nodes:
        return None
    if not _judge(state, request, known):
        return None
    now = known.counts.tolist()
    if now != known.said:  # what `_unplaceable` makes of the diagnosis with the new counts
        diag = known.diag
        diag[K.DIAG_LACK_CPU], diag[K.DIAG_LACK_MEMORY], diag[K.DIAG_LACK_GPU] = now
        known.failure = Unplaceable(INSUFFICIENT, known.text + _lacking(*now))
        known.said = now
    return known.failure


def _said(diag: NDArray[np.int64]) -> list[int]:
    """The diagnosis' counts of matching nodes short of CPU, memory and GPUs (`_Insufficient.counts`' order)."""
    return [int(diag[K.DIAG_LACK_CPU]), int(diag[K.DIAG_LACK_MEMORY]), int(diag[K.DIAG_LACK_GPU])]


def _replicas(placement: GangPlacement, replicas: int | None = None) -> list[tuple[int, list[int]]]:
    """(node index, GPU indices) per replica as plain ints (one `tolist` per array, not per element)."""
    nodes: list[int] = placement.nodes.tolist()
    rows: list[list[int]] = placement.gpus.tolist()
    count = len(nodes) if replicas is None else replicas
    return [(nodes[r], [g for g in rows[r] if g >= 0]) for r in range(count)]


def apply_placement(state: ClusterState, request: GangRequest, placement: GangPlacement) -> None:
    """Charge a placement to `state` (the cycle calls this once it commits to a binding)."""
    for node, used in _replicas(placement, request.replicas):
        state.allocate(node, used, request.gpu_milli, request.cpu_milli, request.memory_mib)


def release_placement(state: ClusterState, request: GangRequest, placement: GangPlacement) -> None:
    """Give back what `apply_placement` charged (a job ended, or a what-if is rolled back)."""
    for node, used in _replicas(placement, request.replicas):
        state.release(node, used, request.gpu_milli, request.cpu_milli, request.memory_mib)


def replica_placements(state: ClusterState, placement: GangPlacement) -> tuple[ReplicaPlacement, ...]:
    """Translate array indices back to node names for a `Binding`."""
    names = state.node_names
    return tuple(ReplicaPlacement(node=names[node], gpu_indices=tuple(used)) for node, used in _replicas(placement))
