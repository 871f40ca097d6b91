"""Hierarchical fair share with Run:ai / KAI semantics, in exact milli-GPU.

What it holds: validation of the queue tree (`build_queue_tree`), the per-cycle division of GPU
capacity among queues (`compute_fair_shares`), and `saturation`, the allocated / fair-share ratio
that queue ordering and reclaim compare.

Who calls it: `leitstand.scheduler.cycle` once per cycle, the simulator, the operator's read API
(to show deserved / fair share per queue), and the scenario tests.

What it must not do: read a clock, log, mutate its inputs, or round. Shares are floats in milli-GPU
(1000 = one GPU); see docs/fairshare.md for the algorithm, examples and where it deviates from KAI.

The rules, at every level of the tree (the implicit root divides `capacity_milli` among the
queues whose parent is None; every inner queue divides its own share among its children):

1. Deserved phase: each child gets min(quota, requestable); requestable = min(demand, limit),
   additionally bounded by quota when over_quota_weight is 0 (such a queue never goes over quota),
   and for an inner queue by the sum of its children's requestable.
   If these sum above what the parent has, every child's deserved part is scaled down by the same
   factor and nothing is left for phase 2 (deviation: KAI hands out the full quotas and lets the
   shares sum above the capacity; we keep sum(children) == parent so reclaim never chases GPUs that
   do not exist).
2. Over-quota phase: children grouped by `priority`, highest first; a bucket is satisfied in full
   before a lower one gets anything. Inside a bucket, water-filling by weight: each unsatisfied child
   with weight > 0 gets remaining × w / Σw, capped at requestable − share; repeat while someone was
   capped. Weight 0 gets nothing over quota.
3. Time-decayed (optional, `usage_share` given): the weight of a child in the over-quota phase is
   P = max(0, W + k·(W − U)), W its weight normalised among the competing children of its bucket,
   U its past usage as a fraction of what its parent could hand out (see `_effective_weights`).
   Usage only reorders who gets surplus: a child whose P fell to 0 still takes what no one else in
   its bucket wants, by its configured weight, so no GPU stays idle because of history.
4. Reserved pools (optional, `pool_capacity_milli` given): each reserved pool's GPUs are divided
   only over the subtree reserved to it, the shared GPUs over the rest (`_partitioned`).
5. Per GPU model (optional, `model_capacity_milli` given and some queue sets `model_quotas`): the
   same division again per model with the per-model quotas and limits (`FairShares.by_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from leitstand.scheduler.errors import InvalidSpecError
from leitstand.scheduler.model import GPU_MILLI, Queue, QueueName

_EPS_MILLI = 1e-9
"""Below this many milli-GPU an unmet request counts as met (float noise, not demand)."""

__all__ = [
    "FairShares",
    "QueueTree",
    "build_queue_tree",
    "compute_fair_shares",
    "effective_reservations",
    "model_names",
    "saturation",
]


@dataclass(frozen=True, slots=True)
class QueueTree:
    """A validated queue tree. `children[None]` are the top-level queues (children of the implicit root).

    `order` lists every queue top-down (a parent before its children); siblings are ordered by
    (created_at, name) so that every derived result is deterministic.
    """

    queues: dict[QueueName, Queue]
    children: dict[QueueName | None, tuple[QueueName, ...]]
    order: tuple[QueueName, ...]

    def is_leaf(self, name: QueueName) -> bool:
        return not self.children.get(name)

    @property
    def leaves(self) -> tuple[QueueName, ...]:
        return tuple(n for n in self.order if self.is_leaf(n))

    def ancestors(self, name: QueueName) -> tuple[QueueName, ...]:
        """Parent first, up to the top-level queue; empty for a top-level queue."""
        out: list[QueueName] = []
        parent = self.queues[name].parent
        while parent is not None:
            out.append(parent)
            parent = self.queues[parent].parent
        return tuple(out)

    def path(self, name: QueueName) -> tuple[QueueName, ...]:
        """From the top-level queue down to `name` inclusive (the levels reclaim compares at)."""
        return (*reversed(self.ancestors(name)), name)


@dataclass(frozen=True, slots=True)
class FairShares:
    """The result of one fair-share computation; every queue of the tree has an entry in every dict.

    All amounts are milli-GPU floats (exact; no whole-GPU rounding).
    """

    share_milli: dict[QueueName, float]
    """The fair share: deserved part + over-quota part."""
    deserved_milli: dict[QueueName, float]
    """The in-quota part actually granted: min(quota, requestable), times `deserved_scale`."""
    requestable_milli: dict[QueueName, float]
    """The most the queue can use: min(demand, limit), ≤ quota for weight 0, ≤ Σ children for inner queues."""
    demand_milli: dict[QueueName, float]
    """Leaf demand as given (0 when absent); inner queues: sum of their children."""
    deserved_scale: dict[QueueName, float]
    """1.0 normally; below 1 when the quotas of this queue's level did not fit its parent's share."""
    capacity_milli: float
    by_model: dict[str, FairShares] = field(default_factory=dict)
    """Per GPU model named in some queue's `model_quotas`: the same division over that model's GPUs,
    with the per-model quotas and limits (empty when no queue sets any, or no model capacity was given)."""

    def over_quota_milli(self, name: QueueName) -> float:
        """The part of the fair share above the (granted) quota."""
        return self.share_milli[name] - self.deserved_milli[name]

    def share_gpus(self, name: QueueName) -> float:
        return self.share_milli[name] / float(GPU_MILLI)


def saturation(allocated_milli: float, share_milli: float) -> float:
    """allocated / fair share: below 1 the queue is owed GPUs, above 1 it borrows.

    0 when nothing is allocated; inf when something is allocated against a zero share.
    """
    if share_milli <= 0.0:
        return math.inf if allocated_milli > 0.0 else 0.0
    return allocated_milli / share_milli


def build_queue_tree(queues: Sequence[Queue]) -> QueueTree:
    """Validate the queue specs and index them as a tree.

    Raises `InvalidSpecError` (a ValueError) naming the queue and the fix for: duplicate names,
    negative or non-finite amounts, a quota above the limit, an unknown parent, a cycle.
    """
    by_name: dict[QueueName, Queue] = {}
    for q in queues:
        if not q.name:
            raise InvalidSpecError("a queue has an empty name; give every queue a cluster-unique name")
        if q.name in by_name:
            raise InvalidSpecError(f"queue {q.name!r} is defined twice; queue names are cluster-wide unique")
        _validate_queue(q)
        by_name[q.name] = q

    for q in by_name.values():
        if q.parent is not None and q.parent not in by_name:
            raise InvalidSpecError(
                f"queue {q.name!r}: parent {q.parent!r} is not a known queue; "
                f"create queue {q.parent!r} or set parent to an existing queue (or none for top level)"
            )
    _reject_cycles(by_name)

    kids: dict[QueueName | None, list[Queue]] = {}
    for q in by_name.values():
        kids.setdefault(q.parent, []).append(q)
    children: dict[QueueName | None, tuple[QueueName, ...]] = {
        parent: tuple(k.name for k in sorted(group, key=lambda k: (k.created_at, k.name)))
        for parent, group in kids.items()
    }
    order: list[QueueName] = []
    frontier: list[QueueName] = list(children.get(None, ()))
    while frontier:
        order.extend(frontier)
        frontier = [c for name in frontier for c in children.get(name, ())]
    return QueueTree(queues=by_name, children=children, order=tuple(order))


def _validate_queue(q: Queue) -> None:
    if q.quota_milli < 0:
        raise InvalidSpecError(f"queue {q.name!r}: quota {q.quota_milli} milli-GPU is negative; use 0 or more")
    if q.limit_milli is not None:
        if q.limit_milli < 0:
            raise InvalidSpecError(
                f"queue {q.name!r}: limit {q.limit_milli} milli-GPU is negative; "
                "use 0 or more, or leave it unset for no cap"
            )
        if q.limit_milli < q.quota_milli:
            raise InvalidSpecError(
                f"queue {q.name!r}: quota {q.quota_milli / GPU_MILLI:g} GPUs is above its limit "
                f"{q.limit_milli / GPU_MILLI:g} GPUs; raise the limit or lower the quota"
            )
    if not math.isfinite(q.over_quota_weight) or q.over_quota_weight < 0:
        raise InvalidSpecError(
            f"queue {q.name!r}: over-quota weight {q.over_quota_weight!r} must be a finite number ≥ 0"
        )
    _validate_model_quotas(q)


def _validate_model_quotas(q: Queue) -> None:
    seen: set[str] = set()
    for entry in q.model_quotas:
        where = f"queue {q.name!r}: GPU model {entry.model!r}"
        if not entry.model:
            raise InvalidSpecError(f"queue {q.name!r}: a per-model quota has an empty model name; name the GPU model")
        if entry.model in seen:
            raise InvalidSpecError(f"{where} is listed twice; give one quota and limit per model")
        seen.add(entry.model)
        if entry.quota_milli < 0:
            raise InvalidSpecError(f"{where}: quota {entry.quota_milli} milli-GPU is negative; use 0 or more")
        if entry.limit_milli is not None:
            if entry.limit_milli < 0:
                raise InvalidSpecError(
                    f"{where}: limit {entry.limit_milli} milli-GPU is negative; use 0 or more (0 forbids the "
                    "model), or leave it unset for the queue's total limit"
                )
            if entry.limit_milli < entry.quota_milli:
                raise InvalidSpecError(
                    f"{where}: quota {entry.quota_milli / GPU_MILLI:g} GPUs is above its limit "
                    f"{entry.limit_milli / GPU_MILLI:g} GPUs; raise the limit or lower the quota"
                )
        w = entry.over_quota_weight
        if w is not None and (not math.isfinite(w) or w < 0):
            raise InvalidSpecError(f"{where}: over-quota weight {w!r} must be a finite number ≥ 0")
    in_models = sum(entry.quota_milli for entry in q.model_quotas)
    if in_models > q.quota_milli:
        raise InvalidSpecError(
            f"queue {q.name!r}: its per-model quotas add up to {in_models / GPU_MILLI:g} GPUs, above its total "
            f"quota of {q.quota_milli / GPU_MILLI:g} GPUs; raise the total quota to at least "
            f"{in_models / GPU_MILLI:g} or lower the per-model quotas"
        )


def _reject_cycles(by_name: Mapping[QueueName, Queue]) -> None:
    acyclic: set[QueueName] = set()
    for start in by_name:
        chain: list[QueueName] = []
        on_chain: set[QueueName] = set()
        name: QueueName | None = start
        while name is not None and name not in acyclic:
            if name in on_chain:
                loop = [*chain[chain.index(name) :], name]
                raise InvalidSpecError(
                    f"queue tree has a cycle: {' -> '.join(loop)}; point one of these queues' parent "
                    "at a queue outside the cycle, or at none to make it top level"
                )
            chain.append(name)
            on_chain.add(name)
            name = by_name[name].parent
        acyclic.update(chain)


def effective_reservations(tree: QueueTree) -> dict[QueueName, str | None]:
    """Each queue's node-pool reservation: its own `node_pool`, else its nearest ancestor's (None: shared)."""
    out: dict[QueueName, str | None] = {}
    for name in tree.order:  # parents first
        q = tree.queues[name]
        out[name] = q.node_pool if q.node_pool is not None else (None if q.parent is None else out[q.parent])
    return out


def model_names(queues: Sequence[Queue]) -> tuple[str, ...]:
    """The GPU models some queue sets a quota or limit for, sorted."""
    return tuple(sorted({entry.model for q in queues for entry in q.model_quotas}))


def compute_fair_shares(
    queues: Sequence[Queue],
    demand_milli: Mapping[QueueName, int],
    capacity_milli: float,
    *,
    pool_capacity_milli: Mapping[str, float] | None = None,
    model_capacity_milli: Mapping[tuple[str | None, str], float] | None = None,
    model_demand_milli: Mapping[str, Mapping[QueueName, int]] | None = None,
    usage_share: Mapping[QueueName, float] | None = None,
    usage_factor: float = 1.0,
) -> FairShares:
    """Divide `capacity_milli` among the queue tree, top-down (rules in the module docstring).

    `demand_milli`: per leaf queue, allocated + pending requests in milli-GPU; absent leaves demand 0.
    `pool_capacity_milli`: None = every GPU counts for every queue (`capacity_milli` is all of them).
    Given, it holds the GPUs of every node pool a queue reserves (`Queue.node_pool`, inherited by its
    subtree), and `capacity_milli` holds only the shared GPUs (those in no reserved pool): each
    reserved pool is divided among the queues reserved to it alone, the shared GPUs among the rest
    (docs/fairshare.md, "Reserved pools").
    `model_capacity_milli`: GPUs per (reserved pool or None for the shared GPUs, GPU model), and
    `model_demand_milli`: per model, per leaf queue, the demand that may use that model; with both,
    `FairShares.by_model` holds a division per model named in some queue's `model_quotas`.
    `usage_share`: per queue, decayed past usage as a fraction of cluster capacity over the window
    (time-based fair share; None = off). An inner queue without an entry uses the sum of its
    children. `usage_factor` is k in P = max(0, W + k·(W − U)).
    Raises `InvalidSpecError` for an invalid tree, demand on an inner or unknown queue, or negative /
    non-finite numbers.
    """
    tree = build_queue_tree(queues)
    if not math.isfinite(capacity_milli) or capacity_milli < 0:
        raise InvalidSpecError(f"capacity {capacity_milli!r} milli-GPU must be a finite number ≥ 0")
    if not math.isfinite(usage_factor) or usage_factor < 0:
        raise InvalidSpecError(f"usage factor k={usage_factor!r} must be a finite number ≥ 0")
    _check_demand(tree, demand_milli, "demand")
    if usage_share is not None:
        for name, u in usage_share.items():
            if name not in tree.queues:
                raise InvalidSpecError(f"usage given for unknown queue {name!r}")
            if not math.isfinite(u) or u < 0:
                raise InvalidSpecError(f"queue {name!r}: usage share {u!r} must be finite and ≥ 0")

    reservation: dict[QueueName, str | None] | None = None
    capacities: dict[str | None, float] = {None: float(capacity_milli)}
    if pool_capacity_milli is not None:
        reservation = effective_reservations(tree)
        for pool in sorted({p for p in reservation.values() if p is not None}):
            amount = pool_capacity_milli.get(pool)
            if amount is None:
                owners = sorted(q for q, p in reservation.items() if p == pool and tree.queues[q].node_pool == pool)
                raise InvalidSpecError(
                    f"node pool {pool!r} is reserved by queue(s) {', '.join(owners)} but its capacity was not "
                    "given; pass its GPUs in pool_capacity_milli (0 when it has no nodes)"
                )
            if not math.isfinite(amount) or amount < 0:
                raise InvalidSpecError(f"node pool {pool!r}: capacity {amount!r} milli-GPU must be finite and ≥ 0")
            capacities[pool] = float(amount)

    total = _partitioned(tree, reservation, _total_spec, demand_milli, capacities, usage_share, usage_factor)
    models = model_names(queues)
    if not models or model_capacity_milli is None:
        return total
    by_model: dict[str, FairShares] = {}
    for model in models:
        demand_m = (model_demand_milli or {}).get(model, {})
        _check_demand(tree, demand_m, f"demand for GPU model {model}")
        caps = {p: float(model_capacity_milli.get((p, model), 0.0)) for p in capacities}
        by_model[model] = _partitioned(tree, reservation, _model_spec(model), demand_m, caps, None, 1.0)
    return FairShares(
        share_milli=total.share_milli,
        deserved_milli=total.deserved_milli,
        requestable_milli=total.requestable_milli,
        demand_milli=total.demand_milli,
        deserved_scale=total.deserved_scale,
        capacity_milli=total.capacity_milli,
        by_model=by_model,
    )


def _check_demand(tree: QueueTree, demand_milli: Mapping[QueueName, int], what: str) -> None:
    for name, amount in demand_milli.items():
        if name not in tree.queues:
            raise InvalidSpecError(f"{what} given for unknown queue {name!r}; create the queue or drop the jobs")
        if not tree.is_leaf(name):
            raise InvalidSpecError(
                f"queue {name!r} has child queues ({', '.join(tree.children[name])}) and cannot hold jobs; "
                "submit the jobs to one of its leaf queues"
            )
        if not math.isfinite(amount) or amount < 0:
            raise InvalidSpecError(f"queue {name!r}: {what} {amount!r} milli-GPU must be finite and ≥ 0")


@dataclass(frozen=True, slots=True)
class _Spec:
    """One queue as one division sees it: the amounts for the resource divided (all GPUs or one
    model) in the partition divided (shared GPUs or one reserved pool)."""

    name: QueueName
    quota_milli: float
    limit_milli: float | None
    over_quota_weight: float
    priority: int


def _total_spec(q: Queue) -> _Spec:
    limit = None if q.limit_milli is None else float(q.limit_milli)
    return _Spec(q.name, float(q.quota_milli), limit, q.over_quota_weight, q.priority)


def _model_spec(model: str) -> Callable[[Queue], _Spec]:
    """A queue's amounts for one GPU model: its entry for the model, else quota 0 under its total limit."""

    def spec(q: Queue) -> _Spec:
        entry = q.model_quota(model)
        if entry is None:
            return replace(_total_spec(q), quota_milli=0.0)
        limit = entry.limit_milli if entry.limit_milli is not None else q.limit_milli
        weight = entry.over_quota_weight if entry.over_quota_weight is not None else q.over_quota_weight
        return _Spec(q.name, float(entry.quota_milli), None if limit is None else float(limit), weight, q.priority)

    return spec


