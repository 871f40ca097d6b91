"""`leitstand bench e2e`: Leitstand side by side with the real kube-scheduler and a raw create+bind loop,
and (`--kai`) KAI Scheduler's published scale-test shapes, on the local cluster.

Side by side (the default): one cluster (`--nodes` simulated 8-GPU nodes in racks of `--nodes-per-rack`,
started here with kube-scheduler unless `--run` names a running one), one seeded workload, five paths
one after the other, each on an empty namespace:

* **raw**: the create+bind loop of `leitstand bench operator` (imported from `bench_operator`: the
  operator's pod shape, its client and identity), binding every pod to a precomputed tight packing.
  No scheduling logic: the API server's ceiling for this workload.
* **floor**: the TrainingJob floor of `leitstand bench operator` (`bench_operator.submit_floor`): per
  job the tenant's TrainingJob POST, then as leitstand-operator its pods (owned by it) and their binds
  to the same tight packing, one status write per job after the last bind; no watch, no decision. What
  any operator of TrainingJobs must ask of the API server: the most such an operator could reach.
* **kube-scheduler**: plain pods with `nvidia.com/gpu` limits and `schedulerName: default-scheduler`,
  scheduled by the kube-scheduler the cluster started (its client QPS/burst read from its command line;
  the local cluster passes none, so the defaults QPS 50 / burst 100 apply).
* **kube-scheduler, QPS raised** (`--kube-qps`, default 1000, burst 2×): a second kube-scheduler from
  the same binary, started here for its phase only with a KubeSchedulerConfiguration whose only
  changes are the client QPS/burst and the profile name (the pods name that profile), so a client
  rate limit is not what is measured. 0 skips it.
* **leitstand**: `leitstand run` as `leitstand-operator` (started for its phase), the same jobs
  submitted as TrainingJobs through the API, as `kubectl apply` would.

The workload fills the cluster exactly when packed well: a quarter of the GPUs as one-GPU jobs,
a quarter as 8-GPU jobs, half as gangs of 4 × 8 GPUs, submitted in a seeded random order (a gang's
4 pods together). Reported per path: pods bound per second (pods bound / first submission → last bind),
time to all bound (or how many never were), gangs left partly placed (pods of a 4-pod gang bound
while a sibling is not: kube-scheduler has no gangs), the GPUs those partial gangs hold, and GPUs
stranded: free GPUs on nodes where no waiting job could place even one pod, once the path settled
(all bound, or no bind for `--settle` seconds).

`--kai`: the shapes of KAI Scheduler's nightly scale test (500 KWOK nodes there) through TrainingJobs:
fill the cluster with one-GPU jobs; reclaim all of them for another queue; reclaim the whole cluster
for one job of one 8-GPU pod per node; one 512-pod × 2-GPU job with a preferred rack. Our time is
printed beside KAI's published example (measured on a bigger machine).

Numbers only: nothing is asserted. Everything this command starts is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leitstand.operator.bench_operator import (
    FLOOR_PREFIX,
    GPU_RESOURCE,
    JOB_LABEL,
    NAMESPACE,
    NODE_GPUS,
    TJ_API,
    CpuSampler,
    PodWatch,
    Submission,
    Workload,
    _pool,
    raw_pods,
    submit_floor,
    submit_raw,
    trainingjob,
)

if TYPE_CHECKING:
    from rich.console import Console

    from leitstand.operator.service.kubeclient import KubeClient
    from leitstand.operator.service.launcher import OperatorProcess

Report = Callable[[str], None]

GANG_REPLICAS = 4
DEFAULT_SCHEDULER = "default-scheduler"
RAISED_SCHEDULER = "bench-kube-scheduler-qps"
KUBE_SCHEDULER_DEFAULT_QPS = 50.0
KUBE_SCHEDULER_DEFAULT_BURST = 100
IDENTITY = "leitstand-bench-e2e"
PATHS = ("raw", "floor", "kube-scheduler", "kube-scheduler-qps", "leitstand")
GOAL_TIMES_KUBE = 5.0
GOAL_PERCENT_RAW = 80.0


# --------------------------------------------------------------------------------------------------
# Options and the workload (pure)


@dataclass(frozen=True, slots=True)
class Options:
    nodes: int = 256
    nodes_per_rack: int = 32
    kube_qps: float = 1000.0
    concurrency: int = 64
    settle: float = 10.0
    timeout: float = 600.0
    seed: int = 42
    repeat: int = 1
    paths: tuple[str, ...] = PATHS
    kai: bool = False
    run: Path | None = None
    keep_cluster: bool = False
    log_dir: Path | None = None


def parse_paths(text: str) -> tuple[str, ...]:
    """`raw,leitstand` → ("raw", "leitstand"), in the order given; unknown names raise ValueError."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in PATHS]
    if unknown or not names:
        raise ValueError(f"--paths {text!r}: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(PATHS)}")
    return names


def check_options(opts: Options) -> None:
    """Raise ValueError naming the option when the combination cannot run; no cluster is touched."""
    if opts.kai:
        if opts.nodes < 2:
            raise ValueError(f"--nodes {opts.nodes}: the KAI shapes need at least 2 nodes")
    elif opts.nodes < 8:
        raise ValueError(f"--nodes {opts.nodes}: the mixed workload (one-GPU, 8-GPU jobs, 4 × 8-GPU gangs) "
                         "needs at least 8 nodes")
    if opts.nodes_per_rack < 1:
        raise ValueError(f"--nodes-per-rack {opts.nodes_per_rack}: must be >= 1")
    if opts.kube_qps < 0:
        raise ValueError(f"--kube-qps {opts.kube_qps}: must be >= 0 (0 skips the raised-QPS kube-scheduler)")
    if opts.concurrency < 1:
        raise ValueError(f"--concurrency {opts.concurrency}: must be >= 1")
    if opts.repeat < 1:
        raise ValueError(f"--repeat {opts.repeat}: must be >= 1")
    if not opts.settle > 0:
        raise ValueError(f"--settle {opts.settle}: must be > 0 seconds")
    if not opts.timeout > 0:
        raise ValueError(f"--timeout {opts.timeout}: must be > 0 seconds")


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    kind: str
    """"one-gpu", "8-gpu" or "gang"."""
    replicas: int
    gpus: int
    """GPUs per replica."""


def mixed_workload(nodes: int, seed: int, node_gpus: int = NODE_GPUS) -> list[Job]:
    """Jobs that fill `nodes` × `node_gpus` exactly when packed tightly: half the nodes as gangs of
    4 × full nodes, a quarter as full-node jobs, the rest as one-GPU jobs; seeded random order."""
    gangs = nodes // 2 // GANG_REPLICAS
    whole = nodes // 4
    single_nodes = nodes - gangs * GANG_REPLICAS - whole
    jobs = [Job(f"one-{i:04d}", "one-gpu", 1, 1) for i in range(single_nodes * node_gpus)]
    jobs += [Job(f"whole-{i:04d}", "8-gpu", 1, node_gpus) for i in range(whole)]
    jobs += [Job(f"gang-{i:04d}", "gang", GANG_REPLICAS, node_gpus) for i in range(gangs)]
    random.Random(seed).shuffle(jobs)
    return jobs


