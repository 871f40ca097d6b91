"""The cycle's fair-share inputs and per-GPU-model accounting.

What it holds: `open_shares`, which the cycle calls once to divide the GPUs among the queues
(`fairshare.compute_fair_shares`) with the capacity it sees — the GPUs of each reserved node pool
apart from the shared ones, and, when some queue sets per-model quotas, the GPUs of each model and
each queue's demand per model; `ModelAccounting`, the statement's queue accounting extended by the
milli-GPU each queue holds per GPU model (at every level of the tree); and `model_options`, the
models a job that names no single model may be charged to, best first.

Who calls it: `cycle.run_cycle` (`open_shares`) and `context.CycleContext` (admission and
requests). The rules are in docs/fairshare.md ("Reserved pools", "Quota per GPU model").

What it must not do: place or evict anything, or read a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from leitstand.scheduler.fairshare import (
    FairShares,
    QueueTree,
    compute_fair_shares,
    effective_reservations,
    model_names,
    saturation,
)
from leitstand.scheduler.model import GPU_MILLI, Job, JobId, QueueName
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import QueueAccounting, Statement

_GPU_MILLI_TOTAL = attrgetter("gpu_milli_total")

__all__ = ["OTHER_MODELS", "ModelAccounting", "model_options", "open_shares"]

OTHER_MODELS = ""
"""The model option "any GPU model no queue sets a quota for": such a job is charged to no model."""


@dataclass(slots=True)
class ModelAccounting(QueueAccounting):
    """`QueueAccounting` that also charges every job to its GPU model, at every level of the tree.

    A job's model: the one model it names; else the model the cycle resolved for it (`resolved`:
    where a running job runs, or the option a pending job is placed or tried with). Jobs without a
    model, or charged to a model no queue sets a quota for, count only in the totals.
    """

    model_allocated: dict[str, dict[QueueName, int]] = field(default_factory=dict)
    """Per model named in some queue's `model_quotas`: allocated milli-GPU per queue (every level)."""
    resolved: dict[JobId, str] = field(default_factory=dict)
    """Jobs that name no single model → the model they are charged to (`OTHER_MODELS`: none)."""

    @classmethod
    def wrap(cls, acc: QueueAccounting, models: Sequence[str]) -> ModelAccounting:
        """The same totals (shared dicts, so `acc` must not be used afterwards) plus zeroed model counters."""
        out = cls(
            tree=acc.tree,
            allocated_milli=acc.allocated_milli,
            nonpreemptible_milli=acc.nonpreemptible_milli,
            paths=acc.paths,
            limited=acc.limited,
        )
        out.model_allocated = {m: dict.fromkeys(acc.paths, 0) for m in models}
        return out

    def model_of(self, job: Job) -> str | None:
        if len(job.gpu_models) == 1:
            return next(iter(job.gpu_models))
        return self.resolved.get(job.id)

    def add(self, job: Job, sign: int = 1, milli: int | None = None) -> None:
        QueueAccounting.add(self, job, sign, milli)
        self.add_model(job, sign, milli)

    def add_model(self, job: Job, sign: int = 1, milli: int | None = None) -> None:
        """Charge (sign=1) or refund (sign=-1) only the model part (the totals are already counted)."""
        model = self.model_of(job)
        per = None if model is None else self.model_allocated.get(model)
        path = self.paths.get(job.queue)
        if per is None or path is None:
            return
        amount = sign * (job.gpu_milli_total if milli is None else milli)
        for name in path:
            per[name] += amount

    def model_limit_block(self, queue: QueueName, model: str, milli: int) -> tuple[QueueName, int, int] | None:
        """The first level (top-down) whose limit for `model` `milli` more would exceed, or None."""
        per = self.model_allocated.get(model)
        if per is None:
            return None
        for name in self.paths[queue]:
            entry = self.tree.queues[name].model_quota(model)
            if entry is None or entry.limit_milli is None:
                continue
            if per[name] + milli > entry.limit_milli:
                return name, per[name], entry.limit_milli
        return None


def model_options(acc: ModelAccounting, shares: FairShares, state: ClusterState, job: Job) -> tuple[str, ...]:
    """The models a job that names no single model may be charged to, best first.

    Models with a quota somewhere (those the job allows, or all of them when it names none) whose
    limits leave room for the job at every level of its queue's path, the least saturated first
    (allocated + job / the queue's fair share of that model), then `OTHER_MODELS` when the job may
    also run on models nobody sets a quota for and such nodes exist.
    """
    amount = job.gpu_milli_total
    named = acc.model_allocated
    allowed = [m for m in named if not job.gpu_models or m in job.gpu_models]
    open_models = [m for m in allowed if acc.model_limit_block(job.queue, m, amount) is None]

    def key(model: str) -> tuple[float, str]:
        by_model = shares.by_model.get(model)
        share = 0.0 if by_model is None else by_model.share_milli[job.queue]
        return (saturation(named[model][job.queue] + amount, share), model)

    out = sorted(open_models, key=key)
    if other_models(state, named, job):
        out.append(OTHER_MODELS)
    return tuple(out)


def other_models(state: ClusterState, named: Mapping[str, object], job: Job) -> frozenset[str]:
    """Models present in the cluster that no queue sets a quota for and the job allows."""
    return frozenset(m for m in state.model_codes if m not in named and (not job.gpu_models or m in job.gpu_models))


