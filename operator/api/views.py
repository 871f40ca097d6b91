"""Read models of the scheduler's latest state: queues, jobs, nodes, topology, decisions and usage.

Called by `app`'s handlers, on the main event loop between two scheduling steps (handlers are
`async def` and never await while they read), so every answer is one consistent moment of the one
`Scheduler` — never a second copy of the state. Reads only: what the loop keeps (`jobs` with the raw
TrainingJob and its parsed spec, the status book's current wish for each status, `queue_bodies` and
`queue_view`), the cache (`nodes`, `pods`, `state` arrays), the audit trail (`decisions`) and the
GPU-hour meter (`usage`).

Replicas that do not lead run no cycles: their status views are the objects' status as the leader
wrote it to the API server (kopf keeps the bodies current), their per-minute usage history is empty,
and their cache arrays are built here on demand (`ensure_arrays`, what a cycle's first step would do).
What this must not do: decide, write to the API server, or change anything the loop reads.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from leitstand.operator.api import models
from leitstand.operator.service.jobs import QueueSpec, SpecError, TrainingJobSpec, parse_queue
from leitstand.operator.service.loop import Scheduler, Tracked, gpus_text, tj_path
from leitstand.operator.service.records import timestamp
from leitstand.operator.service.status import condition, rfc3339
from leitstand.scheduler.model import GPU_MILLI, NODE_LEVEL, reasons_by_job

EVICTION_KINDS = frozenset({"reclaim", "preempt", "move", "shrink"})
QUEUE_JOBS_SHOWN = 100
GANG_SIZES = (8, 16, 32, 64)
GANG_DOMAINS_SHOWN = 20
PHASES = ("Pending", "Running", "Succeeded", "Failed")


def milli(text: Any) -> int:
    """A decimal amount of GPUs ("12.5", 3, None) → milli-GPU (0 when absent or not a number)."""
    if text is None or isinstance(text, bool):
        return 0
    try:
        return int((Decimal(str(text)) * GPU_MILLI).to_integral_value())
    except (InvalidOperation, ValueError):
        return 0


def ensure_arrays(scheduler: Scheduler) -> None:
    """A replica that does not lead runs no cycle, so nothing rebuilds its cache's arrays after a node
    change; do here what a cycle's first step does. The leader's loop does it itself (≤ 0.2 s after the
    change), and the API does not touch the leader's state."""
    if not scheduler.leading:
        scheduler.cache.refresh()


# -- queues -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueFacts:
    name: str
    body: Mapping[str, Any]
    spec: QueueSpec | None
    error: str
    parent: str | None
    children: tuple[str, ...]
    admits: frozenset[str] | None
    """Namespaces whose jobs can be in this queue or below it; None = any namespace."""
    subtree: frozenset[str]
    """This queue and its descendants."""


