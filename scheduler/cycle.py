"""One scheduling cycle: snapshot in, plan out.

What it holds: `run_cycle`, the only entry point of the decision core that the operator, the
simulators and the benchmarks call. It reads as KAI's cycle — open the snapshot, run the actions
(allocate, reclaim, preempt, consolidate, migrate, grow; one module each in `actions/`), close — written as
Kueue-style numbered steps, each timed into `Plan.phase_seconds` under a cycle id.

What it must not do: log (the operator writes one INFO line per cycle from `phase_seconds`), read a
clock other than for timings (`snapshot.now` is the scheduling time), or mutate the snapshot or the
caller's `ClusterState` (it works on a copy; only what the state keeps for later cycles changes).

Semantics are documented in `docs/cycle.md`; the Run:ai rules behind them in
`docs/semantics.md`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping

from leitstand.scheduler.actions import allocate, consolidate, grow, migrate, preempt, reclaim
from leitstand.scheduler.actions.context import CycleContext
from leitstand.scheduler.actions.shares import open_shares
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import (
    GPU_MILLI,
    PendingReasons,
    Plan,
    Queue,
    QueueName,
    SchedulerConfig,
    Snapshot,
    collector_paused,
)
from leitstand.scheduler.pending import open_pending
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.running import open_running
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import QueueAccounting, Statement

__all__ = ["ACTIONS", "run_cycle"]

ACTIONS: tuple[tuple[str, Callable[[CycleContext], None]], ...] = (
    ("allocate", allocate.run),
    ("reclaim", reclaim.run),
    ("preempt", preempt.run),
    ("consolidate", consolidate.run),
    ("migrate", migrate.run),
    ("grow", grow.run),
)
"""The actions of a cycle, in order (KAI's action list, then emptying nodes with stranded capacity
for waiting jobs, then growth of elastic gangs into what is left free)."""

_cycle_ids = itertools.count(1)


def run_cycle(
    snapshot: Snapshot,
    config: SchedulerConfig = SchedulerConfig(),  # noqa: B008 - frozen value, safe as a default
    *,
    state: ClusterState | None = None,
    policy_context: PolicyContext | None = None,
    stats: dict[str, int] | None = None,
) -> Plan:
    """Decide what to bind, what to evict and why the rest waits.

    `state`, when given, is an incrementally maintained `ClusterState` that already reflects
    `snapshot.running`; the cycle works on a copy of it and changes only what the state keeps for
    later cycles (its caches, and `running_log`, which it starts so that the next cycle sums only
    the jobs that started and ended: `running.open_running`). Without it, the state is built from
    the snapshot. `policy_context`, when given, replaces `PolicyContext.build(state, config.policy)`
    (a simulator that keeps its own typical-task table or seed). `stats`, when given, receives the
    cycle's counters (victim searches per action, their failures, placement calls in them, jobs a
    search budget cut off; `docs/cycle.md`) and the CPU time of each phase (`cpu_us_<phase>`), for
    benchmarks and diagnostics.

    Raises `InvalidSpecError` for an invalid queue tree and `StateError` when the running jobs
    over-commit the nodes; everything else that cannot run becomes a `PendingReason`.

    Python's cyclic garbage collector is paused while the cycle runs (and resumed after, if it was
    on): a cycle allocates a reason, a key and a few tuples per pending job, and the collections
    those allocations trigger scan the whole heap again and again for cycles the cycle never makes
    (~3 s of the ~11 s allocate took over the openb replay at load 1.0; docs/cycle.md). Reference
    counting frees its garbage as before; anything cyclic waits for the next collection after it.
    """
    with collector_paused():
        return _run_cycle(snapshot, config, state, policy_context, stats)


def _run_cycle(
    snapshot: Snapshot,
    config: SchedulerConfig,
    state: ClusterState | None,
    policy_context: PolicyContext | None,
    stats: dict[str, int] | None,
) -> Plan:
    cycle_id = next(_cycle_ids)
    phases: dict[str, float] = {}
    clock = time.perf_counter
    started = mark = clock()
    cpu_clock = time.thread_time
    cpu_mark = cpu_clock()

    def lap(name: str) -> None:
        nonlocal mark, cpu_mark
        now = clock()
        phases[name] = now - mark
        mark = now
        if stats is not None:  # CPU time of this thread per phase, in µs (immune to waiting for a core)
            cpu_now = cpu_clock()
            stats[f"cpu_us_{name}"] = round((cpu_now - cpu_mark) * 1e6)
            cpu_mark = cpu_now

    # 1. Open the snapshot: the working state (a copy; never the caller's arrays) and the queue tree.
    if state is None:
        work = ClusterState.from_nodes(snapshot.nodes, snapshot.topology)
        for held in snapshot.running:
            work.allocate_job(held)
    else:
        work = state.copy()
    tree = build_queue_tree(snapshot.queues)
    accounting = QueueAccounting.empty(tree)
    stmt = Statement(state=work, accounting=accounting, now=snapshot.now)
    # The running jobs by id and their charges per queue: summed afresh, or, with a kept state, the
    # last cycle's sums updated by the jobs that started and ended since (`running.open_running`).
    sums = open_running(snapshot.running, state)
    stmt.running = sums.by_id.copy()  # (a copy clones the table; `update` into an empty dict inserts one by one)
    for preemptible, charged in sums.charged.items():
        for queue, milli in charged.items():
            accounting.charge(queue, milli, preemptible=preemptible)
    lap("snapshot")

    # 2. Sort the pending jobs into their leaf queues, in job order (once for every action); jobs of
    #    unknown or inner queues wait here. Sorted afresh, or, with a kept state, the last cycle's
    #    sort with the jobs that started taken out and the new ones sorted in (`pending.open_pending`).
    waiting = open_pending(snapshot.pending, tree, state, sums.log)
    pending_by_queue = waiting.by_queue
    lap("queues")

    # 3. Fair share, once per cycle: capacity = GPUs of schedulable nodes (each reserved pool apart,
    #    per GPU model when queues set model quotas); leaf demand = allocated + pending (`open_shares`).
    capacity = float(work.gpu_count[work.schedulable].sum()) * GPU_MILLI
    usage = _usage_share(snapshot, config, capacity)
    shares = open_shares(
        tree, stmt, pending_by_queue, usage_share=usage, growth_milli=sums.growth, pending_milli=waiting.demand
    )
    lap("fair_share")

    # 4. The actions, in order, on one statement: allocate, reclaim, preempt, consolidate, migrate, grow.
    #    Elastic gangs (`Job.min_replicas`): allocate starts them with as many replicas as fit; reclaim
    #    and preempt shrink them toward their minimum before evicting anyone whole; grow adds replicas
    #    to those below full size from what is still free at the end.
    reserved = {q: _reservation(tree.queues, q) for q in tree.order}
    ctx = CycleContext(
        snapshot=snapshot,
        config=config,
        tree=tree,
        shares=shares,
        policy=policy_context if policy_context is not None else _default_policy(work, config.policy),
        stmt=stmt,
        pending_by_queue=pending_by_queue,
        reserved_pools=reserved,
        all_reserved=frozenset(p for p in reserved.values() if p is not None),
        # (`min_replicas` is None or at least 1: truthy exactly for elastic jobs; tested in C)
        elastic=sums.elastic or waiting.elastic > 0,
        running_priorities=sums.preemptible_priorities,
        running_sums=sums,
    )
    ctx.reasons.update(waiting.refused)
    for name, action in ACTIONS:
        action(ctx)
        lap(name)
    if stats is not None:
        stats.update(ctx.stats)

    # 5. Close: the statement's log is the plan; every pending job left unbound carries a reason.
    bindings = stmt.bindings()
    bound_now = {b.job_id for b in bindings}
    waiting.bound = bound_now  # (the next cycle's sort takes them out: `pending.open_pending`)
    pending = PendingReasons(snapshot.pending, bound_now, ctx.reasons, ctx.plain_failed)  # made when read
    lap("close")
    phases["total"] = clock() - started
    return Plan(
        bindings=bindings,
        evictions=stmt.evictions(),
        shrinks=stmt.shrinks(),
        grows=stmt.grows(),
        pending=pending,
        fair_share_milli=dict(shares.share_milli),
        model_fair_share_milli={m: dict(s.share_milli) for m, s in shares.by_model.items()},
        phase_seconds=phases,
        cycle_id=cycle_id,
    )


def _default_policy(work: ClusterState, policy: str) -> PolicyContext:
    """The placement policy a cycle uses when the caller gives none: `policy` with the default
    typical shapes, built once and kept in `cycle_cache` while the cluster is the same (the same
    GPU-model table object, which copies of a state share, and node count: all the build reads).
    A new context every cycle cost its build and, per request shape, a comparison of the two
    contexts' arrays before `placement` kept that shape's scores."""
    key = ("policy", policy)
    kept = work.cycle_cache.get(key)
    if kept is not None and kept[0] is work.model_codes and kept[1].node_rank.shape[0] == work.n_nodes:
        context: PolicyContext = kept[1]
        return context
    context = PolicyContext.build(work, policy)
    work.cycle_cache[key] = (work.model_codes, context)
    return context


def _reservation(queues: Mapping[QueueName, Queue], name: QueueName) -> str | None:
    """A queue's node pool reservation: its own, or its nearest ancestor's."""
    current: QueueName | None = name
    while current is not None:
        queue = queues[current]
        if queue.node_pool is not None:
            return queue.node_pool
        current = queue.parent
    return None


def _usage_share(snapshot: Snapshot, config: SchedulerConfig, capacity_milli: float) -> dict[QueueName, float] | None:
    """Decayed usage as a fraction of what the cluster could have delivered over the same window.

    With exponential decay of half-life h, the window integral of a constant capacity C is C·h/ln 2.
    """
    half_life = config.usage_half_life_seconds
    if half_life is None or not snapshot.usage_milli_seconds or capacity_milli <= 0:
        return None
    window = capacity_milli * half_life / math.log(2)
    return {q: used / window for q, used in snapshot.usage_milli_seconds.items()}