def open_shares(
    tree: QueueTree,
    stmt: Statement,
    pending_by_queue: Mapping[QueueName, Sequence[Job]],
    *,
    usage_share: Mapping[QueueName, float] | None,
    growth_milli: Mapping[QueueName, int] | None = None,
    pending_milli: Mapping[QueueName, int] | None = None,
) -> FairShares:
    """The cycle's fair shares: leaf demand = allocated + pending (+ `growth_milli`, the replicas
    running elastic jobs lack to reach full size); capacity = schedulable GPUs. `pending_milli`, when
    given, is what each leaf's pending jobs ask for in all (the cycle keeps it with its sort of them).

    Reserved pools: the GPUs of each node pool some queue reserves are passed apart from the shared
    GPUs, so they are divided only inside the subtree reserved to them. Per-model quotas (any queue
    sets one): the statement's accounting is switched to a `ModelAccounting` (running jobs charged
    to the model they run on), and each model's GPUs and per-model demand are passed too — a
    pending job that names one model counts toward that model, one that names none toward every
    model its queue may still use, and the replicas a running elastic job lacks toward the model it
    runs on.
    """
    state = stmt.state
    acc = stmt.accounting
    queues = tuple(tree.queues[name] for name in tree.order)
    demand: dict[QueueName, int] = {q: acc.allocated_milli[q] for q in tree.leaves}
    for queue, missing in (growth_milli or {}).items():  # running elastic jobs below full size want the rest
        if queue in demand:
            demand[queue] += missing
    if pending_milli is None:
        pending_milli = {queue: sum(map(_GPU_MILLI_TOTAL, jobs)) for queue, jobs in pending_by_queue.items()}
    for queue, milli in pending_milli.items():
        demand[queue] += milli
    gpus = np.where(state.schedulable, state.gpu_count, 0).astype(np.float64) * GPU_MILLI
    reservation = effective_reservations(tree)
    reserved = sorted({p for p in reservation.values() if p is not None})
    part_of_node: dict[str | None, np.ndarray] = {}
    pool_capacity: dict[str, float] | None = None
    shared_mask = np.ones(state.n_nodes, dtype=np.bool_)
    if reserved:
        pool_capacity = {}
        for pool in reserved:
            code = state.pool_codes.get(pool)
            mask = state.node_pool == code if code is not None else np.zeros(state.n_nodes, dtype=np.bool_)
            pool_capacity[pool] = float(gpus[mask].sum())
            part_of_node[pool] = mask
            shared_mask &= ~mask
    part_of_node[None] = shared_mask
    shared = float(gpus[shared_mask].sum())
    models = model_names(queues)
    if not models:
        return compute_fair_shares(queues, demand, shared, pool_capacity_milli=pool_capacity, usage_share=usage_share)

    model_acc = ModelAccounting.wrap(acc, models)
    stmt.accounting = model_acc
    name_of_code = {code: name for name, code in state.model_codes.items()}
    for held in stmt.running.values():
        job = held.job
        if len(job.gpu_models) != 1 and held.placements:
            code = int(state.gpu_model[state.node_index[held.placements[0].node]])
            model = name_of_code.get(code, OTHER_MODELS)
            model_acc.resolved[job.id] = model if model in model_acc.model_allocated else OTHER_MODELS
        model_acc.add_model(job, 1, held.gpu_milli_total)

    model_capacity: dict[tuple[str | None, str], float] = {}
    for model in models:
        code = state.model_codes.get(model)
        of_model = state.gpu_model == code if code is not None else np.zeros(state.n_nodes, dtype=np.bool_)
        for part, mask in part_of_node.items():
            model_capacity[(part, model)] = float(gpus[of_model & mask].sum())
    model_demand: dict[str, dict[QueueName, int]] = {
        m: {q: model_acc.model_allocated[m][q] for q in tree.leaves} for m in models
    }
    for queue, jobs in pending_by_queue.items():
        for job in jobs:
            amount = job.gpu_milli_total
            for model in _demand_models(model_acc, job, amount):
                model_demand[model][queue] += amount
    if growth_milli:  # running elastic jobs below full size want the rest on the model they run on
        for held in stmt.running.values():
            missing = held.missing_milli
            if not missing:
                continue
            runs_on = model_acc.model_of(held.job)
            per_queue = None if runs_on is None else model_demand.get(runs_on)
            if per_queue is not None and held.job.queue in per_queue:
                per_queue[held.job.queue] += missing
    return compute_fair_shares(
        queues,
        demand,
        shared,
        pool_capacity_milli=pool_capacity,
        model_capacity_milli=model_capacity,
        model_demand_milli=model_demand,
        usage_share=usage_share,
    )


def _demand_models(acc: ModelAccounting, job: Job, amount: int) -> list[str]:
    """Named models a pending job's demand counts toward: its one model, or every model it allows
    whose limits its queue has not reached."""
    if len(job.gpu_models) == 1:
        model = next(iter(job.gpu_models))
        return [model] if model in acc.model_allocated else []
    return [
        m
        for m in acc.model_allocated
        if (not job.gpu_models or m in job.gpu_models) and acc.model_limit_block(job.queue, m, amount) is None
    ]