def workload_summary(jobs: Sequence[Job]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for job in jobs:
        entry = out.setdefault(job.kind, {"jobs": 0, "pods": 0, "gpus": 0})
        entry["jobs"] += 1
        entry["pods"] += job.replicas
        entry["gpus"] += job.replicas * job.gpus
    return out


def tight_packing(jobs: Sequence[Job], nodes: Sequence[tuple[str, int]]) -> dict[str, list[str]]:
    """Node subsets for the raw loop: each kind gets whole nodes (gangs and 8-GPU jobs one node per pod,
    one-GPU jobs `gpus` to a node), in the order gangs, 8-GPU, one-GPU. Raises ValueError if they do not fit."""
    need: Counter[str] = Counter()
    for job in jobs:
        need[job.kind] += job.replicas * job.gpus
    subsets: dict[str, list[str]] = {}
    start = 0
    for kind in ("gang", "8-gpu", "one-gpu"):
        got: list[str] = []
        gpus = 0
        while gpus < need[kind]:
            if start >= len(nodes):
                raise ValueError(f"the workload needs more than the {len(nodes)} nodes of the cluster")
            got.append(nodes[start][0])
            gpus += nodes[start][1]
            start += 1
        subsets[kind] = got
    return subsets


def kube_pod(job: Job, index: int, scheduler_name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A plain pod of `job` for kube-scheduler: the benchmark's container with `nvidia.com/gpu` limits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job.name}-{index}", "namespace": namespace,
                     "labels": {JOB_LABEL: job.name, "app.kubernetes.io/name": "leitstand-bench"}},
        "spec": {
            "schedulerName": scheduler_name,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "trainer",
                "image": "registry.example/leitstand/train:latest",
                "command": ["python", "-m", "train"],
                "env": [{"name": "BENCH", "value": "1"}],
                "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {GPU_RESOURCE: str(job.gpus)}},
            }],
        },
    }


def scheduler_client_settings(cmdline: Sequence[str]) -> dict[str, Any]:
    """kube-scheduler's client QPS and burst from its command line (defaults 50 / 100; a --config file
    overrides the flags and is named instead)."""
    qps: float = KUBE_SCHEDULER_DEFAULT_QPS
    burst: int = KUBE_SCHEDULER_DEFAULT_BURST
    explicit = False
    config = None
    for arg in cmdline:
        name, _, value = arg.partition("=")
        if name == "--kube-api-qps" and value:
            qps, explicit = float(value), True
        elif name == "--kube-api-burst" and value:
            burst, explicit = int(value), True
        elif name == "--config" and value:
            config = value
    return {"qps": qps, "burst": burst, "defaults": not explicit and config is None, "config": config}


# --------------------------------------------------------------------------------------------------
# Results (pure)


def placement_outcome(jobs: Sequence[Job], bound: Mapping[str, tuple[str, str]],
                      nodes: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """From the bound pods (pod → (job, node)) once a path settled: jobs waiting, gangs partly placed
    and the GPUs they hold, free GPUs, and free GPUs stranded (on nodes where no waiting job could place
    even one pod: a waiting gang's pod counts only where enough nodes could take its missing pods)."""
    by_name = {job.name: job for job in jobs}
    per_job: Counter[str] = Counter()
    used: Counter[str] = Counter()
    for job_name, node in bound.values():
        job = by_name.get(job_name)
        if job is None:
            continue
        per_job[job_name] += 1
        used[node] += job.gpus
    free = {name: max(0, gpus - used[name]) for name, gpus in nodes}
    waiting = [job for job in jobs if per_job[job.name] < job.replicas]
    partial = [job for job in jobs if job.replicas > 1 and 0 < per_job[job.name] < job.replicas]
    partial_gpus = sum(per_job[job.name] * job.gpus for job in partial)
    fits_nodes = {g: sum(1 for f in free.values() if f >= g) for g in {job.gpus for job in waiting}}
    usable_sizes = sorted({job.gpus for job in waiting
                           if fits_nodes[job.gpus] >= job.replicas - per_job[job.name] or job.replicas == 1})
    smallest = usable_sizes[0] if usable_sizes else None
    stranded = 0 if not waiting else sum(f for f in free.values() if f and (smallest is None or f < smallest))
    pods_total = sum(job.replicas for job in jobs)
    return {
        "pods_total": pods_total,
        "pods_bound": sum(min(per_job[job.name], job.replicas) for job in jobs),
        "jobs_waiting": len(waiting),
        "waiting_by_kind": dict(Counter(job.kind for job in waiting)),
        "partial_gangs": len(partial),
        "partial_gang_gpus": partial_gpus,
        "free_gpus": sum(free.values()),
        "stranded_gpus": stranded,
    }


@dataclass
class PathResult:
    path: str
    scheduler: str
    """Who placed the pods, with its client settings, as printed."""
    pods_total: int
    pods_bound: int = 0
    all_bound: bool = False
    first_to_last_bind: float = 0.0
    """Seconds from the first submission to the last pod seen bound."""
    submit_seconds: float = 0.0
    jobs_waiting: int = 0
    waiting_by_kind: dict[str, int] = field(default_factory=dict)
    partial_gangs: int = 0
    partial_gang_gpus: int = 0
    free_gpus: int = 0
    stranded_gpus: int = 0
    pods_seen_max_partial: int = 0
    """The most gangs seen partly placed at any moment (a gang scheduler may show some for one cycle)."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    client_errors: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    load_average: float = 0.0
    """The machine's 1-minute load average when the path started (other people's work included)."""
    runs_pods_per_second: list[float] = field(default_factory=list)
    """With --repeat: every run's pods/s of this path (the row is the median run)."""

    @property
    def pods_per_second(self) -> float:
        return self.pods_bound / self.first_to_last_bind if self.first_to_last_bind > 0 else 0.0

    @property
    def time_to_all_bound(self) -> float | None:
        return self.first_to_last_bind if self.all_bound else None


