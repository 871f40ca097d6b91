"""TrainingJobs, Queues and plain pods as the core sees them, and the pods Leitstand makes for a placement.

Called by `loop` every cycle: raw API JSON in (kopf hands over the TrainingJob and Queue bodies,
the pod informer the pod records), frozen `leitstand.scheduler.model` values out; and, when the core
places a gang, the replica pod manifests the binder creates. Nothing here talks to the API server or
decides anything: a spec the schema let through but the service cannot use (an unknown priority
class, a topology level the service is not configured with) is a `SpecError` naming the field, which
the loop turns into a pending reason on the object.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from leitstand.operator.service.records import (
    ASSIGNED_GPUS,
    GPU_FRACTION,
    GPU_RESOURCE,
    JOB_LABEL,
    PLANNED_NODE,
    PRIORITY_ANNOTATION,
    QUEUE_LABEL,
    REPLICA_LABEL,
    ROLE_LABEL,
    ROLE_REPLICA,
    PodRecord,
    copy_json,
    pod_requests,
    timestamp,
)
from leitstand.scheduler.model import (
    GPU_MILLI,
    NODE_LEVEL,
    Job,
    JobId,
    ModelQuota,
    NodeName,
    Queue,
    QueueName,
    ReplicaPlacement,
)

GROUP = "leitstand.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_PRIORITY_CLASS = "leitstand-train"


class SpecError(ValueError):
    """A TrainingJob or Queue the service cannot use; `field` is its path, the message says the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class PriorityClassInfo:
    value: int
    preemptible: bool | None
    """From the class's `leitstand.dev/preemptible` annotation; None = the rule value < 100."""


