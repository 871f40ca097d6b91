"""Cluster state as a struct of arrays: what the placement kernels read and the cycle updates.

Built once from `model.Node` values (`ClusterState.from_nodes`), then kept current incrementally:
`allocate` and `release` touch one node's row, never rebuild. The cycle works on a `copy()` when it
tries what-if moves (preemption victims, consolidation), so a rejected plan costs one array copy.

Layout (N nodes, G = the largest GPU count of any node, L = number of labelled topology levels):
- `gpu_count[N]`, `gpu_free_milli[N, G]` (slots beyond a node's GPU count stay 0, so they never fit);
- `cpu_free_milli[N]`, `cpu_capacity_milli[N]`, `memory_free_mib[N]`, `memory_capacity_mib[N]`;
- `gpu_model[N]`, `node_pool[N]`, `jurisdiction[N]`: category codes (`codes.NONE` when absent);
  `node_mask` turns a job's labels, jurisdictions and allowed nodes into a boolean mask;
- `domain[N, L + 1]`: dense domain ids per level (unique per level, nested by construction because a
  domain is identified by its whole path from the top); `NONE` where the node lacks that label. The
  last column is the node level: the node's own index.
- `schedulable[N]`;
- per-node aggregates the placement kernels use as an O(1) prefilter, kept current by `allocate` and
  `release`: `gpu_whole_free[N]` (GPUs with all 1000 milli free) and `gpu_max_free_milli[N]` (the
  most free milli on any one GPU). Code that writes `gpu_free_milli` directly (tests, what-if
  tricks) must call `refresh_aggregates()` afterwards, or placement will use stale prefilters;
- `node_version[N]`: a stamp that changes whenever a node's free resources change (`allocate`,
  `release`, `refresh_aggregates`). Stamps are unique across all states of the process, so a
  `copy()` can share `score_cache` (placement's per-request-shape policy scores, valid while a
  node's stamp matches) with its original without ever reading a score of a different node state.

Who calls it: the cycle, the simulators and the placement layer (`placement.py` passes the arrays to
`placement_kernels.py`). This module holds data and bookkeeping only: no policy, no Kubernetes, no
clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import GPU_DTYPE, INDEX_DTYPE, NONE, RESOURCE_DTYPE
from leitstand.scheduler.model import GPU_MILLI, Node, NodeName, RunningJob, Topology

_NEXT_STAMP = [1]
"""Process-wide source of node version stamps (see `ClusterState.node_version`)."""


def _fresh_stamps(n: int) -> NDArray[np.int64]:
    start = _NEXT_STAMP[0]
    _NEXT_STAMP[0] = start + n
    return np.arange(start, start + n, dtype=np.int64)


def _domain_index(
    domain: NDArray[np.int32], domain_count: NDArray[np.int32]
) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """Per level: nodes sorted by domain id, and where each domain's run starts (see the fields)."""
    n, levels = domain.shape
    order = np.zeros((levels, n), dtype=INDEX_DTYPE)
    start = np.zeros((levels, n + 1), dtype=INDEX_DTYPE)
    for level in range(levels):
        ids = domain[:, level].astype(np.int64)
        key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
        order[level] = np.argsort(key, kind="stable")
        counts = np.bincount(ids[ids >= 0], minlength=int(domain_count[level]))
        start[level, 1 : len(counts) + 1] = np.cumsum(counts)
    return order, start


class StateError(ValueError):
    """An allocation or release that would corrupt the state (over-commit, unknown node)."""


def _codes(values: Iterable[str]) -> dict[str, int]:
    table: dict[str, int] = {}
    for value in values:
        if value and value not in table:
            table[value] = len(table)
    return table