@dataclass(slots=True)
class _Result:
    share: dict[QueueName, float]
    deserved: dict[QueueName, float]
    requestable: dict[QueueName, float]
    demand: dict[QueueName, float]
    scale: dict[QueueName, float]


def _partitioned(
    tree: QueueTree,
    reservation: Mapping[QueueName, str | None] | None,
    spec_of: Callable[[Queue], _Spec],
    demand_milli: Mapping[QueueName, int],
    capacities: Mapping[str | None, float],
    usage_share: Mapping[QueueName, float] | None,
    usage_factor: float,
) -> FairShares:
    """One division per partition (each reserved pool, then the shared GPUs), summed per queue.

    A leaf belongs to the partition of its effective reservation. A partition's GPUs are divided
    over the projection of the tree onto its leaves: those leaves and their ancestors, so a pool
    reaches only the subtree reserved to it (and passes through that subtree's ancestors, whose
    weights and limits still apply). In a partition a queue's quota is, for a queue of that
    partition, its quota minus the quotas of the topmost descendants reserved elsewhere; for an
    ancestor passing a pool through, the sum of its children's quotas there (at most its own). Its
    limit is what earlier partitions left of it, so the total never exceeds the limit.
    """
    specs = {name: spec_of(tree.queues[name]) for name in tree.order}
    total_capacity = math.fsum(capacities.values())
    if reservation is None or all(p is None for p in reservation.values()):
        r = _compute(tree.children, tree.order, specs, demand_milli, capacities[None], usage_share, usage_factor)
        return FairShares(r.share, r.deserved, r.requestable, r.demand, r.scale, total_capacity)

    # Quota a queue keeps in its own partition: minus its topmost descendants reserved elsewhere.
    away_quota: dict[QueueName, float] = {}
    for name in reversed(tree.order):
        away_quota[name] = math.fsum(
            specs[kid].quota_milli if reservation[kid] != reservation[name] else away_quota[kid]
            for kid in tree.children.get(name, ())
        )
    leaves_of: dict[str | None, list[QueueName]] = {}
    for leaf in tree.leaves:
        leaves_of.setdefault(reservation[leaf], []).append(leaf)

    remaining_limit = {name: specs[name].limit_milli for name in tree.order}
    share = dict.fromkeys(tree.order, 0.0)
    deserved = dict.fromkeys(tree.order, 0.0)
    requestable = dict.fromkeys(tree.order, 0.0)
    demand = dict.fromkeys(tree.order, 0.0)
    scale = dict.fromkeys(tree.order, 1.0)
    for part in sorted(leaves_of, key=lambda p: (p is None, p or "")):  # reserved pools first, shared last
        members: set[QueueName] = set()
        for leaf in leaves_of[part]:
            members.add(leaf)
            members.update(tree.ancestors(leaf))
        order = tuple(n for n in tree.order if n in members)
        kids: dict[QueueName | None, tuple[QueueName, ...]] = {
            parent: tuple(k for k in group if k in members) for parent, group in tree.children.items()
        }
        sub: dict[QueueName, _Spec] = {}
        for name in reversed(order):  # children first: a pass-through quota sums theirs
            s = specs[name]
            if reservation[name] == part:
                quota = max(0.0, s.quota_milli - away_quota[name])
            else:
                quota = min(s.quota_milli, math.fsum(sub[k].quota_milli for k in kids.get(name, ())))
            limit = remaining_limit[name]
            sub[name] = _Spec(name, quota, None if limit is None else max(0.0, limit), s.over_quota_weight, s.priority)
        capacity = capacities.get(part, 0.0)
        usage = None
        if usage_share is not None:
            # U is a fraction of the whole cluster; measured against this partition's GPUs instead.
            ratio = total_capacity / capacity if capacity > 0 else 0.0
            usage = {n: usage_share[n] * ratio for n in order if n in usage_share}
        r = _compute(kids, order, sub, demand_milli, capacity, usage, usage_factor)
        for name in order:
            share[name] += r.share[name]
            deserved[name] += r.deserved[name]
            requestable[name] += r.requestable[name]
            demand[name] += r.demand[name]
            scale[name] = min(scale[name], r.scale[name])
            limit = remaining_limit[name]
            if limit is not None:
                remaining_limit[name] = limit - r.share[name]
    return FairShares(
        share_milli=share,
        deserved_milli=deserved,
        requestable_milli=requestable,
        demand_milli=demand,
        deserved_scale=scale,
        capacity_milli=total_capacity,
    )