def median_runs(results: Sequence[PathResult]) -> list[PathResult]:
    """One result per path, in first-seen order: the run with the median pods/s (the lower middle of an
    even count), carrying every run's pods/s."""
    by_path: dict[str, list[PathResult]] = {}
    for r in results:
        by_path.setdefault(r.path, []).append(r)
    out = []
    for runs in by_path.values():
        ordered = sorted(runs, key=lambda r: r.pods_per_second)
        chosen = ordered[(len(ordered) - 1) // 2]
        chosen.runs_pods_per_second = [round(r.pods_per_second, 1) for r in runs]
        out.append(chosen)
    return out


def summarize(results: Sequence[PathResult]) -> dict[str, Any]:
    """Rows with rates, Leitstand's rate as a multiple of each kube-scheduler's and as % of raw."""
    by_path = {r.path: r for r in results}
    rows = []
    for r in results:
        row = asdict(r)
        row["pods_per_second"] = round(r.pods_per_second, 1)
        row["time_to_all_bound"] = None if r.time_to_all_bound is None else round(r.time_to_all_bound, 2)
        rows.append(row)
    ratios: dict[str, float | None] = {}

    def ratio(path: str, other: str, percent: bool) -> float | None:
        """`path`'s pods/s over `other`'s (×, or % when `percent`); None unless both ran and `other` bound."""
        mine, theirs = by_path.get(path), by_path.get(other)
        if not (mine and theirs and theirs.pods_per_second > 0):
            return None
        value = mine.pods_per_second / theirs.pods_per_second
        return round(100 * value, 1) if percent else round(value, 2)

    # Leitstand's rate, and the floor's: what no TrainingJob operator can beat here, against the same references.
    for path, prefix in (("leitstand", ""), ("floor", "floor_")):
        for other in ("kube-scheduler", "kube-scheduler-qps"):
            ratios[f"{prefix}x_{other}"] = ratio(path, other, percent=False)
        ratios[f"{prefix}percent_of_raw"] = ratio(path, "raw", percent=True)
        if path == "leitstand":
            ratios["percent_of_floor"] = ratio("leitstand", "floor", percent=True)
    return {"paths": rows, "ratios": ratios,
            "goals": {"x_kube_scheduler": GOAL_TIMES_KUBE, "percent_of_raw": GOAL_PERCENT_RAW}}


@dataclass(frozen=True, slots=True)
class KaiShape:
    key: str
    what: str
    kai_seconds: float
    kai_text: str


KAI_SHAPES = (
    KaiShape("fill", "one-GPU jobs fill the cluster (KAI: 4,000 jobs, 500 × 8-GPU nodes)", 397.0, "6 min 37 s"),
    KaiShape("reclaim-singles", "as many one-GPU jobs of another queue reclaim all of it", 694.0, "11 min 34 s"),
    KaiShape("reclaim-hero", "one job of one 8-GPU pod per node reclaims the cluster (KAI: 500 pods / 4,000 GPUs)",
             85.0, "85 s"),
    KaiShape("topology", "one 512-pod × 2-GPU job, preferred topology rack", 49.0, "49 s"),
)


def kai_sizes(nodes: int, node_gpus: int = NODE_GPUS) -> dict[str, int]:
    """The KAI shapes scaled to `nodes`: one-GPU jobs fill every GPU, the hero job has one pod per node,
    the topology job 512 pods of 2 GPUs (fewer, if 512 × 2 GPUs would not fit)."""
    return {"singles": nodes * node_gpus, "hero_pods": nodes,
            "topology_pods": min(512, nodes * node_gpus // 2), "topology_gpus": 2}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


# --------------------------------------------------------------------------------------------------
# The tables


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _rate_parts(ratios: Mapping[str, Any], prefix: str, raw_words: str) -> list[str]:
    """"3.6× kube-scheduler (default QPS)", ..., "51 % of raw" for Leitstand's (prefix "") or the floor's
    ("floor_") ratios, the ones measured in this run."""
    parts = []
    for key, label in (("x_kube-scheduler", "kube-scheduler (default QPS)"),
                       ("x_kube-scheduler-qps", "kube-scheduler (raised QPS)")):
        if ratios.get(prefix + key) is not None:
            parts.append(f"{ratios[prefix + key]:.1f}× {label}")
    if ratios.get(prefix + "percent_of_raw") is not None:
        parts.append(f"{ratios[prefix + 'percent_of_raw']:.0f} % {raw_words}")
    return parts


def render(report: Mapping[str, Any], console: Console) -> None:
    from rich.table import Table

    cluster = report["cluster"]
    console.print(f"[bold]leitstand bench e2e[/]: {cluster['nodes']} nodes × {NODE_GPUS} GPUs = {cluster['gpus']} "
                  f"GPUs, racks of {cluster['nodes_per_rack']}, Kubernetes {cluster.get('kubernetes', '?')}, "
                  f"{cluster['cores']} cores; commit {report.get('commit', '?')}")
    side = report.get("side_by_side")
    if side:
        for kind, entry in side["workload"].items():
            console.print(f"  • {kind}: {entry['jobs']} jobs, {entry['pods']} pods, {entry['gpus']} GPUs")
        table = Table(title=f"the same workload, {len(side['paths'])} ways (first submission → last pod bound)")
        for column in ("path", "placed by", "pods bound", "time to all bound", "pods/s", "jobs waiting",
                       "gangs partly placed (GPUs held)", "free GPUs", "stranded GPUs", "scheduler CPU s",
                       "apiserver CPU s", "others' CPU s", "load avg"):
            table.add_column(column, justify="left" if column in ("path", "placed by") else "right")
        for row in side["paths"]:
            cpu = row["cpu_seconds"]
            sched = cpu.get({"leitstand": "leitstand run", "kube-scheduler": "kube-scheduler",
                             "kube-scheduler-qps": "kube-scheduler (raised QPS)"}.get(row["path"], ""))
            bound = f"{row['pods_bound']}/{row['pods_total']}" + (" (timeout)" if row["timed_out"] else "")
            table.add_row(row["path"], row["scheduler"], bound,
                          fmt_duration(row["time_to_all_bound"]) if row["all_bound"] else
                          f"never ({row['pods_total'] - row['pods_bound']} unbound)",
                          _fmt(row["pods_per_second"]), str(row["jobs_waiting"]),
                          f"{row['partial_gangs']} ({row['partial_gang_gpus']})", str(row["free_gpus"]),
                          str(row["stranded_gpus"]), _fmt(sched, 1), _fmt(cpu.get("kube-apiserver"), 1),
                          _fmt(cpu.get("other"), 1), _fmt(row.get("load_average"), 1))
        console.print(table)
        if side.get("repeat", 1) > 1:
            console.print(f"each path ran {side['repeat']} times, interleaved; the row is the median run; pods/s of "
                          "every run: " + "; ".join(f"{row['path']} {row['runs_pods_per_second']}"
                                                    for row in side["paths"]))
        ratios = side["ratios"]
        parts = _rate_parts(ratios, "", "of the raw ceiling")
        if parts:
            console.print("Leitstand's pods/s: " + ", ".join(parts)
                          + f" (goals: ≥ {GOAL_TIMES_KUBE:.0f}× kube-scheduler, ≥ {GOAL_PERCENT_RAW:.0f} % of raw).")
        floor_parts = _rate_parts(ratios, "floor_", "of raw")
        if floor_parts:
            ours_of_floor = ratios.get("percent_of_floor")
            console.print("The TrainingJob floor (no operator can do less per job): " + ", ".join(floor_parts)
                          + ("" if ours_of_floor is None else f"; Leitstand at {ours_of_floor:.0f} % of it") + ".")
        console.print(f"kube-scheduler's client: {side['kube_scheduler_client']}")
        for note in side.get("notes", []):
            console.print(f"[yellow]{note}[/]")
    kai = report.get("kai")
    if kai:
        table = Table(title=f"KAI Scheduler's scale-test shapes on {kai['nodes']} nodes here "
                      "(KAI: 500 KWOK nodes, a bigger machine; their published example times)")
        for column in ("shape", "here: what ran", "ours", "KAI", "pods", "evicted", "operator CPU s", "note"):
            table.add_column(column, justify="left" if column in ("shape", "here: what ran", "note") else "right")
        for row in kai["shapes"]:
            ours = (fmt_duration(row["seconds"]) if row["complete"] else
                    f"{row['pods']}/{row['expected']} after {fmt_duration(row['waited_seconds'])}")
            note = "; ".join(x for x in (row.get("note", ""), row.get("operator_exited") or "") if x)
            table.add_row(row["key"], row["what"], ours,
                          row["kai_text"], str(row["pods"]), str(row.get("evicted", "")),
                          _fmt(row.get("operator_cpu_seconds")), note)
        console.print(table)
        for key, value in kai.get("prep", {}).items():
            console.print(f"  {key}: {value}")


# --------------------------------------------------------------------------------------------------
# The cluster side


class NodeWatch(PodWatch):
    """`PodWatch` that also remembers each bound pod's node."""

    def __init__(self, client: KubeClient, namespace: str = NAMESPACE) -> None:
        super().__init__(client, namespace)
        self.node: dict[str, str] = {}

    def on_event(self, kind: str, obj: Mapping[str, Any], now: float) -> None:
        super().on_event(kind, obj, now)
        name = str((obj.get("metadata") or {}).get("name"))
        if name in self.bound:
            self.node[name] = str((obj.get("spec") or {}).get("nodeName"))
        else:
            self.node.pop(name, None)

    def placements(self) -> dict[str, tuple[str, str]]:
        return {pod: (self.job.get(pod, pod), self.node[pod]) for pod in self.bound if pod in self.node}

    async def wait_settled(self, count: int, submitted: asyncio.Task[None], settle: float, deadline: float,
                           progress: Report, on_tick: Callable[[], None] | None = None) -> bool:
        """Until `count` pods are bound (True), or the submission is done and nothing was bound for
        `settle` seconds, or the deadline passed (False)."""
        last_change = time.monotonic()
        last_count = -1
        next_report = time.monotonic() + 10
        while True:
            if self.error is not None:
                raise RuntimeError(f"the pod watch failed: {self.error!r}")
            now = time.monotonic()
            bound = len(self.bound)
            if bound != last_count:
                last_count, last_change = bound, now
            if bound >= count:
                return True
            if submitted.done() and now - last_change >= settle:
                return False
            if now > deadline:
                return False
            if on_tick is not None:
                on_tick()
            if now >= next_report:
                progress(f"    {bound}/{count} pods bound")
                next_report = now + 10
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=0.5)


async def ensure_namespace(admin: KubeClient, name: str) -> None:
    status, body = await admin.request("POST", "/api/v1/namespaces",
                                       {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    if status not in (201, 409):
        raise RuntimeError(f"creating namespace {name}: HTTP {status} {body}")
    deadline = time.monotonic() + 60
    while (await admin.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"))[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ServiceAccount default in {name}: is kube-controller-manager running?")
        await asyncio.sleep(0.2)


async def put_queue(admin: KubeClient, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}
    status, answer = await admin.request("POST", f"{TJ_API}/queues", body)
    if status == 409:
        await admin.patch_merge(f"{TJ_API}/queues/{name}", {"spec": spec})
    elif status not in (200, 201):
        raise RuntimeError(f"creating Queue {name}: HTTP {status} {answer}")


async def clean_namespace(admin: KubeClient, namespace: str, timeout_seconds: float = 600.0) -> None:
    """Delete every TrainingJob and pod of `namespace` and wait until they are gone. A collection DELETE
    of thousands of objects can outlast the client's timeout on a loaded API server; it goes on there,
    so a timeout is not an error here (the polling below decides)."""
    from leitstand.operator.service.kubeclient import TransportError

    deadline = time.monotonic() + timeout_seconds
    tj_path = f"{TJ_API}/namespaces/{namespace}/trainingjobs"
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    while True:
        for path, body in ((tj_path, {"propagationPolicy": "Background"}), (pods_path, {"gracePeriodSeconds": 0})):
            with contextlib.suppress(TransportError):
                await admin.request("DELETE", path, body)
        for _ in range(50):
            tjs = await admin.get(tj_path, params={"limit": 1})
            pods = await admin.get(pods_path, params={"limit": 1})
            if not tjs.get("items") and not pods.get("items"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {namespace} still has objects after {timeout_seconds:.0f} s")
            await asyncio.sleep(0.2)


async def submit_trainingjobs(client: KubeClient, jobs: Sequence[Job], workers: int, sub: Submission,
                              namespace: str = NAMESPACE, queue: str = "leitstand-bench",
                              topology: dict[str, str] | None = None) -> None:
    """POST the jobs as TrainingJobs (admin, concurrently), as tenants' `kubectl apply` would."""

    async def one(job: Job) -> None:
        body = trainingjob(job.name, job.replicas, job.gpus, namespace=namespace, queue=queue)
        if topology:
            body["spec"]["topology"] = dict(topology)
        status, _ = await client.request("POST", f"{TJ_API}/namespaces/{namespace}/trainingjobs", body)
        if status != 201:
            sub.errors[f"create {status}"] += 1
            return
        sub.created[job.name] = time.monotonic()

    sub.started = time.monotonic()
    await _pool(list(jobs), workers, one)
    sub.finished = time.monotonic()


async def submit_kube_pods(client: KubeClient, jobs: Sequence[Job], scheduler_name: str, workers: int,
                           sub: Submission) -> None:
    """POST each job's pods (a gang's pods right after each other), for kube-scheduler to place."""
    pods = [kube_pod(job, i, scheduler_name) for job in jobs for i in range(job.replicas)]

    async def one(pod: dict[str, Any]) -> None:
        status, _ = await client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        if status != 201:
            sub.errors[f"create {status}"] += 1
            return
        sub.created[pod["metadata"]["name"]] = time.monotonic()

    sub.started = time.monotonic()
    await _pool(pods, workers, one)
    sub.finished = time.monotonic()


def raw_plan(jobs: Sequence[Job], nodes: Sequence[tuple[str, int]], seed: int, prefix: str = "raw-") -> tuple[
        list[tuple[str, str, dict[str, Any]]], list[Job]]:
    """The raw loop's pods (bench_operator.raw_pods: the operator's pod shape) on a tight packing, and
    the jobs under the names those pods carry (`prefix` + kind + ...); the jobs in a seeded random order,
    a job's pods together. The floor takes the same plan under its own prefix."""
    subsets = tight_packing(jobs, nodes)
    capacity = dict(nodes)
    pods: list[tuple[str, str, dict[str, Any]]] = []
    renamed: list[Job] = []
    for kind, short in (("gang", "gangs"), ("8-gpu", "whole"), ("one-gpu", "single")):
        mine = [job for job in jobs if job.kind == kind]
        if not mine:
            continue
        first = mine[0]
        workload = Workload(short, len(mine), first.replicas, first.gpus, len(mine), "")
        named = f"{prefix}{kind}-"
        made = raw_pods(workload, [(n, capacity[n]) for n in subsets[kind]], prefix=named)
        pods += made
        renamed += [Job(named + workload.job_name(i), kind, first.replicas, first.gpus) for i in range(len(mine))]
    by_job: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for item in pods:
        by_job.setdefault(item[2]["metadata"]["labels"][JOB_LABEL], []).append(item)
    order = list(by_job)
    random.Random(seed).shuffle(order)
    return [item for name in order for item in by_job[name]], renamed


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@dataclass
class ExtraScheduler:
    """A kube-scheduler started here (raised QPS, its own profile name), stopped by its PID."""

    proc: subprocess.Popen[bytes]
    log: Path
    config: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_raised_scheduler(run: Path, qps: float, log_dir: Path) -> ExtraScheduler:
    from leitstand.operator.cluster.controlplane import _insecure, free_ports
    from leitstand.operator.cluster.layout import cache_paths

    admin_kc = run / "admin.kubeconfig"
    config = run / "bench-kube-scheduler-qps.json"
    config.write_text(json.dumps({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(admin_kc), "qps": qps, "burst": int(2 * qps)},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": RAISED_SCHEDULER}],
    }))
    port = free_ports(["bench_scheduler"])["bench_scheduler"]
    log = log_dir / f"bench-e2e-kube-scheduler-qps-{time.strftime('%Y%m%d-%H%M%S')}.log"
    cert_dir = run / "pki" / "bench-kube-scheduler"
    args = [str(cache_paths().binary("kube-scheduler")), f"--config={config}",
            f"--authentication-kubeconfig={admin_kc}", f"--authorization-kubeconfig={admin_kc}",
            "--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={cert_dir}", "--v=1"]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    extra = ExtraScheduler(proc, log, config)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kube-scheduler (raised QPS) exited {proc.returncode}; log {log}:\n"
                               + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        with contextlib.suppress(OSError), urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", timeout=2, context=_insecure()
        ) as answer:
            if answer.status == 200:
                return extra
        time.sleep(0.3)
    extra.stop()
    raise RuntimeError(f"kube-scheduler (raised QPS) not healthy within 90 s; log {log}")


async def start_operator_process(run: Path, log_dir: Path, name: str,
                                 config: Mapping[str, Any] | None = None) -> OperatorProcess:
    """`leitstand run` as leitstand-operator, once it leads; `config` (if any) written as its service config."""
    from leitstand.operator.service.launcher import start_operator

    stamp = time.strftime('%Y%m%d-%H%M%S')
    log = log_dir / f"bench-e2e-{stamp}-{name}.log"
    config_path = None
    if config:
        config_path = log_dir / f"bench-e2e-{stamp}-{name}-config.json"
        config_path.write_text(json.dumps(config))
    operator = start_operator(run / "leitstand-operator.kubeconfig", log, identity=IDENTITY, config=config_path)
    if not await asyncio.to_thread(operator.wait_for_log, "leading as", 180.0):
        operator.stop()
        raise RuntimeError(f"leitstand run did not start leading within 180 s; log {log}:\n"
                           + "\n".join(operator.log_text().splitlines()[-20:]))
    return operator


# --------------------------------------------------------------------------------------------------
# Side by side


@dataclass
class Ctx:
    opts: Options
    run: Path
    admin: KubeClient
    op_client: KubeClient
    sampler: CpuSampler
    nodes: list[tuple[str, int]]
    progress: Report
    log_dir: Path
    stoppers: list[Callable[[], Any]] = field(default_factory=list)


async def measure_path(ctx: Ctx, path: str, scheduler: str, jobs: Sequence[Job],
                       submit: Callable[[Submission], Coroutine[Any, Any, None]]) -> PathResult:
    await clean_namespace(ctx.admin, NAMESPACE)
    pods_total = sum(job.replicas for job in jobs)
    result = PathResult(path, scheduler, pods_total, load_average=round(os.getloadavg()[0], 2))
    watch = NodeWatch(ctx.admin)
    await watch.start()
    ctx.progress(f"  {path}: submitting {len(jobs)} jobs ({pods_total} pods)")
    sub = Submission()
    max_partial = 0
    gang_jobs = {job.name for job in jobs if job.replicas > 1}

    def tick() -> None:
        nonlocal max_partial
        per: Counter[str] = Counter(watch.job.get(p, p) for p in watch.bound)
        partial = sum(1 for name in gang_jobs if 0 < per[name] < GANG_REPLICAS)
        max_partial = max(max_partial, partial)

    cpu0 = ctx.sampler.sample()
    t0 = time.monotonic()
    task = asyncio.create_task(submit(sub))
    try:
        done = await watch.wait_settled(pods_total, task, ctx.opts.settle, t0 + ctx.opts.timeout, ctx.progress,
                                        on_tick=tick)
        tick()
        cpu1 = ctx.sampler.sample()
        await task
    finally:
        if not task.done():
            task.cancel()
    last = max(watch.bound.values(), default=t0)
    result.first_to_last_bind = round(last - t0, 3)
    result.submit_seconds = round(sub.finished - t0, 3)
    result.all_bound = done
    result.timed_out = not done and time.monotonic() > t0 + ctx.opts.timeout
    result.pods_seen_max_partial = max_partial
    outcome = placement_outcome(jobs, watch.placements(), ctx.nodes)
    for key in ("pods_bound", "jobs_waiting", "waiting_by_kind", "partial_gangs", "partial_gang_gpus", "free_gpus",
                "stranded_gpus"):
        setattr(result, key, outcome[key])
    result.cpu_seconds = CpuSampler.delta(cpu0, cpu1)[0]
    result.client_errors = dict(sub.errors)
    await watch.stop()
    ctx.progress(f"  {path}: {result.pods_bound}/{pods_total} pods bound, last after {result.first_to_last_bind:.2f} s "
                 f"= {result.pods_per_second:.1f} pods/s; {result.partial_gangs} gangs partly placed, "
                 f"{result.stranded_gpus} GPUs stranded")
    await clean_namespace(ctx.admin, NAMESPACE)
    return result


async def side_by_side(ctx: Ctx, kube_client: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    jobs = mixed_workload(len(ctx.nodes), opts.seed, NODE_GPUS)
    results: list[PathResult] = []
    notes: list[str] = []
    for path in [p for _ in range(opts.repeat) for p in opts.paths]:
        if path == "raw":
            pods, renamed = raw_plan(jobs, ctx.nodes, opts.seed)

            async def raw(sub: Submission, pods: list[tuple[str, str, dict[str, Any]]] = pods) -> None:
                await submit_raw(ctx.op_client, pods, opts.concurrency, sub)

            results.append(await measure_path(ctx, "raw", "nobody: create + bind to a tight packing", renamed, raw))
        elif path == "floor":
            pods, renamed = raw_plan(jobs, ctx.nodes, opts.seed, prefix=FLOOR_PREFIX)

            async def floor(sub: Submission, pods: list[tuple[str, str, dict[str, Any]]] = pods) -> None:
                await submit_floor(ctx.admin, ctx.op_client, pods, opts.concurrency, sub)

            results.append(await measure_path(ctx, "floor", "nobody: TrainingJob, its pods, binds (the floor)",
                                              renamed, floor))
        elif path == "kube-scheduler":
            if "kube-scheduler" not in ctx.sampler.cluster_pids:
                notes.append("kube-scheduler path skipped: the cluster runs no kube-scheduler "
                             "(start it with `leitstand cluster up --with-kube-scheduler`)")
                continue

            async def kube(sub: Submission) -> None:
                await submit_kube_pods(ctx.admin, jobs, DEFAULT_SCHEDULER, opts.concurrency, sub)

            label = f"kube-scheduler, QPS {kube_client['qps']:g} / burst {kube_client['burst']}"
            results.append(await measure_path(ctx, "kube-scheduler", label, jobs, kube))
        elif path == "kube-scheduler-qps":
            if not opts.kube_qps:
                continue
            extra = await asyncio.to_thread(start_raised_scheduler, ctx.run, opts.kube_qps, ctx.log_dir)
            ctx.stoppers.append(extra.stop)
            ctx.sampler.cluster_pids["kube-scheduler (raised QPS)"] = extra.proc.pid
            try:
                async def kube_qps(sub: Submission) -> None:
                    await submit_kube_pods(ctx.admin, jobs, RAISED_SCHEDULER, opts.concurrency, sub)

                label = f"kube-scheduler, QPS {opts.kube_qps:g} / burst {int(2 * opts.kube_qps)}"
                results.append(await measure_path(ctx, "kube-scheduler-qps", label, jobs, kube_qps))
            finally:
                extra.stop()
                ctx.sampler.cluster_pids.pop("kube-scheduler (raised QPS)", None)
        elif path == "leitstand":
            operator = await start_operator_process(ctx.run, ctx.log_dir, "side-by-side")
            ctx.stoppers.append(operator.stop)
            ctx.sampler.operator_pid = operator.pid
            try:
                async def ours(sub: Submission) -> None:
                    await submit_trainingjobs(ctx.admin, jobs, opts.concurrency, sub)

                results.append(await measure_path(ctx, "leitstand", "leitstand run (TrainingJobs)", jobs, ours))
                notes.append(f"leitstand run log: {operator.log}")
            finally:
                await asyncio.to_thread(operator.stop)
                ctx.sampler.operator_pid = None
    return {"workload": workload_summary(jobs), "seed": opts.seed, "kube_scheduler_client": kube_client_text(
        kube_client, opts.kube_qps), "repeat": opts.repeat, **summarize(median_runs(results)), "notes": notes}


def kube_client_text(client: Mapping[str, Any], raised: float) -> str:
    base = (f"the cluster's kube-scheduler runs with QPS {client['qps']:g} / burst {client['burst']}"
            + (" — kube-scheduler's defaults (no --kube-api-qps/--kube-api-burst/--config on its command line)"
               if client.get("defaults") else f" (from its command line; config {client.get('config')})"))
    if raised:
        base += (f"; the raised run is a second kube-scheduler of the same binary with QPS {raised:g} / burst "
                 f"{int(2 * raised)} (KubeSchedulerConfiguration clientConnection; profile {RAISED_SCHEDULER})")
    return base


# --------------------------------------------------------------------------------------------------
# KAI shapes


KAI_A, KAI_B = "kai-a", "kai-b"
KAI_SETTLE = 150.0
"""A KAI shape gives up after this long without a new bind (the operator rolls back and requeues a
job whose pods it did not see bound within its bind timeout; under load that takes a minute or more)."""


async def kai_phase(ctx: Ctx, namespace: str, expected: int, submit: Callable[[Submission], Coroutine[Any, Any, None]],
                    operator: OperatorProcess, label: str, settle: float = KAI_SETTLE) -> dict[str, Any]:
    """Watch `namespace`, submit, wait until `expected` of its pods are bound; evictions seen elsewhere
    are counted by the caller's watch."""
    watch = NodeWatch(ctx.admin, namespace)
    await watch.start()
    cpu0 = operator.cpu_seconds()
    sub = Submission()
    ctx.progress(f"  KAI {label}: submitting")
    t0 = time.monotonic()
    task = asyncio.create_task(submit(sub))
    died: list[str] = []

    def check_operator() -> None:
        if not died and not operator.alive():
            errors = [line for line in operator.log_text().splitlines() if " ERROR " in line]
            died.append(f"leitstand run exited (code {operator.proc.returncode}): "
                        + (errors[-1].split(" ERROR ", 1)[1] if errors else "no ERROR line"))
            raise OperatorExited(died[0])

    try:
        try:
            done = await watch.wait_settled(expected, task, max(settle, ctx.opts.settle), t0 + ctx.opts.timeout,
                                            ctx.progress, on_tick=check_operator)
        except OperatorExited:
            done = False
        await task
    finally:
        if not task.done():
            task.cancel()
    last = max(watch.bound.values(), default=t0)
    await watch.stop()
    out = {"operator_exited": died[0] if died else None, "seconds": round(last - t0, 2), "complete": done,
           "pods": len(watch.bound), "expected": expected,
           "waited_seconds": round(time.monotonic() - t0, 1), "last_bind": last,
           "operator_cpu_seconds": round(max(0.0, operator.cpu_seconds() - cpu0), 1),
           "operator_rss_mib": round(operator.rss_mib(), 1), "client_errors": dict(sub.errors),
           "nodes_used": len(set(watch.node.values()))}
    ctx.progress(f"  KAI {label}: {out['pods']}/{expected} bound in {out['seconds']} s")
    return out


class OperatorExited(Exception):
    """`leitstand run` exited during a KAI shape."""


async def protect_wait(ctx: Ctx, namespace: str, min_runtime: float) -> str:
    """Wait until every pod of `namespace` is past the operator's reclaim protection (min_runtime_seconds of
    the default config, counted from the pod's status.startTime, which KWOK sets some time after the bind):
    the reclaim shapes time the reclaim, not the protection window."""
    from leitstand.operator.service.records import timestamp

    t0 = time.monotonic()
    while True:
        body = await ctx.admin.get(f"/api/v1/namespaces/{namespace}/pods")
        starts = [timestamp((p.get("status") or {}).get("startTime")) for p in body.get("items", [])]
        if starts and all(starts):
            break
        if time.monotonic() - t0 > ctx.opts.timeout:
            break
        await asyncio.sleep(3.0)
    latest = max(starts, default=0.0)
    remaining = latest + min_runtime + 1.0 - time.time()
    if remaining > 0:
        ctx.progress(f"  waiting {remaining:.0f} s: running jobs are protected from reclaim for "
                     f"min_runtime_seconds = {min_runtime:g} s after their start")
        await asyncio.sleep(remaining)
    return (f"waited {time.monotonic() - t0:.0f} s before the next shape, until the last pod's startTime + "
            f"min_runtime_seconds ({min_runtime:g} s: young jobs are protected from reclaim); not counted")


async def rack_count(admin: KubeClient, namespace: str) -> int:
    """Racks holding the bound pods of `namespace`."""
    nodes = await admin.get("/api/v1/nodes")
    rack = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get("leitstand.dev/rack", "")
            for n in nodes.get("items", [])}
    pods = await admin.get(f"/api/v1/namespaces/{namespace}/pods")
    return len({rack.get((p.get("spec") or {}).get("nodeName", ""), "") for p in pods.get("items", [])
                if (p.get("spec") or {}).get("nodeName")})


async def kai(ctx: Ctx) -> dict[str, Any]:
    nodes = len(ctx.nodes)
    sizes = kai_sizes(nodes, NODE_GPUS)
    total = sum(g for _, g in ctx.nodes)
    for ns in (KAI_A, KAI_B):
        await ensure_namespace(ctx.admin, ns)
        await clean_namespace(ctx.admin, ns)
    await put_queue(ctx.admin, KAI_A, {"gpu": {"quota": 0, "overQuotaWeight": 1}, "namespaces": [KAI_A]})
    await put_queue(ctx.admin, KAI_B, {"gpu": {"quota": total}, "namespaces": [KAI_B]})
    singles_a = [Job(f"a-{i:05d}", "one-gpu", 1, 1) for i in range(sizes["singles"])]
    singles_b = [Job(f"b-{i:05d}", "one-gpu", 1, 1) for i in range(sizes["singles"])]
    hero = Job("hero", "gang", sizes["hero_pods"], NODE_GPUS)
    topo = Job("topology", "gang", sizes["topology_pods"], sizes["topology_gpus"])
    shapes = {s.key: s for s in KAI_SHAPES}
    rows: list[dict[str, Any]] = []
    prep: dict[str, str] = {}
    from leitstand.operator.service.config import ServiceConfig

    min_runtime = ServiceConfig().scheduler.min_runtime_seconds
    default_victims = ServiceConfig().scheduler.max_victims
    victims = max(default_victims, sizes["singles"])
    config = {"scheduler": {"max_victims": victims}}
    operator = await start_operator_process(ctx.run, ctx.log_dir, "kai", config)
    prep["config"] = (f"scheduler.max_victims = {victims} (default {default_victims}: at most that many jobs are "
                      f"evicted for one waiting gang, so the hero job, which needs {sizes['singles']} one-GPU victims, "
                      "could never be placed); everything else default")
    ctx.stoppers.append(operator.stop)
    w = ctx.opts.concurrency

    def row(key: str, what: str, result: Mapping[str, Any], **extra: Any) -> None:
        shape = shapes[key]
        rows.append({"key": key, "what": what, "kai_seconds": shape.kai_seconds, "kai_text": shape.kai_text,
                     "kai_what": shape.what, **result, **extra})

    async def alive() -> None:
        nonlocal operator
        if not operator.alive():
            ctx.progress("  leitstand run had exited: starting it again")
            operator = await start_operator_process(ctx.run, ctx.log_dir, "kai-restarted", config)
            ctx.stoppers.append(operator.stop)

    async def evicted_during(coro: Awaitable[dict[str, Any]]) -> tuple[dict[str, Any], int]:
        watch = NodeWatch(ctx.admin, KAI_A)
        await watch.start()
        result = await coro
        await watch.stop()
        return result, watch.unbound

    try:
        # 1. fill: queue kai-a (quota 0: everything it runs is borrowed) fills the idle cluster.
        async def fill(sub: Submission) -> None:
            await submit_trainingjobs(ctx.admin, singles_a, w, sub, KAI_A, KAI_A)

        result = await kai_phase(ctx, KAI_A, len(singles_a), fill, operator, "fill")
        row("fill", f"{len(singles_a)} one-GPU TrainingJobs, queue quota 0 (borrowed), {nodes} nodes", result)
        prep["protection"] = await protect_wait(ctx, KAI_A, min_runtime)

        # 2. reclaim-singles: kai-b (quota = the cluster) submits as many one-GPU jobs.
        async def reclaim_singles(sub: Submission) -> None:
            await submit_trainingjobs(ctx.admin, singles_b, w, sub, KAI_B, KAI_B)

        result, evicted = await evicted_during(kai_phase(ctx, KAI_B, len(singles_b), reclaim_singles, operator,
                                                         "reclaim-singles"))
        row("reclaim-singles", f"{len(singles_b)} one-GPU jobs of kai-b (quota {total}) reclaim from kai-a", result,
            evicted=evicted)

        # refill: kai-b's jobs deleted, kai-a's requeued jobs come back (not timed against KAI).
        t0 = time.monotonic()
        watch = NodeWatch(ctx.admin, KAI_A)
        await watch.start()
        await clean_namespace(ctx.admin, KAI_B)
        never = asyncio.create_task(asyncio.sleep(0))
        await never
        refilled = await watch.wait_settled(len(singles_a), never, 60.0, t0 + ctx.opts.timeout, ctx.progress)
        prep["refill"] = (f"kai-b deleted, kai-a back to {len(watch.bound)}/{len(singles_a)} bound after "
                          f"{time.monotonic() - t0:.1f} s" + ("" if refilled else " (not all)"))
        await watch.stop()
        prep["protection after refill"] = await protect_wait(ctx, KAI_A, min_runtime)

        # 3. reclaim-hero: one job of one 8-GPU pod per node in kai-b.
        async def hero_job(sub: Submission) -> None:
            await submit_trainingjobs(ctx.admin, [hero], w, sub, KAI_B, KAI_B)

        # Nothing is bound before every victim's pod is gone (KWOK deletes them slowly under load): no
        # settle, wait for the whole gang or --timeout.
        result, evicted = await evicted_during(kai_phase(ctx, KAI_B, hero.replicas, hero_job, operator,
                                                         "reclaim-hero", settle=ctx.opts.timeout))
        row("reclaim-hero", f"1 job of {hero.replicas} × {NODE_GPUS}-GPU pods ({hero.replicas * NODE_GPUS} GPUs) "
            "reclaims kai-a's one-GPU jobs", result, evicted=evicted)

        t0 = time.monotonic()
        await clean_namespace(ctx.admin, KAI_B)
        await clean_namespace(ctx.admin, KAI_A)
        await alive()
        prep["clean"] = f"both queues emptied in {time.monotonic() - t0:.1f} s"

        # 4. topology: one job of 512 × 2 GPUs, preferred rack, on the empty cluster.
        async def topo_job(sub: Submission) -> None:
            await submit_trainingjobs(ctx.admin, [topo], w, sub, KAI_B, KAI_B, topology={"preferred": "rack"})

        result = await kai_phase(ctx, KAI_B, topo.replicas, topo_job, operator, "topology")
        racks = await rack_count(ctx.admin, KAI_B)
        row("topology", f"1 job of {topo.replicas} × {topo.gpus}-GPU pods, topology preferred: rack", result,
            note=f"{result['nodes_used']} nodes in {racks} racks")
        await clean_namespace(ctx.admin, KAI_B)
    finally:
        await asyncio.to_thread(operator.stop)
    return {"nodes": nodes, "sizes": sizes, "shapes": rows, "prep": prep, "operator_log": str(operator.log)}


# --------------------------------------------------------------------------------------------------
# Running it


def code_commit() -> str:
    from leitstand.operator.cluster.layout import repo_root

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def run(opts: Options, progress: Report) -> dict[str, Any]:
    check_options(opts)
    from leitstand.operator.bench_operator import CLUSTER_PROCESSES, gpu_nodes, install
    from leitstand.operator.cluster import controlplane
    from leitstand.operator.cluster.layout import K8S_VERSION, run_dir
    from leitstand.operator.cluster.nodes import make_spec

    if opts.run is not None:
        os.environ["LEITSTAND_RUN"] = str(opts.run)
    run_folder = run_dir()
    started = False
    if not controlplane.status().get("running"):
        progress(f"starting a cluster with {opts.nodes} nodes (racks of {opts.nodes_per_rack}) and kube-scheduler "
                 f"in {run_folder}")
        spec = make_spec(opts.nodes, [], f"nodes-per-rack={opts.nodes_per_rack}")
        controlplane.up(spec, with_kube_scheduler=True, report=progress,
                        ready_timeout_seconds=120 + 0.3 * opts.nodes)
        started = True
    else:
        progress(f"using the cluster running from {run_folder} (--nodes ignored)")
    log_dir = opts.log_dir or Path(tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    stoppers: list[Callable[[], Any]] = []
    try:
        state = controlplane.State.load(run_folder)
        assert state is not None
        pids = {p.name: p.pid for p in state.processes if p.name in CLUSTER_PROCESSES}
        kube_client = scheduler_client_settings(_cmdline(pids["kube-scheduler"])) if "kube-scheduler" in pids else {
            "qps": KUBE_SCHEDULER_DEFAULT_QPS, "burst": KUBE_SCHEDULER_DEFAULT_BURST, "defaults": True, "config": None}

        async def main() -> dict[str, Any]:
            from leitstand.operator.service.kubeclient import KubeClient, load_credentials

            admin = KubeClient(load_credentials(run_folder / "admin.kubeconfig"), max_in_flight=opts.concurrency)
            op_client = KubeClient(load_credentials(run_folder / "leitstand-operator.kubeconfig"),
                                   max_in_flight=opts.concurrency)
            try:
                nodes = await gpu_nodes(admin)
                if not nodes:
                    raise RuntimeError("no Ready nodes with GPUs in the cluster")
                await install(admin, sum(g for _, g in nodes))
                ctx = Ctx(opts, run_folder, admin, op_client, CpuSampler(pids), nodes, progress, log_dir, stoppers)
                out: dict[str, Any] = {"nodes": nodes}
                if opts.kai:
                    out["kai"] = await kai(ctx)
                else:
                    out["side_by_side"] = await side_by_side(ctx, kube_client)
                return out
            finally:
                await admin.close()
                await op_client.close()

        outcome = asyncio.run(main())
    finally:
        for stop in stoppers:
            with contextlib.suppress(Exception):
                stop()
        if started and not opts.keep_cluster:
            controlplane.down(report=progress)
    nodes = outcome.pop("nodes")
    return {
        "cluster": {"nodes": len(nodes), "gpus": sum(g for _, g in nodes), "nodes_per_rack": opts.nodes_per_rack,
                    "started_here": started, "kubernetes": K8S_VERSION, "cores": os.cpu_count() or 1},
        "commit": code_commit(),
        **outcome,
    }


def e2e(
    nodes: Annotated[int, typer.Option(help="Simulated 8-GPU nodes, if a cluster must be started "
                                       "(1000 for the issue's shape, 500 for KAI's).")] = 256,
    nodes_per_rack: Annotated[int, typer.Option(help="Nodes per rack of a cluster started here.")] = 32,
    kai_shapes: Annotated[bool, typer.Option("--kai", help="Run KAI Scheduler's scale-test shapes instead "
                                             "(Leitstand only; try --nodes 500).")] = False,
    paths: Annotated[str, typer.Option(help="Paths of the side-by-side run, comma-separated.")] = ",".join(PATHS),
    kube_qps: Annotated[float, typer.Option(help="Client QPS of the second kube-scheduler (burst 2×); 0 skips it.")]
    = 1000.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight of the submitting clients.")] = 64,
    settle: Annotated[float, typer.Option(help="A path is done when nothing was bound for this many seconds.")] = 10.0,
    timeout: Annotated[float, typer.Option(help="Give up on a path or shape after this many seconds.")] = 600.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload's order.")] = 42,
    repeat: Annotated[int, typer.Option(help="Run the paths this many times, interleaved; report each "
                                        "path's median run (the machine is shared: its load varies).")] = 1,
    run_folder: Annotated[
        Path | None,
        typer.Option("--run", help="Run folder of a running cluster (with kube-scheduler) to use [default "
                     "$LEITSTAND_RUN]; if none runs there, one is started there and stopped at the end."),
    ] = None,
    keep_cluster: Annotated[bool, typer.Option(help="Leave a cluster this command started running.")] = False,
    log_dir: Annotated[Path | None, typer.Option(help="Where the schedulers' logs go [default: the temp dir].")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Leitstand vs the real kube-scheduler vs a raw create+bind loop on one local cluster; --kai: KAI's shapes."""
    try:
        opts = Options(nodes=nodes, nodes_per_rack=nodes_per_rack, kube_qps=kube_qps, concurrency=concurrency,
                       settle=settle, timeout=timeout, seed=seed, repeat=repeat, paths=parse_paths(paths),
                       kai=kai_shapes, run=run_folder, keep_cluster=keep_cluster, log_dir=log_dir)
        check_options(opts)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run(opts, progress)
    if json_output:
        print(json.dumps(report, indent=2))
        return
    from rich.console import Console

    render(report, Console(width=200))
