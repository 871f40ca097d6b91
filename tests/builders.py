"""Test builders with defaults: one line builds a node, a job, a queue, a cluster or a snapshot.

Who uses it: every test tier (unit, property, scenario loader, parity). Import as
`from builders import make_job` (tests/conftest.py puts tests/ on sys.path).

Keep it simple and stable: other engineers' tests depend on these signatures. Add keyword
arguments with defaults; never reorder or rename existing ones. Amounts given in GPUs here
(`quota_gpus=2.5`, `gpu=0.25`) become milli-GPU in the model values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from leitstand.scheduler.model import (
    GPU_MILLI,
    Job,
    JobId,
    Node,
    NodeName,
    Queue,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    Snapshot,
    Topology,
)

DEFAULT_CPU_MILLI = 224_000
"""A DGX B200: 2 × 56 cores, 224 hardware threads."""
DEFAULT_MEMORY_MIB = 2 * 1024 * 1024
"""A DGX B200: 2 TiB."""


def gpus_to_milli(gpus: float) -> int:
    """GPUs (may be fractional) → milli-GPU, rounded to the nearest milli."""
    return round(gpus * float(GPU_MILLI))


def make_node(
    name: str = "node-0",
    gpus: int = 8,
    *,
    model: str = "B200",
    cpu_milli: int = DEFAULT_CPU_MILLI,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    pool: str = "default",
    jurisdiction: str = "",
    topology: Sequence[str] = (),
    schedulable: bool = True,
) -> Node:
    """A node; `topology` is one domain name per `Topology.levels` entry, top-down."""
    return Node(
        name=NodeName(name),
        gpus=gpus,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpu_model=model,
        node_pool=pool,
        jurisdiction=jurisdiction,
        topology=tuple(topology),
        schedulable=schedulable,
    )


def make_job(
    id: str = "job-0",
    queue: str = "a",
    gpus: int = 8,
    replicas: int = 1,
    *,
    gpu: float | None = None,
    priority: int = 50,
    preemptible: bool | None = None,
    required: str | None = None,
    preferred: str | None = None,
    models: Iterable[str] = (),
    pool: str | None = None,
    jurisdiction: str | None = None,
    cpu_milli: int = 0,
    memory_mib: int = 0,
    created_at: float = 0.0,
    jurisdictions: Iterable[str] = (),
    allowed_nodes: Iterable[str] | None = None,
) -> Job:
    """A gang of `replicas` × `gpus` whole GPUs; `gpu=0.25` makes each replica one 250-milli slice.

    Data residency: `jurisdiction="eu"` (one) or `jurisdictions=["eu-de", "eu-fr"]` (any of them);
    both are merged. `allowed_nodes=["n0", "n1"]`: only these nodes (None = every node).
    """
    if gpu is not None:
        if not 0 < gpu <= 1:
            raise ValueError(f"make_job: gpu={gpu} must be a fraction in (0, 1]; use gpus=N for whole GPUs")
        gpus, gpu_milli = 1, gpus_to_milli(gpu)
    else:
        gpu_milli = GPU_MILLI
    return Job(
        id=JobId(id),
        queue=QueueName(queue),
        replicas=replicas,
        gpus=gpus,
        gpu_milli=gpu_milli,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpu_models=frozenset(models),
        required_level=required,
        preferred_level=preferred,
        node_pool=pool,
        jurisdictions=frozenset(jurisdictions) | ({jurisdiction} if jurisdiction is not None else set()),
        allowed_nodes=None if allowed_nodes is None else frozenset(NodeName(n) for n in allowed_nodes),
        priority=priority,
        preemptible=preemptible,
        created_at=created_at,
    )


def make_queue(
    name: str = "a",
    parent: str | None = None,
    *,
    quota_gpus: float = 0.0,
    limit_gpus: float | None = None,
    weight: float = 1.0,
    priority: int = 100,
    pool: str | None = None,
    created_at: float = 0.0,
) -> Queue:
    """A queue; amounts in GPUs (fractional allowed), `limit_gpus=None` = no cap."""
    return Queue(
        name=QueueName(name),
        parent=QueueName(parent) if parent is not None else None,
        quota_milli=gpus_to_milli(quota_gpus),
        limit_milli=None if limit_gpus is None else gpus_to_milli(limit_gpus),
        over_quota_weight=weight,
        priority=priority,
        node_pool=pool,
        created_at=created_at,
    )


def make_cluster(
    n_nodes: int = 4,
    gpus: int = 8,
    *,
    racks: int = 1,
    spines: int = 1,
    model: str = "B200",
    pool: str = "default",
    jurisdiction: str = "",
    prefix: str = "n",
) -> tuple[tuple[Node, ...], Topology]:
    """`n_nodes` identical nodes in `spines` spines of `racks` racks each; levels ("spine", "rack").

    Nodes fill racks in order, ceil(n_nodes / (spines × racks)) per rack, so consecutive nodes share a
    rack. Names: nodes f"{prefix}{i}" (n0, n1, ...), racks r0, r1, ... (numbered across spines),
    spines s0, s1, ...; rack k sits under spine k // racks.
    """
    total_racks = racks * spines
    per_rack = max(1, -(-n_nodes // total_racks))
    nodes = []
    for i in range(n_nodes):
        rack = min(i // per_rack, total_racks - 1)
        spine = rack // racks
        nodes.append(
            make_node(
                f"{prefix}{i}",
                gpus,
                model=model,
                pool=pool,
                jurisdiction=jurisdiction,
                topology=(f"s{spine}", f"r{rack}"),
            )
        )
    return tuple(nodes), Topology(levels=("spine", "rack"))


def make_running(
    job: Job,
    placements: Sequence[tuple[str, Sequence[int]]],
    *,
    started_at: float = 0.0,
) -> RunningJob:
    """A running job: one (node name, GPU indices) pair per replica."""
    if len(placements) != job.replicas:
        raise ValueError(f"make_running: {job.id} has {job.replicas} replicas but {len(placements)} placements")
    return RunningJob(
        job=job,
        placements=tuple(ReplicaPlacement(NodeName(n), tuple(g)) for n, g in placements),
        started_at=started_at,
    )


def make_snapshot(
    nodes: Sequence[Node] | None = None,
    queues: Sequence[Queue] | None = None,
    pending: Sequence[Job] = (),
    running: Sequence[RunningJob] = (),
    *,
    topology: Topology | None = None,
    now: float = 0.0,
    usage_milli_seconds: Mapping[str, float] | None = None,
) -> Snapshot:
    """A snapshot; defaults: `make_cluster()` (4 × 8 B200, one rack) and one queue "a" with no quota."""
    if nodes is None:
        nodes, default_topology = make_cluster()
        topology = topology or default_topology
    return Snapshot(
        nodes=tuple(nodes),
        queues=tuple(queues) if queues is not None else (make_queue("a"),),
        pending=tuple(pending),
        running=tuple(running),
        topology=topology or Topology(),
        now=now,
        usage_milli_seconds={QueueName(k): v for k, v in (usage_milli_seconds or {}).items()},
    )