def _compute(
    children: Mapping[QueueName | None, tuple[QueueName, ...]],
    order: tuple[QueueName, ...],
    specs: Mapping[QueueName, _Spec],
    demand_milli: Mapping[QueueName, int],
    capacity_milli: float,
    usage_share: Mapping[QueueName, float] | None,
    usage_factor: float,
) -> _Result:
    """One division of `capacity_milli` over one tree (`children[None]` its roots, `order` top-down)."""
    # Bottom-up: demand, requestable and usage of inner queues come from their children.
    demand: dict[QueueName, float] = {}
    requestable: dict[QueueName, float] = {}
    usage: dict[QueueName, float] = {}
    for name in reversed(order):
        q = specs[name]
        kids = children.get(name, ())
        if kids:
            demand[name] = math.fsum(demand[k] for k in kids)
            req = math.fsum(requestable[k] for k in kids)
            used = math.fsum(usage[k] for k in kids)
        else:
            demand[name] = float(demand_milli.get(name, 0))
            req = demand[name]
            used = 0.0
        if q.limit_milli is not None:
            req = min(req, q.limit_milli)
        if q.over_quota_weight == 0:
            req = min(req, q.quota_milli)
        requestable[name] = req
        usage[name] = used if usage_share is None else usage_share.get(name, used)

    share: dict[QueueName, float] = {}
    deserved: dict[QueueName, float] = {}
    scale: dict[QueueName, float] = {}
    parents: list[QueueName | None] = [None, *order]
    for parent in parents:
        kids = children.get(parent, ())
        if not kids:
            continue
        available = capacity_milli if parent is None else share[parent]
        level = _divide(
            [specs[k] for k in kids],
            available,
            requestable,
            usage if usage_share is not None else None,
            usage_factor,
            # What the parent can hand out, as a fraction of the cluster: U is relative to it.
            parent_fraction=1.0 if parent is None or capacity_milli == 0 else available / capacity_milli,
        )
        share.update(level.share_milli)
        deserved.update(level.deserved_milli)
        scale.update(dict.fromkeys(kids, level.scale))
    return _Result(share=share, deserved=deserved, requestable=requestable, demand=demand, scale=scale)


