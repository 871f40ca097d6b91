"""The read API's wire format: pydantic models of every response body (they are the OpenAPI schema).

Built by `views` from the scheduler's state, serialised by FastAPI in `app`. Pydantic only here, at the
wire (STYLE.md): nothing in the service sees these classes. Field names are camelCase on the wire, as
in the Kubernetes objects they summarise (`fairShare`, `queuedAt`). Amounts of GPUs come twice: as
a decimal string with up to three decimals (`"12.5"`, exact) and as an integer of milli-GPU
(`12500`), as on the Queue status. Times are RFC 3339 strings (UTC) unless the name says `Seconds`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
DecisionKind = Literal["admit", "reclaim", "preempt", "move", "reject", "finish", "fail", "requeue", "grow",
                       "shrink"]


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ErrorBody(Wire):
    """Every 4xx (and the rare 503): what was wrong, and which parameter when one was."""

    error: str = Field(description="A stable code: BadRequest, Unauthorized, Forbidden, NotFound, ...")
    detail: str = Field(description="What was wrong and how to fix it.")
    field: str | None = Field(description="The query/path parameter or header at fault, if any.")


class Health(Wire):
    status: str
    leading: bool
    ready: bool


# -- queues ----------------------------------------------------------------------------------------


class WindowUsage(Wire):
    seconds: int = Field(description="The window asked for (`?window=`), ending now.")
    gpu_seconds: float
    covered_from: str = Field(
        description="From here on the per-minute history is this process' own count; before it, it was rebuilt "
                    "from the pods on the API server at start (pods deleted before then are missing)."
    )


class QueueUsage(Wire):
    total_gpu_seconds: float = Field(
        description="GPU-seconds since counting began (kept on the Queue status, survives restarts)."
    )
    window: WindowUsage | None = Field(description="Usage over `?window=` seconds; null when not asked.")


class JobRef(Wire):
    namespace: str
    name: str
    phase: Phase
    gpus: str
    reason: str


class QueueDetails(Wire):
    """Shown only to callers who may list TrainingJobs in every namespace the queue admits."""

    usage: QueueUsage
    jobs: list[JobRef] = Field(description="The queue's (and its children's) TrainingJobs, by namespace/name.")
    jobs_truncated: bool = Field(description="True when more jobs exist than listed (see /v1/jobs?queue=).")


class QueueOut(Wire):
    name: str
    parent: str | None
    children: list[str]
    namespaces: list[str] = Field(description="spec.namespaces (a leaf's; empty means any namespace).")
    valid: bool
    message: str = Field(description="Why the queue is invalid (bad parent, cycle), or empty.")
    priority: int
    quota: str
    quota_milli: int
    limit: str | None = Field(description="null: no cap.")
    limit_milli: int | None
    over_quota_weight: float
    node_pool: str | None
    fair_share: str
    fair_share_milli: int
    allocated: str
    allocated_milli: int
    pending_jobs: int
    pending_gpus: str
    pending_milli: int
    running_jobs: int
    details: QueueDetails | None = Field(
        description="Usage and jobs; null when the caller may not see every namespace of the queue."
    )


class QueueList(Wire):
    items: list[QueueOut]
    leading: bool


# -- jobs ------------------------------------------------------------------------------------------


class PodPlacement(Wire):
    name: str
    node: str = Field(description="spec.nodeName, or the planned node while the pod is being bound.")
    bound: bool
    gpu_indices: list[int]
    gpu_milli: int = Field(description="Milli-GPU per listed GPU index (1000 whole, less for a fraction).")
    phase: str


class Placement(Wire):
    nodes: list[str]
    level: str | None = Field(description="The smallest topology level holding every replica (node, rack, ...).")
    domain: str | None
    pods: list[PodPlacement]


class PendingReason(Wire):
    code: str = Field(description="QueueAtLimit, NoTopologyDomain, OverFairShare, NamespaceNotAllowed, ...")
    message: str


class HistoryEntry(Wire):
    seq: int
    time: str
    kind: DecisionKind
    reason: str
    message: str
    by: str = Field(description="The job that caused the eviction (namespace/name).")
    by_queue: str


class JobOut(Wire):
    namespace: str
    name: str
    uid: str
    queue: str
    phase: Phase
    reason: str
    message: str
    replicas: int | None
    gpus_per_replica: int | None = Field(description="Whole GPUs per replica; null for a fraction or a bad spec.")
    gpu_fraction: str | None
    gpus: str = Field(description="GPUs of the whole gang: replicas × (gpus or gpuFraction).")
    gpu_milli: int
    gpu_model: str | None
    topology_required: str | None
    topology_preferred: str | None
    priority_class: str | None
    created_at: str | None
    queued_at: str | None
    admitted_at: str | None
    started_at: str | None
    finished_at: str | None
    wait_seconds: float | None = Field(
        description="From queuedAt to admittedAt (to now while pending); null when unknown."
    )
    restarts: int
    preemptions: int
    pending: PendingReason | None = Field(description="Why it waits, while it waits.")
    placement: Placement | None


class JobDetail(JobOut):
    history: list[HistoryEntry] = Field(
        description="Evictions of this job (reclaim, preempt, move) from the audit trail, oldest first."
    )


class JobList(Wire):
    items: list[JobOut]
    continue_: str | None = Field(
        serialization_alias="continue", description="Pass as `?continue=` for the next page; null on the last page."
    )
    total: int = Field(description="Jobs matching the filters that the caller may see.")
    leading: bool


# -- nodes and topology ------------------------------------------------------------------------------


class NodeOut(Wire):
    name: str
    gpu_model: str
    node_pool: str
    jurisdiction: str
    topology: dict[str, str] = Field(description="Level → domain (spine, rack, nvlink-domain).")
    ready: bool
    schedulable: bool = Field(description="Ready, not cordoned, and not held back by a conflicting pod.")
    held_back: str | None = Field(description="Why the node is offered to no job (a pod that does not fit).")
    gpus: int
    gpu_capacity_milli: int
    gpu_free_milli: int | None = Field(description="null until the node is in the scheduler's arrays.")
    gpu_used_milli: int | None
    gpus_free: int | None = Field(description="GPUs with all 1000 milli free.")
    per_gpu_free_milli: list[int] | None


class NodeList(Wire):
    items: list[NodeOut]
    leading: bool


class DomainOut(Wire):
    level: str
    name: str
    parent: str | None = Field(description="The enclosing domain one level up.")
    nodes: int
    schedulable_nodes: int
    gpus: int
    gpus_free: int = Field(description="Wholly free GPUs on schedulable nodes.")
    free_milli: int
    stranded_milli: int = Field(description="Free milli-GPU on partly used GPUs (only fractions can use them).")
    nodes_all_free: int = Field(description="Schedulable nodes with every GPU free.")
    nodes_with_8_free: int
    largest_free_block: int = Field(description="The most wholly free GPUs on one node of the domain.")


class GangFit(Wire):
    level: str
    domains: list[str] = Field(description="Up to 20 domains, most free GPUs first.")
    count: int


class GangSummary(Wire):
    gpus: int
    as_8_gpu_replicas: list[GangFit] = Field(
        description="Per level: domains with room for gpus/8 replicas of 8 wholly free GPUs each (one per node)."
    )
    any_shape: list[GangFit] = Field(description="Per level: domains with at least this many wholly free GPUs.")


class TopologyOut(Wire):
    levels: list[str]
    domains: list[DomainOut]
    gangs: list[GangSummary]
    leading: bool


# -- decisions and usage -------------------------------------------------------------------------


class DecisionOut(Wire):
    seq: int
    time: float = Field(description="Unix seconds.")
    at: str
    kind: DecisionKind
    job: str
    queue: str
    namespace: str
    reason: str
    message: str
    by: str
    by_queue: str
    nodes: list[str]
    gpus: str
    gpu_milli: int
    cycle: int


class DecisionList(Wire):
    items: list[DecisionOut]
    next: int | None = Field(description="Pass as `?after=` for the next page; null when this page is the last.")
    leading: bool


class UsageRowOut(Wire):
    key: str = Field(description="The queue or namespace.")
    gpu_hours: float
    gpu_seconds: float


class UsageReport(Wire):
    by: Literal["queue", "namespace"]
    from_: str = Field(serialization_alias="from")
    to: str
    covered_from: str = Field(description="From here on the per-minute history is this process' own count; "
                                          "before it, it was rebuilt from the pods at start (docs/http-api.md).")
    rows: list[UsageRowOut]
    leading: bool
