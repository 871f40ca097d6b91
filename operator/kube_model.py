"""Translate raw Kubernetes JSON (Nodes, Pods) into the core's value types, and back.

Called by the demo loop (`demo.py`) and, later, by the operator's informers. Raw JSON in, frozen
`leitstand.scheduler.model` values out: the core never sees a Kubernetes object. Until the TrainingJob
CRD lands, a gang is a set of pods that share the label `leitstand.dev/job`; its shape and wishes are
annotations on each pod (keys below). Bad values raise `PodSpecError` naming the pod, the key and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from leitstand.scheduler.model import (
    GPU_MILLI,
    Job,
    JobId,
    Node,
    NodeName,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    Topology,
)

SCHEDULER_NAME = "leitstand"
TOPOLOGY_LABELS = ("leitstand.dev/spine", "leitstand.dev/rack", "leitstand.dev/nvlink-domain")
TOPOLOGY = Topology(levels=("spine", "rack", "nvlink-domain"))

JOB_LABEL = "leitstand.dev/job"
QUEUE_LABEL = "leitstand.dev/queue"
REPLICAS = "leitstand.dev/replicas"
PRIORITY = "leitstand.dev/priority"
PREEMPTIBLE = "leitstand.dev/preemptible"
GPU_FRACTION = "leitstand.dev/gpu-fraction"
REQUIRED_TOPOLOGY = "leitstand.dev/topology-required"
PREFERRED_TOPOLOGY = "leitstand.dev/topology-preferred"
JURISDICTION = "leitstand.dev/jurisdiction"
"""Data residency: one jurisdiction or a comma-separated list ("eu-de,eu-fr"); any of them will do."""
ASSIGNED_GPUS = "leitstand.dev/gpus"
"""Written by the scheduler before binding: comma-separated GPU indices on the node."""

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}


class PodSpecError(ValueError):
    """A pod's scheduling annotations are invalid; the message names pod, key and fix."""


def cpu_milli(quantity: str) -> int:
    """Kubernetes CPU quantity ("224", "500m", "1.5") → milli-cores."""
    text = str(quantity).strip()
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


def memory_mib(quantity: str) -> int:
    """Kubernetes memory quantity ("2Ti", "64Gi", "1e9", "512M") → MiB (rounded down)."""
    match = re.fullmatch(r"([0-9.eE+-]+)([KMGTP]i?|k)?", str(quantity).strip())
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    number, suffix = float(match.group(1)), match.group(2) or ""
    factor = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    return int(number * factor) // 2**20


def node_from_json(raw: Mapping[str, Any]) -> Node:
    meta, status = raw["metadata"], raw.get("status", {})
    labels: Mapping[str, str] = meta.get("labels", {})
    allocatable: Mapping[str, str] = status.get("allocatable", {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    return Node(
        name=NodeName(meta["name"]),
        gpus=int(allocatable.get("nvidia.com/gpu", "0")),
        cpu_milli=cpu_milli(allocatable.get("cpu", "0")),
        memory_mib=memory_mib(allocatable.get("memory", "0")),
        gpu_model=labels.get("nvidia.com/gpu.product", ""),
        node_pool=labels.get("leitstand.dev/node-pool", "default"),
        jurisdiction=labels.get("leitstand.dev/jurisdiction", ""),
        topology=tuple(labels.get(key, "") for key in TOPOLOGY_LABELS),
        schedulable=ready and not raw.get("spec", {}).get("unschedulable", False),
    )


@dataclass(frozen=True, slots=True)
class Gang:
    """The pods of one job as observed, with the job they describe."""

    job: Job
    pods: tuple[Mapping[str, Any], ...]

    @property
    def bound(self) -> bool:
        return all(p["spec"].get("nodeName") for p in self.pods)

    @property
    def finished(self) -> bool:
        return all(p.get("status", {}).get("phase") in ("Succeeded", "Failed") for p in self.pods)

    def running(self, started_at: float) -> RunningJob:
        placements = tuple(
            ReplicaPlacement(
                node=NodeName(p["spec"]["nodeName"]),
                gpu_indices=tuple(
                    int(g) for g in p["metadata"].get("annotations", {}).get(ASSIGNED_GPUS, "").split(",") if g
                ),
            )
            for p in self.pods
        )
        return RunningJob(job=self.job, placements=placements, started_at=started_at)


def _annotation(pod: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = pod["metadata"].get("annotations", {}).get(key, default)
    return None if value is None else str(value)


def jurisdictions(annotation: str | None) -> frozenset[str]:
    """The `leitstand.dev/jurisdiction` annotation → `Job.jurisdictions` ("eu-de, eu-fr" → both; unset → any)."""
    if annotation is None:
        return frozenset()
    return frozenset(part.strip() for part in annotation.split(",") if part.strip())


def job_from_pods(pods: Iterable[Mapping[str, Any]], created_at: float) -> Gang:
    """One gang from its pods (all share `leitstand.dev/job`); shape read from the first pod."""
    members = tuple(sorted(pods, key=lambda p: str(p["metadata"]["name"])))
    first = members[0]
    meta = first["metadata"]
    name = f"{meta['namespace']}/{meta['labels'][JOB_LABEL]}"

    def fail(key: str, fix: str) -> PodSpecError:
        return PodSpecError(f"pod {meta['namespace']}/{meta['name']}: annotation {key}: {fix}")

    container = first["spec"]["containers"][0]
    limits: Mapping[str, str] = container.get("resources", {}).get("limits", {})
    requests: Mapping[str, str] = container.get("resources", {}).get("requests", {}) or limits
    fraction = _annotation(first, GPU_FRACTION)
    whole = int(limits.get("nvidia.com/gpu", "0"))
    if fraction is not None:
        try:
            milli = round(float(fraction) * GPU_MILLI)
        except ValueError:
            raise fail(GPU_FRACTION, "must be a number between 0 and 1, e.g. \"0.5\"") from None
        if not 0 < milli < GPU_MILLI or whole:
            raise fail(GPU_FRACTION, "must be in (0, 1) and the pod must not also request nvidia.com/gpu")
        gpus, gpu_milli = 1, milli
    else:
        gpus, gpu_milli = whole, GPU_MILLI
    try:
        replicas = int(_annotation(first, REPLICAS, str(len(members))) or len(members))
        priority = int(_annotation(first, PRIORITY, "50") or 50)
    except ValueError:
        raise fail(f"{REPLICAS} or {PRIORITY}", "must be an integer") from None
    preemptible_text = _annotation(first, PREEMPTIBLE)
    job = Job(
        id=JobId(name),
        queue=QueueName(meta["labels"].get(QUEUE_LABEL, meta["namespace"])),
        replicas=replicas,
        gpus=gpus,
        gpu_milli=gpu_milli,
        cpu_milli=cpu_milli(requests.get("cpu", "0")),
        memory_mib=memory_mib(requests.get("memory", "0")),
        required_level=_annotation(first, REQUIRED_TOPOLOGY),
        preferred_level=_annotation(first, PREFERRED_TOPOLOGY),
        jurisdictions=jurisdictions(_annotation(first, JURISDICTION)),
        priority=priority,
        preemptible=None if preemptible_text is None else preemptible_text.lower() == "true",
        created_at=created_at,
    )
    return Gang(job=job, pods=members)