@dataclass(frozen=True, slots=True)
class _Level:
    share_milli: dict[QueueName, float]
    deserved_milli: dict[QueueName, float]
    scale: float


def _divide(
    kids: Sequence[_Spec],
    available_milli: float,
    requestable: Mapping[QueueName, float],
    usage: Mapping[QueueName, float] | None,
    usage_factor: float,
    *,
    parent_fraction: float,
) -> _Level:
    """One level: the parent's `available_milli` divided among its children `kids`."""
    wanted = {k.name: min(k.quota_milli, requestable[k.name]) for k in kids}
    total_wanted = math.fsum(wanted.values())
    if total_wanted > available_milli:
        # Quotas over-committed at this level: scale every in-quota part by the same factor
        # (documented deviation from KAI, which grants them all and exceeds the capacity).
        factor = available_milli / total_wanted
        deserved = {name: amount * factor for name, amount in wanted.items()}
        return _Level(share_milli=dict(deserved), deserved_milli=deserved, scale=factor)

    share = dict(wanted)
    remaining = available_milli - total_wanted
    for priority in sorted({k.priority for k in kids}, reverse=True):
        if remaining <= _EPS_MILLI:
            break
        bucket = [
            k
            for k in kids
            if k.priority == priority and k.over_quota_weight > 0 and requestable[k.name] - share[k.name] > _EPS_MILLI
        ]
        if not bucket:
            continue
        configured = {k.name: k.over_quota_weight for k in bucket}
        if usage is not None:
            effective = _effective_weights(configured, usage, usage_factor, parent_fraction)
            remaining = _water_fill(effective, share, requestable, remaining)
        # Without usage this is the whole fill; with usage it only reaches queues whose P fell to 0.
        remaining = _water_fill(configured, share, requestable, remaining)
    return _Level(share_milli=share, deserved_milli=wanted, scale=1.0)


