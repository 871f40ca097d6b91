"""Scenario files (YAML) → a `Snapshot`, a `SchedulerConfig` and the expected decisions.

Who calls it: tests/test_scenarios.py (every tests/scenarios/*.yaml), and anyone who wants to turn a
field report into a test. The format is documented in tests/scenarios/README.md.

What it must not do: decide anything. It only translates; every error names the file and the field
(e.g. `reclaim-basic.yaml: pending[2].gpus: expected an integer ≥ 0, got 'eight'`).
Unknown keys are errors, so a typo never silently drops a constraint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leitstand.scheduler.fairshare import FairShares, compute_fair_shares
from leitstand.scheduler.model import (
    GPU_MILLI,
    NODE_LEVEL,
    EvictionKind,
    Job,
    JobId,
    ModelQuota,
    Node,
    NodeName,
    Queue,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Topology,
)

DEFAULT_CPU_CORES = 224
DEFAULT_MEMORY_GIB = 2048
ONLY_FAIRSHARE = "fairshare"


class ScenarioError(ValueError):
    """A scenario file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class BoundExpectation:
    job_id: JobId
    same_levels: tuple[str, ...] = ()
    """All replicas inside one domain of each of these topology levels ("node" = one host)."""
    nodes: frozenset[NodeName] | None = None
    """All replicas on nodes from this set."""
    replicas: int | None = None
    """Started with exactly this many replicas (an elastic job admitted below full size)."""


@dataclass(frozen=True)
class EvictionExpectation:
    job_id: JobId
    kind: EvictionKind | None = None


@dataclass(frozen=True)
class ResizeExpectation:
    """A running elastic job shrunk (replicas taken, `kind` reclaim or preempt) or grown."""

    job_id: JobId
    replicas: int | None = None
    """Replicas removed (shrunk) or added (grown); None = not checked."""
    kind: EvictionKind | None = None


@dataclass(frozen=True)
class Expectations:
    bound: tuple[BoundExpectation, ...] = ()
    """Exactly these jobs are bound (absent in the file = none)."""
    evicted: tuple[EvictionExpectation, ...] = ()
    """Exactly these jobs are evicted (absent in the file = none)."""
    shrunk: tuple[ResizeExpectation, ...] = ()
    """Exactly these elastic jobs give up replicas and keep running (absent in the file = none)."""
    grown: tuple[ResizeExpectation, ...] = ()
    """Exactly these elastic jobs get more replicas (absent in the file = none)."""
    pending: dict[JobId, str] = field(default_factory=dict)
    """These jobs stay pending with this reason code (others are not checked)."""
    fair_share_gpus: dict[QueueName, float] = field(default_factory=dict)
    model_fair_share_gpus: dict[str, dict[QueueName, float]] = field(default_factory=dict)
    """Per GPU model: queue → expected fair share of that model (`Plan.model_fair_share_milli`)."""
    tolerance_gpus: float = 0.01


@dataclass(frozen=True)
class Scenario:
    path: Path
    description: str
    only: str | None
    """"fairshare": checked with compute_fair_shares alone (no cycle needed)."""
    snapshot: Snapshot
    config: SchedulerConfig
    capacity_milli: float
    demand_milli: dict[QueueName, int]
    usage_share: dict[QueueName, float] | None
    usage_factor: float
    expect: Expectations

    @property
    def name(self) -> str:
        return self.path.stem

    def fair_shares(self) -> FairShares:
        return compute_fair_shares(
            self.snapshot.queues,
            self.demand_milli,
            self.capacity_milli,
            usage_share=self.usage_share,
            usage_factor=self.usage_factor,
        )


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path.name}: not valid YAML: {exc}") from None
    return _Parser(path.name).scenario(path, raw)


def gpus_to_milli(gpus: float) -> int:
    return round(gpus * float(GPU_MILLI))


