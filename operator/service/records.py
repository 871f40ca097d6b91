"""Slim records of the Pods and Nodes the service follows, and the transforms from raw API JSON.

Called by the informers (`informer.Informer(transform=...)`) for every watch event, so the transforms
are the hot path: plain dict reads, no typed models, no copies of the body. A record holds only what
scheduling needs; two records compare equal when nothing the scheduler cares about changed, which is
how a KWOK node heartbeat or a pod condition update costs nothing downstream.

Conventions of the pods Leitstand makes (labels and annotations) are defined here, once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from leitstand.scheduler.model import GPU_MILLI, Node, NodeName

GPU_RESOURCE = "nvidia.com/gpu"

JOB_LABEL = "leitstand.dev/job"
"""On every replica pod: the TrainingJob's name (plain pods: absent)."""
QUEUE_LABEL = "leitstand.dev/queue"
"""On replica pods and on plain pods that ask Leitstand to schedule them."""
ROLE_LABEL = "leitstand.dev/role"
"""`replica` on a TrainingJob's pods, `gpu-reservation` on the pods that hold a shared GPU."""
REPLICA_LABEL = "leitstand.dev/replica"
ROLE_REPLICA = "replica"
ROLE_RESERVATION = "gpu-reservation"

ASSIGNED_GPUS = "leitstand.dev/gpus"
"""Comma-separated GPU indices on the node, written when the pod is created for a placement."""
GPU_FRACTION = "leitstand.dev/gpu-fraction"
"""A shared-GPU pod's fraction of one GPU ("0.5"); such a pod requests no nvidia.com/gpu."""
PLANNED_NODE = "leitstand.dev/node"
"""The node a replica pod was created for (before it is bound)."""
PRIORITY_ANNOTATION = "leitstand.dev/priority"
PREEMPTIBLE_ANNOTATION = "leitstand.dev/preemptible"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2Gi", "1.5", 8) as a float in base units."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise QuantityError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = float(match.group(1)), match.group(2) or ""
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def cpu_milli(value: Any) -> int:
    return round(quantity(value) * 1000)


def memory_mib(value: Any) -> int:
    return int(quantity(value) // 2**20)


def timestamp(text: str | None) -> float:
    """RFC 3339 ("2026-12-05T20:17:19Z") → Unix seconds; 0.0 when absent."""
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    node: str
    """spec.nodeName; "" while unbound."""
    phase: str
    scheduler: str
    deleting: bool
    role: str
    job: str
    """The TrainingJob name (label `leitstand.dev/job`); "" for other pods."""
    owner_uid: str
    """uid of the owning TrainingJob; "" for other pods."""
    queue: str
    replica: int
    gpus: int
    """Whole GPUs requested (nvidia.com/gpu)."""
    fraction_milli: int
    """Milli-GPU of one shared GPU (fraction pods); 0 otherwise."""
    assigned: tuple[int, ...]
    planned_node: str
    cpu_milli: int
    memory_mib: int
    created: float
    started: float
    """status.startTime (Unix seconds); 0.0 until the kubelet (KWOK) starts the pod."""
    finished: float
    """The latest container termination time; 0.0 while running."""
    exit_reason: str
    priority: int | None
    preemptible: bool | None
    labels: tuple[tuple[str, str], ...]
    """Only for plain pods Leitstand schedules (node selectors and such are read from `spec`)."""
    spec_constraints: Any
    """nodeSelector, affinity and tolerations of a pending pod Leitstand schedules (else None)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def holds_resources(self) -> bool:
        """Bound and not finished: the node's resources are taken (terminating pods included)."""
        return bool(self.node) and not self.terminal

    @property
    def gpu_milli(self) -> int:
        return self.fraction_milli if self.fraction_milli else GPU_MILLI


def _requests(spec: Mapping[str, Any]) -> tuple[int, int, int]:
    """(nvidia.com/gpu, CPU milli, memory MiB) a pod asks for: containers summed, init max, overhead."""
    gpus = cpu = mem = 0
    for container in spec.get("containers") or ():
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = resources.get("requests") or {}
        gpu = requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE))
        if gpu is not None:
            gpus += int(quantity(gpu))
        c = requests.get("cpu", limits.get("cpu"))
        m = requests.get("memory", limits.get("memory"))
        if c is not None:
            cpu += cpu_milli(c)
        if m is not None:
            mem += memory_mib(m)
    for container in spec.get("initContainers") or ():
        resources = container.get("resources") or {}
        requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        if GPU_RESOURCE in requests:
            gpus = max(gpus, int(quantity(requests[GPU_RESOURCE])))
        if "cpu" in requests:
            cpu = max(cpu, cpu_milli(requests["cpu"]))
        if "memory" in requests:
            mem = max(mem, memory_mib(requests["memory"]))
    overhead = spec.get("overhead") or {}
    if "cpu" in overhead:
        cpu += cpu_milli(overhead["cpu"])
    if "memory" in overhead:
        mem += memory_mib(overhead["memory"])
    return gpus, cpu, mem


def pod_requests(spec: Mapping[str, Any]) -> tuple[int, int, int]:
    """Public face of the request sum: also used for a TrainingJob's template, so charges match."""
    return _requests(spec)