@dataclass(frozen=True, slots=True)
class TrainingJobSpec:
    namespace: str
    name: str
    uid: str
    queue: str
    replicas: int
    gpus: int
    """Devices per replica (1 for a fraction)."""
    gpu_milli: int
    """Milli-GPU of each device: 1000 for whole GPUs, the fraction otherwise."""
    gpu_model: str | None
    required: str | None
    preferred: str | None
    priority_class: str
    preemptible: bool | None
    data_residency: frozenset[str]
    node_pool: str | None
    max_runtime_seconds: float | None
    backoff_limit: int
    template: Mapping[str, Any]
    cpu_milli: int
    memory_mib: int
    created: float
    min_replicas: int | None = None
    """Elastic gang (`spec.minReplicas` below `spec.replicas`): starts with at least this many replicas,
    grows toward `replicas` on free GPUs, is shrunk toward it before it is evicted whole. None: rigid."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_elastic(self) -> bool:
        return self.min_replicas is not None and self.min_replicas < self.replicas

    @property
    def is_fraction(self) -> bool:
        return self.gpu_milli < GPU_MILLI

    @property
    def total_milli(self) -> int:
        return self.replicas * self.gpus * self.gpu_milli


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(field, f"expected a number, got {value!r}")
    return float(value)


def _int(value: Any, field: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(field, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpecError(field, f"expected a string, got {value!r}")
    return value


def parse_trainingjob(body: Mapping[str, Any], levels: tuple[str, ...]) -> TrainingJobSpec:
    """Validate what the schema cannot (levels of this service's topology) and read the spec."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    queue = _optional_str(spec.get("queue"), "spec.queue")
    if queue is None:
        raise SpecError("spec.queue", "required: name the leaf Queue this job is charged to")
    replicas = _int(spec.get("replicas", 1), "spec.replicas", 1)
    min_replicas = None
    if spec.get("minReplicas") is not None:
        min_replicas = _int(spec["minReplicas"], "spec.minReplicas", 1)
        if min_replicas > replicas:
            raise SpecError("spec.minReplicas", f"{min_replicas} is more than spec.replicas ({replicas}): ask for 1 "
                                                f"to {replicas}, or leave it out for a gang that starts whole")
    if "gpus" in spec and "gpuFraction" in spec:
        raise SpecError("spec.gpuFraction", "set either spec.gpus (whole GPUs) or spec.gpuFraction, not both")
    if "gpuFraction" in spec:
        fraction = _number(spec["gpuFraction"], "spec.gpuFraction")
        milli = round(fraction * GPU_MILLI)
        if not 0 < milli < GPU_MILLI:
            raise SpecError("spec.gpuFraction", f"{fraction} is {milli} thousandths of a GPU (GPUs are counted "
                                                f"in thousandths): ask for 0.001 to 0.999, or set spec.gpus")
        gpus, gpu_milli = 1, milli
    else:
        gpus, gpu_milli = _int(spec.get("gpus", 0), "spec.gpus"), GPU_MILLI
    known = (*levels, NODE_LEVEL)
    topology = spec.get("topology") or {}
    required = _optional_str(topology.get("required"), "spec.topology.required")
    preferred = _optional_str(topology.get("preferred"), "spec.topology.preferred")
    for field, level in (("spec.topology.required", required), ("spec.topology.preferred", preferred)):
        if level is not None and level not in known:
            raise SpecError(field, f"unknown topology level {level!r}; this cluster has {', '.join(known)}")
    residency = spec.get("dataResidency") or []
    if not isinstance(residency, list) or not all(isinstance(r, str) and r for r in residency):
        raise SpecError("spec.dataResidency", "expected a list of jurisdiction names, e.g. [eu-de]")
    max_runtime = spec.get("maxRuntimeSeconds")
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    if not pod_spec.get("containers"):
        raise SpecError("spec.template.spec.containers", "the pod template needs at least one container")
    try:
        _gpus, cpu, mem = pod_requests(pod_spec)
    except ValueError as exc:
        raise SpecError("spec.template.spec.containers[*].resources", str(exc)) from None
    preemptible = spec.get("preemptible")
    return TrainingJobSpec(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        queue=queue,
        replicas=replicas,
        gpus=gpus,
        gpu_milli=gpu_milli,
        gpu_model=_optional_str(spec.get("gpuModel"), "spec.gpuModel"),
        required=required,
        preferred=preferred,
        priority_class=_optional_str(spec.get("priorityClassName"), "spec.priorityClassName") or DEFAULT_PRIORITY_CLASS,
        preemptible=preemptible if isinstance(preemptible, bool) else None,
        data_residency=frozenset(residency),
        node_pool=_optional_str(spec.get("nodePool"), "spec.nodePool"),
        max_runtime_seconds=None if max_runtime is None else _number(max_runtime, "spec.maxRuntimeSeconds"),
        backoff_limit=_int(spec.get("backoffLimit", 0), "spec.backoffLimit"),
        template=template,
        cpu_milli=cpu,
        memory_mib=mem,
        created=timestamp(meta.get("creationTimestamp")),
        min_replicas=min_replicas,
    )


def core_job(
    spec: TrainingJobSpec,
    priority: PriorityClassInfo,
    queued_at: float,
    allowed_nodes: frozenset[NodeName] | None,
    replicas: int | None = None,
) -> Job:
    """The gang as the core sees it (`replicas` overrides the count, for a gang partly finished: it is
    then rigid at that count; else an elastic job carries its minimum)."""
    return Job(
        id=JobId(spec.key),
        queue=QueueName(spec.queue),
        replicas=spec.replicas if replicas is None else replicas,
        min_replicas=spec.min_replicas if replicas is None and spec.is_elastic else None,
        gpus=spec.gpus,
        gpu_milli=spec.gpu_milli,
        cpu_milli=spec.cpu_milli,
        memory_mib=spec.memory_mib,
        gpu_models=frozenset({spec.gpu_model}) if spec.gpu_model else frozenset(),
        required_level=spec.required,
        preferred_level=spec.preferred,
        node_pool=spec.node_pool,
        jurisdictions=spec.data_residency,
        priority=priority.value,
        preemptible=spec.preemptible if spec.preemptible is not None else priority.preemptible,
        created_at=queued_at,
        allowed_nodes=allowed_nodes,
    )


def plain_pod_job_id(pod: PodRecord) -> JobId:
    """Plain pods are single-replica jobs; "/pod/" keeps their ids apart from TrainingJobs'."""
    return JobId(f"{pod.namespace}/pod/{pod.name}")


def plain_pod_job(pod: PodRecord, allowed_nodes: frozenset[NodeName] | None) -> Job:
    fraction = pod.fraction_milli
    priority = pod.priority if pod.priority is not None else 50
    return Job(
        id=plain_pod_job_id(pod),
        queue=QueueName(pod.queue),
        replicas=1,
        gpus=1 if fraction else pod.gpus,
        gpu_milli=fraction if fraction else GPU_MILLI,
        cpu_milli=pod.cpu_milli,
        memory_mib=pod.memory_mib,
        priority=priority,
        preemptible=pod.preemptible,
        created_at=pod.created,
        allowed_nodes=allowed_nodes,
    )


@dataclass(frozen=True, slots=True)
class QueueSpec:
    queue: Queue
    namespaces: frozenset[str]
    """Namespaces allowed to submit; empty = any."""


def parse_queue(body: Mapping[str, Any]) -> QueueSpec:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name = str(meta.get("name", ""))
    gpu = spec.get("gpu") or {}

    def milli(key: str, amounts: Mapping[str, Any] = gpu, where: str = "spec.gpu") -> int | None:
        if amounts.get(key) is None:
            return None
        value = _number(amounts[key], f"{where}.{key}")
        if value < 0:
            raise SpecError(f"{where}.{key}", f"must be >= 0, got {value}")
        return round(value * GPU_MILLI)

    models = gpu.get("models") or {}
    if not isinstance(models, Mapping):
        raise SpecError(
            "spec.gpu.models", f"expected a map of GPU model to {{quota, limit, overQuotaWeight}}, got {models!r}"
        )
    model_quotas = []
    for model, entry in sorted(models.items()):
        where = f"spec.gpu.models.{model}"
        if not isinstance(entry, Mapping):
            raise SpecError(where, f"expected {{quota, limit, overQuotaWeight}}, got {entry!r}")
        model_weight = entry.get("overQuotaWeight")
        model_quotas.append(
            ModelQuota(
                model=str(model),
                quota_milli=milli("quota", entry, where) or 0,
                limit_milli=milli("limit", entry, where),
                over_quota_weight=None if model_weight is None else _number(model_weight, f"{where}.overQuotaWeight"),
            )
        )

    weight = gpu.get("overQuotaWeight", 1.0)
    priority = spec.get("priority", 100)
    namespaces = spec.get("namespaces") or []
    return QueueSpec(
        queue=Queue(
            name=QueueName(name),
            parent=QueueName(spec["parent"]) if spec.get("parent") else None,
            quota_milli=milli("quota") or 0,
            limit_milli=milli("limit"),
            over_quota_weight=_number(weight, "spec.gpu.overQuotaWeight"),
            priority=_int(priority, "spec.priority", -(2**31)),
            node_pool=_optional_str(spec.get("nodePool"), "spec.nodePool"),
            created_at=timestamp(meta.get("creationTimestamp")),
            model_quotas=tuple(model_quotas),
        ),
        namespaces=frozenset(str(n) for n in namespaces),
    )


def replica_pod(
    spec: TrainingJobSpec,
    index: int,
    placement: ReplicaPlacement,
    priority: PriorityClassInfo,
    scheduler_name: str,
    attempt: str,
) -> dict[str, Any]:
    """The pod of replica `index`, made for `placement` (bound to it right after creation).

    `attempt` (`new_attempt()`) is shared by the replicas of one placement and differs between
    placements, so a gang that is moved, requeued or restarted never reuses a pod name whose old
    pod may still be terminating (or, after a crash, still be bound by a request in flight)."""
    template = copy_json(dict(spec.template))
    meta = template.get("metadata") or {}
    pod_spec = template.get("spec") or {}
    labels = {
        **(meta.get("labels") or {}),
        JOB_LABEL: spec.name,
        QUEUE_LABEL: spec.queue,
        ROLE_LABEL: ROLE_REPLICA,
        REPLICA_LABEL: str(index),
    }
    annotations = {
        **(meta.get("annotations") or {}),
        ASSIGNED_GPUS: ",".join(str(g) for g in placement.gpu_indices),
        PLANNED_NODE: str(placement.node),
        PRIORITY_ANNOTATION: str(priority.value),
    }
    containers = pod_spec.get("containers") or []
    for container in containers:
        for part in ("limits", "requests"):
            (container.get("resources") or {}).get(part, {}).pop(GPU_RESOURCE, None)
    if spec.is_fraction:
        annotations[GPU_FRACTION] = f"{spec.gpu_milli / GPU_MILLI:g}"
    elif spec.gpus and containers:
        resources = containers[0].setdefault("resources", {})
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(spec.gpus)
    pod_spec["schedulerName"] = scheduler_name
    pod_spec["restartPolicy"] = "Never"
    pod_spec.pop("nodeName", None)
    pod_spec["priorityClassName"] = spec.priority_class
    pod_spec.pop("priority", None)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": replica_pod_name(spec.name, attempt, index),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "TrainingJob",
                    "name": spec.name,
                    "uid": spec.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet: no vowels, no look-alikes


def new_attempt() -> str:
    """Five characters from one draw of the system's randomness (27⁵ ≈ 14 million attempts)."""
    draw = int.from_bytes(secrets.token_bytes(4), "big")
    letters = []
    for _ in range(5):
        draw, digit = divmod(draw, len(_ALPHABET))
        letters.append(_ALPHABET[digit])
    return "".join(letters)


def replica_pod_name(job: str, attempt: str, index: int) -> str:
    return f"{job}-{attempt}-{index}"