def _effective_weights(
    weights: Mapping[QueueName, float],
    usage: Mapping[QueueName, float],
    usage_factor: float,
    parent_fraction: float,
) -> dict[QueueName, float]:
    """P = max(0, W + k·(W − U)) for the competitors of one priority bucket.

    W: weight normalised among the competitors (sums to 1). U: the queue's past usage (fraction of
    the cluster) divided by the parent's share of the cluster now, i.e. its usage relative to what its
    parent could hand out. At the top level this is KAI's capacity-normalised usage, so light use of
    an idle cluster costs little; below it, the parent's current share stands in for the parent's
    capacity over the window (which the core does not know).
    """
    total = math.fsum(weights.values())
    out: dict[QueueName, float] = {}
    for name, w in weights.items():
        w_norm = w / total
        u = usage.get(name, 0.0) / parent_fraction if parent_fraction > 0 else 0.0
        out[name] = max(0.0, w_norm + usage_factor * (w_norm - u))
    return out


def _water_fill(
    weights: Mapping[QueueName, float],
    share: dict[QueueName, float],
    cap: Mapping[QueueName, float],
    remaining_milli: float,
) -> float:
    """Water-fill `remaining_milli` over `weights` (updating `share` in place); returns what is left.

    Each round offers remaining × w / Σw to every active queue; queues whose unmet request fits in
    their slice are filled exactly and leave, and the rest is re-offered. When no one is capped, every
    active queue takes its slice and nothing is left. Same fixed point as KAI's rounds.
    """
    active = [n for n, w in weights.items() if w > 0 and cap[n] - share[n] > _EPS_MILLI]
    while active and remaining_milli > _EPS_MILLI:
        per_weight = remaining_milli / math.fsum(weights[n] for n in active)
        capped = [n for n in active if cap[n] - share[n] <= per_weight * weights[n]]
        if not capped:
            for n in active:
                share[n] += per_weight * weights[n]
            return 0.0
        for n in capped:
            remaining_milli -= cap[n] - share[n]
            share[n] = cap[n]
        capped_set = set(capped)
        active = [n for n in active if n not in capped_set]
    return max(remaining_milli, 0.0)