@dataclass(slots=True)
class ClusterState:
    topology: Topology
    node_names: tuple[NodeName, ...]
    node_index: dict[NodeName, int]
    gpu_count: NDArray[np.int32]
    gpu_free_milli: NDArray[np.int32]
    cpu_free_milli: NDArray[np.int64]
    cpu_capacity_milli: NDArray[np.int64]
    memory_free_mib: NDArray[np.int64]
    memory_capacity_mib: NDArray[np.int64]
    gpu_model: NDArray[np.int32]
    node_pool: NDArray[np.int32]
    jurisdiction: NDArray[np.int32]
    domain: NDArray[np.int32]
    domain_count: NDArray[np.int32]
    """Number of domains per level (L + 1 entries; the last is N)."""
    schedulable: NDArray[np.bool_]
    model_codes: dict[str, int]
    pool_codes: dict[str, int]
    jurisdiction_codes: dict[str, int]
    domain_names: tuple[tuple[str, ...], ...]
    """Per level, the name of each domain id (the label value at that level)."""
    gpu_whole_free: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=INDEX_DTYPE))
    """Per node: GPUs with all `GPU_MILLI` free (derived; see `refresh_aggregates`)."""
    gpu_max_free_milli: NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=GPU_DTYPE))
    """Per node: the largest free milli-GPU on any one of its GPUs (derived)."""
    node_version: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Per node: changes whenever its free resources change (unique across states; see above)."""
    domain_order: NDArray[np.int32] = field(default_factory=lambda: np.zeros((0, 0), dtype=INDEX_DTYPE))
    """Static index, shape (L + 1, N): per level, node indices sorted by domain id (ascending node
    index inside a domain; unlabelled nodes last)."""
    domain_start: NDArray[np.int32] = field(default_factory=lambda: np.zeros((0, 0), dtype=INDEX_DTYPE))
    """Static index, shape (L + 1, N + 1): members of domain d at level l are
    `domain_order[l, domain_start[l, d] : domain_start[l, d + 1]]`."""
    score_cache: dict[Any, Any] = field(default_factory=dict)
    """Owned by `placement.py`: cached policy scores per request shape, checked against node_version."""
    mask_cache: dict[Any, Any] = field(default_factory=dict)
    """Static label masks memoised by `node_mask` (shared by copies: the labels never change)."""
    fit_cache: dict[Any, Any] = field(default_factory=dict)
    """Owned by `placement.py`: "never fits" diagnoses per request shape and node mask. They read
    only static arrays (capacities, domains), so copies share them."""
    fail_cache: dict[Any, Any] = field(default_factory=dict)
    """Owned by `placement.py`: one-replica requests that found no node, with the node stamps they
    were judged at (`placement._insufficient_again`). Checked against `node_version`, so copies share it."""
    request_cache: dict[Any, Any] = field(default_factory=dict)
    """Owned by `actions/context.py`: each pending job's gang request from earlier cycles, reused while
    the job, its queue's node-pool reservations and `schedulable` are unchanged (shared by copies)."""
    cycle_cache: dict[Any, Any] = field(default_factory=dict)
    """What a cycle leaves for the next (shared by copies): the running jobs' sums (`running.py`,
    under "running"), the pending jobs' sort into leaf queues (`pending.py`, under "pending"), the
    columns of the last victim pool per cost key (`victims.py`, keyed by the key function), failed
    consolidation shapes and when to try them again (`actions/consolidate.py`, under "consolidate"),
    the default placement policy (`cycle.py`, under ("policy", name)).
    docs/cycle.md, "What a kept state carries between cycles"."""
    running_log: list[tuple[bool, RunningJob]] | None = None
    """Jobs started (True) and ended (False) by `allocate_job` / `release_job` since a cycle last read
    this state (`running.open_running`, which starts the log); None: not recorded. Copies do not
    record: a cycle's what-ifs are not the caller's jobs."""
    max_node_gpus: int = -1
    """The most GPUs any one node has (static: computed once, shared by copies; placement asks on every call)."""

    def __post_init__(self) -> None:
        if self.max_node_gpus < 0:
            self.max_node_gpus = int(self.gpu_count.max(initial=0))
        if self.domain_order.shape != self.domain.shape[::-1]:
            self.domain_order, self.domain_start = _domain_index(self.domain, self.domain_count)
        if self.node_version.shape != self.gpu_count.shape:
            self.node_version = _fresh_stamps(self.gpu_count.shape[0])
        if self.gpu_whole_free.shape != self.gpu_count.shape or self.gpu_max_free_milli.shape != self.gpu_count.shape:
            self.gpu_whole_free = np.zeros(self.gpu_count.shape, dtype=INDEX_DTYPE)
            self.gpu_max_free_milli = np.zeros(self.gpu_count.shape, dtype=GPU_DTYPE)
            self.refresh_aggregates()

    def refresh_aggregates(self) -> None:
        """Recompute the per-node GPU aggregates from `gpu_free_milli` (all nodes, vectorised)."""
        free = self.gpu_free_milli
        self.node_version[:] = _fresh_stamps(self.node_version.shape[0])
        if free.shape[1] == 0:
            self.gpu_whole_free[:] = 0
            self.gpu_max_free_milli[:] = 0
            return
        self.gpu_whole_free[:] = (free == GPU_MILLI).sum(axis=1)
        self.gpu_max_free_milli[:] = free.max(axis=1)

    def _refresh_node(self, node: int, row: list[int] | None = None) -> None:
        """Re-stamp one node and recompute its aggregates; `row` is its `gpu_free_milli` row as a list
        when the caller has it (plain Python on an 8-entry row beats three numpy reductions)."""
        stamp = _NEXT_STAMP[0]
        _NEXT_STAMP[0] = stamp + 1
        self.node_version[node] = stamp
        if row is None:
            row = self.gpu_free_milli[node].tolist()
        self.gpu_whole_free[node] = row.count(GPU_MILLI)
        self.gpu_max_free_milli[node] = max(row) if row else 0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_nodes(cls, nodes: Sequence[Node], topology: Topology | None = None) -> ClusterState:
        topology = topology or Topology()
        n = len(nodes)
        n_levels = len(topology.levels)
        max_gpus = max([node.gpus for node in nodes] + [1])
        names = tuple(node.name for node in nodes)
        index = {name: i for i, name in enumerate(names)}
        if len(index) != n:
            dupes = sorted({name for name in names if names.count(name) > 1})
            raise StateError(f"duplicate node names: {', '.join(dupes[:5])}")
        model_codes = _codes(node.gpu_model for node in nodes)
        pool_codes = _codes(node.node_pool for node in nodes)
        jurisdiction_codes = _codes(node.jurisdiction for node in nodes)

        gpu_count = np.array([node.gpus for node in nodes], dtype=INDEX_DTYPE)
        gpu_free = np.zeros((n, max_gpus), dtype=GPU_DTYPE)
        for i, node in enumerate(nodes):
            if node.gpus < 0 or node.cpu_milli < 0 or node.memory_mib < 0:
                raise StateError(f"node {node.name}: capacities must be >= 0")
            gpu_free[i, : node.gpus] = GPU_MILLI
        cpu = np.array([node.cpu_milli for node in nodes], dtype=RESOURCE_DTYPE)
        mem = np.array([node.memory_mib for node in nodes], dtype=RESOURCE_DTYPE)

        domain = np.full((n, n_levels + 1), NONE, dtype=INDEX_DTYPE)
        domain_names: list[tuple[str, ...]] = []
        counts = []
        for level in range(n_levels):
            ids: dict[tuple[str, ...], int] = {}
            level_names: list[str] = []
            for i, node in enumerate(nodes):
                labels = tuple(node.topology[: level + 1])
                if len(labels) <= level or not labels[level]:
                    continue
                if labels not in ids:
                    ids[labels] = len(ids)
                    level_names.append(labels[level])
                domain[i, level] = ids[labels]
            domain_names.append(tuple(level_names))
            counts.append(len(ids))
        domain[:, n_levels] = np.arange(n, dtype=INDEX_DTYPE)
        domain_names.append(names)
        counts.append(n)

        def coded(table: dict[str, int], values: Iterable[str]) -> NDArray[np.int32]:
            return np.array([table.get(v, NONE) if v else NONE for v in values], dtype=INDEX_DTYPE)

        return cls(
            topology=topology,
            node_names=names,
            node_index=index,
            gpu_count=gpu_count,
            gpu_free_milli=gpu_free,
            cpu_free_milli=cpu.copy(),
            cpu_capacity_milli=cpu,
            memory_free_mib=mem.copy(),
            memory_capacity_mib=mem,
            gpu_model=coded(model_codes, (node.gpu_model for node in nodes)),
            node_pool=coded(pool_codes, (node.node_pool for node in nodes)),
            jurisdiction=coded(jurisdiction_codes, (node.jurisdiction for node in nodes)),
            domain=domain,
            domain_count=np.array(counts, dtype=INDEX_DTYPE),
            schedulable=np.array([node.schedulable for node in nodes], dtype=np.bool_),
            model_codes=model_codes,
            pool_codes=pool_codes,
            jurisdiction_codes=jurisdiction_codes,
            domain_names=tuple(domain_names),
        )

    def kernel_arrays(
        self,
    ) -> tuple[
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int64],
        NDArray[np.int64],
        NDArray[np.int64],
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int32],
        NDArray[np.int32],
    ]:
        """The state arrays in the order the placement kernels take them (their leading arguments).

        One definition for every caller of `placement_kernels.place_gang_kernel`, its reference twin
        and the inflation simulator's stream kernel.
        """
        return (
            self.gpu_free_milli,
            self.gpu_count,
            self.cpu_free_milli,
            self.cpu_capacity_milli,
            self.memory_free_mib,
            self.gpu_model,
            self.gpu_whole_free,
            self.gpu_max_free_milli,
            self.domain,
            self.domain_count,
            self.domain_order,
            self.domain_start,
        )

    def copy(self) -> ClusterState:
        """A what-if copy: the mutable arrays are copied, the static ones shared."""
        return ClusterState(
            topology=self.topology,
            node_names=self.node_names,
            node_index=self.node_index,
            gpu_count=self.gpu_count,
            gpu_free_milli=self.gpu_free_milli.copy(),
            cpu_free_milli=self.cpu_free_milli.copy(),
            cpu_capacity_milli=self.cpu_capacity_milli,
            memory_free_mib=self.memory_free_mib.copy(),
            memory_capacity_mib=self.memory_capacity_mib,
            gpu_model=self.gpu_model,
            node_pool=self.node_pool,
            jurisdiction=self.jurisdiction,
            domain=self.domain,
            domain_count=self.domain_count,
            schedulable=self.schedulable,
            model_codes=self.model_codes,
            pool_codes=self.pool_codes,
            jurisdiction_codes=self.jurisdiction_codes,
            domain_names=self.domain_names,
            gpu_whole_free=self.gpu_whole_free.copy(),
            gpu_max_free_milli=self.gpu_max_free_milli.copy(),
            node_version=self.node_version.copy(),
            domain_order=self.domain_order,
            domain_start=self.domain_start,
            score_cache=self.score_cache,
            mask_cache=self.mask_cache,
            fit_cache=self.fit_cache,
            fail_cache=self.fail_cache,
            request_cache=self.request_cache,
            cycle_cache=self.cycle_cache,
            max_node_gpus=self.max_node_gpus,
        )

    # -- sizes ----------------------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_levels(self) -> int:
        """Labelled topology levels (the node level is one more, at index `n_levels`)."""
        return len(self.topology.levels)

    @property
    def gpu_capacity_milli(self) -> int:
        return int(self.gpu_count.sum()) * int(GPU_MILLI)

    @property
    def gpu_used_milli(self) -> int:
        return self.gpu_capacity_milli - int(self.gpu_free_milli.sum())

    # -- incremental updates ---------------------------------------------------------------------

    def allocate(self, node: int, gpu_indices: Sequence[int], gpu_milli: int, cpu_milli: int, memory_mib: int) -> None:
        """Charge one replica to `node`. Raises StateError (and changes nothing) on over-commit."""
        gpus = list(gpu_indices)
        count = int(self.gpu_count[node])
        row = self.gpu_free_milli[node].tolist()
        for g in gpus:
            if not 0 <= g < count:
                raise StateError(f"node {self.node_names[node]} has no GPU {g}")
            if row[g] < gpu_milli:
                raise StateError(f"node {self.node_names[node]} GPU {g}: {gpu_milli} milli requested, {row[g]} free")
        if len(set(gpus)) != len(gpus):
            raise StateError(f"node {self.node_names[node]}: GPU indices repeat: {gpus}")
        if cpu_milli > self.cpu_free_milli[node] or memory_mib > self.memory_free_mib[node]:
            raise StateError(f"node {self.node_names[node]}: not enough CPU or memory left")
        for g in gpus:
            row[g] -= gpu_milli
        if gpus:
            self.gpu_free_milli[node] = row
        self.cpu_free_milli[node] -= cpu_milli
        self.memory_free_mib[node] -= memory_mib
        self._refresh_node(node, row)

    def release(self, node: int, gpu_indices: Sequence[int], gpu_milli: int, cpu_milli: int, memory_mib: int) -> None:
        """Give back what `allocate` charged. Raises StateError if it would exceed capacity."""
        row = self.gpu_free_milli[node].tolist()
        for g in gpu_indices:
            if row[g] + gpu_milli > GPU_MILLI:
                raise StateError(f"node {self.node_names[node]} GPU {g}: release beyond capacity")
        if (
            self.cpu_free_milli[node] + cpu_milli > self.cpu_capacity_milli[node]
            or self.memory_free_mib[node] + memory_mib > self.memory_capacity_mib[node]
        ):
            raise StateError(f"node {self.node_names[node]}: CPU or memory release beyond capacity")
        for g in gpu_indices:
            row[g] += gpu_milli
        if gpu_indices:
            self.gpu_free_milli[node] = row
        self.cpu_free_milli[node] += cpu_milli
        self.memory_free_mib[node] += memory_mib
        self._refresh_node(node, row)

    def allocate_job(self, running: RunningJob) -> None:
        """Charge every replica of a running job (all or nothing)."""
        job = running.job
        done: list[tuple[int, tuple[int, ...]]] = []
        try:
            for placement in running.placements:
                node = self._node(placement.node)
                self.allocate(node, placement.gpu_indices, job.gpu_milli, job.cpu_milli, job.memory_mib)
                done.append((node, placement.gpu_indices))
        except StateError:
            for node, gpus in done:
                self.release(node, gpus, job.gpu_milli, job.cpu_milli, job.memory_mib)
            raise
        if self.running_log is not None:
            self.running_log.append((True, running))

    def release_job(self, running: RunningJob) -> None:
        job = running.job
        for placement in running.placements:
            node = self._node(placement.node)
            self.release(node, placement.gpu_indices, job.gpu_milli, job.cpu_milli, job.memory_mib)
        if self.running_log is not None:
            self.running_log.append((False, running))

    def _node(self, name: NodeName) -> int:
        try:
            return self.node_index[name]
        except KeyError:
            raise StateError(f"unknown node {name!r}") from None

    # -- masks ------------------------------------------------------------------------------------

    def node_mask(
        self,
        *,
        node_pool: str | None = None,
        jurisdictions: Iterable[str] = frozenset(),
        gpu_models: Iterable[str] = (),
        excluded_pools: Iterable[str] = (),
        allowed_nodes: frozenset[NodeName] | None = None,
        shared: bool = False,
    ) -> NDArray[np.bool_]:
        """Nodes a job may use: schedulable, in its pool, in one of its jurisdictions (any when
        empty), of an allowed model, and among `allowed_nodes` (every node when None; names not in
        the cluster are ignored).

        The static part (labels and allowed nodes) is memoised in `mask_cache` (shared by copies);
        `schedulable` is applied fresh on every call. The key holds `jurisdictions` and
        `allowed_nodes` as the frozensets themselves: a frozenset computes its hash once, and a
        cache hit with the very object a previous call used compares by identity, so jobs that
        share one frozenset object (as the operator builds them) cost O(1) here however many nodes
        the set names. The result is a new array the caller may modify — unless `shared`: then it is a
        read-only array shared by every call with the same constraints while `schedulable` is
        unchanged (gang requests kept between cycles hold one mask per distinct constraint set, not one
        per job: 12.5 KB each at 12,500 nodes).
        """
        models = tuple(sorted(set(gpu_models)))
        places = frozenset(jurisdictions)  # the same object when it already is a frozenset
        key = (node_pool, places, models, tuple(sorted(set(excluded_pools))), allowed_nodes)
        static = self.mask_cache.get(key)
        if static is None:
            static = np.ones(self.n_nodes, dtype=np.bool_)
            if node_pool is not None:
                static &= self.node_pool == self.pool_codes.get(node_pool, -2)
            for pool in key[3]:
                if pool in self.pool_codes:
                    static &= self.node_pool != self.pool_codes[pool]
            if places:
                codes = [self.jurisdiction_codes.get(j, -2) for j in sorted(places)]
                static &= np.isin(self.jurisdiction, np.array(codes, dtype=INDEX_DTYPE))
            if models:
                codes = [self.model_codes.get(m, -2) for m in models]
                static &= np.isin(self.gpu_model, np.array(codes, dtype=INDEX_DTYPE))
            if allowed_nodes is not None:
                static &= self.named_mask(allowed_nodes)
            static.setflags(write=False)
            if len(self.mask_cache) >= 1024:
                self.mask_cache.clear()
            self.mask_cache[key] = static
        if shared:
            stamp = self.schedulable.tobytes()
            known = self.mask_cache.get(("shared", key))
            if known is not None and known[0] == stamp:
                shared_mask: NDArray[np.bool_] = known[1]
                return shared_mask
            shared_mask = static & self.schedulable
            shared_mask.setflags(write=False)
            self.mask_cache[("shared", key)] = (stamp, shared_mask)
            return shared_mask
        mask: NDArray[np.bool_] = static & self.schedulable
        return mask

    def named_mask(self, names: Iterable[NodeName]) -> NDArray[np.bool_]:
        """A new mask of the nodes with these names; names not in the cluster are ignored."""
        index = self.node_index
        rows = np.fromiter((index[n] for n in names if n in index), dtype=np.intp)
        mask = np.zeros(self.n_nodes, dtype=np.bool_)
        mask[rows] = True
        return mask