def queue_facts(scheduler: Scheduler) -> dict[str, QueueFacts]:
    """Every Queue object, with its place in the tree (also invalid ones: they are shown as invalid)."""
    specs: dict[str, QueueSpec | None] = {}
    errors: dict[str, str] = {}
    parents: dict[str, str | None] = {}
    for name, body in scheduler.queue_bodies.items():
        try:
            spec = parse_queue(body)
            specs[name] = spec
            parents[name] = spec.queue.parent
        except SpecError as exc:
            specs[name], errors[name] = None, str(exc)
            raw_parent = (body.get("spec") or {}).get("parent")
            parents[name] = raw_parent if isinstance(raw_parent, str) and raw_parent else None
    children: dict[str, list[str]] = {name: [] for name in specs}
    for name, parent in parents.items():
        if parent is not None and parent in children and parent != name:
            children[parent].append(name)

    def subtree(name: str) -> frozenset[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:  # iterative, and safe against cycles in a broken tree
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(children.get(current, ()))
        return frozenset(seen)

    facts: dict[str, QueueFacts] = {}
    for name in specs:
        members = subtree(name)
        admits: set[str] | None = set()
        for member in members:
            if children.get(member):
                continue  # an inner queue's own namespaces are ignored (docs/api.md)
            member_spec = specs[member]
            listed = member_spec.namespaces if member_spec is not None else frozenset()
            if not listed:
                admits = None
                break
            assert admits is not None
            admits |= listed
        body = scheduler.queue_bodies[name]
        facts[name] = QueueFacts(
            name=name, body=body, spec=specs[name], error=errors.get(name, ""), parent=parents[name],
            children=tuple(sorted(children[name])), admits=None if admits is None else frozenset(admits),
            subtree=members,
        )
    return facts


def _queue_status(scheduler: Scheduler, name: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the loop computed in its latest cycle, or (a replica that does not lead) the status the
    leader wrote."""
    view = scheduler.queue_view.get(name)
    if view is not None:
        return view
    status = body.get("status")
    return status if isinstance(status, Mapping) else {}


def queue_usage_totals(scheduler: Scheduler, facts: Mapping[str, QueueFacts]) -> dict[str, float]:
    """GPU-seconds per queue, a parent counting its subtree: the meter when leading, else the status."""
    totals: dict[str, float] = {}
    for name, fact in facts.items():
        if scheduler.leading:
            totals[name] = sum(v for q, v in scheduler.usage.totals.items() if q in fact.subtree)
        else:
            raw = _queue_status(scheduler, name, fact.body).get("usageGPUSeconds")
            totals[name] = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else 0.0
    return totals


def queue_out(scheduler: Scheduler, fact: QueueFacts, *, details: models.QueueDetails | None) -> models.QueueOut:
    status = _queue_status(scheduler, fact.name, fact.body)
    valid_condition = condition(status, "Valid")
    valid = not fact.error and (valid_condition is None or valid_condition.get("status") != "False")
    message = fact.error or (str(valid_condition.get("message", "")) if valid_condition is not None and not valid
                             else "")
    queue = fact.spec.queue if fact.spec is not None else None
    quota = queue.quota_milli if queue else 0
    limit = queue.limit_milli if queue else None
    allocated = status.get("allocatedMilli")
    allocated_milli = allocated if isinstance(allocated, int) else milli(status.get("allocated"))
    fair = milli(status.get("fairShare"))
    pending = milli(status.get("pendingGPUs"))
    return models.QueueOut(
        name=fact.name,
        parent=fact.parent,
        children=list(fact.children),
        namespaces=sorted(fact.spec.namespaces) if fact.spec is not None else [],
        valid=valid,
        message=message,
        priority=queue.priority if queue else 0,
        quota=gpus_text(quota),
        quota_milli=quota,
        limit=None if limit is None else gpus_text(limit),
        limit_milli=limit,
        over_quota_weight=queue.over_quota_weight if queue else 0.0,
        node_pool=queue.node_pool if queue else None,
        fair_share=gpus_text(fair),
        fair_share_milli=fair,
        allocated=gpus_text(allocated_milli),
        allocated_milli=allocated_milli,
        pending_jobs=_int(status.get("pendingJobs")),
        pending_gpus=gpus_text(pending),
        pending_milli=pending,
        running_jobs=_int(status.get("runningJobs")),
        details=details,
    )


def jobs_by_queue(scheduler: Scheduler) -> dict[str, list[str]]:
    """Job keys per queue named in their spec, in one pass (a queue's details then cost its jobs only)."""
    groups: dict[str, list[str]] = {}
    for key, tracked in scheduler.jobs.items():
        groups.setdefault(job_queue(tracked), []).append(key)
    return groups


def queue_details(scheduler: Scheduler, fact: QueueFacts, total_gpu_seconds: float,
                  window: models.WindowUsage | None, groups: Mapping[str, list[str]]) -> models.QueueDetails:
    keys = sorted(key for queue in fact.subtree for key in groups.get(queue, ()))
    refs: list[models.JobRef] = []
    for key in keys[:QUEUE_JOBS_SHOWN]:
        tracked = scheduler.jobs[key]
        status = job_status(scheduler, tracked)
        namespace, _, name = key.partition("/")
        refs.append(models.JobRef(namespace=namespace, name=name, phase=_phase(status),
                                  gpus=_job_gpus(tracked, status), reason=str(status.get("reason", ""))))
    return models.QueueDetails(
        usage=models.QueueUsage(total_gpu_seconds=round(total_gpu_seconds, 3), window=window),
        jobs=refs,
        jobs_truncated=len(keys) > len(refs),
    )


def window_usage(scheduler: Scheduler, facts: Mapping[str, QueueFacts], seconds: int,
                 now: float) -> dict[str, models.WindowUsage]:
    """GPU-seconds per queue (subtrees summed) over the last `seconds`, from the per-minute history."""
    leaf = {row.key: row.gpu_seconds for row in scheduler.usage.report(now - seconds, now, by="queue")}
    covered = rfc3339(scheduler.usage.covered_from)
    return {
        name: models.WindowUsage(
            seconds=seconds, gpu_seconds=round(sum(v for q, v in leaf.items() if q in fact.subtree), 3),
            covered_from=covered,
        )
        for name, fact in facts.items()
    }


# -- jobs ---------------------------------------------------------------------------------------------


def job_status(scheduler: Scheduler, tracked: Tracked) -> Mapping[str, Any]:
    """The job's status as of the latest cycle: the status book's wish for it (written to the API server
    right after the cycle) when this process follows it, else the object's status."""
    meta = tracked.body.get("metadata") or {}
    path = tj_path(str(meta.get("namespace")), str(meta.get("name")))
    book = scheduler.book
    if book.uids.get(path) == meta.get("uid") and path in book.desired:
        return book.desired[path]
    status = tracked.body.get("status")
    return status if isinstance(status, Mapping) else {}


def job_queue(tracked: Tracked) -> str:
    if isinstance(tracked.spec, TrainingJobSpec):
        return tracked.spec.queue
    raw = (tracked.body.get("spec") or {}).get("queue")
    return raw if isinstance(raw, str) else ""


def _phase(status: Mapping[str, Any]) -> models.Phase:
    phase = status.get("phase")
    if phase == "Running":
        return "Running"
    if phase == "Succeeded":
        return "Succeeded"
    if phase == "Failed":
        return "Failed"
    return "Pending"


def _job_gpus(tracked: Tracked, status: Mapping[str, Any]) -> str:
    if isinstance(tracked.spec, TrainingJobSpec):
        return gpus_text(tracked.spec.total_milli)
    return str(status.get("gpus", "0"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def select_jobs(scheduler: Scheduler, facts: Mapping[str, QueueFacts], *, queue: str | None,
                namespace: str | None, phase: str | None, visible: frozenset[str] | None) -> list[str]:
    """Keys ("namespace/name") of the jobs matching the filters, in their stable order (by key)."""
    queues = facts[queue].subtree if queue is not None and queue in facts else (
        frozenset({queue}) if queue is not None else None)
    keys: list[str] = []
    for key, tracked in scheduler.jobs.items():
        ns = key.partition("/")[0]
        if (namespace is not None and ns != namespace) or (visible is not None and ns not in visible):
            continue
        if queues is not None and job_queue(tracked) not in queues:
            continue
        if phase is not None and _phase(job_status(scheduler, tracked)) != phase:
            continue
        keys.append(key)
    keys.sort()
    return keys


def job_out(scheduler: Scheduler, key: str, tracked: Tracked, now: float) -> models.JobOut:
    return models.JobOut(**_job_fields(scheduler, key, tracked, now))


def job_detail(scheduler: Scheduler, key: str, tracked: Tracked, now: float) -> models.JobDetail:
    spec = tracked.spec
    created = spec.created if isinstance(spec, TrainingJobSpec) else timestamp(
        (tracked.body.get("metadata") or {}).get("creationTimestamp"))
    history = [
        models.HistoryEntry(seq=d.seq, time=rfc3339(d.time), kind=d.kind,  # type: ignore[arg-type]
                            reason=d.reason, message=d.message, by=d.by, by_queue=d.by_queue)
        for d in scheduler.decisions.query(job=key, since=created, limit=100_000)
        if d.kind in EVICTION_KINDS
    ]
    return models.JobDetail(**_job_fields(scheduler, key, tracked, now), history=history)


def _job_fields(scheduler: Scheduler, key: str, tracked: Tracked, now: float) -> dict[str, Any]:
    status = job_status(scheduler, tracked)
    meta = tracked.body.get("metadata") or {}
    namespace, _, name = key.partition("/")
    spec = tracked.spec
    phase = _phase(status)
    queued = timestamp(_text(status.get("queuedAt")))
    admitted = timestamp(_text(status.get("admittedAt")))
    wait: float | None = None
    if queued and admitted and admitted >= queued:
        wait = admitted - queued
    elif queued and phase == "Pending":
        wait = max(0.0, now - queued)
    pending: models.PendingReason | None = None
    fresh = plan_reasons(scheduler).get(key)
    if phase == "Pending" and status.get("reason") != "Admitted":
        blocking = condition(status, "Admitted")
        if fresh is not None:  # the latest cycle's words (the status refreshes the numbers every 10 s)
            pending = models.PendingReason(code=fresh[0], message=fresh[1])
        elif blocking is not None and blocking.get("status") == "False":
            pending = models.PendingReason(code=str(blocking.get("reason", "")),
                                           message=str(blocking.get("message", "")))
        elif status.get("reason"):
            pending = models.PendingReason(code=str(status.get("reason")), message=str(status.get("message", "")))
    fields: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "uid": str(meta.get("uid", "")),
        "queue": job_queue(tracked),
        "phase": phase,
        "reason": str(status.get("reason", "")),
        "message": str(status.get("message", "")),
        "gpus": _job_gpus(tracked, status),
        "created_at": _text(meta.get("creationTimestamp")),
        "queued_at": _text(status.get("queuedAt")),
        "admitted_at": _text(status.get("admittedAt")),
        "started_at": _text(status.get("startedAt")),
        "finished_at": _text(status.get("finishedAt")),
        "wait_seconds": None if wait is None else round(wait, 3),
        "restarts": _int(status.get("restarts")),
        "preemptions": _int(status.get("preemptions")),
        "pending": pending,
    }
    if isinstance(spec, TrainingJobSpec):
        fields.update(
            replicas=spec.replicas,
            gpus_per_replica=None if spec.is_fraction else spec.gpus,
            gpu_fraction=gpus_text(spec.gpu_milli) if spec.is_fraction else None,
            gpu_milli=spec.total_milli,
            gpu_model=spec.gpu_model,
            topology_required=spec.required,
            topology_preferred=spec.preferred,
            priority_class=spec.priority_class,
        )
        fields["placement"] = placement(scheduler, key, spec.uid)
    else:
        fields.update(replicas=None, gpus_per_replica=None, gpu_fraction=None, gpu_milli=milli(status.get("gpus")),
                      gpu_model=None, topology_required=None, topology_preferred=None, priority_class=None,
                      placement=None)
    return fields


_reasons_memo: weakref.WeakKeyDictionary[Scheduler, tuple[Any, dict[str, tuple[str, str]]]] = (
    weakref.WeakKeyDictionary())


def plan_reasons(scheduler: Scheduler) -> dict[str, tuple[str, str]]:
    """Job id → (code, message) of the latest plan (leader only), built once per plan."""
    plan = scheduler.last_plan
    if plan is None or not scheduler.leading:
        return {}
    memo = _reasons_memo.get(scheduler)
    if memo is None or memo[0] is not plan:
        memo = (plan, {str(job_id): (why.code, why.message) for job_id, why in reasons_by_job(plan.pending)})
        _reasons_memo[scheduler] = memo
    return memo[1]


def placement(scheduler: Scheduler, key: str, uid: str) -> models.Placement | None:
    """Where the job's current pods are (or are being bound), from the cache's pod records."""
    cache = scheduler.cache
    pods = sorted((p for k, p in cache.job_pods(key).items() if p.owner_uid == uid and k not in cache.evicted),
                  key=lambda p: (p.replica, p.name))
    if not pods:
        return None
    out = [
        models.PodPlacement(
            name=p.name, node=p.node or p.planned_node, bound=bool(p.node), gpu_indices=list(p.assigned),
            gpu_milli=p.fraction_milli or (GPU_MILLI if p.assigned else 0), phase=p.phase,
        )
        for p in pods
    ]
    nodes = sorted({p.node for p in out if p.node})
    level, domain = common_domain(scheduler, nodes)
    return models.Placement(nodes=nodes, level=level, domain=domain, pods=out)


def common_domain(scheduler: Scheduler, nodes: list[str]) -> tuple[str | None, str | None]:
    """The smallest topology domain holding every node (level, name); the node itself for one node."""
    if not nodes:
        return None, None
    if len(nodes) == 1:
        return NODE_LEVEL, nodes[0]
    records = [scheduler.cache.nodes.get(n) for n in nodes]
    if any(r is None for r in records):
        return None, None
    paths = [r.node.topology for r in records if r is not None]
    for depth in range(len(scheduler.levels), 0, -1):
        prefixes = {tuple(path[:depth]) for path in paths}
        if len(prefixes) == 1:
            prefix = prefixes.pop()
            if len(prefix) == depth and all(prefix):
                return scheduler.levels[depth - 1], prefix[-1]
    return None, None


# -- nodes and topology ----------------------------------------------------------------------------------


def nodes_out(scheduler: Scheduler) -> list[models.NodeOut]:
    cache = scheduler.cache
    state = cache.state
    held = {node: why for node, why in cache.conflicts.values()}
    out: list[models.NodeOut] = []
    for name in sorted(cache.nodes):
        record = cache.nodes[name]
        node = record.node
        index = state.node_index.get(node.name)
        free: list[int] | None = None
        if index is not None and int(state.gpu_count[index]) == node.gpus:
            free = [int(v) for v in state.gpu_free_milli[index, : node.gpus]]
        capacity = node.gpus * GPU_MILLI
        out.append(models.NodeOut(
            name=name,
            gpu_model=node.gpu_model,
            node_pool=node.node_pool,
            jurisdiction=node.jurisdiction,
            topology={level: domain for level, domain in zip(scheduler.levels, node.topology, strict=False)
                      if domain},
            ready=record.ready,
            schedulable=node.schedulable and name not in held,
            held_back=held.get(name),
            gpus=node.gpus,
            gpu_capacity_milli=capacity,
            gpu_free_milli=None if free is None else sum(free),
            gpu_used_milli=None if free is None else capacity - sum(free),
            gpus_free=None if free is None else sum(1 for v in free if v == GPU_MILLI),
            per_gpu_free_milli=free,
        ))
    return out


def topology_out(scheduler: Scheduler, *, level: str | None, model: str | None, pool: str | None,
                 leading: bool) -> models.TopologyOut:
    """Occupancy and fragmentation per domain, and where gangs of 8/16/32/64 GPUs could go now."""
    state = scheduler.cache.state
    levels = [*scheduler.levels, NODE_LEVEL]
    n = len(state.node_names)
    counts = state.gpu_count.astype(np.int64)
    usable = state.schedulable.copy()
    for node, _why in scheduler.cache.conflicts.values():  # held back: offered to no job
        index = state.node_index.get(node)  # type: ignore[call-overload]
        if index is not None:
            usable[index] = False
    keep = np.ones(n, dtype=np.bool_)
    if model is not None:
        keep &= state.gpu_model == state.model_codes.get(model, -2)
    if pool is not None:
        keep &= state.node_pool == state.pool_codes.get(pool, -2)
    whole = np.where(usable & keep, state.gpu_whole_free.astype(np.int64), 0)
    free_milli = np.where(usable & keep, state.gpu_free_milli.astype(np.int64).sum(axis=1) if n else 0, 0)
    blocks_of_8 = (whole // 8) * 8
    domains: list[models.DomainOut] = []
    gangs: dict[int, tuple[list[models.GangFit], list[models.GangFit]]] = {s: ([], []) for s in GANG_SIZES}
    for li, lname in enumerate(levels):
        ids = state.domain[:, li].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
        count = int(state.domain_count[li]) if len(state.domain_count) > li else 0
        member = (ids >= 0) & keep
        if count == 0 or not member.any():
            for size in GANG_SIZES:
                gangs[size][0].append(models.GangFit(level=lname, domains=[], count=0))
                gangs[size][1].append(models.GangFit(level=lname, domains=[], count=0))
            continue
        idx = ids[member]

        def total(values: Any, idx: Any = idx, member: Any = member, count: int = count) -> Any:
            return np.bincount(idx, weights=values[member], minlength=count).astype(np.int64)

        nodes_in = np.bincount(idx, minlength=count)
        schedulable = total((usable & keep).astype(np.int64))
        gpus = total(counts)
        whole_free = total(whole)
        milli_free = total(free_milli)
        all_free = total(((whole == counts) & (counts > 0) & usable & keep).astype(np.int64))
        eight_free = total((whole >= 8).astype(np.int64))
        eight_room = total(blocks_of_8)
        largest = np.zeros(count, dtype=np.int64)
        np.maximum.at(largest, idx, whole[member])
        names = state.domain_names[li]
        first_member = np.full(count, -1, dtype=np.int64)
        present_ids, first = np.unique(idx, return_index=True)
        first_member[present_ids] = np.flatnonzero(member)[first]
        present = np.flatnonzero(nodes_in > 0)
        if lname == level or (level is None and lname != NODE_LEVEL):
            for d in present:
                parent = None
                if li > 0 and first_member[d] >= 0:
                    pid = int(state.domain[first_member[d], li - 1])
                    parent = state.domain_names[li - 1][pid] if pid >= 0 else None
                domains.append(models.DomainOut(
                    level=lname, name=str(names[d]), parent=parent, nodes=int(nodes_in[d]),
                    schedulable_nodes=int(schedulable[d]), gpus=int(gpus[d]), gpus_free=int(whole_free[d]),
                    free_milli=int(milli_free[d]), stranded_milli=int(milli_free[d] - whole_free[d] * GPU_MILLI),
                    nodes_all_free=int(all_free[d]), nodes_with_8_free=int(eight_free[d]),
                    largest_free_block=int(largest[d]),
                ))
        order = present[np.argsort(-whole_free[present], kind="stable")]
        for size in GANG_SIZES:
            fits_8 = [str(names[d]) for d in order if eight_room[d] >= size]
            fits_any = [str(names[d]) for d in order if whole_free[d] >= size]
            gangs[size][0].append(models.GangFit(level=lname, domains=fits_8[:GANG_DOMAINS_SHOWN], count=len(fits_8)))
            gangs[size][1].append(models.GangFit(level=lname, domains=fits_any[:GANG_DOMAINS_SHOWN],
                                                 count=len(fits_any)))
    return models.TopologyOut(
        levels=levels,
        domains=domains,
        gangs=[models.GangSummary(gpus=size, as_8_gpu_replicas=eight, any_shape=anyshape)
               for size, (eight, anyshape) in gangs.items()],
        leading=leading,
    )


# -- decisions and usage -----------------------------------------------------------------------------


def decision_out(d: Any) -> models.DecisionOut:
    return models.DecisionOut(
        seq=d.seq, time=d.time, at=rfc3339(d.time), kind=d.kind, job=d.job, queue=d.queue, namespace=d.namespace,
        reason=d.reason, message=d.message, by=d.by, by_queue=d.by_queue, nodes=list(d.nodes),
        gpus=gpus_text(d.gpus_milli), gpu_milli=d.gpus_milli, cycle=d.cycle,
    )


class NamespaceIndex:
    """Every namespace the audit trail has named (the candidates whose access a caller is asked about);
    fed by the decision log's subscription, so a request never scans the whole ring for them."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.names: set[str] = {d.namespace for d in scheduler.decisions if d.namespace}
        scheduler.decisions.subscribe(lambda d: self.names.add(d.namespace) if d.namespace else None)


def known_namespaces(scheduler: Scheduler, index: NamespaceIndex, facts: Iterable[QueueFacts] = ()) -> set[str]:
    names = {key.partition("/")[0] for key in scheduler.jobs}
    names |= index.names
    for fact in facts:
        if fact.admits:
            names |= fact.admits
    return names