def _bool(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.strip().lower() == "true"


def pod_record(raw: Mapping[str, Any], scheduler_name: str = "leitstand") -> PodRecord | None:
    """The slim record of a pod (every pod of the cluster: all of them can hold GPUs)."""
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    try:
        gpus, cpu, mem = _requests(spec)
    except (QuantityError, ValueError):
        gpus, cpu, mem = 0, 0, 0
    fraction_milli = 0
    fraction = annotations.get(GPU_FRACTION)
    if fraction is not None:
        try:
            fraction_milli = round(float(fraction) * GPU_MILLI)
        except ValueError:
            fraction_milli = 0
    assigned: tuple[int, ...] = ()
    text = annotations.get(ASSIGNED_GPUS)
    if text:
        try:
            assigned = tuple(int(g) for g in text.split(",") if g.strip())
        except ValueError:
            assigned = ()
    owner_uid = ""
    job = labels.get(JOB_LABEL, "")
    if job:
        for ref in meta.get("ownerReferences") or ():
            if ref.get("kind") == "TrainingJob":
                owner_uid = ref.get("uid", "")
                break
    finished = 0.0
    exit_reason = ""
    for cs in status.get("containerStatuses") or ():
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            finished = max(finished, timestamp(terminated.get("finishedAt")))
            if terminated.get("exitCode"):
                exit_reason = f"container {cs.get('name')} exited with code {terminated.get('exitCode')}" + (
                    f" ({terminated['reason']})" if terminated.get("reason") else ""
                )
    scheduler = spec.get("schedulerName", "default-scheduler")
    ours_pending = scheduler == scheduler_name and not spec.get("nodeName") and not job
    priority_text = annotations.get(PRIORITY_ANNOTATION)
    try:
        priority = int(priority_text) if priority_text is not None else spec.get("priority")
    except ValueError:
        priority = None
    replica_text = labels.get(REPLICA_LABEL, "0")
    return PodRecord(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        node=spec.get("nodeName") or "",
        phase=status.get("phase") or "Pending",
        scheduler=scheduler,
        deleting=bool(meta.get("deletionTimestamp")),
        role=labels.get(ROLE_LABEL, ""),
        job=job,
        owner_uid=owner_uid,
        queue=labels.get(QUEUE_LABEL, ""),
        replica=int(replica_text) if replica_text.isdigit() else 0,
        gpus=0 if fraction_milli else gpus,
        fraction_milli=fraction_milli,
        assigned=assigned,
        planned_node=annotations.get(PLANNED_NODE, ""),
        cpu_milli=cpu,
        memory_mib=mem,
        created=timestamp(meta.get("creationTimestamp")),
        started=timestamp(status.get("startTime")),
        finished=finished,
        exit_reason=exit_reason,
        priority=priority,
        preemptible=_bool(annotations.get(PREEMPTIBLE_ANNOTATION)),
        labels=tuple(sorted(labels.items())) if ours_pending else (),
        spec_constraints=(
            freeze(
                {
                    "nodeSelector": spec.get("nodeSelector"),
                    "affinity": spec.get("affinity"),
                    "tolerations": spec.get("tolerations"),
                    "priorityClassName": spec.get("priorityClassName"),
                }
            )
            if ours_pending
            else None
        ),
    )


def copy_json(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists, scalars): `copy.deepcopy` without its memo and
    dispatch, several times cheaper on the status and template dicts copied per job."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def freeze(value: Any) -> Any:
    """Hashable, comparable copy of JSON (dicts become sorted tuples of pairs)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of `freeze` for the shapes it produces (pairs become dicts again)."""
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: thaw(v) for k, v in value}
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node: Node
    """The core's view (capacity, model, pool, jurisdiction, topology, schedulable)."""
    labels: tuple[tuple[str, str], ...]
    taints: tuple[Taint, ...]
    ready: bool
    unschedulable: bool

    @property
    def name(self) -> str:
        return str(self.node.name)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class NodeLabels:
    """Which node labels carry the model, pool, jurisdiction and topology (from the config)."""

    gpu_model: str = "nvidia.com/gpu.product"
    node_pool: str = "leitstand.dev/node-pool"
    jurisdiction: str = "leitstand.dev/jurisdiction"
    topology: tuple[str, ...] = ("leitstand.dev/spine", "leitstand.dev/rack", "leitstand.dev/nvlink-domain")
    default_pool: str = "default"


def node_record(raw: Mapping[str, Any], keys: NodeLabels = NodeLabels()) -> NodeRecord | None:
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    allocatable: Mapping[str, Any] = status.get("allocatable") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    unschedulable = bool(spec.get("unschedulable"))
    try:
        gpus = int(quantity(allocatable.get(GPU_RESOURCE, 0)))
        cpu = cpu_milli(allocatable.get("cpu", 0))
        mem = memory_mib(allocatable.get("memory", 0))
    except (QuantityError, ValueError):
        gpus, cpu, mem = 0, 0, 0
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", ""))
        for t in spec.get("taints") or ()
    )
    node = Node(
        name=NodeName(meta.get("name", "")),
        gpus=gpus,
        cpu_milli=cpu,
        memory_mib=mem,
        gpu_model=labels.get(keys.gpu_model, ""),
        node_pool=labels.get(keys.node_pool, keys.default_pool),
        jurisdiction=labels.get(keys.jurisdiction, ""),
        topology=tuple(labels.get(key, "") for key in keys.topology),
        schedulable=ready and not unschedulable,
    )
    return NodeRecord(node=node, labels=tuple(sorted(labels.items())), taints=taints, ready=ready,
                      unschedulable=unschedulable)