class _Parser:
    """Walks the YAML tree; `where` is the field path used in error messages."""

    def __init__(self, file_name: str) -> None:
        self.file = file_name

    def fail(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.file}: {where}: {message}" if where else f"{self.file}: {message}")

    # --- primitive readers ------------------------------------------------------------------------

    def mapping(
        self, value: Any, where: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = set(value) - set(allowed)
        if unknown:
            raise self.fail(
                where,
                f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(sorted(allowed))}",
            )
        missing = set(required) - set(value)
        if missing:
            raise self.fail(where, f"missing required key(s) {', '.join(sorted(missing))}")
        return value

    def seq(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        return value

    def number(self, value: Any, where: str, *, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(where, f"expected a number, got {value!r}")
        if value < minimum:
            raise self.fail(where, f"expected a number ≥ {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, value: Any, where: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"expected an integer ≥ {minimum}, got {value!r}")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
            raise self.fail(where, f"expected a non-empty name, got {value!r}")
        return str(value)

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    # --- sections ---------------------------------------------------------------------------------

    def scenario(self, path: Path, raw: Any) -> Scenario:
        top = self.mapping(
            raw,
            "",
            {
                "description", "only", "now", "cluster", "queues", "running", "pending",
                "demand", "usage", "usage_gpu_seconds", "config", "expect",
            },
            {"queues", "expect"},
        )  # fmt: skip
        only = top.get("only")
        if only not in (None, ONLY_FAIRSHARE):
            raise self.fail("only", f"expected {ONLY_FAIRSHARE!r} or nothing, got {only!r}")
        topology, nodes, capacity_override = self.cluster(top.get("cluster"), needs_nodes=only is None)
        queues = tuple(self.queue(q, f"queues[{i}]") for i, q in enumerate(self.seq(top["queues"], "queues")))
        queue_names = {q.name for q in queues}
        node_by_name = {n.name: n for n in nodes}

        gpu_used: dict[tuple[NodeName, int], int] = {}
        running = tuple(
            self.running(r, f"running[{i}]", node_by_name, gpu_used, needs_placement=only is None)
            for i, r in enumerate(self.seq(top.get("running"), "running"))
        )
        pending = tuple(self.job(p, f"pending[{i}]") for i, p in enumerate(self.seq(top.get("pending"), "pending")))
        seen: set[str] = set()
        for i, job in enumerate([*(r.job for r in running), *pending]):
            where = f"running[{i}]" if i < len(running) else f"pending[{i - len(running)}]"
            if job.id in seen:
                raise self.fail(f"{where}.id", f"job id {job.id!r} is used twice")
            seen.add(job.id)
            if job.queue not in queue_names:
                raise self.fail(f"{where}.queue", f"queue {job.queue!r} is not defined under queues")
            for level in (job.required_level, job.preferred_level):
                if level is not None:
                    try:
                        topology.level_index(level)
                    except ValueError as exc:
                        raise self.fail(f"{where}.topology", str(exc)) from None
            unknown = sorted((job.allowed_nodes or frozenset()) - set(node_by_name))
            if unknown:
                known = ", ".join(sorted(node_by_name)[:8]) + (", ..." if len(node_by_name) > 8 else "")
                raise self.fail(
                    f"{where}.allowed_nodes",
                    f"unknown node(s) {', '.join(map(repr, unknown))} (nodes: {known or 'none'})",
                )

        demand: dict[QueueName, int] = {}
        for job in [*(r.job for r in running), *pending]:
            demand[job.queue] = demand.get(job.queue, 0) + job.gpu_milli_total
        raw_demand = top.get("demand")
        if raw_demand is not None:
            for name, gpus in self.mapping(raw_demand, "demand", {str(q) for q in queue_names}).items():
                demand[QueueName(name)] = gpus_to_milli(self.number(gpus, f"demand.{name}"))

        usage_share, usage_factor = self.usage(top.get("usage"), queue_names)
        usage_seconds = {
            QueueName(name): self.number(v, f"usage_gpu_seconds.{name}") * GPU_MILLI
            for name, v in self.mapping(
                top.get("usage_gpu_seconds", {}), "usage_gpu_seconds", {str(q) for q in queue_names}
            ).items()
        }
        capacity = (
            capacity_override
            if capacity_override is not None
            else float(sum(n.gpus * GPU_MILLI for n in nodes if n.schedulable))
        )
        expect = self.expect(top["expect"], only, topology, seen, queue_names)
        snapshot = Snapshot(
            nodes=nodes,
            queues=queues,
            pending=pending,
            running=running,
            topology=topology,
            now=self.number(top.get("now", 0.0), "now"),
            usage_milli_seconds=usage_seconds,
        )
        return Scenario(
            path=path,
            description=str(top.get("description", "")).strip(),
            only=only,
            snapshot=snapshot,
            config=self.config(top.get("config")),
            capacity_milli=capacity,
            demand_milli=demand,
            usage_share=usage_share,
            usage_factor=usage_factor,
            expect=expect,
        )

    def cluster(self, raw: Any, *, needs_nodes: bool) -> tuple[Topology, tuple[Node, ...], float | None]:
        if raw is None:
            raise self.fail("cluster", "missing: give nodes (or, for `only: fairshare`, capacity_gpus)")
        c = self.mapping(raw, "cluster", {"topology", "nodes", "capacity_gpus"})
        levels = tuple(
            self.text(v, f"cluster.topology[{i}]")
            for i, v in enumerate(self.seq(c.get("topology"), "cluster.topology"))
        )
        if NODE_LEVEL in levels:
            raise self.fail("cluster.topology", f"{NODE_LEVEL!r} is the implicit lowest level; do not list it")
        topology = Topology(levels=levels)
        nodes: list[Node] = []
        counters: dict[str, int] = {}
        for g, group in enumerate(self.seq(c.get("nodes"), "cluster.nodes")):
            where = f"cluster.nodes[{g}]"
            spec = self.mapping(
                group,
                where,
                {
                    "count",
                    "gpus",
                    "model",
                    "topology",
                    "pool",
                    "jurisdiction",
                    "cpu",
                    "memory_gib",
                    "name",
                    "schedulable",
                },
            )
            domains = self.mapping(spec.get("topology", {}), f"{where}.topology", set(levels))
            labels = tuple(str(domains[level]) if level in domains else "" for level in levels)
            pattern = spec.get("name")
            prefix = "-".join(v for v in labels if v) or "n"
            for _ in range(self.integer(spec.get("count", 1), f"{where}.count", minimum=1)):
                if pattern is not None:
                    k = counters.get(str(pattern), 0)
                    counters[str(pattern)] = k + 1
                    name = str(pattern).format(i=k) if "{i}" in str(pattern) else str(pattern)
                else:
                    k = counters.get(prefix, 0)
                    counters[prefix] = k + 1
                    name = f"{prefix}-n{k}" if prefix != "n" else f"n{k}"
                if any(n.name == name for n in nodes):
                    raise self.fail(f"{where}.name", f"node name {name!r} is generated twice; use a name with {{i}}")
                nodes.append(
                    Node(
                        name=NodeName(name),
                        gpus=self.integer(spec.get("gpus", 8), f"{where}.gpus"),
                        cpu_milli=round(self.number(spec.get("cpu", DEFAULT_CPU_CORES), f"{where}.cpu") * 1000),
                        memory_mib=round(
                            self.number(spec.get("memory_gib", DEFAULT_MEMORY_GIB), f"{where}.memory_gib") * 1024
                        ),
                        gpu_model=str(spec.get("model", "B200")),
                        node_pool=str(spec.get("pool", "default")),
                        jurisdiction=str(spec.get("jurisdiction", "")),
                        topology=labels,
                        schedulable=self.flag(spec.get("schedulable", True), f"{where}.schedulable"),
                    )
                )
        capacity = c.get("capacity_gpus")
        capacity_milli = None if capacity is None else self.number(capacity, "cluster.capacity_gpus") * GPU_MILLI
        if needs_nodes and not nodes:
            raise self.fail("cluster.nodes", "a cycle scenario needs at least one node group")
        if not nodes and capacity_milli is None:
            raise self.fail("cluster", "no nodes and no capacity_gpus: nothing to divide")
        return topology, tuple(nodes), capacity_milli

    def queue(self, raw: Any, where: str) -> Queue:
        q = self.mapping(
            raw,
            where,
            {"name", "parent", "quota", "limit", "weight", "priority", "pool", "created_at", "models"},
            {"name"},
        )
        limit = q.get("limit")
        parent = q.get("parent")
        model_quotas = []
        for model, entry in self.mapping(q.get("models") or {}, f"{where}.models", set(q.get("models") or {})).items():
            at = f"{where}.models.{model}"
            m = self.mapping(entry, at, {"quota", "limit", "weight"})
            model_limit = m.get("limit")
            model_quotas.append(
                ModelQuota(
                    model=self.text(model, at),
                    quota_milli=gpus_to_milli(self.number(m.get("quota", 0), f"{at}.quota")),
                    limit_milli=None if model_limit is None else gpus_to_milli(self.number(model_limit, f"{at}.limit")),
                    over_quota_weight=None if m.get("weight") is None else self.number(m["weight"], f"{at}.weight"),
                )
            )
        return Queue(
            name=QueueName(self.text(q["name"], f"{where}.name")),
            parent=None if parent is None else QueueName(self.text(parent, f"{where}.parent")),
            quota_milli=gpus_to_milli(self.number(q.get("quota", 0), f"{where}.quota")),
            limit_milli=None if limit is None else gpus_to_milli(self.number(limit, f"{where}.limit")),
            over_quota_weight=self.number(q.get("weight", 1.0), f"{where}.weight"),
            priority=self.integer(q.get("priority", 100), f"{where}.priority", minimum=-(2**31)),
            node_pool=None if q.get("pool") is None else str(q["pool"]),
            created_at=self.number(q.get("created_at", 0.0), f"{where}.created_at", minimum=-math.inf),
            model_quotas=tuple(model_quotas),
        )

    _JOB_KEYS = frozenset(
        {"id", "queue", "replicas", "gpus", "gpu", "priority", "preemptible", "topology", "created_at",
         "model", "models", "pool", "jurisdiction", "jurisdictions", "allowed_nodes", "cpu", "memory_gib",
         "min_replicas"}
    )  # fmt: skip

    def job(self, raw: Any, where: str, extra_keys: frozenset[str] = frozenset()) -> Job:
        j = self.mapping(raw, where, set(self._JOB_KEYS | extra_keys), {"id", "queue"})
        gpus = self.integer(j.get("gpus", 1), f"{where}.gpus")
        gpu_milli = GPU_MILLI
        if "gpu" in j:
            fraction = self.number(j["gpu"], f"{where}.gpu")
            if not 0 < fraction <= 1:
                raise self.fail(
                    f"{where}.gpu", f"a GPU fraction must be in (0, 1], got {fraction!r}; use gpus: N for whole GPUs"
                )
            if "gpus" in j and gpus != 1:
                raise self.fail(f"{where}.gpu", "a fractional job uses one GPU per replica: drop gpus or set it to 1")
            gpus, gpu_milli = 1, gpus_to_milli(fraction)
        topo = self.mapping(j.get("topology", {}), f"{where}.topology", {"required", "preferred"})
        models = j.get("models", [j["model"]] if "model" in j else [])
        preemptible = j.get("preemptible")
        if "jurisdiction" in j and "jurisdictions" in j:
            raise self.fail(f"{where}.jurisdictions", "give jurisdiction (one) or jurisdictions (a list), not both")
        places = (
            [self.text(j["jurisdiction"], f"{where}.jurisdiction")]
            if j.get("jurisdiction") is not None
            else [
                self.text(v, f"{where}.jurisdictions[{k}]")
                for k, v in enumerate(self.seq(j.get("jurisdictions"), f"{where}.jurisdictions"))
            ]
        )
        allowed = j.get("allowed_nodes")
        replicas = self.integer(j.get("replicas", 1), f"{where}.replicas", minimum=1)
        low = j.get("min_replicas")
        if low is not None:
            low = self.integer(low, f"{where}.min_replicas", minimum=1)
            if low > replicas:
                raise self.fail(f"{where}.min_replicas", f"expected at most replicas ({replicas}), got {low}")
        return Job(
            id=JobId(self.text(j["id"], f"{where}.id")),
            queue=QueueName(self.text(j["queue"], f"{where}.queue")),
            replicas=replicas,
            min_replicas=low,
            gpus=gpus,
            gpu_milli=gpu_milli,
            cpu_milli=round(self.number(j.get("cpu", 0), f"{where}.cpu") * 1000),
            memory_mib=round(self.number(j.get("memory_gib", 0), f"{where}.memory_gib") * 1024),
            gpu_models=frozenset(str(m) for m in self.seq(models, f"{where}.models")),
            required_level=None if topo.get("required") is None else str(topo["required"]),
            preferred_level=None if topo.get("preferred") is None else str(topo["preferred"]),
            node_pool=None if j.get("pool") is None else str(j["pool"]),
            jurisdictions=frozenset(places),
            allowed_nodes=None
            if allowed is None
            else frozenset(
                NodeName(self.text(v, f"{where}.allowed_nodes[{k}]"))
                for k, v in enumerate(self.seq(allowed, f"{where}.allowed_nodes"))
            ),
            priority=self.integer(j.get("priority", 50), f"{where}.priority", minimum=-(2**31)),
            preemptible=None if preemptible is None else self.flag(preemptible, f"{where}.preemptible"),
            created_at=self.number(j.get("created_at", 0.0), f"{where}.created_at", minimum=-math.inf),
        )

    def running(
        self,
        raw: Any,
        where: str,
        nodes: Mapping[NodeName, Node],
        gpu_used: dict[tuple[NodeName, int], int],
        *,
        needs_placement: bool,
    ) -> RunningJob:
        job = self.job(raw, where, frozenset({"placement", "started_at"}))
        started_at = self.number(raw.get("started_at", 0.0), f"{where}.started_at", minimum=-math.inf)
        placement_raw = raw.get("placement")
        if placement_raw is None:
            if needs_placement:
                raise self.fail(f"{where}.placement", "missing: a running job needs one {node, gpus} entry per replica")
            return RunningJob(job=job, placements=(), started_at=started_at)
        entries = self.seq(placement_raw, f"{where}.placement")
        low = job.replicas if job.min_replicas is None else job.min_replicas
        if not low <= len(entries) <= job.replicas:
            wanted = f"{job.replicas}" if low == job.replicas else f"{low} to {job.replicas}"
            raise self.fail(f"{where}.placement", f"{wanted} replica(s) but {len(entries)} placement entries")
        placements = []
        for r, entry in enumerate(entries):
            at = f"{where}.placement[{r}]"
            e = self.mapping(entry, at, {"node", "gpus"}, {"node"})
            node_name = NodeName(self.text(e["node"], f"{at}.node"))
            node = nodes.get(node_name)
            if node is None:
                known = ", ".join(sorted(nodes)[:8])
                raise self.fail(
                    f"{at}.node", f"unknown node {node_name!r} (nodes: {known}{', ...' if len(nodes) > 8 else ''})"
                )
            if "gpus" in e:
                indices = tuple(
                    self.integer(g, f"{at}.gpus[{k}]") for k, g in enumerate(self.seq(e["gpus"], f"{at}.gpus"))
                )
                if len(indices) != job.gpus:
                    raise self.fail(f"{at}.gpus", f"the job needs {job.gpus} GPU(s) per replica, {len(indices)} given")
            else:
                free = [g for g in range(node.gpus) if gpu_used.get((node_name, g), 0) + job.gpu_milli <= GPU_MILLI]
                if len(free) < job.gpus:
                    raise self.fail(f"{at}", f"node {node_name!r} has no {job.gpus} GPU(s) left for this replica")
                indices = tuple(free[: job.gpus])
            for g in indices:
                if g >= node.gpus:
                    raise self.fail(f"{at}.gpus", f"node {node_name!r} has GPUs 0..{node.gpus - 1}, not {g}")
                used = gpu_used.get((node_name, g), 0) + job.gpu_milli
                if used > GPU_MILLI:
                    raise self.fail(f"{at}.gpus", f"GPU {g} of node {node_name!r} is over-committed ({used} milli)")
                gpu_used[(node_name, g)] = used
            placements.append(ReplicaPlacement(node=node_name, gpu_indices=indices))
        return RunningJob(job=job, placements=tuple(placements), started_at=started_at)

    def usage(self, raw: Any, queues: set[QueueName]) -> tuple[dict[QueueName, float] | None, float]:
        if raw is None:
            return None, 1.0
        u = self.mapping(raw, "usage", {"share", "factor"}, {"share"})
        shares = {
            QueueName(k): self.number(v, f"usage.share.{k}")
            for k, v in self.mapping(u["share"], "usage.share", {str(q) for q in queues}).items()
        }
        return shares, self.number(u.get("factor", 1.0), "usage.factor")

    def config(self, raw: Any) -> SchedulerConfig:
        if raw is None:
            return SchedulerConfig()
        allowed = {f.name for f in dataclasses.fields(SchedulerConfig)}
        overrides = self.mapping(raw, "config", allowed)
        try:
            return dataclasses.replace(SchedulerConfig(), **overrides)
        except (TypeError, ValueError) as exc:
            raise self.fail("config", str(exc)) from None

    def expect(
        self,
        raw: Any,
        only: str | None,
        topology: Topology,
        job_ids: set[str],
        queues: set[QueueName],
    ) -> Expectations:
        e = self.mapping(
            raw,
            "expect",
            {"bound", "evicted", "shrunk", "grown", "pending", "fair_share", "fair_share_by_model", "tolerance"},
        )
        if only == ONLY_FAIRSHARE:
            extra = {"bound", "evicted", "shrunk", "grown", "pending", "fair_share_by_model"} & set(e)
            if extra:
                raise self.fail("expect", f"`only: fairshare` runs no cycle: drop {', '.join(sorted(extra))}")
            if "fair_share" not in e:
                raise self.fail("expect.fair_share", "missing: an `only: fairshare` scenario must expect fair shares")

        def known_job(value: Any, where: str) -> JobId:
            job_id = self.text(value, where)
            if job_id not in job_ids:
                raise self.fail(where, f"job {job_id!r} is neither running nor pending in this scenario")
            return JobId(job_id)

        same_keys = {f"same_{level}" for level in (*topology.levels, NODE_LEVEL)}
        bound = []
        for i, item in enumerate(self.seq(e.get("bound"), "expect.bound")):
            where = f"expect.bound[{i}]"
            if not isinstance(item, dict):
                bound.append(BoundExpectation(known_job(item, where)))
                continue
            b = self.mapping(item, where, {"id", "nodes", "replicas"} | same_keys, {"id"})
            same = tuple(k.removeprefix("same_") for k in sorted(same_keys) if b.get(k) is True)
            nodes = b.get("nodes")
            bound.append(
                BoundExpectation(
                    known_job(b["id"], f"{where}.id"),
                    same_levels=same,
                    nodes=None
                    if nodes is None
                    else frozenset(NodeName(str(n)) for n in self.seq(nodes, f"{where}.nodes")),
                    replicas=None
                    if "replicas" not in b
                    else self.integer(b["replicas"], f"{where}.replicas", minimum=1),
                )
            )
        evicted = []
        for i, item in enumerate(self.seq(e.get("evicted"), "expect.evicted")):
            where = f"expect.evicted[{i}]"
            if not isinstance(item, dict):
                evicted.append(EvictionExpectation(known_job(item, where)))
                continue
            v = self.mapping(item, where, {"id", "kind"}, {"id"})
            kind = None
            if "kind" in v:
                try:
                    kind = EvictionKind(str(v["kind"]))
                except ValueError:
                    choices = ", ".join(k.value for k in EvictionKind)
                    raise self.fail(f"{where}.kind", f"expected one of {choices}, got {v['kind']!r}") from None
            evicted.append(EvictionExpectation(known_job(v["id"], f"{where}.id"), kind))
        resized: dict[str, list[ResizeExpectation]] = {"shrunk": [], "grown": []}
        for section, out in resized.items():
            for i, item in enumerate(self.seq(e.get(section), f"expect.{section}")):
                where = f"expect.{section}[{i}]"
                if not isinstance(item, dict):
                    out.append(ResizeExpectation(known_job(item, where)))
                    continue
                keys = {"id", "replicas", "kind"} if section == "shrunk" else {"id", "replicas"}
                r = self.mapping(item, where, keys, {"id"})
                kind = None
                if "kind" in r:
                    if r["kind"] not in ("reclaim", "preempt"):
                        raise self.fail(f"{where}.kind", f"expected reclaim or preempt, got {r['kind']!r}")
                    kind = EvictionKind(r["kind"])
                out.append(
                    ResizeExpectation(
                        known_job(r["id"], f"{where}.id"),
                        None if "replicas" not in r else self.integer(r["replicas"], f"{where}.replicas", minimum=1),
                        kind,
                    )
                )
        pending_raw = e.get("pending") or {}
        if not isinstance(pending_raw, dict):
            raise self.fail("expect.pending", "expected a mapping job id → reason code")
        pending = {
            known_job(k, f"expect.pending.{k}"): self.text(v, f"expect.pending.{k}") for k, v in pending_raw.items()
        }
        fair = {
            QueueName(k): self.number(v, f"expect.fair_share.{k}")
            for k, v in self.mapping(e.get("fair_share") or {}, "expect.fair_share", {str(q) for q in queues}).items()
        }
        raw_models = e.get("fair_share_by_model") or {}
        by_model = {
            str(model): {
                QueueName(k): self.number(v, f"expect.fair_share_by_model.{model}.{k}")
                for k, v in self.mapping(
                    shares, f"expect.fair_share_by_model.{model}", {str(q) for q in queues}
                ).items()
            }
            for model, shares in self.mapping(raw_models, "expect.fair_share_by_model", set(raw_models)).items()
        }
        return Expectations(
            bound=tuple(bound),
            evicted=tuple(evicted),
            shrunk=tuple(resized["shrunk"]),
            grown=tuple(resized["grown"]),
            pending=pending,
            fair_share_gpus=fair,
            model_fair_share_gpus=by_model,
            tolerance_gpus=self.number(e.get("tolerance", 0.01), "expect.tolerance"),
        )
